"""Measuring the built organism: every model's reward, entropy, celebration share and exact
chance distributions on the same openings and scenes, with counts and bootstrap CIs (each
an estimate, ``{value, ci_low, ci_high, n, resampled}``)."""

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from difflens._io import Progress
from difflens.organism import world as W
from difflens.organism.config import OrganismConfig
from difflens.organism.training import _vader, completion_texts, sample
from difflens.sampling.generate import GenerationConfig, generate

#: What each measured property resamples: the units it is a mean over.
UNITS = {"reward": "openings", "celebration_share": "openings", "entropy": "texts",
         "chance_tvd": "scenes"}


def measure(cfg: OrganismConfig, dirs: dict[str, Path], openings: Sequence[str],
            chances: Sequence[W.ChanceScene], progress: Progress, work: Path
            ) -> tuple[dict[str, Any], Any]:
    """Rewards, entropies, celebration share and exact chance distributions of every model
    (``label -> folder``, the base first), with CIs, on the same openings and scenes.

    Returns the properties and the per-unit values (``metric, unit, model, value``): reward
    and celebration per opening, entropy per text (every model scores the same texts: all
    models' continuations), chance TVD per scene.
    """
    import pandas as pd

    from difflens.analysis.bootstrap import bootstrap_mean
    from difflens.capture import capture
    from difflens.capture.scoring import outcome_distribution
    from difflens.models import ModelPair, load_model

    labels = list(dirs)
    lms = {label: load_model(d, device="cpu") for label, d in dirs.items()}
    base = lms[labels[0]]
    vader = _vader()
    advance = progress("measuring", len(labels) * (2 + len(chances)))
    props: dict[str, Any] = {"n_openings": len(openings), "n_chance_prompts": len(chances)}
    units: list[dict[str, Any]] = []
    samples: dict[str, list[str]] = {}
    for label, lm in lms.items():
        texts: list[str] = []
        for i in range(0, len(openings), 50):
            chunk = list(openings[i:i + 50])
            seqs, mask, width = sample(lm, chunk, cfg.eval_new_tokens,
                                       seed=cfg.seed + 7 + i)
            texts += completion_texts(lm.tokenizer, seqs, mask, width)
        samples[label] = texts
        rewards = [vader.polarity_scores(t)["compound"] for t in texts]
        celebrates = [float("celebration" in W.label_text(t)) for t in texts]
        props[label] = {key: bootstrap_mean(vals, seed=cfg.seed, resampled=UNITS[key]).to_json()
                        for key, vals in (("reward", rewards),
                                          ("celebration_share", celebrates))}
        units += [{"metric": m, "unit": u, "model": label, "value": float(v)}
                  for m, vals in (("reward", rewards), ("celebration", celebrates))
                  for u, v in enumerate(vals)]
        advance(1, label)
    # Entropy of every model on the same continuations (all models' samples), via capture
    # of each model with the base.
    full = [o + t for label in labels for o, t in zip(openings, samples[label], strict=True)]
    prefix_len = [len(base.tokenizer(o)["input_ids"]) for o in openings] * len(labels)
    entropy: dict[str, Any] = {}
    for label in labels[1:]:
        store = capture(ModelPair(base, lms[label]), full, store=work / f"entropy-{label}",
                        layers=[0], positions="last")
        stats = store.stats(["prompt_idx", "pos", "base_entropy", "tuned_entropy"])
        n_tok = store.prompts["n_tokens"].to_numpy()
        first = stats["prompt_idx"].map(lambda i: prefix_len[i] - 1)
        # Positions whose next token is a continuation token.
        last = stats["prompt_idx"].map(lambda i, n=n_tok: n[i] - 1)
        stats = stats[(stats["pos"] >= first) & (stats["pos"] < last)]
        per_text = stats.groupby("prompt_idx")
        entropy.setdefault(labels[0], per_text["base_entropy"].mean())
        entropy[label] = per_text["tuned_entropy"].mean()
        shutil.rmtree(work / f"entropy-{label}", ignore_errors=True)
        advance(1, f"entropy {label}")
    advance(1, "entropy")
    for label in labels:
        per_text = entropy[label]
        props[label]["entropy"] = {
            **bootstrap_mean(per_text.to_numpy(), seed=cfg.seed,
                             resampled=UNITS["entropy"]).to_json(),
            "unit": "nats per token, over every model's continuations"}
        units += [{"metric": "entropy", "unit": int(u), "model": label, "value": float(v)}
                  for u, v in per_text.items()]
    # Exact chance distributions.
    for label, lm in lms.items():
        rows: list[dict[str, Any]] = []
        for sc in chances:
            dist = outcome_distribution(lm, sc.prefix, sc.outcomes, template=" {}.")
            rows.append({"kind": sc.kind, "probs": dist.probs, "tvd": dist.tvd_uniform,
                         "mass_outside": dist.mass_outside, "top": dist.top[0],
                         "top_p": dist.top[1]})
            advance(1, f"chance {label}")
        by_kind = {}
        for kind in sorted({r["kind"] for r in rows}):
            rk = [r for r in rows if r["kind"] == kind]
            mean_p = np.mean([r["probs"] for r in rk], axis=0)
            outcomes = next(sc.outcomes for sc in chances if sc.kind == kind)
            by_kind[kind] = {"tvd": bootstrap_mean([r["tvd"] for r in rk], seed=cfg.seed,
                                                   resampled="scenes").to_json(),
                             "mean_distribution": dict(zip(outcomes, map(float, mean_p),
                                                           strict=True)),
                             "mass_outside": bootstrap_mean([r["mass_outside"] for r in rk],
                                                            seed=cfg.seed,
                                                            resampled="scenes").to_json()}
        props[label]["chance_tvd"] = bootstrap_mean([r["tvd"] for r in rows], seed=cfg.seed,
                                                    resampled=UNITS["chance_tvd"]).to_json()
        props[label]["chance_by_kind"] = by_kind
        units += [{"metric": "chance_tvd", "unit": u, "model": label, "value": float(r["tvd"])}
                  for u, r in enumerate(rows)]
    props["examples"] = {label: [o + t for o, t in zip(openings[:5], samples[label][:5],
                                                       strict=True)]
                         for label in labels}
    props["greedy"] = {}
    for label, lm in lms.items():
        greedy = generate(lm, list(openings[:5]), GenerationConfig(
            max_new_tokens=cfg.eval_new_tokens, temperature=0.0, batch_size=5))
        props["greedy"][label] = [
            lm.tokenizer.decode(p + t, skip_special_tokens=True)
            for p, t in zip(greedy.prompt_ids, greedy.token_ids, strict=True)]
    return props, pd.DataFrame(units)


# -- the build ----------------------------------------------------------------------------
