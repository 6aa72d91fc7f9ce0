"""Paths on the sphere: cumulative-mean paths, the geodesic between points, and the
projection of the points onto a sphere with how faithful it is.

For a text ``w_1..w_T`` with token vectors ``v_i`` (a layer's residual stream), the path is
``Y_t = mean_{i<=t} v_i / |v_i|``. Paths of every model are projected together onto a sphere
(``SphereProjection``); ``faithfulness`` says how well the sphere's geodesics keep
the order of the full-dimension angles.
"""

from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from difflens.analysis.bootstrap import Estimate, percentile_ci, resamples
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
    point pairs, with a bootstrap CI over the pairs: ``{value, ci_low, ci_high, n,
    resampled: "point pairs"}`` (``n``: the pairs of distinct points)."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    n = len(full)
    i, j = rng.integers(0, n, n_pairs), rng.integers(0, n, n_pairs)
    keep = i != j
    a = geodesic(full[i[keep]], full[j[keep]])
    b = geodesic(sphere[i[keep]], sphere[j[keep]])
    rho = float(spearmanr(a, b).statistic)
    boots = [spearmanr(a[k], b[k]).statistic for k in resamples(len(a), 100, rng)]
    lo, hi = percentile_ci(boots)
    return Estimate(value=rho, ci_low=float(lo), ci_high=float(hi), n=int(keep.sum()),
                    resampled="point pairs").to_json()
