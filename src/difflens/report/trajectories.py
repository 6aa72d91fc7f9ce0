"""Outputs of ``difflens trajectories``: summary, tables, figures and the HTML page."""

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import write_json_atomic
from difflens.analysis.trajectories import TrajectoryStats, readable_token
from difflens.report.figures import COLORS, AnyFigure, CustomFigure, Figure, Series, write_index
from difflens.report.tables import write_table

SEGMENT_STYLE = {"prompt": "solid", "continuation": "dot"}


def summarize(sphere: TrajectoryStats, full: TrajectoryStats | None, *, n_prompts: int,
              layer: int | None, faithfulness: dict[str, Any] | None,
              extra: dict[str, Any]) -> dict[str, Any]:
    """The summary, with the issue's keys; full-dimension statistics under ``full``."""
    def block(st: TrajectoryStats) -> dict[str, Any]:
        return {
            "prompt": {"distance_by_index": st.distance_by_index["prompt"]},
            "continuation": {"distance_by_index": st.distance_by_index["continuation"]},
            "jumps": {"top_tokens": st.top_tokens, "bottom_tokens": st.bottom_tokens,
                      "top_tokens_position_adjusted": st.top_tokens_adjusted,
                      "bottom_tokens_position_adjusted": st.bottom_tokens_adjusted,
                      "by_index": st.jumps_by_index},
            "sentiment": st.sentiment,
        }

    out: dict[str, Any] = {"n_prompts": n_prompts, "layer": layer,
                           "projection": {"faithfulness_spearman": faithfulness}}
    out |= block(sphere)
    if full is not None:
        out["full"] = block(full)
    out |= extra
    return out


def write_outputs(out: Path, table: pd.DataFrame, sphere: TrajectoryStats,
                  full: TrajectoryStats | None, summary: dict[str, Any],
                  titles: dict[str, str], title: str, intro: str, n_spheres: int = 3
                  ) -> list[AnyFigure]:
    """Write summary.json, data/ (Parquet + CSV), figures/ (HTML + PNG) and index.html."""
    data = out / "data"
    write_table(table, data, "trajectories")
    write_table(sphere.jumps, data, "jumps")
    for kind in ("prompt", "continuation"):
        rows = sphere.distance_by_index[kind]
        if rows:
            df = pd.DataFrame(rows).assign(space="sphere")
            if full is not None and full.distance_by_index[kind]:
                df = pd.concat([df, pd.DataFrame(full.distance_by_index[kind])
                                .assign(space="full")])
            write_table(df, data, f"distance_{kind}")
    figures = figures_for(table, sphere, full, titles, n_spheres)
    for fig in figures:
        fig.save(out / "figures")
    write_json_atomic(out / "summary.json", summary)
    write_index(out / "index.html", title, intro, figures, headline(summary))
    return figures


