"""Themes: segment sampled continuations, embed the segments, cluster them, label the clusters,
and turn every continuation into a chain of themes.

- ``segment`` splits a continuation into sentences (default) or fixed token windows;
- ``fit_themes`` embeds segments with a sentence embedder (a callable; the pipelines make
  one of all-MiniLM-L6-v2, offline, with ``difflens.models.encoders.embedder``) and
  clusters them: k-means with k chosen by silhouette within a range, or
  HDBSCAN, whose outliers stay outliers (theme ``-1``, reported, never hidden);
- every theme is labelled with its c-TF-IDF keywords and its three most central segments;
  an optional OpenAI-compatible chat endpoint can name it (off by default);
- a ``ThemeModel`` (encoder name, centroids, labels) is saved as safetensors + JSON and
  assigns themes to new text (nearest centroid by cosine; for HDBSCAN, an outlier when the
  similarity is below the cluster's own 5th percentile);
- ``chains`` merges consecutive repeats (optional) and ``chain_distributions`` gives
  each prompt's empirical distribution over first themes, chains of length <= m, and
  transition counts.
"""

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from difflens._io import write_bytes_atomic, write_json_atomic
from difflens._types import Embedder
from difflens.analysis.bootstrap import Estimate, bootstrap_statistic, quantile
from difflens.analysis.embeddings import embed
from difflens.errors import InputError

THEME_FORMAT = "difflens-themes-1"
OUTLIER = -1
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def segment(text: str, *, mode: str = "sentences", window: int = 16,
            tokenizer: Any = None, min_chars: int = 3) -> list[str]:
    """Segments of one continuation: ``sentences`` (split after ``.!?`` and at newlines) or
    ``tokens`` (windows of ``window`` tokens of ``tokenizer``). Segments shorter than
    ``min_chars`` characters are dropped."""
    if mode == "sentences":
        parts = [p.strip() for p in _SENT.split(text)]
    elif mode == "tokens":
        if tokenizer is None:
            raise InputError("token-window segments need the model's tokenizer")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        parts = [tokenizer.decode(ids[i:i + window]).strip() for i in range(0, len(ids), window)]
    else:
        raise InputError(f"segment mode must be 'sentences' or 'tokens', got {mode!r}")
    return [p for p in parts if len(p) >= min_chars]


def _ctfidf(docs_by_theme: dict[int, list[str]], top: int) -> dict[int, list[str]]:
    """Class-based TF-IDF keywords (BERTopic's weighting: tf * log(1 + A / f_t))."""
    from sklearn.feature_extraction.text import CountVectorizer

    themes = sorted(docs_by_theme)
    joined = [" ".join(docs_by_theme[t]) for t in themes]
    if not any(j.strip() for j in joined):
        return {t: [] for t in themes}
    try:
        vec = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[A-Za-z][A-Za-z]+\b")
        tf = vec.fit_transform(joined).toarray().astype(np.float64)
    except ValueError:  # only stop words
        vec = CountVectorizer(token_pattern=r"(?u)\b\w+\b")
        tf = vec.fit_transform(joined).toarray().astype(np.float64)
    words = vec.get_feature_names_out()
    tf = tf / np.maximum(tf.sum(1, keepdims=True), 1)
    avg = tf.sum(1).mean() if len(tf) else 1.0
    f = tf.sum(0)
    w = tf * np.log(1 + avg / np.maximum(f, 1e-12))
    return {t: [str(words[j]) for j in np.argsort(-w[i])[:top] if w[i, j] > 0]
            for i, t in enumerate(themes)}


