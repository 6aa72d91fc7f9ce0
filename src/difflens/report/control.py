"""Outputs of ``difflens control train-probe`` and ``difflens control evaluate``: the probe's
per-layer figure, the controllability curve, the score traces, and the pages' intros and
headlines. Data in (per-layer rows, the cells and generations tables, summaries), figures
out."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.bootstrap import bootstrap_weights, percentile_ci, replicate_ratios
from difflens.analysis.roc import roc_curve
from difflens.report.figures import CustomFigure, Figure, Series

CONTROLLER_COLORS = {"none": "#555555", "open_loop": "#4c72b0", "proportional": "#dd8452",
                     "rollback": "#55a868"}


def probe_figure(layers: Sequence[dict[str, Any]], chosen: int) -> Figure:
    """Held-out AUC per layer; with MLP columns (``kind="mlp"``), the MLP's test AUC too."""
    xs = [r["layer"] for r in layers]
    series = [Series("test, tokens", [r["auc_test"] for r in layers],
                     [r["auc_test_ci_low"] for r in layers],
                     [r["auc_test_ci_high"] for r in layers]),
              Series("test, segment means", [r["auc_test_segment"] for r in layers]),
              Series("validation, tokens", [r["auc_val"] for r in layers])]
    caption = ("Token AUC: every labelled token scored on its own state; segment AUC: the "
               "mean score of each labelled segment. 95% CI over held-out groups.")
    if layers and "mlp_auc_test" in layers[0]:
        series.append(Series("MLP test, tokens", [r["mlp_auc_test"] for r in layers],
                             [r["mlp_auc_test_ci_low"] for r in layers],
                             [r["mlp_auc_test_ci_high"] for r in layers]))
        caption += (" The first three curves are the logistic probe's; the last is the MLP "
                    "probe's token AUC on the same test tokens (the layer is chosen by its "
                    "validation AUC).")
    return Figure(
        name="probe_auc_by_layer", title=f"State probe: held-out AUC per layer (chosen: {chosen})",
        kind="line", x=xs, series=series, xlabel="layer", ylabel="ROC AUC", hline=0.5,
        caption=caption)


def probe_intro(model_name: str, probe: dict[str, Any], source: str) -> str:
    """The probe page's intro; ``probe`` is the summary's ``probe`` block."""
    what = "MLP" if probe.get("kind") == "mlp" else "Logistic-regression"
    text = (f"{what} state probe on {model_name}, trained on "
            f"{probe['n_examples']} examples ({source or 'labelled text'}).")
    m = probe.get("mlp_auc")
    if m:
        text += (f" At layer {m['layer']} the MLP's held-out token AUC is {m['value']:.3f} "
                 f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}], the logistic probe's "
                 f"{m['logistic']['value']:.3f} [{m['logistic']['ci_low']:.3f}, "
                 f"{m['logistic']['ci_high']:.3f}] (n={m['n_test_groups']} test groups).")
    return text


def probe_headline(probe: dict[str, Any]) -> dict[str, Any]:
    """The probe page's headline; ``probe`` is the summary's ``probe`` block."""
    a = probe["auc"]
    out = {"layer": probe["layer"], "held-out token AUC": a["value"],
           "AUC 95% CI": [a["ci_low"], a["ci_high"]], "segment AUC": probe["auc_segment"],
           "threshold": probe["threshold"]}
    m = probe.get("mlp_auc")
    if m:
        out["logistic AUC (same layer)"] = m["logistic"]["value"]
    return out


def _label(kind: str, gain: float) -> str:
    return "unsteered" if kind == "none" else f"{kind} g={gain:g}"


#: A figure's ratio axis turns logarithmic when its ratios span more than this factor.
LOG_AXIS_SPAN = 10.0


def wide_ratio_span(ratios: Any, span: float = LOG_AXIS_SPAN) -> bool:
    """Whether positive ``ratios`` span more than ``span`` times (max / min), so that a
    linear axis would crowd all but the largest into one corner: use a log axis."""
    x = np.asarray(ratios, dtype=np.float64)
    x = x[np.isfinite(x) & (x > 0)]
    return len(x) > 1 and float(x.max() / x.min()) > span


