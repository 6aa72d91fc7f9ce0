"""The ``evaluate`` step of ``difflens themes`` on the organism: discovered themes against
the story world's ground truth."""

from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.bootstrap import bootstrap_mean
from difflens.analysis.theme_predict import kl_rows
from difflens.analysis.themes import OUTLIER, ChainDistributions, ThemeModel, to_chain
from difflens.organism.truth import true_first_distribution
from difflens.pipelines.theme_config import ThemesConfig


def organism_validation(segs: pd.DataFrame, model: ThemeModel,
                        dists: dict[str, ChainDistributions],
                        chains_by: dict[str, list[list[tuple[int, ...]]]],
                        config: ThemesConfig, predictions: pd.DataFrame | None
                        ) -> dict[str, Any]:
    """Discovered themes against the world's truth: ARI of segment themes vs the world's
    sentence labels (pooled over the models, and each model's own: ``ari_by_model``), the
    learned vs true transition matrix (mean row TVD, weighted by
    visits), each predictor's KL to the *true* next-theme distribution of its test prompts
    (carried into the discovered themes through P(discovered | true) measured on the
    segments; next to the KL to the empirical distribution in ``predictors``), and the base
    vs tuned celebration share."""
    from sklearn.metrics import adjusted_rand_score

    from difflens.organism import world as W

    assert config.truth is not None
    true = np.array([W.label_sentence(t) for t in segs["text"]])
    known = (true != "unknown") & (segs["theme"].to_numpy() != OUTLIER)
    disc = segs["theme"].to_numpy()
    ari = float(adjusted_rand_score(true[known], disc[known]))
    mapping = {}
    for t in range(model.k):
        lab = pd.Series(true[(disc == t) & known]).value_counts()
        mapping[t] = str(lab.index[0]) if len(lab) else "unknown"
    themes = list(W.THEMES)
    first_label = next(iter(chains_by))
    # learned transitions between true themes, through the discovered themes
    counts = np.zeros((len(themes), len(themes)))
    for per in chains_by[first_label]:
        for ch in per:
            mapped = to_chain([themes.index(mapping[t]) for t in ch
                               if t != OUTLIER and mapping[t] in themes])
            for a, b in zip(mapped[:-1], mapped[1:], strict=False):
                counts[a, b] += 1
    truth_T = np.array([[W.TRANSITIONS.get(a, {}).get(b, 0.0) for b in themes] for a in themes])
    truth_T = truth_T / np.maximum(truth_T.sum(1, keepdims=True), 1e-12)
    rows = counts.sum(1) > 0
    learned = counts[rows] / counts[rows].sum(1, keepdims=True)
    tvd_rows = 0.5 * np.abs(learned - truth_T[rows]).sum(1)
    # no transition between two labelled themes (tiny runs): the distance is undefined
    tm_distance = (float(np.average(tvd_rows, weights=counts[rows].sum(1))) if rows.any()
                   else float("nan"))
    # The pooled ARI depends on which models' sentences are pooled: a collapsed model's one
    # repeated sentence is an easy block under any clustering (issue 27: base+rl 0.63,
    # base+sft+rl 0.48 on the same organism). Each model's own ARI does not.
    models = segs["model"].to_numpy()
    ari_by_model = {
        str(label): float(adjusted_rand_score(true[known & (models == label)],
                                              disc[known & (models == label)]))
        for label in dict.fromkeys(models) if (known & (models == label)).sum() > 1}
    out: dict[str, Any] = {
        "ari": ari, "ari_by_model": ari_by_model,
        "n_segments_labelled": int(known.sum()), "mapping": mapping,
        "transition_tvd": tm_distance, "transition_rows": int(rows.sum())}
    if predictions is not None and len(predictions):
        # P(discovered theme | true theme), from the segments the world can label
        conf = np.zeros((len(themes), model.k))
        for tt, dd in zip(true[known], disc[known], strict=True):
            if tt in themes:
                conf[themes.index(tt), dd] += 1
        conf = (conf + 1e-3) / (conf + 1e-3).sum(1, keepdims=True)
        truth = np.array([true_first_distribution(config.truth[int(i)]) @ conf
                          for i in predictions["prompt_idx"]])
        kl_true: dict[str, Any] = {}
        for name in ("probe", "transformer", "marginal", "sentence_embedding"):
            q = np.array(predictions[name].tolist())
            kl_true[name] = bootstrap_mean(kl_rows(truth, q), seed=config.seed,
                                           resampled="prompts").to_json()
        out["kl_true"] = kl_true
    # base vs tuned: share of celebration sentences (world labeller) per model
    shift = {}
    for label in dists:
        lab = true[segs["model"].to_numpy() == label]
        shift[label] = bootstrap_mean((lab == "celebration").astype(float), seed=config.seed,
                                      resampled="segments").to_json()
        shift[label]["discovered"] = float(np.mean([mapping.get(int(t)) == "celebration"
                                                    for t in disc[segs["model"] == label]]))
    out["celebration_share"] = shift
    return out
