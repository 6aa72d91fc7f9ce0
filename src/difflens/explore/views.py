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
from difflens.explore.data import PatchscopeGrid, Pieces
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
    if "discover" in kinds:
        links.append(f"<a href='/runs/{run.id}/discover'>discover</a>")
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


# -- discover -------------------------------------------------------------------------------

#: The methods of a discover run, in the order shown, with what each ranks.
DISCOVER_METHODS = {
    "adl": ("ADL", "activation difference lens: the mean h_tuned − h_base read through the "
                   "tuned logit lens and the Patchscope"),
    "mining": ("Diff mining", "tokens the fine-tune raised at the most positions of the "
                              "texts (count)"),
    "amplify": ("Amplification", "words in more samples as the difference is amplified "
                                 "(share gained)"),
    "logodds": ("Log-odds (baseline)", "words more frequent in the tuned model's own samples "
                                       "(log-odds)"),
}


def _obj(value: Any) -> dict[str, Any]:
    """A summary value that should be an object, or an empty one (a run of another version
    may lack it)."""
    return value if isinstance(value, dict) else {}


def marked(pieces: Pieces) -> str:
    """Text in pieces (``difflens.explore.data.word_marks``), the marked ones in ``<mark>``."""
    return "".join(f"<mark>{esc(t)}</mark>" if m else esc(t) for t, m in pieces)


def word_button(word: str, hypothesis: Sequence[str] = ()) -> str:
    """A word that opens its texts when clicked (``discover.js``)."""
    cls = "word in-hyp" if word in hypothesis else "word"
    return (f"<button type='button' class='{cls}' data-word='{esc(word)}' title='the texts "
            f"where the models differ most on this word'>{esc(word)}</button>")


def _est_text(value: Any) -> str:
    return render_estimate(value) if isinstance(value, dict) and is_estimate(value) else "—"


def _hypothesis(d: dict[str, Any], examples: Sequence[tuple[str, Pieces]]) -> str:
    hyp = _obj(d.get("hypothesis"))
    words = [str(w) for w in hyp.get("words", [])]
    support = _obj(hyp.get("support"))
    rows = "".join(
        f"<tr data-hyp='{esc(w)}'><td>{word_button(w, words)}</td><td>"
        + " ".join(f"<span class='badge'>{esc(m)}</span>" for m in support.get(w, []))
        + "</td></tr>" for w in words)
    table = (f"<table id='hyp-words'><tr><th>word</th><th>methods that list it</th></tr>"
             f"{rows}</table>" if words else "")
    themes = hyp.get("themes") or []
    theme_html = ("<p>Themes whose share moved most (<code>compare</code>'s themes "
                  "section): " + "; ".join(
                      f"{esc(t.get('label', '?'))} {_est_text(t.get('change'))}"
                      for t in themes if isinstance(t, dict)) + "</p>") if themes else ""
    ex = "".join(f"<li><small class='path'>{esc(src)}</small><div class='gen'>{marked(p)}"
                 f"</div></li>" for src, p in examples)
    ex_html = (f"<div><h3>Examples</h3><ol id='hyp-examples' class='compact'>{ex}</ol></div>"
               if ex else "")
    return (f"<section class='panel' id='hypothesis'><h2>Hypothesis</h2><p id='hyp-note'>"
            f"{esc(hyp.get('note', 'no hypothesis in this run'))}</p>{theme_html}<div "
            f"class='hyp'><div>{table}</div>{ex_html}</div></section>")


def _method_values(name: str, m: dict[str, Any]) -> list[str]:
    """Per top word of a method, the number it was ranked by (empty where none)."""
    words = m.get("top_words", [])
    if name == "mining":
        vals = [fmt(c) for c in m.get("counts", [])]
    elif name == "logodds":
        vals = [fmt(r.get("value")) for r in m.get("log_odds", []) if isinstance(r, dict)]
    elif name == "amplify":
        vals = [fmt(r.get("value")) for r in m.get("growth", []) if isinstance(r, dict)]
    else:
        vals = []
    return (vals + [""] * len(words))[:len(words)]


