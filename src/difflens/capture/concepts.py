"""Concept vectors from contrastive A/B items, per layer and per model, and how they compare.

Why one long module: the vectors' file format, their extraction and their comparison
share one cache key and one split of items; apart they would repeat both.

:func:`extract_concepts` runs both variants of every item through each model (batched,
sharing the prompt's KV cache) and keeps the residual stream at the read position at every
layer. Items are split once, by a seeded permutation, into a train part that defines the
vectors and a held-out part that tests them. :func:`compare_concepts` then measures, each
with a bootstrap CI over items:

- cosine(base vector, tuned vector) per layer;
- the layer x layer cosine matrix of each model;
- PCA of all vectors of both models across layers, raw and normalised (each vector scaled
  to unit length first, so the growth of the residual norm with depth does not decide the
  first component);
- separation per layer: the AUC with which the projection onto the train vector tells the
  matching from the non-matching variant of held-out items;
- the settling layer of each model: the layer from which on every consecutive-layer cosine
  cos(v_l, v_next) stays at or above a threshold (:func:`settling_positions`).

For a model set (a lineage base -> SFT -> ...), :func:`cosine_vs_base` measures each later
model's vector against the base's per layer and attributes that cosine to the lineage's
stages (one paired bootstrap over the same resampled items for every model).
"""

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from difflens._io import fingerprint, write_bytes_atomic
from difflens.analysis.attribution import Attribution, attribute_levels
from difflens.analysis.divergence import bootstrap_weights
from difflens.capture.contrastive import forward_ab
from difflens.errors import InputError
from difflens.inputs.ab_items import ABDataset, tokenize_items, uses_chat
from difflens.models.hooks import module_path
from difflens.models.layers import parse_layers
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair, models_of

METHODS = ("mean_diff", "pca")
VECTORS_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ConceptVectors:
    """One vector per layer per model, with where and from how many items it came.

    Supports ``+``, ``-``, scalar ``*`` and ``/`` (same models and layers required), and
    :meth:`save` / :func:`load_vectors` (safetensors, metadata as JSON).
    """

    vectors: dict[str, Float[Tensor, "layer d_model"]]
    """Model label (``model``, ``base`` and ``tuned``, or a model set's names) -> one row
    per layer."""
    layers: tuple[int, ...]
    n_items: int
    position: str
    method: str
    module_paths: dict[str, list[str]]
    """Model label -> the module each layer was read from."""
    models: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Model label -> its identity (name, weights hash, ...)."""
    dataset: str = ""

    def layer(self, label: str, layer: int) -> Float[Tensor, " d_model"]:
        if layer not in self.layers:
            raise InputError(f"layer {layer} was not extracted (layers: {list(self.layers)})")
        return self.vectors[label][self.layers.index(layer)]

    def _combine(self, other: "ConceptVectors", op: Callable[[Tensor, Tensor], Tensor],
                 sym: str) -> "ConceptVectors":
        if set(self.vectors) != set(other.vectors) or self.layers != other.layers:
            raise InputError(f"cannot combine vectors of models {sorted(self.vectors)} layers "
                             f"{list(self.layers)} with models {sorted(other.vectors)} layers "
                             f"{list(other.layers)}")
        return dataclasses.replace(
            self, vectors={k: op(v, other.vectors[k]) for k, v in self.vectors.items()},
            n_items=min(self.n_items, other.n_items), method=f"({self.method} {sym} "
            f"{other.method})", dataset=f"({self.dataset} {sym} {other.dataset})")

    def __add__(self, other: "ConceptVectors") -> "ConceptVectors":
        return self._combine(other, torch.add, "+")

    def __sub__(self, other: "ConceptVectors") -> "ConceptVectors":
        return self._combine(other, torch.sub, "-")

    def __mul__(self, k: float) -> "ConceptVectors":
        return dataclasses.replace(self, vectors={a: v * k for a, v in self.vectors.items()})

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> "ConceptVectors":
        return self * (1.0 / k)

    def save(self, path: str | Path) -> None:
        """Write one safetensors file (``<label>`` tensors, metadata JSON), atomically."""
        from safetensors.torch import save

        meta = {"format": VECTORS_FORMAT, "layers": list(self.layers), "n_items": self.n_items,
                "position": self.position, "method": self.method,
                "module_paths": self.module_paths, "models": self.models,
                "dataset": self.dataset}
        data = save({k: v.float().contiguous() for k, v in self.vectors.items()},
                    metadata={"difflens": json.dumps(meta, sort_keys=True)})
        write_bytes_atomic(Path(path), data)


def load_vectors(path: str | Path) -> ConceptVectors:
    """Read vectors written by :meth:`ConceptVectors.save`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"vector file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("difflens", "null"))
            vectors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"{path}: not a safetensors file ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != VECTORS_FORMAT:
        raise InputError(f"{path}: not a difflens vector file (no difflens metadata)")
    return ConceptVectors(vectors=vectors, layers=tuple(meta["layers"]),
                          n_items=meta["n_items"], position=meta["position"],
                          method=meta["method"], module_paths=meta["module_paths"],
                          models=meta["models"], dataset=meta["dataset"])


