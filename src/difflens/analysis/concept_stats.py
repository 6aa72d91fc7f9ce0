"""Statistics of concept vectors: pure functions over the per-item differences and vectors
that ``difflens.capture.concepts`` extracts (tensors in, rows out; no model is run).

Every statistic comes with a percentile bootstrap 95% CI over the train items (resample the
items, recompute the vectors from them), or for the held-out separation over the held-out
items, and every row is written in the summaries' one spelling of an estimate
(``to_json``: ``value``, ``ci_low``, ``ci_high``,
``n``, ``resampled``), with what it is of (``layer``, ``component``, ...) beside it:

- ``compare_vectors``: cos(base vector, tuned vector) per layer, the layer x layer
  cosine matrix of each model, PCA of all vectors across layers (raw and normalised: each
  vector scaled to unit length first, so the growth of the residual norm with depth does
  not decide the first component), the held-out separation per layer (the AUC with which the
  projection onto the train vector tells the matching from the non-matching variant,
  ``paired_auc``) and the settling layer of each model (``settling_positions``);
- ``lineage_cosines``: for a lineage (base -> SFT -> ...), each later model's vector
  against the base's per layer, and that cosine attributed to the lineage's stages (one
  paired bootstrap over the same resampled items for every model).
"""

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from difflens.analysis.attribution import Attribution, attribute_levels
from difflens.analysis.bootstrap import Estimate, bootstrap_weights, percentile_ci
from difflens.errors import InputError

RESAMPLED = "items"
"""What every CI of this module resamples."""