def controllability_figure(cells: pd.DataFrame, independent_name: str) -> CustomFigure:
    """Bad rate (probe, and the independent measure) against the fluency cost, per controller."""
    kinds = [k for k in CONTROLLER_COLORS if k in set(cells["controller"])]
    base = cells[cells["controller"] == "none"]

    def curve(kind: str) -> pd.DataFrame:
        df = cells[cells["controller"] == kind]
        return pd.concat([base, df]).sort_values("gain") if kind != "none" else df

    measures = [("bad_rate", "probe", "solid")]
    if independent_name:
        measures.append(("bad_rate_independent", independent_name, "dot"))
    log_x = wide_ratio_span(cells["ppl_ratio"])
    xlabel = "perplexity ratio (under the unsteered model; log scale)" if log_x else (
        "perplexity ratio (under the unsteered model)")

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        for kind in kinds:
            df = curve(kind)
            for col, what, dash in measures:
                err = None
                if f"{col}_ci_low" in df:
                    err = {"type": "data", "symmetric": False,
                           "array": (df[f"{col}_ci_high"] - df[col]).clip(lower=0).tolist(),
                           "arrayminus": (df[col] - df[f"{col}_ci_low"]).clip(lower=0).tolist()}
                fig.add_scatter(x=df["ppl_ratio"], y=df[col], error_y=err,
                                mode="lines+markers+text" if dash == "solid" else "lines+markers",
                                text=[f"{g:g}" for g in df["gain"]], textposition="top right",
                                name=f"{kind} ({what})",
                                line={"color": CONTROLLER_COLORS[kind], "dash": dash})
        fig.update_layout(title="Controllability: bad rate against fluency cost",
                          xaxis_title=xlabel,
                          yaxis_title="fraction of generations entering the bad region",
                          template="plotly_white", height=480)
        if log_x:
            fig.update_xaxes(type="log")
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.8))
        for kind in kinds:
            df = curve(kind)
            for col, what, dash in measures:
                yerr = None
                if f"{col}_ci_low" in df:
                    yerr = [np.clip(df[col] - df[f"{col}_ci_low"], 0, None),
                            np.clip(df[f"{col}_ci_high"] - df[col], 0, None)]
                ax.errorbar(df["ppl_ratio"], df[col], yerr=yerr, marker="o", capsize=3,
                            ls="-" if dash == "solid" else ":", color=CONTROLLER_COLORS[kind],
                            label=f"{kind} ({what})")
                if dash == "solid":
                    for x, y, g in zip(df["ppl_ratio"], df[col], df["gain"], strict=True):
                        ax.annotate(f"{g:g}", (x, y), fontsize=7, xytext=(3, 3),
                                    textcoords="offset points")
        ax.set(title="Controllability: bad rate against fluency cost", xlabel=xlabel,
               ylabel="fraction entering the bad region")
        if log_x:
            ax.set_xscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    return CustomFigure("controllability", "Controllability curve", draw_plotly, draw_matplotlib,
                        caption="Each point is one gain (labelled); solid: judged by the probe "
                                "on the unsteered model's reading of the text; dotted: judged "
                                f"independently ({independent_name or 'none'}). 95% CIs over "
                                "prompts." + (" The x axis is logarithmic: the perplexity "
                                              "ratios span more than "
                                              f"{LOG_AXIS_SPAN:g}×." if log_x else ""))


def trace_figure(gens: pd.DataFrame, threshold: float, picks: Sequence[tuple[str, float]],
                 max_tokens: int, *, n_boot: int = 1000, seed: int = 0) -> Figure:
    """Mean probe score per generated token (the monitor's measurement), steered vs not,
    with a bootstrap CI per token over prompts (a prompt's samples together)."""
    xs = list(range(max_tokens))
    series = []
    for kind, gain in picks:
        df = gens[(gens["controller"] == kind) & (gens["gain"] == gain)]
        prompt, prompts = pd.factorize(df["prompt_idx"])
        sums = np.zeros((len(prompts), max_tokens))  # per prompt and position
        counts = np.zeros_like(sums)
        for p, sc in zip(prompt, df["scores"], strict=True):
            sc = np.asarray(list(sc)[:max_tokens], dtype=np.float64)
            ok = np.isfinite(sc)
            sums[p, :len(sc)] += np.where(ok, sc, 0.0)
            counts[p, :len(sc)] += ok
        # positions past every generation's end have no score: NaN there
        with np.errstate(all="ignore"):
            mean = sums.sum(0) / counts.sum(0)
        lo, hi = percentile_ci(replicate_ratios(bootstrap_weights(len(prompts), n_boot, seed),
                                                sums, counts), omit_nan=True)
        series.append(Series(_label(kind, gain), mean.tolist(), lo.tolist(), hi.tolist()))
    return Figure(name="score_traces", title="Probe score per generated token",
                  kind="line", x=xs, series=series, xlabel="generated token",
                  ylabel="probe score (measured during generation)", hline=threshold,
                  caption="Mean over generations with a bootstrap 95% CI over prompts; dashed: "
                          "threshold. Scores are measured before the controller acts at that "
                          "position.")


def example_trace_figure(gens: pd.DataFrame, threshold: float,
                         picks: Sequence[tuple[str, float]]) -> Figure:
    """One prompt's first sample under each controller: the score trace token by token."""
    # the prompt where the unsteered generation reaches the highest sentence score
    base = gens[(gens["controller"] == "none") & (gens["sample"] == 0)]
    pi = int(base.sort_values("region", ascending=False)["prompt_idx"].iloc[0])
    series, width = [], 0
    for kind, gain in picks:
        row = gens[(gens["controller"] == kind) & (gens["gain"] == gain)
                   & (gens["prompt_idx"] == pi) & (gens["sample"] == 0)].iloc[0]
        series.append((_label(kind, gain), list(row["scores"])))
        width = max(width, len(row["scores"]))
    return Figure(name="score_trace_example", title=f"Score trace of prompt {pi}, sample 0",
                  kind="line", x=list(range(width)),
                  series=[Series(label, sc + [float("nan")] * (width - len(sc)))
                          for label, sc in series],
                  xlabel="generated token", ylabel="probe score", hline=threshold,
                  caption="The same prompt and random stream under each controller.")


