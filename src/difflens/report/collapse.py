"""``difflens collapse``: mode collapse and attractors, one step or all, into one folder.

Steps: ``divergence`` (per-token KL and entropy along text), ``probes`` (exact answer
distributions), ``temperature`` (is the tuned model the base at a lower temperature?),
``tree`` (probability trees), ``attractors`` (perturb and regenerate) and ``diversity``
(K samples per prompt). Every step merges its keys into ``OUT/summary.json`` (keeping the
other steps' keys), writes its tables to ``OUT/data`` (Parquet + CSV) and its figures to
``OUT/figures`` (HTML + PNG); ``OUT/index.html`` shows every step run so far.
"""

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from difflens.analysis.attractors import attractor_test
from difflens.analysis.diversity import diversity
from difflens.analysis.embeddings import DEFAULT_ENCODER
from difflens.analysis.probes import (
    DEFAULT_TEMPERATURES,
    ProbeResults,
    load_probes,
    run_probes,
    temperature_sweep,
)
from difflens.analysis.textdiv import read_corpus, sample_corpus, text_divergence
from difflens.capture.engine import _models_of, _pad
from difflens.capture.paths import cut_at_eos
from difflens.capture.store import check_writable, write_json_atomic, write_parquet_atomic
from difflens.errors import InputError
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair
from difflens.report.figures import COLORS, AnyFigure, CustomFigure, Figure, Series, write_index
from difflens.report.tables import write_table
from difflens.sampling.tree import ProbabilityTree, TreeNode, probability_tree

STEPS = ("divergence", "probes", "temperature", "tree", "attractors", "diversity")


@dataclasses.dataclass(frozen=True)
class CollapseConfig:
    """Settings of every step (each step reads the ones it needs)."""

    prompts: tuple[str, ...] = ()
    """Prompts for divergence, attractors and diversity."""
    corpus: str | None = None
    """A JSONL corpus (prompt, continuation) for divergence instead of sampling."""
    sources: tuple[str, ...] = ()
    """Models whose samples form the divergence corpus (default: every model)."""
    max_new_tokens: int = 40
    probes: str | None = None
    """Probe JSONL (default: the built-in probes)."""
    probe_names: tuple[str, ...] = ()
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    tree_prompt: str = ""
    tree_depth: int = 4
    tree_top_k: int = 5
    tree_min_prob: float = 1e-3
    positions: tuple[float, ...] = (0.2, 0.4, 0.6)
    insert: str = " Suddenly,"
    k_samples: int = 16
    reference: tuple[str, ...] | None = None
    """Reference texts for the Fréchet distance (None: a second draw of the first model)."""
    reference_name: str = ""
    encoder: str = DEFAULT_ENCODER
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class CollapseRun:
    summary: dict[str, Any]
    figures: list[AnyFigure]


def _label_order(models: Sequence[str]) -> list[str]:
    return sorted(models, key=lambda m: {"base": 0, "tuned": 1}.get(m, 2))


def intro_html(summary: dict[str, Any]) -> str:
    """A short reading guide for the index page and the demo section."""
    parts = ["Mode collapse, measured exactly where possible: answer distributions come from "
             "chained logits, not samples; every mean has a 95% bootstrap CI."]
    t = summary.get("temperature")
    if t:
        parts.append(f"Best-matching temperature for the tuned model: T={t['best_T']:.3g}; "
                     f"TVD from the base there {t['residual_tvd']:.3f} "
                     f"[{t['residual_tvd_ci95'][0]:.3f}, {t['residual_tvd_ci95'][1]:.3f}] vs "
                     f"{t['tvd_at_1']:.3f} at T=1 (n={t['n']} phrasings).")
    for m, a in summary.get("attractors", {}).items():
        parts.append(f"Attractor strength {m}: {a['strength']:.3f} [{a['ci_low']:.3f}, "
                     f"{a['ci_high']:.3f}] (chance {a['chance']:.3f}).")
    return " ".join(parts)


