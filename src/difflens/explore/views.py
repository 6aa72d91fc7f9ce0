"""The explorer's pages: plain HTML with a little JavaScript each, no front-end framework.

Every page is built from escaped strings. Its scripts and stylesheet are files of
``difflens/explore/static`` that the page links (served under ``STATIC``); what a
script needs from the server comes in the page's JSON config (``config_script``), and
the data of the table, atlas and token views from the JSON endpoints of
``difflens.explore.app`` after the page has loaded.
"""

import html
import json
from collections.abc import Sequence
from typing import Any

from difflens.analysis.summary_spelling import ESTIMATE_KEYS, is_estimate
from difflens.explore.runs import FILTER_OPS, Run, Summary

#: Where the app serves the files of ``difflens/explore/static`` (and plotly.js).
STATIC = "/static"
#: What a page's JSON config may not hold as such inside ``<script>`` (``</script>``).
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def config_script(config: Any) -> str:
    """``config`` as the page's ``<script type="application/json" id="config">``, which
    ``common.js`` reads into ``CONFIG`` (``<``, ``>`` and ``&`` as JSON escapes, so no
    value can end the element)."""
    text = json.dumps(config, ensure_ascii=False, allow_nan=False).translate(_SCRIPT_SAFE)
    return f"<script type='application/json' id='config'>{text}</script>"


def page(title: str, body: str, *, scripts: Sequence[str] = (), config: Any = None) -> str:
    """A whole page: header with the way back to the runs, ``body``, then ``config`` (when
    given: ``config_script``) and ``scripts``, names of files under ``STATIC``
    (``common.js`` first where a script reads the config)."""
    tags = "".join(f"<script src='{STATIC}/{esc(s)}'></script>" for s in scripts)
    data = config_script(config) if config is not None else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)} · difflens "
            f"explore</title><link rel='stylesheet' href='{STATIC}/explorer.css'></head><body>"
            f"<header><a href='/'><b>difflens explore</b></a><a href='/'>Runs</a>"
            f"<a href='/live/text'>Type text</a><a href='/live/tree'>Multiverse</a>"
            f"<a href='/live/steer'>Steer</a></header><main>{body}</main>{data}{tags}"
            f"</body></html>")


def run_links(run: Run, kinds: Sequence[str]) -> str:
    links = [f"<a href='/runs/{run.id}'>overview</a>"]
    if "atlas" in kinds:
        links.append(f"<a href='/runs/{run.id}/atlas'>atlas</a>")
        links.append(f"<a href='/runs/{run.id}/embedding-atlas/'>embedding-atlas</a>")
    if "tokens" in kinds:
        links.append(f"<a href='/runs/{run.id}/tokens'>token diff</a>")
    return " · ".join(links)


def error_box(message: str) -> str:
    return f"<div class='error' role='alert'>{esc(message)}</div>"


def runs_page(panels: Sequence[str]) -> str:
    if not panels:
        return page("Runs", "<h1>Runs</h1><p>No run folders given: only the live views "
                    "(Type text, Multiverse, Steer) are served.</p>")
    return page("Runs", "<h1>Runs</h1>" + "".join(panels))


def run_panel(run: Run, kinds: Sequence[str], summary: Summary, n_tables: int,
              n_figures: int, headline: str) -> str:
    """One run on the runs page: name, folder, what it holds, or why it cannot be read."""
    body = (error_box(summary.error) if summary.error
            else f"<p>{n_tables} tables, {n_figures} figures. {headline}</p>")
    return (f"<section class='panel run' data-run='{run.id}'><h2>{esc(run.name)}</h2>"
            f"<div class='path'>{esc(run.root)}</div><p>{run_links(run, kinds)}</p>{body}"
            f"</section>")


def broken_panel(run: Run, message: str) -> str:
    return (f"<section class='panel run' data-run='{run.id}'><h2>{esc(run.name)}</h2>"
            f"<div class='path'>{esc(run.root)}</div>{error_box(message)}</section>")


