"""Trajectories on the sphere: cumulative-mean paths, their projection, and how they compare.

Why one long module: paths, their projection and the statistics comparing them share one
table layout and one bootstrap over prompts.

For a text ``w_1..w_T`` with token vectors ``v_i`` (a layer's residual stream), the path is
``Y_t = mean_{i<=t} v_i / |v_i|``. Paths of both models are projected together onto a
sphere (:class:`SphereProjection`) and compared in a long **trajectory table** with columns
``prompt_id, model, segment, step, token, x, y, z`` (``segment`` is ``"prompt"`` or
``"continuation:i"``). Every statistic here is vectorised over the whole table, works on
any point dimension (the sphere's 3 coordinates, or the full-dimension cumulative means,
where the geodesic is the angle between the vectors), and carries counts and bootstrap CIs
that resample prompts (the paths of one prompt are not independent).

Jump convention: the jump at step ``t`` is the geodesic from ``Y_{t-1}`` to ``Y_t``, the move
caused by adding token ``t``; it is attributed to token ``t`` (the token *after which* the
path stands at its new point).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from difflens.analysis.divergence import bootstrap_weights
from difflens.errors import InputError


def cumulative_mean_path(states: Float[Tensor, "seq d_model"]) -> Float[Tensor, "seq d_model"]:
    """``Y_t = mean_{i<=t} v_i/|v_i|`` for a sequence of token vectors (float64 sums)."""
    v = states.double()
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    steps = torch.arange(1, len(v) + 1, dtype=torch.float64, device=v.device)[:, None]
    return (v.cumsum(0) / steps).to(states.dtype)


def geodesic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance between the directions of ``a`` and ``b`` (rows), in radians.

    Points need not be unit vectors: the angle between them is used, so the same function
    serves sphere coordinates and full-dimension cumulative means.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ua = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-300)
    ub = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-300)
    # 2 atan2(|a - b|, |a + b|) is exact near 0 and pi, where arccos(a.b) is not
    return 2.0 * np.arctan2(np.linalg.norm(ua - ub, axis=-1), np.linalg.norm(ua + ub, axis=-1))


class SphereProjection:
    """Project points onto a sphere, following the scikit-learn contract.

    Args:
        method: ``"umap"`` (UMAP with ``output_metric="haversine"``; the two angles are
            mapped to x, y, z) or ``"pca"`` (project onto ``dim + 1`` principal components,
            then normalise: fast and deterministic).
        dim: 2 for the ordinary sphere (x, y, z), 3 for the 3-sphere (4-D unit points;
            PCA only).
        random_state: seed of UMAP.
        n_neighbors: UMAP's number of neighbours. Neighbours are found exactly
            (scikit-learn), so a UMAP fit is reproducible from ``random_state``;
            ``transform`` of new points is therefore PCA-only.
        min_dist: UMAP's minimum distance between embedded points.
        n_epochs: UMAP's number of epochs (None: UMAP's default).

    Learned attributes end in ``_``: ``embedding_`` (the fitted points on the sphere).
    """

    def __init__(self, method: str = "umap", dim: int = 2, random_state: int | None = 0,
                 n_neighbors: int = 15, min_dist: float = 0.1,
                 n_epochs: int | None = None) -> None:
        self.method = method
        self.n_epochs = n_epochs
        self.dim = dim
        self.random_state = random_state
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist

    def _validate(self) -> None:
        if self.method not in ("umap", "pca"):
            raise InputError(f"projection method must be 'umap' or 'pca', got {self.method!r}")
        if self.dim not in (2, 3):
            raise InputError(f"sphere dim must be 2 or 3, got {self.dim}")
        if self.method == "umap" and self.dim != 2:
            raise InputError("UMAP's haversine output is the 2-sphere only; use method='pca' "
                             "for the 3-sphere")

    def fit(self, X: np.ndarray, y: Any = None) -> "SphereProjection":
        self._validate()
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) < self.dim + 2:
            raise InputError(f"need a 2-D array of at least {self.dim + 2} points, got shape "
                             f"{X.shape}")
        if self.method == "pca":
            from sklearn.decomposition import PCA

            self.pca_ = PCA(n_components=self.dim + 1, random_state=0).fit(X)
            self.embedding_ = self._pca_points(X)
        else:
            import umap  # heavy import: only here
            from sklearn.neighbors import NearestNeighbors

            # Exact neighbours (deterministic); UMAP's own approximate search above 4,096
            # points is not reproducible from a seed (measured: points moved by up to 2 rad
            # between two fits of the same 10k points).
            k = min(self.n_neighbors, len(X) - 1)
            dist, idx = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
            self.umap_ = umap.UMAP(output_metric="haversine", n_components=2, n_jobs=1,
                                   n_neighbors=k, min_dist=self.min_dist,
                                   random_state=self.random_state, n_epochs=self.n_epochs,
                                   precomputed_knn=(idx, dist, None))
            self.umap_.fit(X)
            self.embedding_ = self._angles_to_xyz(self.umap_.embedding_)
        return self

    def _pca_points(self, X: np.ndarray) -> np.ndarray:
        p = self.pca_.transform(X).astype(np.float64)
        norm = np.linalg.norm(p, axis=1, keepdims=True)
        return p / np.maximum(norm, 1e-300)

    @staticmethod
    def _angles_to_xyz(angles: np.ndarray) -> np.ndarray:
        """UMAP's haversine embedding is (theta, phi) in radians; map it as UMAP's docs do."""
        theta, phi = angles[:, 0].astype(np.float64), angles[:, 1].astype(np.float64)
        return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi),
                         np.cos(theta)], axis=1)

    def transform(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "embedding_"):
            raise InputError("SphereProjection is not fitted; call fit first")
        X = np.asarray(X, dtype=np.float32)
        if self.method == "pca":
            return self._pca_points(X)
        raise InputError("the UMAP sphere is fitted with exact neighbours and cannot place new "
                         "points; fit it on all the points (fit_transform)")

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        return self.fit(X).embedding_


def faithfulness(full: np.ndarray, sphere: np.ndarray, *, n_pairs: int = 20000,
                 seed: int = 0) -> dict[str, Any]:
    """Spearman correlation between sphere geodesics and full-dimension angles on random
    point pairs, with a bootstrap CI over the pairs."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    n = len(full)
    i, j = rng.integers(0, n, n_pairs), rng.integers(0, n, n_pairs)
    keep = i != j
    a = geodesic(full[i[keep]], full[j[keep]])
    b = geodesic(sphere[i[keep]], sphere[j[keep]])
    rho = float(spearmanr(a, b).statistic)
    boots = []
    for _ in range(100):
        k = rng.integers(0, len(a), len(a))
        boots.append(spearmanr(a[k], b[k]).statistic)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"mean": rho, "ci95": [float(lo), float(hi)], "n": int(keep.sum())}


