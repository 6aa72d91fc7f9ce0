"""Figures: each is drawn twice from the same data, as plotly (HTML) and matplotlib (PNG).

plotly 7's own PNG export needs kaleido >= 1, which downloads a browser and fails
offline, so PNGs come from matplotlib instead. Every figure is written as a
self-contained ``NAME.html`` and a ``NAME.png``; :func:`write_index` puts them all on one
self-contained page with plotly.js inlined once.
"""

import dataclasses
import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

COLORS = {"base": "#4c72b0", "tuned": "#dd8452", "uniform": "#888888"}


@dataclasses.dataclass(frozen=True)
class Series:
    """One labelled series with an optional 95% interval."""

    label: str
    y: Sequence[float]
    lo: Sequence[float] | None = None
    hi: Sequence[float] | None = None


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

    def plotly(self) -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
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
                            marker_color=color)
            else:
                if s.lo is not None and s.hi is not None:
                    fig.add_scatter(x=list(self.x) + list(self.x)[::-1],
                                    y=list(s.hi) + list(s.lo)[::-1], fill="toself",
                                    line={"width": 0}, opacity=0.2, showlegend=False,
                                    fillcolor=color, hoverinfo="skip")
                fig.add_scatter(x=list(self.x), y=list(s.y), name=s.label, mode="lines+markers",
                                line={"color": color})
        if self.hline is not None:
            fig.add_hline(y=self.hline, line_dash="dash", line_color=COLORS["uniform"])
        fig.update_layout(title=self.title, xaxis_title=self.xlabel, yaxis_title=self.ylabel,
                          barmode="group", template="plotly_white", height=420)
        return fig

    def matplotlib(self) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(8, 4.2))
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
        ax.legend()
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
    :class:`Figure` (``plotly()``, ``matplotlib()``, ``save()``), drawn by the two callables."""

    name: str
    title: str
    draw_plotly: Callable[[], Any]
    draw_matplotlib: Callable[[], Any]
    caption: str = ""

    def plotly(self) -> Any:
        return self.draw_plotly()

    def matplotlib(self) -> Any:
        return self.draw_matplotlib()

    def save(self, out: Path) -> None:
        Figure.save(self, out)  # type: ignore[arg-type]


AnyFigure = Figure | CustomFigure


def write_index(path: Path, title: str, intro: str, figures: Sequence[AnyFigure],
                headline: dict[str, Any], images: Sequence[tuple[str, Path]] = (),
                sections: Sequence[tuple[str, str, Sequence[AnyFigure]]] = ()) -> None:
    """One self-contained HTML page: headline table, figures (plotly.js inlined once).

    ``sections`` adds ``(heading, intro html, figures)`` blocks after the main figures.
    """
    import base64

    from plotly.offline import get_plotlyjs

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in headline.items())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;"
        "color:#222}table{border-collapse:collapse}td{border-bottom:1px solid #ddd;"
        "padding:4px 12px}figcaption{color:#555;font-size:.9em}</style>",
        f"<script>{get_plotlyjs()}</script></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{intro}</p>",
        f"<h2>Headline figures</h2><table>{rows}</table>",
    ]
    for name, img in images:
        data = base64.b64encode(img.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(name)}</h2><img style='max-width:100%' "
                     f"src='data:image/png;base64,{data}'>")
    for fig in figures:
        parts.append(f"<h2>{html.escape(fig.title)}</h2>")
        parts.append(fig.plotly().to_html(full_html=False, include_plotlyjs=False))
        if fig.caption:
            parts.append(f"<figcaption>{fig.caption}</figcaption>")
    for heading, text, figs in sections:
        parts.append(f"<h1>{html.escape(heading)}</h1><p>{text}</p>")
        for fig in figs:
            parts.append(f"<h2>{html.escape(fig.title)}</h2>")
            parts.append(fig.plotly().to_html(full_html=False, include_plotlyjs=False))
            if fig.caption:
                parts.append(f"<figcaption>{fig.caption}</figcaption>")
    parts.append("</body></html>")
    from difflens._io import write_bytes_atomic

    write_bytes_atomic(path, "\n".join(parts).encode())


def format_ci(mean: float, ci95: Sequence[float], n: int | None = None) -> str:
    """``0.920 [0.918, 0.921] n=200``: how every headline figure is printed."""
    text = f"{mean:.3f} [{ci95[0]:.3f}, {ci95[1]:.3f}]"
    return text if n is None else f"{text} n={n}"


def _fmt(v: Any) -> str:
    if isinstance(v, dict) and "mean" in v:
        return format_ci(v["mean"], v.get("ci95", [float("nan")] * 2), v.get("n"))
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if not isinstance(v, str) else v