@dataclasses.dataclass(frozen=True)
class ThemeModel:
    """Fitted themes: assign new text with ``assign``; save with ``save``."""

    encoder: str
    centroids: Float[np.ndarray, "k dim"]
    """Unit-norm centroid of each theme."""
    keywords: list[list[str]]
    examples: list[list[str]]
    """The three most central segments of each theme."""
    names: list[str]
    """A short name per theme: the labeller's, else the top keywords."""
    method: str
    min_similarity: list[float]
    """HDBSCAN: a segment less similar than this to its nearest centroid is an outlier."""
    sizes: list[int]
    silhouette: dict[str, float] = dataclasses.field(default_factory=dict)
    """k-means: silhouette per k tried."""

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def assign_embeddings(self, emb: Float[np.ndarray, "n dim"]) -> Int[np.ndarray, " n"]:
        """Nearest centroid by cosine (vectorised); HDBSCAN outliers are ``-1``."""
        if len(emb) == 0:
            return np.zeros(0, dtype=np.int64)
        sims = emb @ self.centroids.T
        best = sims.argmax(1)
        if self.method == "hdbscan":
            floor = np.asarray(self.min_similarity)[best]
            best = np.where(sims[np.arange(len(best)), best] >= floor, best, OUTLIER)
        return best.astype(np.int64)

    def assign(self, texts: Sequence[str], *, encoder: Embedder) -> Int[np.ndarray, " n"]:
        """Theme of each text, embedded by ``encoder`` (an embedder of the encoder named in
        ``encoder``, e.g. ``difflens.models.encoders.embedder(model.encoder)``)."""
        return self.assign_embeddings(embed(list(texts), encoder))

    def save(self, path: str | Path) -> None:
        """``path`` (safetensors: centroids; metadata inside) and ``path`` with ``.json``."""
        import torch
        from safetensors.torch import save

        path = Path(path)
        meta = {"format": THEME_FORMAT, "encoder": self.encoder, "keywords": self.keywords,
                "examples": self.examples, "names": self.names, "method": self.method,
                "min_similarity": self.min_similarity, "sizes": self.sizes,
                "silhouette": self.silhouette}
        data = save({"centroids": torch.tensor(self.centroids, dtype=torch.float32)},
                    metadata={"difflens": json.dumps(meta)})
        write_bytes_atomic(path, data)
        write_json_atomic(path.with_suffix(".json"), meta)