def headline(s: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = {"prompts": s["n_prompts"], "layer": s["layer"]}
    f = s["projection"]["faithfulness_spearman"]
    if f:
        h["projection faithfulness (Spearman)"] = f
    for kind in ("prompt", "continuation"):
        rows = s[kind]["distance_by_index"]
        if rows:
            last = [r for r in rows if r["n"] >= 30] or rows
            h[f"{kind}: base-tuned distance at index 0 and {last[-1]['index']} (rad)"] = (
                f"{rows[0]['mean']:.3f} (n={rows[0]['n']}), {last[-1]['mean']:.3f} "
                f"(n={last[-1]['n']})")
    for m, v in s["sentiment"]["jump_weighted"].items():
        h[f"jump-weighted sentiment, {m}"] = v
    return h


def figures_for(table: pd.DataFrame, sphere: TrajectoryStats, full: TrajectoryStats | None,
                titles: dict[str, str], n_spheres: int) -> list[AnyFigure]:
    figs: list[AnyFigure] = []
    for pid in list(dict.fromkeys(table.prompt_id))[:n_spheres]:
        figs.append(_sphere_figure(table[table.prompt_id == pid], str(pid), titles.get(pid, "")))
    for kind in ("prompt", "continuation"):
        series = []
        for space, st in (("sphere", sphere), ("full dimension", full)):
            rows = st.distance_by_index[kind] if st is not None else []
            if rows:
                series.append(Series(space, [r["mean"] for r in rows],
                                     [r["ci_low"] for r in rows], [r["ci_high"] for r in rows]))
        rows = sphere.distance_by_index[kind]
        if rows:
            ns = [r["n"] for r in rows]
            figs.append(Figure(
                f"distance_{kind}", f"Base vs tuned path distance by token index ({kind})",
                "line", [r["index"] for r in rows], series, xlabel="token index",
                ylabel="geodesic distance (rad)",
                caption=f"mean over paths with a 95% CI resampling prompts; n per index "
                        f"from {max(ns)} down to {min(ns)} (see data/distance_{kind})"))
    for name, rows, what, unit in (
            ("jump_tokens_top", sphere.top_tokens, "largest", "mean jump (rad)"),
            ("jump_tokens_bottom", sphere.bottom_tokens, "smallest", "mean jump (rad)"),
            ("jump_tokens_top_adjusted", sphere.top_tokens_adjusted,
             "largest position-adjusted", "jump / mean jump at that step")):
        if rows:
            figs.append(Figure(
                name, f"Tokens with the {what} mean jump (sphere)", "bar",
                [f"{_show(r['token'])} ({r['n']})" for r in rows],
                [Series("jump", [r["mean_jump"] for r in rows], [r["ci_low"] for r in rows],
                        [r["ci_high"] for r in rows])],
                ylabel=unit, caption="jump into the point after the token; both models "
                "pooled; (n) = occurrences; 95% bootstrap CI over occurrences"))
    sent = sphere.sentiment
    models = list(sent["jump_weighted"])
    if models:
        x = ["jump-weighted sentiment", "corr(jump, sentiment)"]
        figs.append(Figure(
            "sentiment", "Sentiment and jumps", "bar", x,
            [Series(m, [sent["jump_weighted"][m]["mean"], sent["correlation"][m]["pearson_r"]],
                    [sent["jump_weighted"][m]["ci95"][0], sent["correlation"][m]["ci95"][0]],
                    [sent["jump_weighted"][m]["ci95"][1], sent["correlation"][m]["ci95"][1]])
             for m in models],
            caption="VADER compound score of each token; 95% CIs resample prompts"))
    return figs


def _show(token: str) -> str:
    text = readable_token(token)
    return repr(text) if "\ufffd" not in text else repr(token)


def _sphere_figure(df: pd.DataFrame, pid: str, title: str) -> CustomFigure:
    paths = list(df.groupby(["model", "segment"], sort=True))

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        u, v = np.mgrid[0:2 * np.pi:40j, 0:np.pi:20j]
        fig.add_surface(x=np.cos(u) * np.sin(v), y=np.sin(u) * np.sin(v), z=np.cos(v),
                        opacity=0.08, showscale=False, hoverinfo="skip",
                        colorscale=[[0, "#cccccc"], [1, "#cccccc"]])
        for (model, segment), g in paths:
            kind = "prompt" if segment == "prompt" else "continuation"
            text = [f"{segment} step {s}: {html.escape(_show(t)) if isinstance(t, str) else '?'}"
                    for s, t in zip(g.step, g.token, strict=True)]
            fig.add_scatter3d(x=g.x, y=g.y, z=g.z, mode="lines+markers", name=f"{model} "
                              f"{segment}", text=text, hoverinfo="text+name",
                              line={"color": COLORS.get(str(model)), "width": 4,
                                    "dash": SEGMENT_STYLE[kind]},
                              marker={"size": 3 if kind == "prompt" else 2})
        fig.update_layout(title=f"Prompt {pid}: {html.escape(title[:90])}", height=560,
                          template="plotly_white", scene={"aspectmode": "cube"})
        return fig

    def draw_mpl() -> Any:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(6.4, 6))
        ax = fig.add_subplot(projection="3d")
        for (model, segment), g in paths:
            ax.plot(g.x, g.y, g.z, color=COLORS.get(str(model)),
                    ls="-" if segment == "prompt" else ":", lw=1.5 if segment == "prompt" else 1,
                    label=f"{model} {segment}" if segment in ("prompt", "continuation:0")
                    else None)
        ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1), title=f"prompt {pid}")
        ax.legend(fontsize=7)
        return fig

    name = "sphere_" + re.sub(r"[^\w.-]", "_", pid)[:60]
    return CustomFigure(name, f"Paths on the sphere, prompt {pid}", draw_plotly,
                        draw_mpl, caption=f"{title[:200]} (solid: prompt, dotted: "
                        "continuations; hover for tokens)")


def intro_html(s: dict[str, Any]) -> str:
    """A paragraph for a report section."""
    f = s["projection"]["faithfulness_spearman"]
    parts = [f"{s['n_prompts']} prompts; layer {s['layer']}."]
    if f:
        parts.append(f"Projection faithfulness (Spearman of sphere geodesics vs full-dimension "
                     f"angles): {f['mean']:.3f} [{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}], "
                     f"n={f['n']} pairs.")
    for m, v in s["sentiment"]["jump_weighted"].items():
        parts.append(f"Jump-weighted sentiment {html.escape(m)}: {v['mean']:.3f} "
                     f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}].")
    return " ".join(parts)


def page_intro(s: dict[str, Any]) -> str:
    """The intro of a trajectories page."""
    text = (f"{s['n_prompts']} prompts. Paths are cumulative means of L2-normalised token "
            "vectors; distances are great-circle distances in radians, with 95% CIs that "
            "resample prompts. Jumps are attributed to the token that causes them.")
    if s.get("layer") is not None:
        text += f" Layer {s['layer']}; projection {s.get('projection_method')}."
    return text
