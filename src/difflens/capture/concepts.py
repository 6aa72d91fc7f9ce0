"""Concept vectors from contrastive A/B items, per layer and per model: their extraction
and their file format.

``extract_concepts`` runs both variants of every item through each model (batched,
sharing the prompt's KV cache) and keeps the residual stream at the read position at every
layer. Items are split once, by a seeded permutation, into a train part that defines the
vectors and a held-out part that tests them. The extraction's cache key and its split are
what ``compare_concepts`` (one model, a pair or a set) and ``cosine_vs_base`` (a
lineage) hand to the statistics of ``difflens.analysis.concept_stats``: cosines per
layer and layer x layer, PCA, held-out separation, the settling layer, and each later
model's cosine with the base attributed to the lineage's stages, each with a bootstrap CI
over items.
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
from difflens.analysis.concept_stats import (
    ConceptComparison,
    LineageCosines,
    compare_vectors,
    lineage_cosines,
)
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
    ``save`` / ``load_vectors`` (safetensors, metadata as JSON).
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
    """Read vectors written by ``ConceptVectors.save``."""
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
        model_or_pair: a ``LoadedModel``, a ``ModelPair`` or a ``ModelSet``
            (same shapes; labels ``model``, ``base``/``tuned`` or the set's names).
        dataset: contrastive items (``load_ab_dataset``).
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


# -- comparisons (the statistics are in difflens.analysis.concept_stats) -----------------


def compare_concepts(ex: ConceptExtraction, *, n_boot: int = 500, seed: int = 0,
                     settle_threshold: float = 0.9) -> ConceptComparison:
    """Cosine per layer, layer x layer cosines, PCA, held-out separation and the settling
    layer of an extraction, with CIs (bootstrap over the train items: resample them,
    recompute the vectors): ``compare_vectors`` on its
    train differences, its vectors and its held-out items.

    ``settle_threshold`` is the least consecutive-layer cosine that counts as settled.
    """
    return compare_vectors({k: ex.diffs(k, ex.train).double() for k in ex.labels},
                           ex.vectors.vectors, ex.layers, acts=ex.acts, test=ex.test,
                           n_boot=n_boot, seed=seed, settle_threshold=settle_threshold)


def cosine_vs_base(ex: ConceptExtraction, lineage: Sequence[str] | None = None, *,
                   n_boot: int = 500, seed: int = 0) -> LineageCosines:
    """cos(base vector, model vector) per layer for every model after the base, with 95%
    CIs, and the attribution of that cosine to the lineage's stages
    (``lineage_cosines`` on the train items).

    Args:
        ex: an extraction of every model of ``lineage``.
        lineage: the models in lineage order, base first; None: ``ex.labels``.
        n_boot: bootstrap replicates.
        seed: seed of the item resamples.
    """
    names = tuple(lineage if lineage is not None else ex.labels)
    return lineage_cosines(ex.acts, ex.train, names, ex.layers, n_boot=n_boot, seed=seed)