def load_theme_model(path: str | Path) -> ThemeModel:
    """A fitted theme model saved by ``ThemeModel.save`` (``themes.safetensors`` plus its
    ``.json``), or the one inside a ``difflens themes`` output folder.

    Args:
        path: the ``.safetensors`` file, or a folder that holds ``themes.safetensors``.

    Raises:
        InputError: when the file is missing or is not a difflens theme model.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "themes.safetensors"
    if not path.is_file():
        raise InputError(f"theme model {path} does not exist; fit one with difflens themes fit")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("difflens", "{}"))
            cent = f.get_tensor("centroids")
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a difflens theme model ({exc})") from None
    if meta.get("format") != THEME_FORMAT:
        raise InputError(f"{path}: not a difflens theme model (format {meta.get('format')!r})")
    return ThemeModel(encoder=meta["encoder"], centroids=np.asarray(cent, dtype=np.float32),
                      keywords=meta["keywords"], examples=meta["examples"],
                      names=meta["names"], method=meta["method"],
                      min_similarity=meta["min_similarity"], sizes=meta["sizes"],
                      silhouette=meta.get("silhouette", {}))


@dataclasses.dataclass(frozen=True)
class ThemeFit:
    model: ThemeModel
    labels: Int[np.ndarray, " n"]
    """Theme of each fitted segment (``-1``: HDBSCAN outlier)."""
    embeddings: Float[np.ndarray, "n dim"]


def cluster(emb: Float[np.ndarray, "n dim"], *, method: str = "kmeans",
            k_range: tuple[int, int] = (4, 16), seed: int = 0, min_cluster_size: int = 15,
            silhouette_sample: int = 5000) -> tuple[np.ndarray, dict[str, float]]:
    """Cluster labels (and the silhouette per k for k-means)."""
    from sklearn.cluster import HDBSCAN, KMeans
    from sklearn.metrics import silhouette_score

    n = len(emb)
    if method == "kmeans":
        lo, hi = k_range
        if lo < 2 or hi < lo:
            raise InputError(f"k range must satisfy 2 <= k_min <= k_max, got {k_range}")
        hi = min(hi, n - 1)
        if hi < lo:
            raise InputError(f"{n} segments are too few for k >= {lo} themes; sample more")
        scores, fits = {}, {}
        for k in range(lo, hi + 1):
            km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(emb)
            fits[k] = km.labels_
            scores[str(k)] = float(silhouette_score(
                emb, km.labels_, sample_size=min(silhouette_sample, n), random_state=seed))
        best = max(scores, key=lambda kk: scores[kk])
        return fits[int(best)], scores
    if method == "hdbscan":
        labels = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit(emb).labels_
        if labels.max() < 0:
            raise InputError(f"HDBSCAN found no cluster among {n} segments (all outliers); "
                             f"lower --min-cluster-size or use k-means")
        return labels, {}
    raise InputError(f"clustering method must be 'kmeans' or 'hdbscan', got {method!r}")


def fit_themes(segments: Sequence[str], *, encoder: Embedder | None = None,
               encoder_name: str = "callable", method: str = "kmeans",
               k_range: tuple[int, int] = (4, 16), seed: int = 0,
               min_cluster_size: int = 15, n_keywords: int = 6,
               labeller: Callable[[list[str], list[str]], str] | None = None,
               embeddings: np.ndarray | None = None) -> ThemeFit:
    """Embed ``segments``, cluster them into themes and label every theme.

    ``encoder`` embeds the segments unless their ``embeddings`` are given; ``encoder_name``
    is the name the ``ThemeModel`` records for it."""
    if not segments:
        raise InputError("no segments to fit themes on (are all continuations empty?)")
    if embeddings is not None:
        emb = embeddings
    elif encoder is not None:
        emb = embed(list(segments), encoder)
    else:
        raise InputError("fit_themes needs an encoder (an embedder callable) or embeddings")
    labels, sil = cluster(emb, method=method, k_range=k_range, seed=seed,
                          min_cluster_size=min_cluster_size)
    ids = sorted(int(t) for t in set(labels.tolist()) if t != OUTLIER)
    remap = {t: i for i, t in enumerate(ids)}
    labels = np.asarray([remap.get(int(t), OUTLIER) for t in labels], dtype=np.int64)
    cents, examples, floors, sizes = [], [], [], []
    for t in range(len(ids)):
        members = np.flatnonzero(labels == t)
        c = emb[members].mean(0)
        c = c / max(float(np.linalg.norm(c)), 1e-12)
        sims = emb[members] @ c
        cents.append(c)
        examples.append([segments[members[j]] for j in np.argsort(-sims)[:3]])
        floors.append(float(quantile(sims, 0.05)))
        sizes.append(int(len(members)))
    kw = _ctfidf({t: [segments[int(i)] for i in np.flatnonzero(labels == t)]
                  for t in range(len(ids))}, n_keywords)
    keywords = [kw[t] for t in range(len(ids))]
    names = [labeller(keywords[t], examples[t]) if labeller is not None
             else " ".join(keywords[t][:3]) or f"theme {t}" for t in range(len(ids))]
    model = ThemeModel(encoder=encoder_name,
                       centroids=np.asarray(cents, dtype=np.float32), keywords=keywords,
                       examples=examples, names=names, method=method, min_similarity=floors,
                       sizes=sizes, silhouette=sil)
    return ThemeFit(model=model, labels=labels, embeddings=emb)


def chat_labeller(url: str, model: str, *, timeout: float = 30.0,
                  api_key: str | None = None) -> Callable[[list[str], list[str]], str]:
    """A labeller that asks an OpenAI-compatible ``/chat/completions`` endpoint (e.g. a local
    server) for a 2-4 word theme name. Off unless you pass one."""
    import urllib.request

    def name(keywords: list[str], examples: list[str]) -> str:
        prompt = ("Name the common theme of these text segments in 2 to 4 words. Keywords: "
                  + ", ".join(keywords) + ". Examples:\n- " + "\n- ".join(examples)
                  + "\nAnswer with the name only.")
        body = json.dumps({"model": model, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        req = urllib.request.Request(url.rstrip("/") + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {api_key}"}
                                                 if api_key else {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                reply = json.loads(resp.read())
            return str(reply["choices"][0]["message"]["content"]).strip().strip('"')[:60]
        except (OSError, KeyError, IndexError, ValueError) as exc:
            raise InputError(f"the theme labeller at {url} failed ({exc}); check --labeller-url "
                             f"or drop it") from None

    return name


# -- chains -------------------------------------------------------------------------------


def to_chain(themes: Sequence[int], *, merge_repeats: bool = True) -> tuple[int, ...]:
    """A continuation's chain of themes, consecutive repeats merged (when asked)."""
    out: list[int] = []
    for t in themes:
        if merge_repeats and out and out[-1] == t:
            continue
        out.append(int(t))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class ChainDistributions:
    """Per prompt: empirical distributions of first themes and short chains, and transitions."""

    first: Float[np.ndarray, "prompts k"]
    """P(first theme) per prompt (rows sum to 1 over prompts with a non-empty chain)."""
    chains: list[Counter[tuple[int, ...]]]
    """Counts of chains cut at length ``m`` per prompt."""
    transitions: Float[np.ndarray, "k+1 k+1"]
    """Counts: row ``k`` is the start, column ``k`` is the end."""
    n_samples: Int[np.ndarray, " prompts"]
    """Continuations per prompt with a non-empty chain."""
    m: int


