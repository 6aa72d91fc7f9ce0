"""Figures: each is drawn twice from the same data, as plotly (HTML) and matplotlib (PNG).

plotly 7's own PNG export needs kaleido >= 1, which downloads a browser and fails
offline, so PNGs come from matplotlib instead. Every figure is written as a
self-contained ``NAME.html`` and a ``NAME.png``; ``write_index`` puts them all on one
self-contained page with plotly.js inlined once.
"""

import dataclasses
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from difflens.analysis.bootstrap import Estimate
from difflens.analysis.summary_spelling import is_estimate

COLORS = {"base": "#4c72b0", "tuned": "#dd8452", "uniform": "#888888"}
#: Colours of the models of a lineage after the first, in lineage order (base keeps its
#: blue): the second model is orange as a pair's tuned model is.
LINEAGE_PALETTE = ("#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
                   "#8c8c8c", "#ccb974")


def use_lineage_colors(names: Sequence[str]) -> dict[str, str]:
    """Give the models of a lineage one colour each for every figure drawn after this call
    (the first model base-blue, the others ``LINEAGE_PALETTE`` in order) and return
    them; a report calls it once, so a model has the same colour in every section."""
    colors = {names[0]: COLORS["base"]} if names else {}
    colors |= {n: LINEAGE_PALETTE[i % len(LINEAGE_PALETTE)] for i, n in enumerate(names[1:])}
    COLORS.update(colors)
    return colors


def color_of(label: str) -> str | None:
    """The colour of a model (or of the uniform reference) in every figure, or None."""
    return COLORS.get(label)


def as_estimate(v: Estimate | Mapping[str, Any] | float | None) -> Estimate:
    """An estimate from what a summary holds: an ``Estimate``, its JSON (``{value,
    ci_low, ci_high, n, resampled}``, or an older spelling
    ``from_json`` reads), or a bare number (no CI:
    a metric a summary could not estimate, NaN for ``None``)."""
    if isinstance(v, Estimate):
        return v
    if isinstance(v, Mapping):
        return Estimate.from_json(v)
    x = math.nan if v is None else float(v)
    return Estimate(value=x, ci_low=math.nan, ci_high=math.nan, n=0, resampled="")