def headline_of(data: dict[str, Any]) -> str:
    """A short line of what a summary holds: its top-level keys."""
    keys = list(data)
    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
    return f"Summary: {esc(', '.join(keys[:8]))}{more}."


# -- summary rendering ----------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A scalar for people: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "—"
    return str(value)


def render_estimate(value: dict[str, Any]) -> str:
    """An estimate (``{value, ci_low, ci_high, n, resampled}``) as ``value [lo, hi] n=``,
    what it resampled on hover, and the keys that say what it is of after it."""
    n = f" n={value['n']}" if value.get("n") is not None else ""
    text = esc(f"{fmt(value['value'])} [{fmt(value['ci_low'])}, {fmt(value['ci_high'])}]{n}")
    if value.get("resampled"):
        text = f"<span title='95% CI over resampled {esc(value['resampled'])}'>{text}</span>"
    extra = {k: v for k, v in value.items() if k not in ESTIMATE_KEYS}
    return text + "".join(f" <small>{esc(k)}={esc(fmt(v))}</small>" for k, v in extra.items()
                          if not isinstance(v, dict | list))


def render_value(value: Any, depth: int = 0) -> str:
    """A summary value as HTML: objects as key/value tables, lists of records as tables,
    estimates (``render_estimate``) as ``value [lo, hi] n=``."""
    if isinstance(value, dict):
        if is_estimate(value):
            return render_estimate(value)
        if not value:
            return "{}"
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{render_value(v, depth + 1)}</td></tr>"
                       for k, v in value.items())
        table = f"<table class='kv'>{rows}</table>"
        if depth >= 2 and len(value) > 6:
            return f"<details><summary>{len(value)} entries</summary>{table}</details>"
        return table
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return _records(value)
        if len(value) > 40:
            shown = ", ".join(esc(fmt(v)) for v in value[:40])
            return f"[{shown}, … {len(value) - 40} more]"
        if all(not isinstance(v, dict | list) for v in value):
            return "[" + ", ".join(esc(fmt(v)) for v in value) + "]"
        return "<ol>" + "".join(f"<li>{render_value(v, depth + 1)}</li>" for v in value) + "</ol>"
    return esc(fmt(value))


def _records(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{render_value(r.get(c), 3)}</td>" for c in cols)
                   + "</tr>" for r in rows[:200])
    more = f"<p>… {len(rows) - 200} more rows</p>" if len(rows) > 200 else ""
    table = f"<table class='records'><tr>{head}</tr>{body}</table>{more}"
    if len(rows) > 12:
        return f"<details><summary>{len(rows)} rows</summary>{table}</details>"
    return table


def summary_section(summary: Summary) -> str:
    if summary.error or summary.data is None:
        return (f"<section class='panel' id='summary'><h2>Summary</h2>"
                f"{error_box(summary.error or 'no summary')}</section>")
    parts = []
    for i, (key, value) in enumerate(summary.data.items()):
        parts.append(f"<details{' open' if i < 4 else ''}><summary><b>{esc(key)}</b></summary>"
                     f"{render_value(value, 1)}</details>")
    return f"<section class='panel' id='summary'><h2>Summary</h2>{''.join(parts)}</section>"


def run_page(run: Run, kinds: Sequence[str], summary: Summary,
             figures: Sequence[tuple[str, str | None, str | None]], tables: Sequence[str],
             has_index: bool) -> str:
    links = run_links(run, kinds)
    if has_index:
        links += f" · <a href='/runs/{run.id}/file/index.html'>the run's report</a>"
    figs = []
    for name, png, html_file in figures:
        img = (f"<img src='/runs/{run.id}/file/{esc(png)}' alt='{esc(name)}' loading='lazy'>"
               if png else "")
        link = (f" · <a href='/runs/{run.id}/file/{esc(html_file)}'>interactive</a>"
                if html_file else "")
        figs.append(f"<figure>{img}<figcaption>{esc(name)}{link}</figcaption></figure>")
    fig_html = (f"<div class='figs'>{''.join(figs)}</div>" if figs
                else "<p>No figures under figures/.</p>")
    rows = "".join(f"<li><a class='table-link' href='/runs/{run.id}/table?path={esc(t)}'>"
                   f"{esc(t)}</a></li>" for t in tables)
    table_html = f"<ul>{rows}</ul>" if rows else "<p>No Parquet tables.</p>"
    body = (f"<h1>{esc(run.name)}</h1><div class='path'>{esc(run.root)}</div><p>{links}</p>"
            f"{summary_section(summary)}<section class='panel' id='figures'><h2>Figures</h2>"
            f"{fig_html}</section><section class='panel' id='tables'><h2>Tables</h2>"
            f"{table_html}</section>")
    return page(run.name, body)