def control_intro(summary: dict[str, Any]) -> str:
    c = summary.get("controllers", {})
    parts = []
    p = summary.get("probe")
    if p:
        parts.append(f"State probe at layer {p['layer']}: held-out token AUC "
                     f"{p['auc']['value']:.3f}, "
                     f"segment AUC {p['auc_segment']:.3f}, threshold {p['threshold']:.3f}.")
    base = c.get("none", {}).get("0")
    if base:
        b = base["bad_rate"]
        parts.append(f"Unsteered: bad rate {b['value']:.3f} [{b['ci_low']:.3f}"
                     f", {b['ci_high']:.3f}] by the probe, "
                     f"{base['bad_rate_independent']['value']:.3f} by "
                     f"{summary.get('independent', 'the independent measure')} "
                     f"(n={base['n']}).")
    for kind, by_gain in c.items():
        if kind == "none":
            continue
        for g, r in by_gain.items():
            b = r["bad_rate"]
            parts.append(f"{kind} g={g}: {b['value']:.3f} [{b['ci_low']:.3f}, "
                         f"{b['ci_high']:.3f}] / independent "
                         f"{r['bad_rate_independent']['value']:.3f}, ppl "
                         f"×{r['ppl_ratio']['value']:.2f}, KL {r['kl']['value']:.3f}, speed "
                         f"×{r['speed_ratio']:.2f}.")
    sj = summary.get("self_judge")
    if sj:
        a, p = sj["auc"], sj["probe_auc"]
        parts.append(f"Self-judge ({sj['question'].strip()!r}): AUC {a['value']:.3f} "
                     f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}] against the independent judge, "
                     f"probe {p['value']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}] on the "
                     f"same {a['n']} sentences.")
    return " ".join(parts)


def trace_picks(cells: pd.DataFrame) -> list[tuple[str, float]]:
    """The unsteered run and, per controller, its middle gain."""
    out: list[tuple[str, float]] = [("none", 0.0)]
    for kind in ("open_loop", "proportional", "rollback"):
        gains = sorted(cells[cells["controller"] == kind]["gain"])
        if gains:
            out.append((kind, float(gains[len(gains) // 2])))
    return out


def control_headline(summary: dict[str, Any], independent_name: str) -> dict[str, Any]:
    """The control page's headline."""
    base = summary["controllers"]["none"]["0"]
    return {"probe layer": summary["probe"]["layer"],
            "probe AUC": summary["probe"]["auc"]["value"],
            "unsteered bad rate": base["bad_rate"]["value"],
            f"unsteered bad rate ({independent_name or 'independent'})":
                base["bad_rate_independent"]["value"]}


def self_judge_figure(rows: pd.DataFrame, independent_name: str, *, n_boot: int = 1000,
                      seed: int = 0) -> CustomFigure:
    """ROC curves of the self-judge and of the probe against the independent label, on the
    same sentences, each AUC with its bootstrap CI over prompts (``difflens.analysis.roc``,
    the draws of the self-judge summary with the same seed)."""
    y = rows["independent"].to_numpy(dtype=int)
    groups = rows["prompt_idx"].to_numpy()
    curves = []
    for col, label, color in (("self_judge", "self-judge", "#c44e52"),
                              ("probe", "probe (sentence mean)", "#4c72b0")):
        roc = roc_curve(y, rows[col].to_numpy(dtype=np.float64), groups, n_boot=n_boot,
                        seed=seed)
        a = roc.auc
        curves.append((f"{label}, AUC {a.value:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}]",
                       roc.fpr, roc.tpr, color))
    title = f"Self-judge and probe against the {independent_name or 'independent judge'}"

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash",
                                                                 "color": "#888"},
                        name="chance")
        for label, fpr, tpr, color in curves:
            fig.add_scatter(x=fpr, y=tpr, mode="lines", name=label, line={"color": color})
        fig.update_layout(title=title, xaxis_title="false positive rate",
                          yaxis_title="true positive rate", template="plotly_white",
                          height=460)
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4.8))
        ax.plot([0, 1], [0, 1], ls="--", color="#888", label="chance")
        for label, fpr, tpr, color in curves:
            ax.plot(fpr, tpr, color=color, label=label)
        ax.set(title=title, xlabel="false positive rate", ylabel="true positive rate")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        return fig

    return CustomFigure("self_judge_roc", "Self-judge ROC", draw_plotly, draw_matplotlib,
                        caption=f"Every complete sentence of the unsteered generations (n="
                                f"{len(rows)}, {int(y.sum())} bad by the "
                                f"{independent_name or 'independent judge'}): the model's "
                                f"own P(bad answer) after the judge question, and the probe's "
                                f"mean score over the sentence; AUC 95% CIs over prompts.")