def run_collapse(target: LoadedModel | ModelPair, out: Path, *, steps: Sequence[str] = STEPS,
                 config: CollapseConfig = CollapseConfig(), progress: bool = False,
                 index: bool = True) -> CollapseRun:
    """Run ``steps`` into ``out`` and return the merged summary and this run's figures."""
    from difflens.organism.build import rich_progress

    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise InputError(f"unknown step(s) {unknown}; choose among {', '.join(STEPS)}")
    if "temperature" in steps and not isinstance(target, ModelPair):
        raise InputError("the temperature sweep compares a tuned model with its base; give "
                         "--tuned as well")
    needs_prompts = {"divergence", "attractors", "diversity"} & set(steps)
    if needs_prompts - ({"divergence"} if config.corpus else set()) and not config.prompts:
        raise InputError(f"step(s) {sorted(needs_prompts)} need prompts; pass --prompts FILE")
    if any(not p.strip() for p in config.prompts):
        raise InputError("a prompt is empty; every prompt needs text")
    if "tree" in steps and not config.tree_prompt.strip():
        raise InputError("the tree step needs a prompt (--tree-prompt)")
    probes = (load_probes(config.probes, names=config.probe_names or None)
              if {"probes", "temperature"} & set(steps) else [])
    check_writable(out)
    data, figdir = out / "data", out / "figures"
    summary_path = out / "summary.json"
    summary: dict[str, Any] = (json.loads(summary_path.read_text())
                               if summary_path.is_file() else {})
    models = _models_of(target)
    summary["models"] = {k: m.identity.name for k, m in models.items()}
    figures: list[AnyFigure] = []
    with rich_progress(progress) as rich_bar:
        def bar(desc: str, total: int) -> Callable[[int], None]:
            step = rich_bar(desc, total)
            return lambda n: step(n, "")

        if "divergence" in steps:
            advance = bar("divergence", 1)
            corpus = (read_corpus(config.corpus) if config.corpus else sample_corpus(
                target, config.prompts, sources=config.sources or None,
                max_new_tokens=config.max_new_tokens, seed=config.seed))
            # One store per corpus, so a rerun with other prompts does not meet a finished
            # store of different texts (and the same corpus resumes or reuses its store).
            digest = hashlib.sha256(json.dumps([corpus.prompts, corpus.continuations]
                                               ).encode()).hexdigest()[:12]
            div = text_divergence(target, corpus, store=out / "capture" / digest,
                                  progress=False)
            write_table(div.tokens, data, "divergence_tokens")
            curve = div.by_position(seed=config.seed)
            write_table(curve, data, "divergence_by_position")
            summary["divergence"] = div.summary(seed=config.seed)
            figures += _divergence_figures(curve, list(models))
            advance(1)
        results: ProbeResults | None = None
        if "probes" in steps or "temperature" in steps:
            advance = bar("probes", len(probes) * len(models))
            temps = config.temperatures if "temperature" in steps else (1.0,)
            results = run_probes(target, probes, temperatures=temps, progress=advance)
        if "probes" in steps and results is not None:
            write_table(results.phrasings, data, "probes")
            write_table(results.answers, data, "probe_answers")
            summary["probes"] = results.summary(seed=config.seed)
            figures += _probe_figures(results, summary["probes"])
        if "temperature" in steps and results is not None:
            sweep = temperature_sweep(results, seed=config.seed)
            write_table(sweep.table, data, "temperature")
            summary["temperature"] = sweep.summary()
            figures += _temperature_figures(sweep.table, sweep.best_T)
        if "tree" in steps:
            advance = bar("trees", len(models))
            trees = {}
            for label, lm in models.items():
                trees[label] = probability_tree(lm, config.tree_prompt, depth=config.tree_depth,
                                                top_k=config.tree_top_k,
                                                min_prob=config.tree_min_prob)
                write_json_atomic(data / f"tree_{label}.json", trees[label].to_dict())
                advance(1)
            write_table(_tree_table(trees), data, "tree_nodes")
            summary["tree"] = {label: _tree_summary(t) for label, t in trees.items()}
            figures.append(_tree_figure(trees))
        if "attractors" in steps:
            advance = bar("attractors", len(models))
            att = attractor_test(target, list(config.prompts),
                                 max_new_tokens=config.max_new_tokens,
                                 positions=config.positions, insert=config.insert,
                                 encoder=config.encoder, progress=advance)
            write_table(att.table, data, "attractors")
            write_table(att.originals, data, "attractor_originals")
            summary["attractors"] = att.summary(seed=config.seed)
            figures += _attractor_figures(summary["attractors"])
        if "diversity" in steps:
            advance = bar("diversity: sampling", len(models) * len(config.prompts))
            samples = {label: _samples(lm, label, config, data, advance)
                       for label, lm in models.items()}
            reference, ref_name = config.reference, config.reference_name
            if reference is None:
                first = next(iter(models))
                again = dataclasses.replace(config, seed=config.seed + 10_000)
                reference = tuple(t for ts in _samples(models[first], first + "-reference",
                                                       again, data, None) for t in ts)
                ref_name = (f"a second, independent draw of {first}'s samples (its distance "
                            f"is the noise floor)")
            advance = bar("diversity: scoring", len(models) * len(config.prompts))
            div_res = diversity(samples, reference=reference, reference_name=ref_name,
                                encoder=config.encoder, seed=config.seed, progress=advance)
            write_table(div_res.per_prompt, data, "diversity")
            summary["diversity"] = div_res.summary(seed=config.seed)
            summary["diversity_encoder"] = div_res.encoder
            figures += _diversity_figures(summary["diversity"])
    for fig in figures:
        fig.save(figdir)
    summary["config"] = {**summary.get("config", {}), **{
        k: v for k, v in dataclasses.asdict(config).items() if k not in ("prompts", "reference")
    }, "n_prompts": len(config.prompts)}
    write_json_atomic(summary_path, summary)
    if index:
        write_index(out / "index.html", "difflens collapse", intro_html(summary), figures,
                    _headline(summary))
    return CollapseRun(summary=summary, figures=figures)


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = {}
    d = summary.get("divergence", {})
    if "kl_tuned_base_mean" in d:
        h["KL(tuned‖base) per token"] = {"mean": d["kl_tuned_base_mean"],
                                          "ci95": d["kl_tuned_base_ci95"], "n": d["n_texts"]}
    for name, by_model in summary.get("probes", {}).items():
        for m, r in by_model.items():
            h[f"probe {name}, {m}: top answer"] = (
                f"{r['top_answer']} (p={r['top_prob']:.3f}); entropy {r['entropy_bits']:.2f} of "
                f"{r['max_entropy_bits']:.2f} bits; outside mass {r['outside_mass']:.3f}")
    for m, a in summary.get("attractors", {}).items():
        h[f"attractor strength, {m}"] = {"mean": a["strength"], "ci95": [a["ci_low"],
                                                                         a["ci_high"]],
                                         "n": a["n"]}
    for m, r in summary.get("diversity", {}).items():
        h[f"diversity, {m}"] = (f"distinct-2 {r['distinct_2']:.3f}, self-BLEU "
                                f"{r['self_bleu']:.3f}, Vendi {r['vendi']:.2f}, Fréchet "
                                f"{r.get('frechet', float('nan')):.4f}")
    return h