def chain_distributions(chains_by_prompt: Sequence[Sequence[tuple[int, ...]]], k: int, *,
                        m: int = 3) -> ChainDistributions:
    """Empirical distributions of each prompt's chains (outliers, ``-1``, are dropped)."""
    n = len(chains_by_prompt)
    first = np.zeros((n, k))
    trans = np.zeros((k + 1, k + 1))
    counters: list[Counter[tuple[int, ...]]] = []
    n_samples = np.zeros(n, dtype=np.int64)
    for i, chs in enumerate(chains_by_prompt):
        cnt: Counter[tuple[int, ...]] = Counter()
        for ch in chs:
            ch = tuple(t for t in ch if t != OUTLIER)
            if not ch:
                continue
            first[i, ch[0]] += 1
            cnt[ch[:m]] += 1
            n_samples[i] += 1
            prev = k
            for t in ch:
                trans[prev, t] += 1
                prev = t
            trans[prev, k] += 1
        counters.append(cnt)
    with np.errstate(invalid="ignore"):
        first = first / np.maximum(first.sum(1, keepdims=True), 1)
    return ChainDistributions(first=first, chains=counters, transitions=trans,
                              n_samples=n_samples, m=m)


# -- consistency across resamples -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ThemeConsistency:
    """How alike two theme fits (on independent samples of the same prompts) cut the same
    segments."""

    ari: float
    """Adjusted Rand index between the two fits' assignments of the common segments."""
    ci_low: float
    ci_high: float
    n_segments: int
    n_prompts: int
    contingency: Int[np.ndarray, "k_a k_b"]
    """Segments per (theme of fit A, theme of fit B); HDBSCAN outliers are left out."""

    @property
    def estimate(self) -> Estimate:
        """The ARI with its CI, over the segments (``n``), resampling prompts."""
        return Estimate(value=self.ari, ci_low=self.ci_low, ci_high=self.ci_high,
                        n=self.n_segments, resampled="prompts")


def resample_consistency(fit_a: ThemeModel, fit_b: ThemeModel, emb: Float[np.ndarray, "n dim"],
                         prompt: Int[np.ndarray, " m"], *, n_boot: int = 1000, seed: int = 0
                         ) -> ThemeConsistency:
    """ARI between two fits' themes of the same segments, with a percentile bootstrap CI
    over prompts (all segments of a drawn prompt come together).

    Args:
        fit_a: the theme model fitted on the first sample set.
        fit_b: the one fitted, the same way, on an independent second set.
        emb: embeddings of the common set (both sample sets' segments).
        prompt: the prompt each segment came from (one per row of ``emb``).
        n_boot: bootstrap resamples of the prompts.
        seed: the bootstrap's seed.
    """
    from sklearn.metrics import adjusted_rand_score

    if len(emb) != len(prompt) or len(emb) < 2:
        raise InputError(f"need one prompt index per segment and at least 2 segments, got "
                         f"{len(emb)} embeddings and {len(prompt)} prompt indices")
    la, lb = fit_a.assign_embeddings(emb), fit_b.assign_embeddings(emb)
    est = bootstrap_statistic(lambda pick: float(adjusted_rand_score(la[pick], lb[pick])),
                              len(emb), n_boot=n_boot, seed=seed, resampled="prompts",
                              groups=prompt)
    table = np.zeros((fit_a.k, fit_b.k), dtype=np.int64)
    keep = (la != OUTLIER) & (lb != OUTLIER)
    np.add.at(table, (la[keep], lb[keep]), 1)
    return ThemeConsistency(ari=est.value, ci_low=est.ci_low, ci_high=est.ci_high,
                            n_segments=int(len(emb)), n_prompts=int(len(np.unique(prompt))),
                            contingency=table)