@dataclasses.dataclass(frozen=True)
class ConceptExtraction:
    """Activations of both variants of every item, at every layer, for each model."""

    dataset: ABDataset
    layers: tuple[int, ...]
    position: str
    chat: dict[str, bool]
    acts: dict[str, Float[Tensor, "item 2 layer d_model"]]
    """Model label -> states at the read position (variant 0 matches the behaviour)."""
    logp: dict[str, Float[Tensor, "item 2"]]
    """Model label -> log P(answer tokens) per variant, unsteered."""
    train: np.ndarray
    """Indices of the items that define the vectors."""
    test: np.ndarray
    """Held-out item indices."""
    vectors: ConceptVectors
    n_truncated: int = 0
    key: str = ""
    """The activation cache key (models, items, layers, position, template)."""

    @property
    def labels(self) -> list[str]:
        return list(self.acts)

    def diffs(self, label: str, idx: np.ndarray | None = None
              ) -> Float[Tensor, "item layer d_model"]:
        a = self.acts[label] if idx is None else self.acts[label][torch.as_tensor(idx)]
        return a[:, 0] - a[:, 1]

    def p_match(self, label: str) -> np.ndarray:
        """P(matching answer) per item, normalised over the two answers (unsteered)."""
        lp = self.logp[label].double()
        return torch.sigmoid(lp[:, 0] - lp[:, 1]).numpy()


def _vectors_from(diffs: Float[Tensor, "item layer d_model"], method: str
                  ) -> Float[Tensor, "layer d_model"]:
    mean = diffs.mean(0)
    if method == "mean_diff":
        return mean
    out = []
    for layer in range(diffs.shape[1]):
        d = diffs[:, layer].double()
        if len(d) < 2 or float(d.norm()) == 0.0:
            out.append(mean[layer])
            continue
        _, _, vt = torch.linalg.svd(d, full_matrices=False)  # uncentred: see docstring
        u = vt[0]
        m = mean[layer].double()
        proj = float(m @ u)
        u = u if proj >= 0 else -u
        out.append((abs(proj) * u).float())  # scaled like the mean difference
    return torch.stack(out)


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"test fraction must be in [0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if test_fraction > 0 and (n_test < 2 or n - n_test < 2):
        raise InputError(f"{n} items are too few to hold out {test_fraction:.0%}; give more "
                         f"items or --test-fraction 0")
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def extraction_key(models: dict[str, LoadedModel], dataset: ABDataset, layers: Sequence[int],
                   position: str, chat: dict[str, bool]) -> str:
    """Hash of everything that changes the stored activations."""
    payload = {
        "models": {k: {f: v for f, v in m.identity.to_dict().items() if f != "name"}
                   for k, m in models.items()},
        "items": fingerprint([[i.prompt, i.matching, i.not_matching] for i in dataset.items],
                             length=64),
        "format": dataset.format, "layers": list(layers), "position": position, "chat": chat,
        "version": VECTORS_FORMAT,
    }
    return fingerprint(payload, length=32)