def _samples(lm: LoadedModel, label: str, config: CollapseConfig, data: Path,
             advance: Any) -> list[list[str]]:
    """K samples per prompt (one batched generate per prompt, seed + prompt index), cached
    in ``data/samples_<label>.parquet`` under a key of the model, prompts and settings."""
    key = hashlib.sha256(json.dumps([lm.identity.weights_sha256, list(config.prompts),
                                     config.k_samples, config.max_new_tokens, config.seed]
                                    ).encode()).hexdigest()
    path = data / f"samples_{label}.parquet"
    if path.is_file():
        df = pd.read_parquet(path)
        if len(df) and df["key"].iloc[0] == key:
            if advance is not None:
                advance(len(config.prompts))
            return [g.text.tolist() for _, g in df.groupby("prompt_id", sort=True)]
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for p, prompt in enumerate(config.prompts):
        ids = tok(prompt)["input_ids"]
        x, mask, _ = _pad([ids] * config.k_samples, "left", lm.device)
        torch.manual_seed(config.seed + p)
        with torch.inference_mode():
            gen = lm.model.generate(x, attention_mask=mask, do_sample=True, temperature=1.0,
                                    top_k=0, top_p=1.0, max_new_tokens=config.max_new_tokens,
                                    pad_token_id=pad)
        for i, row in enumerate(gen[:, len(ids):].tolist()):
            row = cut_at_eos(row, tok.eos_token_id)
            rows.append({"prompt_id": p, "sample": i,
                         "text": tok.decode(row, skip_special_tokens=True), "key": key})
        if advance is not None:
            advance(1)
    df = pd.DataFrame(rows)
    write_parquet_atomic(path, df)
    df.drop(columns=["key"]).to_csv(path.with_suffix(".csv"), index=False)
    return [g.text.tolist() for _, g in df.groupby("prompt_id", sort=True)]


# -- figures -------------------------------------------------------------------------------


def _divergence_figures(curve: pd.DataFrame, models: list[str]) -> list[AnyFigure]:
    figs: list[AnyFigure] = []
    x = curve.t.tolist()
    if "kl_tuned_base" in curve:
        figs.append(Figure(
            "divergence_kl", "KL between the models along the continuation", "line", x,
            [Series(lbl, curve[c].tolist(), curve[c + "_lo"].tolist(), curve[c + "_hi"].tolist())
             for lbl, c in (("KL(tuned‖base)", "kl_tuned_base"),
                            ("KL(base‖tuned)", "kl_base_tuned"))],
            xlabel="continuation token index", ylabel="nats",
            caption="mean over texts at each index, 95% bootstrap band"))
    figs.append(Figure(
        "divergence_entropy", "Next-token entropy along the continuation", "line", x,
        [Series(m, curve[f"{m}_entropy"].tolist(), curve[f"{m}_entropy_lo"].tolist(),
                curve[f"{m}_entropy_hi"].tolist()) for m in _label_order(models)],
        xlabel="continuation token index", ylabel="nats"))
    return figs