@dataclasses.dataclass(frozen=True)
class Series:
    """One labelled series with an optional 95% interval."""

    label: str
    y: Sequence[float]
    lo: Sequence[float] | None = None
    hi: Sequence[float] | None = None

    @classmethod
    def of(cls, label: str,
           estimates: Sequence[Estimate | Mapping[str, Any] | float | None]) -> "Series":
        """The values of ``estimates`` (each as ``as_estimate`` reads it) with their
        CIs."""
        est = [as_estimate(e) for e in estimates]
        return cls(label, [e.value for e in est], [e.ci_low for e in est],
                   [e.ci_high for e in est])


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str
    title: str
    kind: str
    """``bar`` (grouped bars with error bars) or ``line`` (lines with CI bands)."""
    x: Sequence[Any]
    series: Sequence[Series]
    xlabel: str = ""
    ylabel: str = ""
    hline: float | None = None
    """A reference line (e.g. the uniform probability)."""
    caption: str = ""

    on_page: bool = True
    """Shown on the index page (False: written to figures/ only, e.g. one panel of a
    ``small_multiples`` figure that the page shows instead)."""

    def add_traces(self, fig: Any, row: int | None = None, col: int | None = None,
                   legend: bool = True) -> None:
        """Draw the series into a plotly figure (a subplot when ``row``/``col`` are given)."""
        at = {} if row is None else {"row": row, "col": col}
        for s in self.series:
            color = COLORS.get(s.label)
            if self.kind == "bar":
                err = None
                if s.lo is not None and s.hi is not None:
                    err = {"type": "data", "symmetric": False,
                           "array": [max(0.0, h - y) for h, y in zip(s.hi, s.y, strict=True)],
                           "arrayminus": [max(0.0, y - lo)
                                          for y, lo in zip(s.y, s.lo, strict=True)]}
                fig.add_bar(x=list(map(str, self.x)), y=list(s.y), name=s.label, error_y=err,
                            marker_color=color, legendgroup=s.label, showlegend=legend, **at)
            else:
                if s.lo is not None and s.hi is not None:
                    fig.add_scatter(x=list(self.x) + list(self.x)[::-1],
                                    y=list(s.hi) + list(s.lo)[::-1], fill="toself",
                                    line={"width": 0}, opacity=0.2, showlegend=False,
                                    fillcolor=color, hoverinfo="skip", **at)
                fig.add_scatter(x=list(self.x), y=list(s.y), name=s.label, mode="lines+markers",
                                line={"color": color}, legendgroup=s.label, showlegend=legend,
                                **at)
        if self.hline is not None:
            fig.add_hline(y=self.hline, line_dash="dash", line_color=COLORS["uniform"], **at)

    def plotly(self) -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        self.add_traces(fig)
        fig.update_layout(title=self.title, xaxis_title=self.xlabel, yaxis_title=self.ylabel,
                          barmode="group", template="plotly_white", height=420)
        return fig

    def draw(self, ax: Any, legend: bool = True) -> None:
        """Draw the series onto a matplotlib axis."""
        import numpy as np

        n = len(self.series)
        xs = np.arange(len(self.x))
        for k, s in enumerate(self.series):
            color = COLORS.get(s.label)
            y = np.asarray(s.y, dtype=float)
            if self.kind == "bar":
                width = 0.8 / n
                err = None
                if s.lo is not None and s.hi is not None:
                    err = [np.clip(y - np.asarray(s.lo), 0, None),
                           np.clip(np.asarray(s.hi) - y, 0, None)]
                ax.bar(xs + (k - (n - 1) / 2) * width, y, width, yerr=err, label=s.label,
                       color=color, capsize=3)
            else:
                xv = np.asarray(self.x, dtype=float)
                ax.plot(xv, y, marker=".", label=s.label, color=color)
                if s.lo is not None and s.hi is not None:
                    ax.fill_between(xv, s.lo, s.hi, alpha=0.2, color=color)
        if self.kind == "bar":
            ax.set_xticks(xs, [str(x) for x in self.x], rotation=30 if len(self.x) > 6 else 0)
        if self.hline is not None:
            ax.axhline(self.hline, ls="--", color=COLORS["uniform"])
        ax.set(title=self.title, xlabel=self.xlabel, ylabel=self.ylabel)
        if legend:
            ax.legend()

    def matplotlib(self) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.2))
        self.draw(ax)
        fig.tight_layout()
        return fig

    def save(self, out: Path) -> None:
        """Write ``NAME.html`` (self-contained plotly) and ``NAME.png`` (matplotlib)."""
        import matplotlib.pyplot as plt

        out.mkdir(parents=True, exist_ok=True)
        self.plotly().write_html(out / f"{self.name}.html", include_plotlyjs=True)
        fig = self.matplotlib()
        fig.savefig(out / f"{self.name}.png", dpi=110)
        plt.close(fig)


@dataclasses.dataclass(frozen=True)
class CustomFigure:
    """A figure with its own drawing code (heatmaps, scatter panels): the same contract as
    ``Figure`` (``plotly()``, ``matplotlib()``, ``save()``), drawn by the two callables."""

    name: str
    title: str
    draw_plotly: Callable[[], Any]
    draw_matplotlib: Callable[[], Any]
    caption: str = ""
    on_page: bool = True

    def plotly(self) -> Any:
        return self.draw_plotly()

    def matplotlib(self) -> Any:
        return self.draw_matplotlib()

    def save(self, out: Path) -> None:
        Figure.save(self, out)  # type: ignore[arg-type]


AnyFigure = Figure | CustomFigure