def _methods(d: dict[str, Any]) -> str:
    words = [str(w) for w in _obj(d.get("hypothesis")).get("words", [])]
    cols = []
    for key, (title, what) in DISCOVER_METHODS.items():
        m = d.get(key)
        if not isinstance(m, dict):
            cols.append(f"<div class='method' data-method='{key}'><h3>{esc(title)}</h3>"
                        f"<p class='path'>did not run</p></div>")
            continue
        vals = _method_values(key, m)
        items = "".join(f"<li>{word_button(str(w), words)} <small>{esc(v)}</small></li>"
                        for w, v in zip(m.get("top_words", []), vals, strict=True))
        note = f"<p class='path'>{esc(m['note'])}</p>" if m.get("note") else ""
        cols.append(f"<div class='method' data-method='{key}'><h3>{esc(title)}</h3><p "
                    f"class='path'>{esc(what)}</p>{note}<ol>{items}</ol></div>")
    adl = _obj(d.get("adl"))
    facts = []
    if adl.get("layer") is not None:
        facts.append(f"ADL at layer {esc(adl['layer'])}, |delta| = "
                     f"{esc(fmt(adl.get('relative_norm')))} × the tuned model's mean state "
                     f"norm")
    causal = _obj(adl.get("causal"))
    if "delta_effect" in causal:
        facts.append(f"causal check: loss with random vectors minus loss with delta "
                     f"{_est_text(causal['delta_effect'])} nats/token")
    elif causal.get("note"):
        facts.append(f"causal check {esc(causal['note'])}")
    fact_html = f"<p>{'; '.join(facts)}.</p>" if facts else ""
    return (f"<section class='panel' id='methods'><h2>Each method's words</h2>{fact_html}"
            f"<div class='methods'>{''.join(cols)}</div></section>")


def _grid(grid: PatchscopeGrid | None, d: dict[str, Any]) -> str:
    if grid is None or not grid.words:
        why = ("no data/adl_patchscope.parquet in this run (ADL did not run)" if grid is None
               else "the Patchscope found no word at any scale")
        return (f"<section class='panel' id='patchscope'><h2>Patchscope</h2><p>{esc(why)}."
                f"</p></section>")
    words = [str(w) for w in _obj(d.get("hypothesis")).get("words", [])]
    head = "".join(
        f"<th class='scale{' chosen' if s == grid.chosen else ''}' data-scale='{s:g}'>"
        f"{s:g}{' ★' if s == grid.chosen else ''}</th>" for s in grid.scales)
    body = "".join(
        f"<tr data-word-row='{esc(w)}'><td>{word_button(w, words)}</td>" + "".join(
            f"<td class='p{' chosen' if s == grid.chosen else ''}' data-p='{p}'>{p:.3f}</td>"
            if p is not None else f"<td class='p{' chosen' if s == grid.chosen else ''}'>·"
            f"</td>" for s, p in zip(grid.scales, row, strict=True)) + "</tr>"
        for w, row in zip(grid.words, grid.probability, strict=True))
    ps = _obj(_obj(d.get("adl")).get("patchscope"))
    rule = f" Chosen: {esc(ps['rule'])}." if ps.get("rule") else ""
    chosen = (f"the chosen scale, {grid.chosen:g}, is marked ★" if grid.chosen is not None
              else "no scale was chosen")
    more = f" {grid.left_out} more tokens not shown." if grid.left_out else ""
    return (f"<section class='panel' id='patchscope'><h2>Patchscope</h2><p>delta, scaled "
            f"to each multiple of the tuned model's mean state norm, read by the tuned model "
            f"through identity prompts: each word's probability by scale (shade: "
            f"probability; {chosen}).{rule}{more}</p><table id='grid'><tr><th>word</th>{head}"
            f"</tr>{body}</table></section>")


def _steering(rows: list[dict[str, Any]] | None, d: dict[str, Any]) -> str:
    if rows is None:
        return ("<section class='panel' id='steering'><h2>Steering</h2><p>No "
                "data/adl_steering.parquet in this run (ADL did not run).</p></section>")
    st = _obj(_obj(d.get("adl")).get("steering"))
    rule = f"<p>{esc(st['rule'])}.</p>" if st.get("rule") else ""
    parts = []
    for model in dict.fromkeys(str(r["model"]) for r in rows):
        info = _obj(st.get(model))
        facts = [f"strength {_est_text(info['strength'])}"] if "strength" in info else []
        if "similarity_gain_vs_random" in info:
            facts.append(f"similarity to the fine-tuning texts, steered − random "
                         f"{_est_text(info['similarity_gain_vs_random'])}")
        body = "".join(
            f"<tr data-model='{esc(model)}'><td>{esc(r['opening'])}</td><td>"
            f"{esc(fmt(r['strength']))} {'✓' if r['coherent'] else '✗'}</td>"
            f"<td class='unsteered'>{esc(r['unsteered'])}</td><td class='steered' "
            f"title='perplexity under the base {esc(fmt(r.get('steered_ppl_base')))} (unsteered "
            f"{esc(fmt(r.get('unsteered_ppl_base')))})'>{esc(r['steered'])}</td>"
            f"<td class='random'>{esc(r['random'])}</td></tr>"
            for r in rows if str(r["model"]) == model)
        parts.append(f"<h3>{esc(model)}</h3><p>{'; '.join(facts)}</p><table class='steer' "
                     f"data-model='{esc(model)}'><tr><th>opening</th><th>strength (✓ "
                     f"coherent)</th><th>unsteered</th><th>steered with delta</th><th>steered "
                     f"with a random vector</th></tr>{body}</table>")
    return (f"<section class='panel' id='steering'><h2>Steering</h2><p>Greedy samples of "
            f"each model from each opening, unsteered, steered with delta at the opening's "
            f"strength, and steered with a random vector of the same norm at that strength."
            f"</p>{rule}{''.join(parts)}</section>")