def _probe_figures(results: ProbeResults, summary: dict[str, Any]) -> list[AnyFigure]:
    figs: list[AnyFigure] = []
    models = _label_order(list(dict.fromkeys(results.phrasings.model)))
    names = list(summary)
    figs.append(Figure(
        "probes_tvd", "Distance from uniform of each probe's answers", "bar", names,
        [Series(m, [summary[n][m]["tvd_uniform"] for n in names],
                [summary[n][m]["tvd_uniform_ci95"][0] for n in names],
                [summary[n][m]["tvd_uniform_ci95"][1] for n in names]) for m in models],
        ylabel="TVD from uniform", caption="mean over phrasings; 95% bootstrap CI over "
        "phrasings; 0 = a fair draw"))
    for name in names:
        a = results.answers[results.answers.probe == name]
        answers = list(dict.fromkeys(a.answer))
        mean = a.groupby(["model", "answer"])["p"].mean()
        figs.append(Figure(
            f"probe_{name}", f"Exact answer distribution: {name} (mean over phrasings)", "bar",
            answers, [Series(m, [float(mean[(m, x)]) for x in answers]) for m in models],
            xlabel="answer", ylabel="probability", hline=1 / len(answers),
            caption="chained token probabilities, renormalised over the answers; dashed: "
            "uniform"))
    return figs


def _temperature_figures(table: pd.DataFrame, best_t: float) -> list[AnyFigure]:
    g = table.groupby("T")
    t = g.size().index.tolist()
    ent, base = g.entropy_bits.mean(), g.base_entropy.mean()
    return [
        Figure("temperature_entropy", "Tuned entropy vs temperature (base at T=1 dashed)",
               "line", t, [Series("tuned", ent.tolist())], xlabel="temperature of the tuned "
               "model", ylabel="entropy (bits, mean over phrasings)",
               hline=float(base.iloc[0]), caption=f"best match T={best_t:.3g}"),
        Figure("temperature_tvd", "What temperature cannot explain: TVD(tuned at T, base)",
               "line", t, [Series("tuned", g.tvd_base.mean().tolist()),
                           Series("uniform", g.tvd_uniform.mean().tolist())],
               xlabel="temperature of the tuned model", ylabel="TVD (mean over phrasings)",
               caption="'tuned': distance from the base's answers; 'uniform': from a fair "
               "draw"),
    ]


def _tree_summary(tree: ProbabilityTree) -> dict[str, Any]:
    leaves = tree.leaves()
    path, prob = max(leaves, key=lambda x: x[1])
    node, texts = tree.root, []
    for t in path:
        node = next(c for c in node.children if c.token_id == t)
        texts.append(node.text)
    mass = float(sum(p for _, p in leaves))
    probs = np.array([p for _, p in leaves]) / mass
    return {"n_nodes": tree.n_nodes, "n_leaves": len(leaves), "top_path": "".join(texts),
            "top_path_prob": float(prob), "covered_mass": mass,
            "leaf_entropy_bits": float(-(probs * np.log2(probs)).sum()),
            "n_forward_tokens": tree.n_forward_tokens}


def _flat(tree: ProbabilityTree) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def walk(node: TreeNode, nid: str, parent: str, path: str) -> float:
        row = {"id": nid, "parent": parent, "depth": node.depth, "token": node.text,
               "path": path, "prob": node.prob, "seq_prob": node.seq_prob}
        rows.append(row)
        below = sum(walk(c, f"{nid}/{i}", nid, path + c.text)
                    for i, c in enumerate(node.children))
        # A block is at least as tall as its children (float sums can exceed by 1e-16).
        value = float(max(node.seq_prob, below))
        row["value"] = value
        return value

    walk(tree.root, "root", "", "")
    rows[0]["token"] = "prompt"
    return rows


def _tree_table(trees: dict[str, ProbabilityTree]) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, **r} for m, t in trees.items() for r in _flat(t)])