# -- table view -----------------------------------------------------------------------------


def table_page_html(run: Run, rel: str) -> str:
    ops = "".join(f"<option>{esc(o)}</option>" for o in FILTER_OPS)
    body = (f"<h1>{esc(rel)}</h1><p><a href='/runs/{run.id}'>{esc(run.name)}</a></p>"
            f"<section class='panel'><form id='filter' class='controls'>Filter <select "
            f"id='fcol'></select><select id='fop'>{ops}</select><input id='fval' "
            f"placeholder='value'><button>apply</button></form><div class='controls'><button "
            f"id='prev'>◀ previous</button><span id='table-status'>loading…</span><button "
            f"id='next'>next ▶</button></div><div id='table-error' class='error' "
            f"style='display:none'></div><table id='grid'></table></section>")
    return page(rel, body, scripts=["common.js", "table.js"],
                config={"table": rel, "api": f"/api/runs/{run.id}/table"})


# -- atlas ----------------------------------------------------------------------------------


def atlas_page(run: Run) -> str:
    body = (f"<h1>Atlas · {esc(run.name)}</h1><p><a href='/runs/{run.id}'>overview</a> · every "
            f"stored point of every prompt and continuation, both models, by longitude and "
            f"latitude on the trajectory sphere. The same points in <a href='/runs/{run.id}/"
            f"embedding-atlas/'>embedding-atlas</a> (its table, search and filters; its map "
            f"needs WebGPU).</p><section class='panel'><div "
            f"class='controls'>Colour by <select id='colour'></select> Search tokens <input "
            f"id='search' placeholder='token text'> <b id='atlas-status'>loading…</b></div>"
            f"<div id='atlas-error' class='error' style='display:none'></div><div id='atlas'>"
            f"</div></section><section class='panel'><h2>The selected point on the "
            f"sphere</h2><p id='sphere-status'>Click a point on the map to open its paths on "
            f"the 3-D sphere.</p><div id='sphere'></div></section>")
    return page(f"Atlas · {run.name}", body,
                scripts=["plotly.min.js", "common.js", "atlas.js"],
                config={"api": f"/api/runs/{run.id}/atlas",
                        "path_api": f"/api/runs/{run.id}/path"})


# -- token diff -----------------------------------------------------------------------------


def tokens_page(run: Run, statistics: dict[str, tuple[str, str, str]]) -> str:
    opts = "".join(f"<option value='{esc(k)}'>{esc(v[2])}</option>"
                   for k, v in statistics.items())
    body = (f"<h1>Token diff · {esc(run.name)}</h1><p><a href='/runs/{run.id}'>overview</a> · "
            f"each text is shown once per model; a token's colour is that model's value of the "
            f"chosen statistic (KL and log-prob differences read as model ‖ other). Hover a "
            f"token for all its values.</p><section class='panel'><div class='controls'>Text "
            f"<select id='text' style='max-width:700px'></select> Statistic <select id='stat'>"
            f"{opts}</select></div><div id='tokens-error' class='error' style='display:none'>"
            f"</div><div id='panels'></div></section><div id='tip'></div>")
    return page(f"Token diff · {run.name}", body,
                scripts=["common.js", "shade.js", "tokens.js"],
                config={"api": f"/api/runs/{run.id}", "stats": statistics})


def not_found_page(message: str) -> str:
    return page("Not found", f"<h1>Not found</h1>{error_box(message)}")