def extract_concepts(
    model_or_pair: LoadedModel | ModelPair | ModelSet,
    dataset: ABDataset,
    *,
    layers: str | Sequence[int] = "all",
    position: str = "answer",
    method: str = "mean_diff",
    chat: bool | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 32,
    max_batch_tokens: int = 8192,
    cache_dir: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> ConceptExtraction:
    """Concept vectors of every layer of one model, both models of a pair or every model of
    a set.

    Args:
        model_or_pair: a :class:`LoadedModel`, a :class:`ModelPair` or a :class:`ModelSet`
            (same shapes; labels ``model``, ``base``/``tuned`` or the set's names).
        dataset: contrastive items (:func:`~difflens.inputs.ab_items.load_ab_dataset`).
        layers: ``"all"``, or layer indices (negatives count from the end).
        position: ``"answer"`` (the answer letter's token) or ``"last"``.
        method: ``"mean_diff"`` (CAA: mean of matching - non-matching) or ``"pca"`` (the
            first principal direction of the per-item differences, taken without centring
            -- as RepE does by flipping the sign of random pairs -- because centring would
            remove exactly the shared direction; signed and scaled like the mean).
        chat: wrap items in the chat template; None = when the tokenizer has one.
        test_fraction: share of items held out (seeded split) for separation and steering.
        seed: the split's seed.
        batch_size: most items per forward pass (does not change the result).
        max_batch_tokens: most padded tokens per pass (does not change the result).
        cache_dir: keep activations here (``<label>.safetensors`` per model, with a key of
            all the models); a rerun with the same models, items, layers, position and
            template reads them back.
        progress: called with the number of items done after each batch.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    models = models_of(model_or_pair, same_shape=True)
    first = next(iter(models.values()))
    layer_idx = parse_layers(layers if isinstance(layers, str) else list(layers), first)
    chats = {k: uses_chat(m.tokenizer, chat) for k, m in models.items()}
    key = extraction_key(models, dataset, layer_idx, position, chats)
    acts: dict[str, Tensor] = {}
    logp: dict[str, Tensor] = {}
    n_truncated = 0
    for label, lm in models.items():
        cached = _read_cache(cache_dir, label, key)
        if cached is not None:
            acts[label], logp[label] = cached
            if progress:
                progress(len(dataset))
            continue
        toks, n_truncated = tokenize_items(lm.tokenizer, dataset.items, dataset.format,
                                           chat=chats[label], position=position,
                                           max_length=lm.max_length)
        res = forward_ab(lm, toks, layer_idx, batch_size=batch_size,
                         max_batch_tokens=max_batch_tokens, on_batch=progress)
        acts[label], logp[label] = res.hidden, res.logp.float()
        _write_cache(cache_dir, label, key, acts[label], logp[label])
    train, test = _split(len(dataset), test_fraction, seed)
    vectors = ConceptVectors(
        vectors={k: _vectors_from(a[torch.as_tensor(train)][:, 0] - a[torch.as_tensor(train)][:, 1],
                                  method) for k, a in acts.items()},
        layers=layer_idx, n_items=len(train), position=position, method=method,
        module_paths={k: [module_path(m, layer) for layer in layer_idx]
                      for k, m in models.items()},
        models={k: m.identity.to_dict() for k, m in models.items()}, dataset=dataset.name)
    return ConceptExtraction(dataset=dataset, layers=layer_idx, position=position, chat=chats,
                             acts=acts, logp=logp, train=train, test=test, vectors=vectors,
                             n_truncated=n_truncated, key=key)


def _read_cache(folder: str | Path | None, label: str, key: str
                ) -> tuple[Tensor, Tensor] | None:
    if folder is None:
        return None
    path = Path(folder) / f"{label}.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("key") != key:
            return None
        return f.get_tensor("acts"), f.get_tensor("logp")


def _write_cache(folder: str | Path | None, label: str, key: str, acts: Tensor, logp: Tensor
                 ) -> None:
    if folder is None:
        return
    from safetensors.torch import save

    data = save({"acts": acts.contiguous(), "logp": logp.contiguous()}, metadata={"key": key})
    write_bytes_atomic(Path(folder) / f"{label}.safetensors", data)


# -- comparisons --------------------------------------------------------------------------


def _cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine along the last axis (NaN where a vector is zero)."""
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    out = (a * b).sum(-1) / (na * nb)
    return torch.where((na > 0) & (nb > 0), out, torch.full_like(out, float("nan")))


def _ci(samples: np.ndarray, axis: int = 0) -> tuple[Any, Any]:
    """Percentile 95% interval along ``axis`` (NaN where every sample is NaN)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: zero vectors
        lo, hi = np.nanquantile(samples, [0.025, 0.975], axis=axis)
    return lo, hi


def paired_auc(pos: np.ndarray, neg: np.ndarray, *, n_boot: int = 1000, seed: int = 0
               ) -> tuple[float, float, float]:
    """AUC of ``pos`` vs ``neg`` scores (pairs of one item), with a bootstrap CI over items.

    The AUC is P(pos_i > neg_j) + 0.5 P(tie) over all pairs; the CI resamples items (each
    carries its two scores together).
    """
    from sklearn.metrics import roc_auc_score

    n = len(pos)
    auc = float(roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[pos, neg]))
    cmp = (pos[:, None] > neg[None, :]).astype(np.float64) + 0.5 * (pos[:, None] == neg[None])
    w = bootstrap_weights(n, n_boot, seed) / n
    boots = np.round(((w @ cmp) * w).sum(1), 12)  # exact ties stay exact
    lo, hi = _ci(boots)
    return auc, float(lo), float(hi)


@dataclasses.dataclass(frozen=True)
class ConceptComparison:
    """Everything :func:`compare_concepts` measured (rows ready for tables)."""

    cosine_by_layer: list[dict[str, Any]]
    """``{layer, cos, ci_low, ci_high, n}`` between base and tuned (pairs only)."""
    heatmaps: dict[str, list[dict[str, Any]]]
    """Model label -> ``{layer_i, layer_j, cos, ci_low, ci_high}`` rows."""
    pca: list[dict[str, Any]]
    """``{model, layer, normalised, pc1, pc2}`` rows."""
    pca_explained: dict[str, list[dict[str, Any]]]
    """``raw`` / ``normalised`` -> explained variance ratio of PC1, PC2 with CIs."""
    separation: dict[str, list[dict[str, Any]]]
    """Model label -> ``{layer, auc, ci_low, ci_high, n}`` on held-out items."""
    norms: dict[str, list[float]]
    """Model label -> vector norm per layer."""
    consecutive: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    """Model label -> ``{layer, next_layer, cos, ci_low, ci_high, n}``: cos(v_layer,
    v_next_layer) for consecutive extracted layers."""
    settling: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Model label -> ``{layer, ci_low, ci_high, threshold, n, n_boot, n_boot_unsettled}``
    (:func:`settling_positions`; ``None`` where the vectors never settle)."""


def settling_positions(consecutive: np.ndarray, threshold: float) -> np.ndarray:
    """Where a run of consecutive-layer cosines settles: the first position ``k`` such that
    every cosine from ``k`` to the end is at least ``threshold``.

    Args:
        consecutive: ``[..., pairs]``, entry ``k`` is cos(v_k, v_k+1) of the layers in order
            (NaN, a zero vector, counts as below).
        threshold: the least cosine that counts as settled.

    Returns:
        ``[...]`` float positions: ``k`` (the vector of layer ``k`` and every later one stay
        aligned with their successor), or NaN where even the last pair is below.
    """
    above = np.nan_to_num(np.asarray(consecutive, dtype=np.float64), nan=-np.inf) >= threshold
    trailing = np.logical_and.accumulate(above[..., ::-1], axis=-1).sum(-1)
    n_pairs = above.shape[-1]
    return np.where(trailing > 0, n_pairs - trailing, np.nan).astype(np.float64)


def settling_layer(consecutive: np.ndarray, boots: np.ndarray, layers: Sequence[int],
                   threshold: float, n: int) -> dict[str, Any]:
    """The settling layer of one model, with a percentile 95% CI over bootstrap resamples.

    Args:
        consecutive: ``[pairs]`` cos(v_l, v_next) of the point vectors.
        boots: ``[n_boot, pairs]`` the same for vectors recomputed on resampled items.
        layers: the extracted layers, in order (``pairs + 1`` of them).
        threshold: the least cosine that counts as settled.
        n: items the vectors come from.

    Returns:
        ``{layer, ci_low, ci_high, threshold, n, n_boot, n_boot_unsettled}``; ``layer`` is
        None where the vectors never settle, and a resample that never settles counts as
        later than every layer (``ci_high`` None when more than 2.5% of them do).
    """
    point = settling_positions(consecutive, threshold)
    b = settling_positions(boots, threshold)
    unsettled = ~np.isfinite(b)
    q = np.where(unsettled, np.inf, b)
    lo, hi = (np.quantile(q, [0.025, 0.975], method="inverted_cdf") if len(q)
              else (np.nan, np.nan))

    def at(k: float) -> int | None:
        return int(layers[int(k)]) if np.isfinite(k) else None

    return {"layer": at(float(point)), "ci_low": at(float(lo)), "ci_high": at(float(hi)),
            "threshold": threshold, "n": n, "n_boot": len(q),
            "n_boot_unsettled": int(unsettled.sum())}


def _pca_rows(vectors: dict[str, Tensor], layers: Sequence[int], normalised: bool
              ) -> tuple[list[dict[str, Any]], np.ndarray]:
    """One PCA over every layer's vector of every model; zero vectors (a position whose
    state cannot differ yet, e.g. layer 0 at a shared token) are left out, with NaN coords."""
    labels = list(vectors)
    x = torch.cat([vectors[k] for k in labels]).double()
    keep = x.norm(dim=-1) > 0
    if normalised:
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    coords = np.full((len(x), 2), np.nan)
    ev = np.zeros(2)
    if int(keep.sum()) >= 2:
        xk = x[keep]
        xc = xk - xk.mean(0)
        _, s, vt = torch.linalg.svd(xc, full_matrices=False)
        c = (xc @ vt[:2].T).numpy()
        c = c * np.where(c[0] < 0, -1.0, 1.0)  # deterministic sign: first point non-negative
        coords[keep.numpy(), : c.shape[1]] = c
        if float((s**2).sum()) > 0:
            ev[: min(2, len(s))] = (s**2 / (s**2).sum()).numpy()[:2]
    rows = [{"model": k, "layer": layer, "normalised": normalised,
             "pc1": float(coords[i * len(layers) + j, 0]),
             "pc2": float(coords[i * len(layers) + j, 1])}
            for i, k in enumerate(labels) for j, layer in enumerate(layers)]
    return rows, ev


def compare_concepts(ex: ConceptExtraction, *, n_boot: int = 500, seed: int = 0,
                     settle_threshold: float = 0.9) -> ConceptComparison:
    """Cosine per layer, layer x layer cosines, PCA, held-out separation and the settling
    layer, with CIs (bootstrap over the train items: resample them, recompute the vectors).

    ``settle_threshold`` is the least consecutive-layer cosine that counts as settled.
    """
    if not -1.0 <= settle_threshold <= 1.0:
        raise InputError(f"the settling threshold is a cosine, in [-1, 1]; got "
                         f"{settle_threshold}")
    labels = ex.labels
    layers = ex.layers
    d = {k: ex.diffs(k, ex.train).double() for k in labels}  # item layer d_model
    n = len(ex.train)
    w = torch.as_tensor(bootstrap_weights(n, n_boot, seed) / n)  # n_boot item
    boot = {k: torch.einsum("bi,ild->bld", w, d[k]) for k in labels}  # bootstrap mean vectors
    vec = {k: d[k].mean(0) for k in labels}

    cosine_rows: list[dict[str, Any]] = []
    if set(labels) == {"base", "tuned"}:
        point = _cos(vec["base"], vec["tuned"]).numpy()
        samples = _cos(boot["base"], boot["tuned"]).numpy()
        lo, hi = _ci(samples)
        cosine_rows = [{"layer": layer, "cos": float(point[j]), "ci_low": float(lo[j]),
                        "ci_high": float(hi[j]), "n": n} for j, layer in enumerate(layers)]

    heatmaps = {}
    for k in labels:
        unit = vec[k] / vec[k].norm(dim=-1, keepdim=True)
        point = (unit @ unit.T).numpy()
        bu = boot[k] / boot[k].norm(dim=-1, keepdim=True)
        samples = torch.einsum("bid,bjd->bij", bu, bu).numpy()
        lo, hi = _ci(samples)
        heatmaps[k] = [{"layer_i": li, "layer_j": lj, "cos": float(point[i, j]),
                        "ci_low": float(lo[i, j]), "ci_high": float(hi[i, j]), "n": n}
                       for i, li in enumerate(layers) for j, lj in enumerate(layers)]

    consecutive: dict[str, list[dict[str, Any]]] = {}
    settling: dict[str, dict[str, Any]] = {}
    if len(layers) >= 2:
        for k in labels:
            point = _cos(vec[k][:-1], vec[k][1:]).numpy()
            samples = _cos(boot[k][:, :-1], boot[k][:, 1:]).numpy()
            lo, hi = _ci(samples)
            consecutive[k] = [{"layer": layers[j], "next_layer": layers[j + 1],
                               "cos": float(point[j]), "ci_low": float(lo[j]),
                               "ci_high": float(hi[j]), "n": n} for j in range(len(point))]
            settling[k] = settling_layer(point, samples, layers, settle_threshold, n)

    method_vecs = {k: ex.vectors.vectors[k].double() for k in labels}
    pca_rows: list[dict[str, Any]] = []
    explained: dict[str, list[dict[str, Any]]] = {}
    n_pca_boot = min(n_boot, 200)
    for normalised in (False, True):
        rows, ev = _pca_rows(method_vecs, layers, normalised)
        pca_rows += rows
        evs = np.array([_pca_rows({k: boot[k][b] for k in labels}, layers, normalised)[1]
                        for b in range(n_pca_boot)])
        lo, hi = _ci(evs)
        explained["normalised" if normalised else "raw"] = [
            {"component": c + 1, "explained": float(ev[c]), "ci_low": float(lo[c]),
             "ci_high": float(hi[c]), "n": n} for c in range(len(ev))]

    separation: dict[str, list[dict[str, Any]]] = {}
    if len(ex.test) >= 2:
        te = torch.as_tensor(ex.test)
        for k in labels:
            a = ex.acts[k][te].double()  # item 2 layer d
            v = ex.vectors.vectors[k].double()
            rows = []
            for j, layer in enumerate(layers):
                u = v[j] / v[j].norm().clamp_min(1e-12)
                s = (a[:, :, j] @ u).numpy()
                auc, lo_, hi_ = paired_auc(s[:, 0], s[:, 1], n_boot=n_boot, seed=seed)
                rows.append({"layer": layer, "auc": auc, "ci_low": lo_, "ci_high": hi_,
                             "n": len(ex.test)})
            separation[k] = rows
    return ConceptComparison(
        cosine_by_layer=cosine_rows, heatmaps=heatmaps, pca=pca_rows, pca_explained=explained,
        separation=separation,
        norms={k: [float(x) for x in ex.vectors.vectors[k].norm(dim=-1)] for k in labels},
        consecutive=consecutive, settling=settling)


@dataclasses.dataclass(frozen=True)
class LineageCosines:
    """Each later model's concept vector against the base's, per layer, and which stage of
    the lineage changed that cosine (what :func:`cosine_vs_base` measured)."""

    lineage: tuple[str, ...]
    """The models in lineage order, base first."""
    layers: tuple[int, ...]
    rows: dict[str, list[dict[str, Any]]]
    """Model (every one after the base) -> ``{layer, cosine, ci_low, ci_high, n}`` rows."""
    attribution: dict[int, Attribution]
    """Layer -> the attribution of the cosine with the base along the lineage (levels: each
    model's cosine with the base, the base's own 1.0; stages: adjacent models)."""

    def attribution_summary(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """``{concept_cosine_L<layer>: {stage: {delta, ci_low, ci_high, share}}}``."""
        return {attribution_metric(layer): a.summary() for layer, a in self.attribution.items()}


def attribution_metric(layer: int) -> str:
    """The name of the cosine-with-the-base metric of ``layer`` in attribution summaries."""
    return f"concept_cosine_L{layer}"


def _train_diffs(ex: ConceptExtraction, label: str, j: int) -> Float[Tensor, "item d_model"]:
    """matching - non-matching states of the train items at the ``j``-th extracted layer
    (one layer at a time: all layers of every model at once need not fit in memory)."""
    a = ex.acts[label][:, :, j][torch.as_tensor(ex.train)]
    return (a[:, 0] - a[:, 1]).double()


def cosine_vs_base(ex: ConceptExtraction, lineage: Sequence[str] | None = None, *,
                   n_boot: int = 500, seed: int = 0) -> LineageCosines:
    """cos(base vector, model vector) per layer for every model after the base, with 95%
    CIs, and the attribution of that cosine to the lineage's stages.

    The vectors are the mean differences of the train items (as ``cosine_by_layer``). Every
    bootstrap replicate resamples the train items once and recomputes every model's vector
    from those same items (the weights of :func:`compare_concepts`, so a two-model lineage
    ``base``, ``tuned`` gives its ``cosine_by_layer``); the stages' deltas and CIs come from
    :func:`~difflens.analysis.attribution.attribute_levels` on these paired replicates, with
    the base's own level 1.0. Layers where the base's vector is zero have NaN cosines.

    Args:
        ex: an extraction of every model of ``lineage``.
        lineage: the models in lineage order, base first; None: ``ex.labels``.
        n_boot: bootstrap replicates.
        seed: seed of the item resamples.
    """
    import warnings

    names = tuple(lineage if lineage is not None else ex.labels)
    missing = [k for k in names if k not in ex.acts]
    if len(names) < 2 or missing:
        raise InputError(f"the cosine with the base needs a lineage of two or more extracted "
                         f"models; got {list(names)} (extracted: {ex.labels})")
    base, later = names[0], names[1:]
    n = len(ex.train)
    w = torch.as_tensor(bootstrap_weights(n, n_boot, seed) / n)  # n_boot item
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in later}
    attribution: dict[int, Attribution] = {}
    for j, layer in enumerate(ex.layers):
        d = {k: _train_diffs(ex, k, j) for k in names}
        vec = {k: d[k].mean(0) for k in names}
        boot = {k: w @ d[k] for k in names}  # n_boot d_model: the same items for every model
        point = np.array([1.0] + [float(_cos(vec[base], vec[k])) for k in later])
        samples = np.stack([np.ones(n_boot)] + [_cos(boot[base], boot[k]).numpy()
                                                for k in later], axis=1)
        lo, hi = _ci(samples)
        for m, k in enumerate(later, start=1):
            rows[k].append({"layer": layer, "cosine": float(point[m]),
                            "ci_low": float(lo[m]), "ci_high": float(hi[m]), "n": n})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN levels: zero base vector
            attribution[layer] = attribute_levels(point, samples, names, n=n, seed=seed)
    return LineageCosines(lineage=names, layers=ex.layers, rows=rows, attribution=attribution)


def best_layer(rows: Sequence[dict[str, Any]]) -> int:
    """The layer with the highest held-out AUC (the earliest among ties)."""
    if not rows:
        raise InputError("no separation measured (no held-out items); use --test-fraction > 0")
    return int(max(rows, key=lambda r: (r["auc"], -r["layer"]))["layer"])