def _tree_figure(trees: dict[str, ProbabilityTree]) -> CustomFigure:
    labels = _label_order(list(trees))
    flats = {m: _flat(trees[m]) for m in labels}

    def draw_plotly() -> Any:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels,
                            specs=[[{"type": "domain"}] * len(labels)])
        for k, m in enumerate(labels):
            r = flats[m]
            fig.add_trace(go.Icicle(
                ids=[x["id"] for x in r], parents=[x["parent"] for x in r],
                labels=[x["token"] for x in r], values=[x["value"] for x in r],
                branchvalues="total", tiling={"orientation": "h"},
                customdata=[[x["path"], x["prob"]] for x in r],
                hovertemplate="%{customdata[0]}<br>P(sequence)=%{value:.4f}<br>"
                              "P(token|parent)=%{customdata[1]:.3f}<extra></extra>"),
                row=1, col=k + 1)
        prompt = next(iter(trees.values())).prompt
        fig.update_layout(title=f"Probability tree of «{prompt[-60:]}» (block height = "
                          "sequence probability)", height=560, margin={"t": 80})
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(labels), figsize=(6 * len(labels), 6), squeeze=False)
        for ax, m in zip(axes[0], labels, strict=True):
            depth = trees[m].depth

            def draw(node: TreeNode, y0: float, m: str = m, ax: Any = ax) -> None:
                y = y0
                for c in node.children:
                    h = c.seq_prob
                    ax.add_patch(plt.Rectangle((c.depth - 1, y), 0.95, h,
                                               color=COLORS.get(m, "#4c72b0"),
                                               alpha=0.35 + 0.5 * c.prob, lw=0))
                    if h > 0.03:
                        ax.text(c.depth - 0.95, y + h / 2, f"{c.text.strip()[:12]} "
                                f"{c.seq_prob:.2f}", va="center", fontsize=7)
                    draw(c, y)
                    y += h

            draw(trees[m].root, 0.0)
            ax.set(xlim=(0, depth), ylim=(1, 0), title=m, xlabel="depth (tokens)",
                   ylabel="cumulative sequence probability")
        fig.suptitle("Probability tree (block height = sequence probability)")
        fig.tight_layout()
        return fig

    return CustomFigure("tree", "Probability trees, base vs tuned", draw_plotly,
                        draw_matplotlib, caption="each block is a token; its height is the "
                        "probability of the whole path; white space is pruned mass")


def _attractor_figures(summary: dict[str, Any]) -> list[AnyFigure]:
    models = _label_order(list(summary))
    return [Figure(
        "attractor_strength", "Attractor strength: do perturbed completions return?", "bar",
        ["strength (1 - edit distance)", "exact ending", "ending cosine"],
        [Series(m, [summary[m]["strength"], summary[m]["exact_rate"], summary[m]["cosine"]],
                [summary[m]["ci_low"], summary[m]["exact_rate_ci95"][0],
                 summary[m]["cosine_ci95"][0]],
                [summary[m]["ci_high"], summary[m]["exact_rate_ci95"][1],
                 summary[m]["cosine_ci95"][1]]) for m in models],
        ylabel="similarity of the new ending to the original",
        caption="95% bootstrap CI over prompts; chance (endings of different prompts): "
        + ", ".join(f"{m} {summary[m]['chance']:.3f}" for m in models))]


def _diversity_figures(summary: dict[str, Any]) -> list[AnyFigure]:
    models = _label_order(list(summary))
    keys = ["distinct_1", "distinct_2", "self_bleu", "pairwise_distance"]

    def ci(m: str, k: str, i: int) -> float:
        return float(summary[m].get(f"{k}_ci95", [summary[m][k]] * 2)[i])  # type: ignore[arg-type]

    figs: list[AnyFigure] = [Figure(
        "diversity", "Diversity of K samples per prompt", "bar", keys,
        [Series(m, [summary[m][k] for k in keys], [ci(m, k, 0) for k in keys],
                [ci(m, k, 1) for k in keys]) for m in models],
        caption="means over prompts, 95% bootstrap CI over prompts; self-BLEU: higher = "
        "less diverse")]
    figs.append(Figure(
        "diversity_vendi", "Vendi score (effective number of distinct samples)", "bar",
        ["vendi"], [Series(m, [summary[m]["vendi"]], [ci(m, "vendi", 0)], [ci(m, "vendi", 1)])
                    for m in models]))
    if all("frechet" in summary[m] for m in models):
        figs.append(Figure(
            "diversity_frechet", "Fréchet distance of sample embeddings to the reference",
            "bar", ["frechet"], [Series(m, [summary[m]["frechet"]],
                                        [summary[m]["frechet_ci95"][0]],
                                        [summary[m]["frechet_ci95"][1]]) for m in models],
            caption=str(summary[models[0]].get("frechet_reference", ""))))
    return figs
