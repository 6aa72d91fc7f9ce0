"""Outputs of ``difflens trajectories``: summary, tables, figures and the HTML page."""

import dataclasses
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import write_json_atomic
from difflens.analysis.trajectories import TrajectoryStats
from difflens.analysis.trajectory_table import readable_tokens
from difflens.inputs.tokens import format_token
from difflens.report.figures import (
    COLORS,
    AnyFigure,
    CustomFigure,
    Figure,
    Series,
    write_index,
)
from difflens.report.tables import write_table

SEGMENT_STYLE = {"prompt": "solid", "continuation": "dot"}
#: Line styles of a lineage's pairs (plotly, matplotlib): a pair against the base, two
#: adjacent stages, and any other pair.
PAIR_DASH = {"base": ("solid", "-"), "adjacent": ("dash", "--"), "other": ("dot", ":")}


def pair_key(a: str, b: str) -> str:
    """The summary key of a pair of models: ``"<a>-vs-<b>"``."""
    return f"{a}-vs-{b}"


def summarize(sphere: TrajectoryStats, full: TrajectoryStats | None, *, n_prompts: int,
              layer: int | None, faithfulness: dict[str, Any] | None,
              extra: dict[str, Any]) -> dict[str, Any]:
    """The summary, with the issue's keys; full-dimension statistics under ``full``.

    A model set's statistics add ``distance_pairs`` (beside ``prompt`` and ``continuation``,
    on the sphere and under ``full``): ``{"<a>-vs-<b>": {models: [a, b], prompt:
    {distance_by_index}, continuation: {distance_by_index}}}`` for every pair.
    """
    def block(st: TrajectoryStats) -> dict[str, Any]:
        pairs = ({"distance_pairs": {
            pair_key(a, b): {"models": [a, b],
                             "prompt": {"distance_by_index": d["prompt"]},
                             "continuation": {"distance_by_index": d["continuation"]}}
            for (a, b), d in st.distance_pairs.items()}} if st.distance_pairs else {})
        return pairs | {
            "prompt": {"distance_by_index": st.distance_by_index["prompt"]},
            "continuation": {"distance_by_index": st.distance_by_index["continuation"]},
            "jumps": {"top_tokens": st.top_tokens, "bottom_tokens": st.bottom_tokens,
                      "top_tokens_position_adjusted": st.top_tokens_adjusted,
                      "bottom_tokens_position_adjusted": st.bottom_tokens_adjusted,
                      "by_index": st.jumps_by_index,
                      "mean_by_index_diff": st.jump_difference},
            "sentiment": st.sentiment,
            "direction": st.direction,
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
                  titles: dict[str, str], title: str, intro: str, n_spheres: int = 3,
                  lineage: Sequence[str] | None = None) -> list[AnyFigure]:
    """Write summary.json, data/ (Parquet + CSV), figures/ (HTML + PNG) and index.html.

    ``lineage`` (a model set's names, base first) orders the models in the figures and
    labels the two-model comparisons by name; a set's pair distances go to
    ``data/distance_pairs``.
    """
    data = out / "data"
    write_table(readable_tokens(table), data, "trajectories")
    write_table(sphere.jumps, data, "jumps")
    spaces = [("sphere", sphere)] + ([("full", full)] if full is not None else [])
    diff = [dict(r, space=name) for name, st in spaces
            for r in st.jump_difference.get("by_index", [])]
    if diff:
        write_table(_index_first(pd.DataFrame(diff)), data, "jump_difference")
    turns = [dict(r, model=m, space=name) for name, st in spaces
             for m, v in st.direction.get("turn_angle", {}).items() for r in v["by_index"]]
    if turns:
        write_table(_index_first(pd.DataFrame(turns)), data, "turn_angle")
    cosines = [dict(r, segments=k, space=name) for name, st in spaces
               for k, v in st.direction.get("move_cosine", {}).items() for r in v["by_index"]]
    if cosines:
        write_table(_index_first(pd.DataFrame(cosines)), data, "move_cosine")
    for kind in ("prompt", "continuation"):
        rows = sphere.distance_by_index[kind]
        if rows:
            df = pd.DataFrame(rows).assign(space="sphere")
            if full is not None and full.distance_by_index[kind]:
                df = pd.concat([df, pd.DataFrame(full.distance_by_index[kind])
                                .assign(space="full")])
            write_table(_index_first(df), data, f"distance_{kind}")
    pairs = pair_distance_table(sphere, full)
    if not pairs.empty:
        write_table(pairs, data, "distance_pairs")
    figures = figures_for(table, sphere, full, titles, n_spheres, lineage=lineage)
    for fig in figures:
        fig.save(out / "figures")
    write_json_atomic(out / "summary.json", summary)
    write_index(out / "index.html", title, intro, figures, headline(summary))
    return figures