def _row(value: Any, lo: Any, hi: Any, n: int, **context: Any) -> dict[str, Any]:
    """An estimate over items in the one spelling, with ``context`` beside it."""
    est = Estimate(value=float(value), ci_low=float(lo), ci_high=float(hi), n=int(n),
                   resampled=RESAMPLED)
    return {**est.to_json(), **context}


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine along the last axis (NaN where a vector is zero)."""
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    out = (a * b).sum(-1) / (na * nb)
    return torch.where((na > 0) & (nb > 0), out, torch.full_like(out, float("nan")))


def paired_auc(pos: np.ndarray, neg: np.ndarray, *, n_boot: int = 1000, seed: int = 0
               ) -> Estimate:
    """AUC of ``pos`` vs ``neg`` scores (pairs of one item), with a bootstrap CI over items.

    The AUC is P(pos_i > neg_j) + 0.5 P(tie) over all pairs; the CI resamples items (each
    carries its two scores together). ``n`` counts items.
    """
    from sklearn.metrics import roc_auc_score

    n = len(pos)
    auc = float(roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[pos, neg]))
    cmp = (pos[:, None] > neg[None, :]).astype(np.float64) + 0.5 * (pos[:, None] == neg[None])
    w = bootstrap_weights(n, n_boot, seed) / n
    boots = np.round(((w @ cmp) * w).sum(1), 12)  # exact ties stay exact
    lo, hi = percentile_ci(boots, omit_nan=True)
    return Estimate(value=auc, ci_low=float(lo), ci_high=float(hi), n=n, resampled=RESAMPLED)


@dataclasses.dataclass(frozen=True)
class ConceptComparison:
    """Everything ``compare_vectors`` measured (rows ready for the summary; every
    estimate is ``{value, ci_low, ci_high, n, resampled}`` with its context beside it)."""

    cosine_by_layer: list[dict[str, Any]]
    """``{value, ci_low, ci_high, n, resampled, layer}``: cos(base vector, tuned vector)
    (pairs only)."""
    heatmaps: dict[str, list[dict[str, Any]]]
    """Model label -> ``{value, ci_low, ci_high, n, resampled, layer_i, layer_j}`` rows."""
    pca: list[dict[str, Any]]
    """``{model, layer, normalised, pc1, pc2}`` rows."""
    pca_explained: dict[str, list[dict[str, Any]]]
    """``raw`` / ``normalised`` -> the explained variance ratio of PC1, PC2
    (``{value, ci_low, ci_high, n, resampled, component}``)."""
    separation: dict[str, list[dict[str, Any]]]
    """Model label -> ``{value, ci_low, ci_high, n, resampled, layer}``: the AUC on held-out
    items."""
    norms: dict[str, list[float]]
    """Model label -> vector norm per layer."""
    consecutive: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    """Model label -> ``{value, ci_low, ci_high, n, resampled, layer, next_layer}``:
    cos(v_layer, v_next_layer) for consecutive extracted layers."""
    settling: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Model label -> ``{value, ci_low, ci_high, n, resampled, threshold, n_boot,
    n_boot_unsettled}`` (``settling_layer``; ``value`` is the layer, ``None`` where the
    vectors never settle)."""


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
        ``{value, ci_low, ci_high, n, resampled, threshold, n_boot, n_boot_unsettled}``: an
        estimate whose ``value`` and CI are layers (ints, the quantiles taken as observed
        values); ``value`` is None where the vectors never settle, and a resample that never
        settles counts as later than every layer (``ci_high`` None when more than 2.5% of
        them do).
    """
    point = settling_positions(consecutive, threshold)
    b = settling_positions(boots, threshold)
    unsettled = ~np.isfinite(b)
    q = np.where(unsettled, np.inf, b)
    lo, hi = percentile_ci(q, method="inverted_cdf") if len(q) else (np.nan, np.nan)

    def at(k: float) -> int | None:
        return int(layers[int(k)]) if np.isfinite(k) else None

    return {"value": at(float(point)), "ci_low": at(float(lo)), "ci_high": at(float(hi)),
            "n": int(n), "resampled": RESAMPLED, "threshold": threshold, "n_boot": len(q),
            "n_boot_unsettled": int(unsettled.sum())}


def pca_rows(vectors: Mapping[str, Tensor], layers: Sequence[int], normalised: bool
             ) -> tuple[list[dict[str, Any]], np.ndarray]:
    """One PCA over every layer's vector of every model: ``{model, layer, normalised, pc1,
    pc2}`` rows and the explained variance ratio of PC1, PC2. Zero vectors (a position whose
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


def compare_vectors(diffs: Mapping[str, Float[Tensor, "item layer d_model"]],
                    vectors: Mapping[str, Float[Tensor, "layer d_model"]],
                    layers: Sequence[int], *,
                    acts: Mapping[str, Float[Tensor, "all 2 layer d_model"]] | None = None,
                    test: np.ndarray | None = None, n_boot: int = 500, seed: int = 0,
                    settle_threshold: float = 0.9) -> ConceptComparison:
    """Cosine per layer, layer x layer cosines, PCA, held-out separation and the settling
    layer, with CIs (bootstrap over the train items: resample them, recompute the vectors).

    Args:
        diffs: model label -> matching - non-matching states of the train items (float64);
            the labels ``base`` and ``tuned`` together add ``cosine_by_layer``.
        vectors: model label -> its concept vector per layer (the extraction's method: the
            PCA and the separation's projection use them).
        layers: the extracted layers, in order.
        acts: model label -> the states of both variants of every item, for the separation
            on the ``test`` items (both None, or fewer than 2 test items: no separation).
        test: indices of the held-out items in ``acts``.
        n_boot: bootstrap replicates.
        seed: seed of the draws.
        settle_threshold: the least consecutive-layer cosine that counts as settled.
    """
    if not -1.0 <= settle_threshold <= 1.0:
        raise InputError(f"the settling threshold is a cosine, in [-1, 1]; got "
                         f"{settle_threshold}")
    labels = list(diffs)
    d = dict(diffs)
    n = len(next(iter(d.values())))
    w = torch.as_tensor(bootstrap_weights(n, n_boot, seed) / n)  # n_boot item
    boot = {k: torch.einsum("bi,ild->bld", w, d[k]) for k in labels}  # bootstrap mean vectors
    vec = {k: d[k].mean(0) for k in labels}

    cosine_rows: list[dict[str, Any]] = []
    if set(labels) == {"base", "tuned"}:
        point = cosine(vec["base"], vec["tuned"]).numpy()
        samples = cosine(boot["base"], boot["tuned"]).numpy()
        lo, hi = percentile_ci(samples, omit_nan=True)
        cosine_rows = [_row(point[j], lo[j], hi[j], n, layer=layer)
                       for j, layer in enumerate(layers)]

    heatmaps = {}
    for k in labels:
        unit = vec[k] / vec[k].norm(dim=-1, keepdim=True)
        point = (unit @ unit.T).numpy()
        bu = boot[k] / boot[k].norm(dim=-1, keepdim=True)
        samples = torch.einsum("bid,bjd->bij", bu, bu).numpy()
        lo, hi = percentile_ci(samples, omit_nan=True)
        heatmaps[k] = [_row(point[i, j], lo[i, j], hi[i, j], n, layer_i=li, layer_j=lj)
                       for i, li in enumerate(layers) for j, lj in enumerate(layers)]

    consecutive: dict[str, list[dict[str, Any]]] = {}
    settling: dict[str, dict[str, Any]] = {}
    if len(layers) >= 2:
        for k in labels:
            point = cosine(vec[k][:-1], vec[k][1:]).numpy()
            samples = cosine(boot[k][:, :-1], boot[k][:, 1:]).numpy()
            lo, hi = percentile_ci(samples, omit_nan=True)
            consecutive[k] = [_row(point[j], lo[j], hi[j], n, layer=layers[j],
                                   next_layer=layers[j + 1]) for j in range(len(point))]
            settling[k] = settling_layer(point, samples, layers, settle_threshold, n)

    method_vecs = {k: vectors[k].double() for k in labels}
    pca: list[dict[str, Any]] = []
    explained: dict[str, list[dict[str, Any]]] = {}
    n_pca_boot = min(n_boot, 200)
    for normalised in (False, True):
        rows, ev = pca_rows(method_vecs, layers, normalised)
        pca += rows
        evs = np.array([pca_rows({k: boot[k][b] for k in labels}, layers, normalised)[1]
                        for b in range(n_pca_boot)])
        lo, hi = percentile_ci(evs, omit_nan=True)
        explained["normalised" if normalised else "raw"] = [
            _row(ev[c], lo[c], hi[c], n, component=c + 1) for c in range(len(ev))]

    separation: dict[str, list[dict[str, Any]]] = {}
    if acts is not None and test is not None and len(test) >= 2:
        te = torch.as_tensor(test)
        for k in labels:
            a = acts[k][te].double()  # item 2 layer d
            v = method_vecs[k]
            sep = []
            for j, layer in enumerate(layers):
                u = v[j] / v[j].norm().clamp_min(1e-12)
                s = (a[:, :, j] @ u).numpy()
                auc = paired_auc(s[:, 0], s[:, 1], n_boot=n_boot, seed=seed)
                sep.append({**auc.to_json(), "layer": layer})
            separation[k] = sep
    return ConceptComparison(
        cosine_by_layer=cosine_rows, heatmaps=heatmaps, pca=pca, pca_explained=explained,
        separation=separation,
        norms={k: [float(x) for x in vectors[k].norm(dim=-1)] for k in labels},
        consecutive=consecutive, settling=settling)


def best_layer(rows: Sequence[Mapping[str, Any]]) -> int:
    """The layer with the highest held-out AUC (the earliest among ties), of the
    separation rows of one model."""
    if not rows:
        raise InputError("no separation measured (no held-out items); use --test-fraction > 0")
    return int(max(rows, key=lambda r: (r["value"], -r["layer"]))["layer"])


# -- a lineage ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LineageCosines:
    """Each later model's concept vector against the base's, per layer, and which stage of
    the lineage changed that cosine (what ``lineage_cosines`` measured)."""

    lineage: tuple[str, ...]
    """The models in lineage order, base first."""
    layers: tuple[int, ...]
    rows: dict[str, list[dict[str, Any]]]
    """Model (every one after the base) -> ``{value, ci_low, ci_high, n, resampled, layer}``
    rows (``value``: the cosine with the base)."""
    attribution: dict[int, Attribution]
    """Layer -> the attribution of the cosine with the base along the lineage (levels: each
    model's cosine with the base, the base's own 1.0; stages: adjacent models)."""

    def attribution_summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{concept_cosine_L<layer>: {stage: {value, ci_low, ci_high, n, resampled,
        share}}}``."""
        return {attribution_metric(layer): a.summary() for layer, a in self.attribution.items()}


def attribution_metric(layer: int) -> str:
    """The name of the cosine-with-the-base metric of ``layer`` in attribution summaries."""
    return f"concept_cosine_L{layer}"


def lineage_cosines(acts: Mapping[str, Float[Tensor, "all 2 layer d_model"]],
                    train: np.ndarray, lineage: Sequence[str], layers: Sequence[int], *,
                    n_boot: int = 500, seed: int = 0) -> LineageCosines:
    """cos(base vector, model vector) per layer for every model after the base, with 95%
    CIs, and the attribution of that cosine to the lineage's stages.

    The vectors are the mean differences of the train items (as ``cosine_by_layer``). Every
    bootstrap replicate resamples the train items once and recomputes every model's vector
    from those same items (the weights of ``compare_vectors``, so a two-model lineage
    ``base``, ``tuned`` gives its ``cosine_by_layer``); the stages' deltas and CIs come from
    ``attribute_levels`` on these paired replicates, with
    the base's own level 1.0. Layers where the base's vector is zero have NaN cosines.

    Args:
        acts: model label -> the states of both variants (matching first) of every item at
            the ``layers`` (read one layer at a time: all layers of every model at once need
            not fit in memory).
        train: indices of the train items.
        lineage: the models in lineage order, base first (two or more, all in ``acts``).
        layers: the extracted layers, in the order of ``acts``' layer axis.
        n_boot: bootstrap replicates.
        seed: seed of the item resamples.
    """
    names = tuple(lineage)
    missing = [k for k in names if k not in acts]
    if len(names) < 2 or missing:
        raise InputError(f"the cosine with the base needs a lineage of two or more extracted "
                         f"models; got {list(names)} (extracted: {list(acts)})")
    base, later = names[0], names[1:]
    n = len(train)
    w = torch.as_tensor(bootstrap_weights(n, n_boot, seed) / n)  # n_boot item
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in later}
    attribution: dict[int, Attribution] = {}
    idx = torch.as_tensor(train)
    for j, layer in enumerate(layers):
        d = {}
        for k in names:  # matching - non-matching states of the train items at layer j
            a = acts[k][:, :, j][idx]
            d[k] = (a[:, 0] - a[:, 1]).double()
        vec = {k: d[k].mean(0) for k in names}
        boot = {k: w @ d[k] for k in names}  # n_boot d_model: the same items for every model
        point = np.array([1.0] + [float(cosine(vec[base], vec[k])) for k in later])
        samples = np.stack([np.ones(n_boot)] + [cosine(boot[base], boot[k]).numpy()
                                                for k in later], axis=1)
        lo, hi = percentile_ci(samples, omit_nan=True)
        for m, k in enumerate(later, start=1):
            rows[k].append(_row(point[m], lo[m], hi[m], n, layer=layer))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN levels: zero base vector
            attribution[layer] = attribute_levels(point, samples, names, n=n, seed=seed,
                                                  resampled=RESAMPLED)
    return LineageCosines(lineage=names, layers=tuple(layers), rows=rows,
                          attribution=attribution)