# -- the table ------------------------------------------------------------------------------


def point_columns(df: pd.DataFrame) -> list[str]:
    return ["x", "y", "z"] + (["w"] if "w" in df.columns else [])


def _ratio_ci(num: np.ndarray, den: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CI of sum(num)/sum(den) per column, resampling rows (prompts) with weights ``w``."""
    import warnings

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an index no resample contains
        boots = (w @ num) / (w @ den)
        lo, hi = np.nanquantile(boots, [0.025, 0.975], axis=0)
    return lo, hi


@dataclasses.dataclass(frozen=True)
class TrajectoryStats:
    """What :func:`trajectory_stats` measured on one point set (sphere or full dimension)."""

    distance_by_index: dict[str, list[dict[str, Any]]]
    """``prompt`` / ``continuation`` -> ``{index, mean, ci_low, ci_high, n}`` (radians)."""
    jumps_by_index: dict[str, list[dict[str, Any]]]
    """Model -> mean jump per step index (all segments)."""
    top_tokens: list[dict[str, Any]]
    bottom_tokens: list[dict[str, Any]]
    top_tokens_adjusted: list[dict[str, Any]]
    """Ranked by jump relative to the mean jump at the same step (``mean_jump`` is then a
    ratio): early steps of a cumulative mean always move more, and this removes that."""
    bottom_tokens_adjusted: list[dict[str, Any]]
    sentiment: dict[str, Any]
    jumps: pd.DataFrame
    """One row per ranked jump: prompt_id, model, segment, step, token (readable),
    token_raw (the tokenizer's string), jump, sentiment, jump_rel."""
    jump_difference: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Mean jump per index, tuned minus base (:func:`jump_difference`)."""
    direction: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Turns between consecutive moves and the models' move cosines
    (:func:`direction_stats`)."""
    distance_pairs: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = (
        dataclasses.field(default_factory=dict))
    """``(a, b)`` -> ``prompt`` / ``continuation`` -> rows as in ``distance_by_index``: the
    distance per token index of every pair asked for (a model set's lineage pairs); empty
    unless :func:`trajectory_stats` is given ``pairs``."""


def same_path_as_previous(df: pd.DataFrame) -> np.ndarray:
    """True where a row continues the path of the row before it (rows of a path are
    consecutive, as :func:`~difflens.inputs.trajectory_files.check_table` sorts them)."""
    same = np.r_[False, np.ones(len(df) - 1, dtype=bool)] if len(df) else np.zeros(0, bool)
    for col in ("prompt_id", "model", "segment"):
        v = pd.factorize(df[col])[0]
        same[1:] &= v[1:] == v[:-1]
    return same


def path_jumps(df: pd.DataFrame, points: np.ndarray) -> np.ndarray:
    """Jump into each row's point from the previous step of the same path (NaN at step 0)."""
    same = same_path_as_previous(df)
    out = np.full(len(df), np.nan)
    out[1:][same[1:]] = geodesic(points[1:][same[1:]], points[:-1][same[1:]])
    return out


def paired_rows(df: pd.DataFrame, models: tuple[str, str], kind: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the two models' points at the same prompt, segment and step.

    Args:
        df: a trajectory table with a default index.
        models: the two labels (base first); one label twice gives no pairs.
        kind: ``prompt`` (prompt segments) or ``continuation`` (all continuations).

    Returns:
        ``(rows of models[0], rows of models[1])``, aligned.
    """
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if models[0] == models[1]:  # one model: there is no second path to compare with
        return none
    is_prompt = (df["segment"] == "prompt").to_numpy()
    sub = df[is_prompt if kind == "prompt" else ~is_prompt]
    if sub.empty:
        return none
    rows = sub.index.to_numpy()
    pc, sc = pd.factorize(sub.prompt_id)[0], pd.factorize(sub.segment)[0]
    step = sub.step.to_numpy().astype(np.int64)
    key = (pc.astype(np.int64) * (sc.max() + 1) + sc) * (step.max() + 1) + step
    cell = pd.factorize(key)[0]
    model = sub.model.to_numpy()
    ia = np.full(cell.max() + 1, -1)
    ib = np.full(cell.max() + 1, -1)
    ia[cell[model == models[0]]] = rows[model == models[0]]
    ib[cell[model == models[1]]] = rows[model == models[1]]
    both = (ia >= 0) & (ib >= 0)
    return ia[both], ib[both]


def _distance_by_index(df: pd.DataFrame, points: np.ndarray, models: tuple[str, str],
                       kind: str, w_seed: int, n_boot: int, max_index: int | None
                       ) -> list[dict[str, Any]]:
    ra, rb = paired_rows(df, models, kind)
    if not len(ra):
        return []
    m = pd.DataFrame({"prompt_id": df.prompt_id.to_numpy()[ra],
                      "step": df.step.to_numpy()[ra],
                      "d": geodesic(points[ra], points[rb])})
    if max_index is not None:
        m = m[m.step < max_index]
    pi, prompts = pd.factorize(m.prompt_id)
    steps = np.sort(m.step.unique())
    si = np.searchsorted(steps, m.step.to_numpy())
    num = np.zeros((len(prompts), len(steps)))
    den = np.zeros_like(num)
    np.add.at(num, (pi, si), m.d.to_numpy())
    np.add.at(den, (pi, si), 1.0)
    w = bootstrap_weights(len(prompts), n_boot, w_seed)
    lo, hi = _ratio_ci(num, den, w)
    mean = num.sum(0) / den.sum(0)
    return [{"index": int(s), "mean": float(mean[k]), "ci_low": float(lo[k]),
             "ci_high": float(hi[k]), "n": int(den[:, k].sum())} for k, s in enumerate(steps)]


def index_means(prompt_ids: np.ndarray, steps: np.ndarray, values: np.ndarray, *,
                n_boot: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mean of ``values`` per step index and overall, with 95% CIs that resample prompts.

    Returns:
        ``[{index, mean, ci_low, ci_high, n}]`` (n: values at that index) and the overall
        ``{mean, ci_low, ci_high, n}`` (every value pooled). Non-finite values are left out.
    """
    ok = np.isfinite(values)
    if not ok.any():
        return [], {}
    pi, prompts = pd.factorize(pd.Series(np.asarray(prompt_ids, dtype=object)[ok]))
    step = np.asarray(steps)[ok]
    idx = np.sort(np.unique(step))
    si = np.searchsorted(idx, step)
    num = np.zeros((len(prompts), len(idx) + 1))
    den = np.zeros_like(num)
    np.add.at(num, (pi, si), values[ok])
    np.add.at(den, (pi, si), 1.0)
    num[:, -1], den[:, -1] = num[:, :-1].sum(1), den[:, :-1].sum(1)  # the pooled column
    w = bootstrap_weights(len(prompts), n_boot, seed)
    lo, hi = _ratio_ci(num, den, w)
    mean = num.sum(0) / den.sum(0)
    rows = [{"index": int(s), "mean": float(mean[k]), "ci_low": float(lo[k]),
             "ci_high": float(hi[k]), "n": int(den[:, k].sum())} for k, s in enumerate(idx)]
    return rows, {"mean": float(mean[-1]), "ci_low": float(lo[-1]), "ci_high": float(hi[-1]),
                  "n": int(den[:, -1].sum())}


def jump_difference(df: pd.DataFrame, jump: np.ndarray, models: tuple[str, str], *,
                    n_boot: int = 500, seed: int = 0) -> dict[str, Any]:
    """Mean jump per step index, tuned minus base, with 95% CIs.

    Where the models share prompts the comparison is paired: at each index only prompts
    where both models jump are used, and one bootstrap resamples those prompts for both
    models; otherwise each model's prompts are resampled on their own. Jumps of every
    segment are pooled, as in ``jumps.by_index``.

    Args:
        df: a trajectory table (default index).
        jump: one jump per row (:func:`path_jumps`; NaN where there is none).
        models: the two labels (base first).
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        ``{models, paired, n_prompts, by_index: [{index, diff, ci_low, ci_high, n,
        base, tuned, n_jumps_base, n_jumps_tuned}], overall: {diff, ci_low, ci_high, n}}``:
        ``n`` counts prompts; ``base`` / ``tuned`` are each model's mean jump at that index
        (named by their role, whatever the labels); ``overall`` averages the per-index
        differences weighted by ``n``, so a model whose paths are shorter is not credited
        with the large jumps every cumulative mean makes at its first steps.
    """
    if models[0] == models[1]:
        return {}
    ok = np.isfinite(jump) & df.model.isin(models).to_numpy()
    sub = df.loc[ok, ["prompt_id", "model", "step"]].assign(jump=jump[ok])
    has = [set(sub.prompt_id[sub.model == m]) for m in models]
    shared = has[0] & has[1]
    paired = bool(shared)
    if paired:
        sub = sub[sub.prompt_id.isin(shared)]
    if sub.empty or not all(has):
        return {}
    pi, prompts = pd.factorize(sub.prompt_id)
    idx = np.sort(sub.step.unique())
    si = np.searchsorted(idx, sub.step.to_numpy())
    mi = (sub.model == models[1]).to_numpy().astype(np.int64)
    s = np.zeros((2, len(prompts), len(idx)))
    c = np.zeros_like(s)
    np.add.at(s, (mi, pi, si), sub.jump.to_numpy())
    np.add.at(c, (mi, pi, si), 1.0)
    if paired:
        both = (c[0] > 0) & (c[1] > 0)  # a prompt counts at an index where both jump
        s, c = s * both, c * both
        n = both.sum(0)
        w = bootstrap_weights(len(prompts), n_boot, seed)
        wa = wb = w
    else:
        n = ((c[0] > 0) | (c[1] > 0)).sum(0)
        wa, wb = np.zeros((n_boot, len(prompts))), np.zeros((n_boot, len(prompts)))
        for wm, m, sd in ((wa, 0, seed), (wb, 1, seed + 1)):
            own = np.flatnonzero(c[m].sum(1) > 0)
            wm[:, own] = bootstrap_weights(len(own), n_boot, sd)
    import warnings

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an index no resample contains
        mean = s.sum(1) / c.sum(1)  # [2, index]
        diff = mean[1] - mean[0]
        boots = (wb @ s[1]) / (wb @ c[1]) - (wa @ s[0]) / (wa @ c[0])
        lo, hi = np.nanquantile(boots, [0.025, 0.975], axis=0)
        keep = np.isfinite(diff)
        wk = np.where(keep, n, 0).astype(np.float64)
        overall = float((wk[keep] * diff[keep]).sum() / wk.sum())
        fin = np.isfinite(boots)
        ob = (np.where(fin, boots, 0.0) * wk).sum(1) / (fin * wk).sum(1)
        olo, ohi = np.nanquantile(ob, [0.025, 0.975])
    rows = [{"index": int(x), "diff": float(diff[k]), "ci_low": float(lo[k]),
             "ci_high": float(hi[k]), "n": int(n[k]), "base": float(mean[0, k]),
             "tuned": float(mean[1, k]), "n_jumps_base": int(c[0, :, k].sum()),
             "n_jumps_tuned": int(c[1, :, k].sum())}
            for k, x in enumerate(idx) if keep[k]]
    return {"models": list(models), "paired": paired, "n_prompts": len(prompts),
            "by_index": rows, "overall": {"diff": overall, "ci_low": float(olo),
                                          "ci_high": float(ohi), "n": int(wk.sum())}}


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between the rows of ``a`` and ``b`` (radians); NaN where either is zero."""
    zero = (np.linalg.norm(a, axis=-1) == 0) | (np.linalg.norm(b, axis=-1) == 0)
    return np.where(zero, np.nan, geodesic(a, b)) if len(a) else np.zeros(0)


def direction_stats(df: pd.DataFrame, points: np.ndarray, models: Sequence[str], *,
                    n_boot: int = 500, seed: int = 0) -> dict[str, Any]:
    """Where the paths head: the turn between consecutive moves, and the two models' moves.

    The move into step ``t`` is ``Y_t - Y_{t-1}`` in the points' own dimension. The **turn**
    at step ``t`` is the angle between the moves into ``t - 1`` and into ``t`` (from step
    2 on; 0 = straight on, pi/2 = a right angle, pi = back). The **move cosine** at step
    ``t`` is cos(move of base, move of tuned) at the same prompt, segment and step. Means
    per step index and overall, with 95% CIs that resample prompts; a zero move (the path
    did not move) has no direction and is left out.

    ``models`` lists the labels in lineage order (base first): the turn is measured for
    each, the move cosine between the first and the last (a pair's base and tuned).

    Returns:
        ``{turn_angle: {model: {by_index, overall}}, move_cosine: {prompt|continuation:
        {by_index, overall}}}``; each ``by_index`` row is ``{index, mean, ci_low, ci_high,
        n}``, each ``overall`` ``{mean, ci_low, ci_high, n}``.
    """
    same = same_path_as_previous(df)
    move = np.full(points.shape, np.nan)
    move[same] = points[same] - points[np.flatnonzero(same) - 1]
    turn_ok = same & np.r_[False, same[:-1]] if len(df) else same
    turn = np.full(len(df), np.nan)
    at = np.flatnonzero(turn_ok)
    turn[at] = _angles(move[at - 1], move[at])
    out: dict[str, Any] = {"turn_angle": {}, "move_cosine": {}}
    pid, step, model = df.prompt_id.to_numpy(), df.step.to_numpy(), df.model.to_numpy()
    for m in dict.fromkeys(models):
        sel = model == m
        rows, overall = index_means(pid[sel], step[sel], turn[sel], n_boot=n_boot, seed=seed)
        if rows:
            out["turn_angle"][str(m)] = {"by_index": rows, "overall": overall}
    for kind in ("prompt", "continuation"):
        ra, rb = paired_rows(df, (models[0], models[-1]), kind)
        ra, rb = ra[same[ra]], rb[same[rb]]
        cos = np.cos(_angles(move[ra], move[rb]))
        rows, overall = index_means(pid[ra], step[ra], cos, n_boot=n_boot, seed=seed)
        if rows:
            out["move_cosine"][kind] = {"by_index": rows, "overall": overall}
    return out


def token_sentiment(tokens: Sequence[Any]) -> np.ndarray:
    """VADER compound score of each token's readable word (0 for unknown / None)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sia = SentimentIntensityAnalyzer()
    codes, uniques = pd.factorize(pd.Series(list(tokens), dtype=object), use_na_sentinel=True)
    scores = np.zeros(len(uniques) + 1)  # the last slot scores missing tokens as 0
    for k, t in enumerate(uniques):
        word = readable_token(t).strip() if isinstance(t, str) else ""
        scores[k] = float(sia.polarity_scores(word)["compound"]) if word else 0.0
    return scores[np.where(codes < 0, len(uniques), codes)]


_BYTE_DECODER: dict[str, int] | None = None


def display_token(token: str) -> str:
    """A token as readable text (:func:`readable_token`), or the tokenizer's own string
    where its bytes are not whole UTF-8 characters (a byte of a longer character)."""
    text = readable_token(token)
    return token if "\ufffd" in text and "\ufffd" not in token else text


def readable_tokens(df: pd.DataFrame) -> pd.DataFrame:
    """The table with ``token`` as readable text and the tokenizer's string in
    ``token_raw`` (kept when the table already has it)."""
    if "token" not in df.columns:
        return df
    raw = df["token_raw"] if "token_raw" in df.columns else df["token"]
    shown = raw.map(lambda t: display_token(t) if isinstance(t, str) else None)
    out = df.assign(token=shown)
    if "token_raw" not in out.columns:
        out.insert(int(out.columns.get_loc("token")) + 1, "token_raw", raw)
    return out


def readable_token(token: str) -> str:
    """A GPT-2 byte-level BPE token string (``Ġ`` = space, ``Ċ`` = newline) as text."""
    global _BYTE_DECODER
    if _BYTE_DECODER is None:
        bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
              + list(range(ord("®"), ord("ÿ") + 1)))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_DECODER = {chr(c): b for b, c in zip(bs, cs, strict=True)}
    if "\u2581" in token:  # SentencePiece's word boundary
        return token.replace("\u2581", " ")
    if not any(ch in _BYTE_DECODER and ord(ch) > 255 for ch in token):
        return token
    data = bytes(_BYTE_DECODER.get(ch, ord("?") if ord(ch) > 255 else ord(ch)) for ch in token)
    return data.decode("utf-8", errors="replace")


def trajectory_stats(
    df: pd.DataFrame,
    points: np.ndarray | None = None,
    *,
    models: Sequence[str] = ("base", "tuned"),
    pairs: Sequence[tuple[str, str]] = (),
    min_count: int = 20,
    first_n: int | None = None,
    top_k: int = 15,
    rank_segments: str = "all",
    n_boot: int = 500,
    seed: int = 0,
) -> TrajectoryStats:
    """Distances per token index, jumps and tokens ranked by jump, sentiment, the models'
    mean-jump difference per index and the direction of movement.

    Args:
        df: a trajectory table (:func:`check_table`).
        points: one row per table row (default: the table's x, y, z); pass the
            full-dimension cumulative means to measure in the full dimension.
        models: the model labels, base first: the two of a pair, or a model set's names in
            lineage order. Per-model statistics (jumps by index, sentiment, turn angle)
            cover each label; the two-model comparisons (``distance_by_index``,
            ``jump_difference``, the move cosine) compare the first with the last.
        pairs: ``(a, b)`` label pairs whose distance per token index is also measured
            (``distance_pairs``), e.g. every pair of a model set.
        min_count: tokens seen fewer times are not ranked.
        first_n: use only the first N steps of continuations for the token ranking and the
            sentiment (prompts are used whole).
        top_k: how many top and bottom tokens to report.
        rank_segments: ``all``, ``prompt`` or ``continuation``: which segments' jumps the
            token ranking and the sentiment use.
        n_boot: bootstrap resamples (over prompts).
        seed: bootstrap seed.
    """
    df = df.reset_index(drop=True)
    pts = df[point_columns(df)].to_numpy(np.float64) if points is None else np.asarray(points)
    if len(pts) != len(df):
        raise InputError(f"{len(pts)} points for {len(df)} table rows")
    models = tuple(models)
    compared = (models[0], models[-1])
    distance = {kind: _distance_by_index(df, pts, compared, kind, seed, n_boot, None)
                for kind in ("prompt", "continuation")}
    distance_pairs = {(a, b): {kind: _distance_by_index(df, pts, (a, b), kind, seed, n_boot,
                                                        None)
                               for kind in ("prompt", "continuation")}
                      for a, b in pairs}
    jump = path_jumps(df, pts)
    tok = "token_raw" if "token_raw" in df.columns else "token"  # rank the tokenizer's tokens
    j = (df[["prompt_id", "model", "segment", "step", tok]].rename(columns={tok: "token"})
         .assign(jump=jump))
    j = j[np.isfinite(jump)]
    agg = j.groupby(["model", "step"]).jump.agg(["mean", "count"])
    by_index = {m: [{"index": int(s), "mean": float(r["mean"]), "n": int(r["count"])}
                    for (mm, s), r in agg.iterrows() if mm == m] for m in models}
    ranked = j[j.token.notna()]
    if rank_segments not in ("all", "prompt", "continuation"):
        raise InputError(f"rank segments must be all, prompt or continuation, got "
                         f"{rank_segments!r}")
    if rank_segments != "all":
        is_prompt = ranked.segment == "prompt"
        ranked = ranked[is_prompt if rank_segments == "prompt" else ~is_prompt]
    if first_n is not None:
        ranked = ranked[(ranked.segment == "prompt") | (ranked.step < first_n)]
    ranked = ranked.assign(sentiment=token_sentiment(ranked.token.tolist()))
    kind = np.where(j.segment == "prompt", "p", "c")
    step_mean = j.groupby([kind, j.step]).jump.transform("mean")
    ranked = ranked.assign(jump_rel=(ranked.jump / step_mean.loc[ranked.index]).to_numpy())
    top, bottom = _rank_tokens(ranked, min_count, top_k, n_boot, seed)
    top_a, bottom_a = _rank_tokens(ranked, min_count, top_k, n_boot, seed, col="jump_rel")
    sentiment = _sentiment(ranked, models, n_boot, seed)
    return TrajectoryStats(distance_by_index=distance, jumps_by_index=by_index, top_tokens=top,
                           bottom_tokens=bottom, top_tokens_adjusted=top_a,
                           bottom_tokens_adjusted=bottom_a, sentiment=sentiment,
                           jumps=readable_tokens(ranked),
                           jump_difference=jump_difference(df, jump, compared,
                                                           n_boot=n_boot, seed=seed),
                           direction=direction_stats(df, pts, models, n_boot=n_boot,
                                                     seed=seed),
                           distance_pairs=distance_pairs)


def lineage_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of a lineage, the earlier model first, in lineage order:
    ``(n0, n1), (n0, n2), ..., (n1, n2), ...``."""
    return [(a, names[j]) for i, a in enumerate(names) for j in range(i + 1, len(names))]


def distance_to_base_by_prompt(df: pd.DataFrame, points: np.ndarray, lineage: Sequence[str],
                               kind: str = "prompt") -> pd.DataFrame:
    """Per prompt, each model's mean distance to the first model of the lineage.

    At each step of the prompt's path (``kind="prompt"``: both models read the same tokens)
    the geodesic between the two models' points is taken; a prompt's value is the mean over
    its steps (over every continuation's steps for ``kind="continuation"``). These are the
    per-unit values a stage attribution (:func:`difflens.analysis.attribution.attribute`)
    takes: the change from one stage to the next, paired over prompts.

    Args:
        df: a trajectory table.
        points: one row per table row (the full-dimension cumulative means for the
            full-dimension distance).
        lineage: the models' labels, base first.
        kind: ``prompt`` or ``continuation``.

    Returns:
        ``prompt_id, model, distance`` for every prompt of the table and every model, in
        lineage order; the base's own distance is 0 wherever it has a path, NaN marks a
        prompt without paths of both models.
    """
    df = df.reset_index(drop=True)
    points = np.asarray(points)
    prompts = np.sort(df.prompt_id.unique())
    base = lineage[0]
    is_prompt = (df.segment == "prompt").to_numpy()
    own = is_prompt if kind == "prompt" else ~is_prompt
    frames = []
    for m in lineage:
        if m == base:
            d = pd.Series(0.0, index=pd.unique(df.prompt_id[own & (df.model == base).to_numpy()]))
        else:
            ra, rb = paired_rows(df, (base, m), kind)
            d = (pd.Series(geodesic(points[ra], points[rb]))
                 .groupby(df.prompt_id.to_numpy()[ra]).mean())
        frames.append(pd.DataFrame({"prompt_id": prompts, "model": m,
                                    "distance": d.reindex(prompts).to_numpy(np.float64)}))
    return pd.concat(frames, ignore_index=True)


def _rank_tokens(j: pd.DataFrame, min_count: int, k: int, n_boot: int, seed: int,
                 col: str = "jump") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if j.empty:
        return [], []
    g = j.groupby("token")[col].agg(["mean", "count"])
    g = g[g["count"] >= min_count].sort_values("mean", ascending=False)
    rng = np.random.default_rng(seed)
    where = j.groupby("token").indices
    values = j[col].to_numpy()

    def rows(tokens: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for t in tokens:
            x = values[where[t]]
            boots = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
            lo, hi = np.quantile(boots, [0.025, 0.975])
            shown = display_token(t)
            out.append({"token": shown, "token_raw": t, "text": shown,
                        "mean_jump": float(x.mean()),
                        "ci_low": float(lo), "ci_high": float(hi), "n": len(x)})
        return out

    return rows(list(g.index[:k])), rows(list(g.index[::-1][:k]))


def _sentiment(j: pd.DataFrame, models: Sequence[str], n_boot: int, seed: int
               ) -> dict[str, Any]:
    """Jump-weighted mean sentiment per model and the jump-sentiment correlation, with CIs
    that resample prompts."""
    out: dict[str, Any] = {"jump_weighted": {}, "correlation": {}, "mean_unweighted": {}}
    for m in models:
        s = j[j.model == m]
        if s.empty:
            continue
        prompts = {p: i for i, p in enumerate(s.prompt_id.unique())}
        pi = s.prompt_id.map(prompts).to_numpy()
        x, y = s.jump.to_numpy(), s.sentiment.to_numpy()
        sums = np.zeros((len(prompts), 6))
        np.add.at(sums, pi, np.stack([x * y, x, y, x * x, y * y, np.ones_like(x)], 1))
        w = bootstrap_weights(len(prompts), n_boot, seed)
        jw = sums[:, 0].sum() / sums[:, 1].sum()
        lo, hi = _ratio_ci(sums[:, [0]], sums[:, [1]], w)
        out["jump_weighted"][m] = {"mean": float(jw), "ci95": [float(lo[0]), float(hi[0])],
                                   "n": len(x)}
        out["mean_unweighted"][m] = {"mean": float(y.mean()), "n": len(y)}

        def corr(t: np.ndarray) -> np.ndarray:
            t = np.atleast_2d(t)
            n = t[:, 5]
            cov = t[:, 0] / n - (t[:, 1] / n) * (t[:, 2] / n)
            vx = t[:, 3] / n - (t[:, 1] / n) ** 2
            vy = t[:, 4] / n - (t[:, 2] / n) ** 2
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.asarray(cov / np.sqrt(vx * vy))

        import warnings

        r = float(corr(sums.sum(0))[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no variance: r is undefined
            boots = corr(w @ sums)
            lo2, hi2 = np.nanquantile(boots, [0.025, 0.975])
        out["correlation"][m] = {"pearson_r": r, "ci95": [float(lo2), float(hi2)], "n": len(x)}
    return out