def _index_first(df: pd.DataFrame) -> pd.DataFrame:
    """A table of per-index estimates with the ``index`` column first."""
    return df[["index", *(c for c in df.columns if c != "index")]]


def pair_distance_table(sphere: TrajectoryStats, full: TrajectoryStats | None
                        ) -> pd.DataFrame:
    """The pairs' distances per index in one long table: pair, from, to, segments, space,
    index, value, ci_low, ci_high, n, resampled (empty without pairs)."""
    rows = [dict(r, pair=pair_key(a, b), **{"from": a, "to": b}, segments=kind, space=space)
            for space, st in (("sphere", sphere), ("full", full)) if st is not None
            for (a, b), d in st.distance_pairs.items() for kind, rs in d.items() for r in rs]
    cols = ["pair", "from", "to", "segments", "space", "index", "value", "ci_low", "ci_high",
            "n", "resampled"]
    return pd.DataFrame(rows, columns=cols)


def headline(s: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = {"prompts": s["n_prompts"], "layer": s["layer"]}
    f = s["projection"]["faithfulness_spearman"]
    if f:
        h["projection faithfulness (Spearman)"] = f
    pairs = list((s.get("distance_pairs") or {}).values())
    # a model set: each later model against the base (every pair is in the summary)
    blocks = ([(f"{v['models'][0]}-{v['models'][1]}", v) for v in pairs
               if v["models"][0] == pairs[0]["models"][0]] if pairs else [("base-tuned", s)])
    for kind in ("prompt", "continuation"):
        for who, block in blocks:
            rows = block[kind]["distance_by_index"]
            if rows:
                last = [r for r in rows if r["n"] >= 30] or rows
                h[f"{kind}: {who} distance at index 0 and {last[-1]['index']} (rad)"] = (
                    f"{rows[0]['value']:.3f} (n={rows[0]['n']}), {last[-1]['value']:.3f} "
                    f"(n={last[-1]['n']})")
    for m, v in s["sentiment"]["jump_weighted"].items():
        h[f"jump-weighted sentiment, {m}"] = v
    return h


def figures_for(table: pd.DataFrame, sphere: TrajectoryStats, full: TrajectoryStats | None,
                titles: dict[str, str], n_spheres: int,
                lineage: Sequence[str] | None = None) -> list[AnyFigure]:
    """The page's figures; with a ``lineage`` (a model set) the distance per index is drawn
    for every pair of models instead of base against tuned."""
    figs: list[AnyFigure] = []
    several = table.prompt_id.nunique() > 1
    for pid in list(dict.fromkeys(table.prompt_id))[:n_spheres]:
        fig = _sphere_figure(table[table.prompt_id == pid], str(pid), titles.get(pid, ""),
                             lineage=lineage)
        # the page shows every prompt in one figure with a selector; the files stay
        figs.append(dataclasses.replace(fig, on_page=not several))
    if several:
        figs.append(spheres_figure(table, titles, lineage=lineage))
    if lineage is not None:
        figs += _pair_distance_figures(sphere, full, lineage)
    for kind in ("prompt", "continuation") if lineage is None else ():
        series = []
        for space, st in (("sphere", sphere), ("full dimension", full)):
            rows = st.distance_by_index[kind] if st is not None else []
            if rows:
                series.append(Series.of(space, rows))
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
                [f"{format_token(r['token'], quoted=True)} ({r['n']})" for r in rows],
                [Series.of("jump", rows)],
                ylabel=unit, caption="jump into the point after the token; both models "
                "pooled; (n) = occurrences; 95% bootstrap CI over occurrences"))
    figs += _movement_figures(sphere, full, lineage)
    sent = sphere.sentiment
    models = list(sent["jump_weighted"])
    if models:
        x = ["jump-weighted sentiment", "corr(jump, sentiment)"]
        figs.append(Figure(
            "sentiment", "Sentiment and jumps", "bar", x,
            [Series.of(m, [sent["jump_weighted"][m], sent["correlation"][m]]) for m in models],
            caption="VADER compound score of each token; 95% CIs resample prompts"))
    return figs