def _amplify(d: dict[str, Any]) -> str:
    amp = d.get("amplify")
    if not isinstance(amp, dict) or not amp.get("alphas"):
        return ("<section class='panel' id='amplify'><h2>Amplification</h2><p>Amplification "
                "did not run.</p></section>")
    rows = "".join(
        f"<tr data-i='{i}'><td>{esc(fmt(a.get('alpha')))}</td><td>"
        f"{_est_text(a.get('hypothesis_rate'))}</td><td>{_est_text(a.get('distinct_2'))}</td>"
        f"<td>{_est_text(a.get('perplexity_base'))}</td></tr>"
        for i, a in enumerate(amp["alphas"]))
    used = [str(w) for w in amp.get("hypothesis_words", [])]
    rate_words = (f" The rate counts samples holding one of: {esc(', '.join(used))}."
                  if used else "")
    n = len(amp["alphas"])
    return (f"<section class='panel' id='amplify'><h2>Amplification</h2><p>Samples from "
            f"l_tuned + α (l_tuned − l_base): α = 0 is the tuned model. Per α: the share of "
            f"samples holding a hypothesis word, distinct-2, and perplexity under the base."
            f"{rate_words}</p><table id='alpha-table'><tr><th>α</th><th>hypothesis rate</th>"
            f"<th>distinct-2</th><th>perplexity (base)</th></tr>{rows}</table><div "
            f"class='controls'>α <input type='range' id='alpha' min='0' max='{n - 1}' "
            f"step='1' value='0'> <b id='alpha-value'></b> <span id='alpha-stats'></span>"
            f"</div><p id='samples-status'></p><div id='samples-error' class='error' "
            f"style='display:none'></div><ol id='samples' class='compact'></ol></section>")


def _stage_link(name: str, run_id: int | None) -> str:
    return (f"<a href='/runs/{run_id}/discover'>{esc(name)}</a>" if run_id is not None
            else esc(name))


def discover_page(run: Run, d: dict[str, Any], *, examples: Sequence[tuple[str, Pieces]],
                  grid: PatchscopeGrid | None, steering: list[dict[str, Any]] | None,
                  models: Any, stages: Sequence[tuple[str, int | None, Sequence[str]]],
                  placed: bool) -> str:
    """The discover view of a discover run: the hypothesis, each method's words, the
    Patchscope grid, steered beside unsteered samples, and amplification by α; every word
    opens the texts where the two models differ most on it (``discover.js``).

    Args:
        d: the summary's ``discover`` object.
        examples: the hypothesis's examples, ``(source, pieces)``.
        grid: ``data/adl_patchscope`` as a grid (``None``: no such table).
        steering: the rows of ``data/adl_steering`` (``None``: no such table).
        models: the summary's ``models`` (``{"base": name, "tuned": name}``).
        stages: a lineage's stages: ``(name, run id or None, hypothesis words)``.
        placed: whether the changes' tokens can be placed in the texts (``mining_examples``
            stores their character spans).
    """
    pair = (f" · {esc(models.get('base', '?'))} → {esc(models.get('tuned', '?'))}"
            if isinstance(models, dict) else "")
    stage_html = ""
    if stages:
        items = "".join(
            f"<li>{_stage_link(name, i)}: {esc(', '.join(ws)) or 'no hypothesis'}</li>"
            for name, i, ws in stages)
        stage_html = (f"<section class='panel' id='stages'><h2>Stages</h2><p>This run is base "
                      f"against the last model; each adjacent pair has its own run:</p><ul>"
                      f"{items}</ul></section>")
    amp = _obj(d.get("amplify"))
    config = {"api": f"/api/runs/{run.id}/discover",
              "alphas": [a.get("alpha") for a in amp.get("alphas", [])],
              "words": [str(w) for w in _obj(d.get("hypothesis")).get("words", [])],
              "support": _obj(_obj(d.get("hypothesis")).get("support")),
              "placed": placed}
    drawer = ("<aside id='word-view' hidden><button type='button' id='word-close' "
              "title='close'>×</button><h2>Texts for <span id='word-title'></span></h2><p "
              "id='word-support' class='path'></p><div id='word-texts'></div></aside>")
    body = (f"<h1>Discover · {esc(run.name)}</h1><p><a href='/runs/{run.id}'>overview</a>"
            f"{pair} · click any word for the texts where the two models differ most on it."
            f"</p>{_hypothesis(d, examples)}{stage_html}{_methods(d)}{_grid(grid, d)}"
            f"{_steering(steering, d)}{_amplify(d)}{drawer}")
    return page(f"Discover · {run.name}", body, scripts=["common.js", "shade.js",
                                                          "discover.js"], config=config)


def not_found_page(message: str) -> str:
    return page("Not found", f"<h1>Not found</h1>{error_box(message)}")