def small_multiples(name: str, title: str, panels: Sequence[Figure], *, cols: int = 2,
                    caption: str = "") -> CustomFigure:
    """One figure of several small panels (the same kind of chart per item: one probe, one
    headline measure), drawn by each panel's own code; one legend for all."""
    import math

    rows = math.ceil(len(panels) / cols)
    cols = min(cols, len(panels))

    def draw_plotly() -> Any:
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.title for p in panels])
        for i, panel in enumerate(panels):
            panel.add_traces(fig, i // cols + 1, i % cols + 1, legend=i == 0)
            if panel.ylabel:  # each panel's own axis says what it measures
                fig.update_yaxes(title_text=panel.ylabel, row=i // cols + 1, col=i % cols + 1)
        fig.update_layout(title=title, barmode="group", template="plotly_white",
                          height=max(420, 300 * rows))
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
        for i, panel in enumerate(panels):
            panel.draw(axes[i // cols][i % cols], legend=i == 0)
        for j in range(len(panels), rows * cols):
            axes[j // cols][j % cols].axis("off")
        fig.suptitle(title)
        fig.tight_layout()
        return fig

    return CustomFigure(name, title, draw_plotly, draw_matplotlib, caption=caption)


@dataclasses.dataclass(frozen=True)
class Section:
    """A block of the index page: a heading, its takeaways (two to four lines rendered from
    the numbers, with CIs), an intro and its figures."""

    heading: str
    intro: str
    figures: Sequence[AnyFigure]
    takeaways: Sequence[str] = ()


_STYLE = (
    "body{font-family:system-ui,sans-serif;color:#222;margin:0}"
    ".page{display:grid;grid-template-columns:240px minmax(0,1fr);gap:2em;max-width:1300px;"
    "margin:0 auto;padding:0 1em}"
    "nav{position:sticky;top:0;align-self:start;max-height:100vh;overflow-y:auto;"
    "font-size:.85em;padding:1em 0;border-right:1px solid #eee}"
    "nav ul{list-style:none;padding-left:.8em;margin:.2em 0}nav a{color:#345;"
    "text-decoration:none}nav a:hover{text-decoration:underline}nav>ul>li{margin-top:.6em}"
    "main{padding:1em 0 4em}table{border-collapse:collapse}td{border-bottom:1px solid #ddd;"
    "padding:4px 12px}figcaption{color:#555;font-size:.9em}"
    ".takeaways{background:#f5f8fc;border-left:4px solid #4c72b0;padding:.5em 1em;"
    "margin:1em 0}.takeaways ul{margin:.3em 0}.explore{background:#fbf7f0;border-left:4px "
    "solid #dd8452;padding:.5em 1em;margin:1em 0}figure{margin:1.5em 0}"
    "h3{margin-bottom:.2em}"
)


def _anchor(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def write_index(path: Path, title: str, intro: str, figures: Sequence[AnyFigure],
                headline: dict[str, Any], images: Sequence[tuple[str, Path]] = (),
                sections: Sequence[Section | tuple[str, str, Sequence[AnyFigure]]] = (), *,
                takeaways: Sequence[str] = (), links: Sequence[tuple[str, str]] = (),
                explore_command: str = "") -> None:
    """One self-contained HTML page (plotly.js inlined once) that a person can navigate: a
    table of contents that stays in view, the headline table, then each section's
    takeaways, intro and figures.

    Each figure appears once, under its own title (the chart itself carries none), with its
    caption; figures with ``on_page=False`` are left out (a small-multiples figure shows
    them). ``sections`` adds blocks after the main figures (a tuple is a section without
    takeaways). ``links`` are ``(label, href)`` pairs into the explorer, shown with
    ``explore_command``, the command that serves them.
    """
    import base64

    from plotly.offline import get_plotlyjs

    blocks = [Section("Overview", "", figures, takeaways)] + [
        s if isinstance(s, Section) else Section(*s) for s in sections]
    toc = ["<li><a href='#headline'>Headline figures</a></li>"]
    body: list[str] = []
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in headline.items())
    body.append(f"<h1>{html.escape(title)}</h1><p>{intro}</p>")
    if links or explore_command:
        items = " · ".join(f"<a href='{html.escape(href)}'>{html.escape(label)}</a>"
                           for label, href in links)
        body.append("<div class='explore'><b>Explore these results</b> token by token and "
                    "point by point: run <code>" + html.escape(explore_command) + "</code>"
                    + (f", then open {items}" if items else "") + ".</div>")
    body.append(f"<h2 id='headline'>Headline figures</h2><table>{rows}</table>")
    for name, img in images:
        data = base64.b64encode(img.read_bytes()).decode()
        anchor = "img-" + _anchor(name)
        toc.append(f"<li><a href='#{anchor}'>{html.escape(name)}</a></li>")
        body.append(f"<h2 id='{anchor}'>{html.escape(name)}</h2><img style='max-width:100%' "
                    f"src='data:image/png;base64,{data}'>")
    used: set[str] = set()
    for k, block in enumerate(blocks):
        shown = [f for f in block.figures if getattr(f, "on_page", True)]
        sub: list[str] = []
        anchor = ""
        if k > 0 or block.takeaways:
            anchor = f"section-{k}-" + _anchor(block.heading)
            body.append(f"<h1 id='{anchor}'>{html.escape(block.heading)}</h1>")
        if block.takeaways:
            body.append("<div class='takeaways'><b>Takeaways</b><ul>" + "".join(
                f"<li>{html.escape(t)}</li>" for t in block.takeaways) + "</ul></div>")
        if block.intro:
            body.append(f"<p>{block.intro}</p>")
        for fig in shown:
            fid = "fig-" + _anchor(fig.name)
            while fid in used:
                fid += "-x"
            used.add(fid)
            sub.append(f"<li><a href='#{fid}'>{html.escape(fig.title)}</a></li>")
            chart = fig.plotly()
            chart.update_layout(title_text="", margin={"t": 40})
            body.append(f"<figure id='{fid}'><h3>{html.escape(fig.title)}</h3>"
                        + chart.to_html(full_html=False, include_plotlyjs=False)
                        + (f"<figcaption>{fig.caption}</figcaption>" if fig.caption else "")
                        + "</figure>")
        if anchor:
            toc.append(f"<li><a href='#{anchor}'>{html.escape(block.heading)}</a>"
                       f"<ul>{''.join(sub)}</ul></li>")
        else:
            toc += sub
    page = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>",
        f"<script>{get_plotlyjs()}</script></head><body><div class='page'>",
        f"<nav aria-label='Contents'><b>Contents</b><ul>{''.join(toc)}</ul></nav>",
        "<main>", *body, "</main></div></body></html>",
    ]
    from difflens._io import write_bytes_atomic

    write_bytes_atomic(path, "\n".join(page).encode())


#: The one minus sign of every number a page prints (U+2212, as the documentation prints it).
MINUS = "\u2212"


def _minus(text: str) -> str:
    """``text`` (a formatted number) with one minus sign, ``MINUS``; a value that rounds to
    zero has none (never ``-0.000``)."""
    if text.startswith(("-", MINUS)):
        body = text[1:]
        return body if not any(c in "123456789" for c in body.split("e")[0]) else MINUS + body
    return text


def format_number(x: float | int | None, decimals: int = 3) -> str:
    """``x`` with ``decimals`` decimals and one minus sign (``MINUS``; none for a value
    that rounds to zero); NaN or ``None``: ``"n/a"``."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return _minus(f"{float(x):.{decimals}f}")


def format_sig(x: float | int | None, sig: int = 3) -> str:
    """``x`` to ``sig`` significant digits (trailing zeros kept; below 1e-3 in scientific
    notation, ``2.93e-4``), with one minus sign, ``MINUS``; exactly 0: ``"0"``; NaN or
    ``None``: ``"n/a"``. The documentation's ``fmt`` prints numbers the same way."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) < 1e-3:
        mantissa, exponent = f"{x:.{sig - 1}e}".split("e")
        return _minus(f"{mantissa}e{int(exponent)}")
    decimals = max(0, sig - 1 - math.floor(math.log10(abs(x))))
    return _minus(f"{x:.{decimals}f}")


def format_percent(x: float | int | None) -> str:
    """A share as a whole percentage, ``-0.21`` as ``−21%``; one that rounds to 0% is
    ``0%`` (never ``-0%``); NaN or ``None``: ``"—"``."""
    if x is None or not math.isfinite(float(x)):
        return "—"
    return _minus(f"{float(x) * 100:.0f}") + "%"


def format_ci(mean: float, ci95: Sequence[float], n: int | None = None) -> str:
    """``0.920 [0.918, 0.921] n=200``: how every headline figure is printed (one minus
    sign, ``MINUS``; a value that is not defined: ``undefined``; a CI that is not:
    the value alone)."""
    if mean is None or not math.isfinite(float(mean)):
        text = "undefined"
    elif any(c is None or not math.isfinite(float(c)) for c in ci95):
        text = f"{format_number(mean)} (no CI)"
    else:
        text = (f"{format_number(mean)} [{format_number(ci95[0])}, "
                f"{format_number(ci95[1])}]")
    return text if n is None else f"{text} n={n}"


def format_estimate(est: Estimate | Mapping[str, Any]) -> str:
    """An estimate (or its JSON) as ``format_ci`` prints it, with its ``n`` where it has
    one."""
    e = as_estimate(est)
    n = est.get("n") if isinstance(est, Mapping) else e.n
    return format_ci(e.value, e.ci, n)


def _fmt(v: Any) -> str:
    if isinstance(v, Estimate) or is_estimate(v):
        return format_estimate(v)
    if isinstance(v, dict) and "mean" in v:  # the older {"mean", "ci95", "n"}
        return format_ci(v["mean"], v.get("ci95", [float("nan")] * 2), v.get("n"))
    if isinstance(v, float):
        return _minus(f"{v:.4g}")
    return json.dumps(v) if not isinstance(v, str) else v