def _pair_style(a: str, b: str, lineage: Sequence[str]) -> tuple[str | None, str, str]:
    """Colour and dash (plotly, matplotlib) of the pair ``(a, b)`` of a lineage: the later
    model's colour; solid against the base, dashed for adjacent stages, dotted otherwise."""
    kind = ("base" if a == lineage[0] else
            "adjacent" if lineage.index(b) == lineage.index(a) + 1 else "other")
    return (COLORS.get(b), *PAIR_DASH[kind])


def _pair_distance_figures(sphere: TrajectoryStats, full: TrajectoryStats | None,
                           lineage: Sequence[str]) -> list[AnyFigure]:
    """Distance per token index, one line (with its 95% CI band) per pair of models, in
    lineage order; in the full dimension where there is one."""
    st, space = (full, "full dimension") if full is not None else (sphere, "sphere")
    figs: list[AnyFigure] = []
    for kind in ("prompt", "continuation"):
        lines = [(pair_key(a, b), _pair_style(a, b, lineage), d[kind])
                 for (a, b), d in st.distance_pairs.items() if d[kind]]
        if lines:
            figs.append(_pair_lines_figure(kind, space, lines))
    return figs


def _pair_lines_figure(kind: str, space: str,
                       lines: list[tuple[str, tuple[str | None, str, str], list[dict[str, Any]]]]
                       ) -> CustomFigure:
    title = f"Path distance by token index, every pair of models ({kind}, {space})"

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        for label, (color, dash, _), rows in lines:
            x = [r["index"] for r in rows]
            fig.add_scatter(x=x + x[::-1], y=[r["ci_high"] for r in rows]
                            + [r["ci_low"] for r in rows][::-1], fill="toself",
                            line={"width": 0}, opacity=0.15, fillcolor=color,
                            showlegend=False, hoverinfo="skip", legendgroup=label)
            fig.add_scatter(x=x, y=[r["value"] for r in rows], name=label,
                            mode="lines+markers", line={"color": color, "dash": dash},
                            legendgroup=label)
        fig.update_layout(xaxis_title="token index", yaxis_title="geodesic distance (rad)",
                          template="plotly_white", height=420)
        return fig

    def draw_mpl() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.2))
        for label, (color, _, ls), rows in lines:
            x = np.asarray([r["index"] for r in rows], dtype=float)
            ax.plot(x, [r["value"] for r in rows], ls=ls, marker=".", color=color, label=label)
            ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows],
                            alpha=0.15, color=color)
        ax.set(title=title, xlabel="token index", ylabel="geodesic distance (rad)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    ns = [r["n"] for _, _, rows in lines for r in rows]
    return CustomFigure(
        f"distance_pairs_{kind}", title, draw_plotly, draw_mpl,
        caption=f"mean over paths with a 95% CI resampling prompts; colour: the later model "
                f"of the pair; solid: against the base, dashed: adjacent stages, dotted: "
                f"other pairs; n per index from {max(ns)} down to {min(ns)} (both spaces in "
                f"data/distance_pairs)")


def _movement_figures(sphere: TrajectoryStats, full: TrajectoryStats | None,
                      lineage: Sequence[str] | None = None) -> list[AnyFigure]:
    """The mean-jump difference per index, the turn angle and the models' move cosine
    (with a ``lineage``, the comparisons are the last model against the first, by name)."""
    figs: list[AnyFigure] = []
    first, last = ("base", "tuned") if lineage is None else (lineage[0], lineage[-1])
    # in the full dimension where there is one: the sphere's jumps are the projection's
    st, space = (full, "full dimension") if full is not None else (sphere, "sphere")
    d = st.jump_difference
    if d.get("by_index"):
        rows = d["by_index"]
        ns = [r["n"] for r in rows]
        figs.append(Figure(
            "jump_difference", f"Mean jump per token index, {last} minus {first} ({space})",
            "line", [r["index"] for r in rows],
            [Series.of(f"{last} − {first}", rows)],
            xlabel="token index", ylabel=f"{last} − {first} mean jump (rad)", hline=0.0,
            caption=f"{'paired over the prompts both models share' if d['paired'] else 'unpaired'}"
                    f"; all segments; 95% CI resampling prompts; n from {max(ns)} down to "
                    f"{min(ns)} prompts per index (both spaces in data/jump_difference)"))
    turns = st.direction.get("turn_angle", {})
    if turns:
        steps, series = _series_by_index(turns)
        figs.append(Figure(
            "turn_angle", f"Turn between consecutive moves ({space})", "line", steps, series,
            xlabel="token index", ylabel="angle between moves (rad)", hline=float(np.pi / 2),
            caption="angle between the move into step t−1 and the move into step t, all "
                    "segments; dashed: a right angle (what unrelated directions give in "
                    "many dimensions); 95% CI resampling prompts (data/turn_angle)"))
    cosines = st.direction.get("move_cosine", {})
    if cosines:
        steps, series = _series_by_index(cosines)
        figs.append(Figure(
            "move_cosine", f"cos({first} move, {last} move) at the same step ({space})", "line",
            steps, series, xlabel="token index", ylabel="cosine", hline=0.0,
            caption="same prompt, segment and step; prompts: both models read the same "
                    "tokens; continuations: each model its own sample; 95% CI resampling "
                    "prompts (data/move_cosine)"))
    return figs


#: Most prompts in the sphere menu (about 30 kB of HTML each).
MAX_MENU_PROMPTS = 500


def _series_by_index(blocks: dict[str, Any]) -> tuple[list[int], list[Series]]:
    """Steps and one series with its CI per ``{label: {"by_index": [{value, ci_low,
    ci_high, ..., index}]}}`` block, NaN where a label has no value at a step."""
    steps = sorted({r["index"] for v in blocks.values() for r in v["by_index"]})
    series = []
    for label, v in blocks.items():
        by = {r["index"]: r for r in v["by_index"]}
        series.append(Series(label, *([by[i][k] if i in by else np.nan for i in steps]
                                      for k in ("value", "ci_low", "ci_high"))))
    return steps, series


def _paths_in_order(df: pd.DataFrame, lineage: Sequence[str] | None
                    ) -> list[tuple[tuple[Any, Any], pd.DataFrame]]:
    """The ``(model, segment)`` paths of a table: sorted, or with the models in lineage
    order."""
    paths = list(df.groupby(["model", "segment"], sort=True))
    if lineage is None:
        return paths
    rank = {str(m): i for i, m in enumerate(lineage)}
    return sorted(paths, key=lambda p: rank.get(str(p[0][0]), len(rank)))  # stable: segments


def spheres_figure(table: pd.DataFrame, titles: dict[str, str], n_png: int = 6,
                   max_prompts: int = MAX_MENU_PROMPTS,
                   lineage: Sequence[str] | None = None) -> CustomFigure:
    """Every prompt's paths on the sphere (the first ``max_prompts``): the HTML picks the
    prompt from a menu; the PNG shows the first ``n_png`` prompts side by side. A
    ``lineage`` draws the models in that order, each in its colour."""
    every = list(dict.fromkeys(table.prompt_id))
    pids = every[:max_prompts]
    groups = {pid: _paths_in_order(table[table.prompt_id == pid], lineage) for pid in pids}

    def label(pid: Any) -> str:
        title = titles.get(str(pid), "")
        return f"prompt {pid}" + (f": {title[:40]}" if title else "")

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        u, v = np.mgrid[0:2 * np.pi:40j, 0:np.pi:20j]
        fig.add_surface(x=np.cos(u) * np.sin(v), y=np.sin(u) * np.sin(v), z=np.cos(v),
                        opacity=0.08, showscale=False, hoverinfo="skip",
                        colorscale=[[0, "#cccccc"], [1, "#cccccc"]])
        owner = [None]
        for pid in pids:
            for (model, segment), g in groups[pid]:
                kind = "prompt" if segment == "prompt" else "continuation"
                text = [f"{segment} step {s}: {_hover_token(t)}"
                        for s, t in zip(g.step, g.token, strict=True)]
                fig.add_scatter3d(x=g.x, y=g.y, z=g.z, mode="lines+markers",
                                  name=f"{model} {segment}", text=text,
                                  hoverinfo="text+name", visible=pid == pids[0],
                                  line={"color": COLORS.get(str(model)), "width": 4,
                                        "dash": SEGMENT_STYLE[kind]},
                                  marker={"size": 3 if kind == "prompt" else 2})
                owner.append(pid)
        buttons = [{"label": label(pid)[:60], "method": "update",
                    "args": [{"visible": [o is None or o == pid for o in owner]},
                             {"title": html.escape(label(pid)[:90])}]} for pid in pids]
        fig.update_layout(title=html.escape(label(pids[0])[:90]), height=600,
                          template="plotly_white", scene={"aspectmode": "cube"},
                          updatemenus=[{"buttons": buttons, "direction": "down",
                                        "x": 0.0, "xanchor": "left", "y": 1.12,
                                        "yanchor": "top", "showactive": True}])
        return fig

    def draw_mpl() -> Any:
        import matplotlib.pyplot as plt

        shown = pids[:n_png]
        cols = min(3, len(shown))
        nrows = -(-len(shown) // cols)
        fig = plt.figure(figsize=(3.6 * cols, 3.6 * nrows))
        for k, pid in enumerate(shown, start=1):
            ax = fig.add_subplot(nrows, cols, k, projection="3d")
            for (model, segment), g in groups[pid]:
                ax.plot(g.x, g.y, g.z, color=COLORS.get(str(model)),
                        ls="-" if segment == "prompt" else ":",
                        lw=1.5 if segment == "prompt" else 1)
            ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1), title=f"prompt {pid}")
            ax.tick_params(labelsize=6)
        fig.suptitle("Paths on the sphere (solid: prompt, dotted: continuations)")
        fig.tight_layout()
        return fig

    which = (f"any of the {len(pids)} prompts" if len(pids) == len(every)
             else f"any of the first {len(pids)} of {len(every)} prompts")
    return CustomFigure("spheres", f"Paths on the sphere, every prompt ({len(pids)})",
                        draw_plotly, draw_mpl,
                        caption=f"pick {which} from the menu (HTML); "
                                f"the PNG shows the first {min(n_png, len(pids))}. "
                                + ("Base and tuned in two colours" if lineage is None else
                                   "Each model in its own colour")
                                + "; hover for tokens")


def _hover_token(token: Any) -> str:
    """A token in a plotly hover label: quoted and escaped (``?`` where there is none)."""
    return format_token(token, quoted=True, html=True) if isinstance(token, str) else "?"


def _sphere_figure(df: pd.DataFrame, pid: str, title: str,
                   lineage: Sequence[str] | None = None) -> CustomFigure:
    paths = _paths_in_order(df, lineage)

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        u, v = np.mgrid[0:2 * np.pi:40j, 0:np.pi:20j]
        fig.add_surface(x=np.cos(u) * np.sin(v), y=np.sin(u) * np.sin(v), z=np.cos(v),
                        opacity=0.08, showscale=False, hoverinfo="skip",
                        colorscale=[[0, "#cccccc"], [1, "#cccccc"]])
        for (model, segment), g in paths:
            kind = "prompt" if segment == "prompt" else "continuation"
            text = [f"{segment} step {s}: {_hover_token(t)}"
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
                     f"angles): {f['value']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}], "
                     f"n={f['n']} pairs.")
    for m, v in s["sentiment"]["jump_weighted"].items():
        parts.append(f"Jump-weighted sentiment {html.escape(m)}: {v['value']:.3f} "
                     f"[{v['ci_low']:.3f}, {v['ci_high']:.3f}].")
    return " ".join(parts)


def page_intro(s: dict[str, Any]) -> str:
    """The intro of a trajectories page."""
    text = (f"{s['n_prompts']} prompts. Paths are cumulative means of L2-normalised token "
            "vectors; distances are great-circle distances in radians, with 95% CIs that "
            "resample prompts. Jumps are attributed to the token that causes them.")
    if s.get("layer") is not None:
        text += f" Layer {s['layer']}; projection {s.get('projection_method')}."
    return text
