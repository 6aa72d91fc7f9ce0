"""The explorer's pages: plain HTML with a little JavaScript each, no front-end framework.

Every page is built from escaped strings; the data of the table, atlas and token views
comes from the JSON endpoints of :mod:`difflens.explore.app` after the page has loaded.
"""

import html
import json
from collections.abc import Sequence
from typing import Any

from difflens.explore.runs import FILTER_OPS, Run, Summary

CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#2d3e50;color:#fff;padding:.6em 1.2em}
header a{color:#fff;text-decoration:none;margin-right:1.2em}
main{max-width:1200px;margin:1em auto;padding:0 1em}
section.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em 1.2em;
margin-bottom:1em}
.error{background:#fdecea;border:1px solid #f5c2c0;color:#8a1f11;padding:.6em 1em;
border-radius:4px}
table{border-collapse:collapse;font-size:.9em}
td,th{border-bottom:1px solid #e4e4e4;padding:3px 10px;text-align:left;vertical-align:top}
th.sortable{cursor:pointer;user-select:none}
th.sortable:hover{background:#eef}
.path{color:#666;font-size:.85em}
.figs{display:flex;flex-wrap:wrap;gap:1em}
.figs figure{margin:0;width:360px}
.figs img{width:100%;border:1px solid #eee}
.tok{white-space:pre-wrap;border-radius:2px;padding:1px 0}
.tokens{font-family:ui-monospace,monospace;line-height:1.9;background:#fff;padding:.6em;
border:1px solid #eee}
#tip{position:fixed;display:none;background:#222;color:#fff;font-size:.8em;padding:.4em .6em;
border-radius:4px;pointer-events:none;white-space:pre}
.controls{margin:.5em 0;display:flex;gap:.6em;flex-wrap:wrap;align-items:center}
.side{display:flex;gap:1em;flex-wrap:wrap}.side>div{flex:1;min-width:320px}
.tok.pinned{outline:2px solid #2d3e50}.tok.next{color:#888}
.topk td.bar{width:120px}.topk .fill{background:#4c72b0;height:.8em}
ul.tree{list-style:none;padding-left:1.1em;margin:0;border-left:1px dotted #bbb}
.node{cursor:pointer;font-family:ui-monospace,monospace;white-space:pre;padding:0 .3em;
border-radius:3px}.node:hover{background:#eef}.node .p{color:#666;font-size:.85em}
.loom{font-size:.75em;margin-left:.4em;cursor:pointer}
.gen{font-family:ui-monospace,monospace;line-height:1.9;background:#fff;padding:.4em;
border:1px solid #eee;min-height:1.5em}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, *, scripts: Sequence[str] = ()) -> str:
    """A whole page: header with the way back to the runs, ``body``, then ``scripts``."""
    tags = "".join(f"<script src='{esc(s)}'></script>" for s in scripts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)} · difflens "
            f"explore</title><style>{CSS}</style>{tags}</head><body><header><a href='/'>"
            f"<b>difflens explore</b></a><a href='/'>Runs</a><a href='/live/text'>Type text</a>"
            f"<a href='/live/tree'>Multiverse</a><a href='/live/steer'>Steer</a></header>"
            f"<main>{body}</main>"
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


def _interval(value: dict[str, Any]) -> tuple[Any, Any] | None:
    """``(lo, hi)`` of ``{mean, ci95: [lo, hi], n}`` or ``{mean, ci_low, ci_high, n}``."""
    if "mean" not in value or len(value) > 4:
        return None
    if isinstance(value.get("ci95"), list) and len(value["ci95"]) == 2:
        return value["ci95"][0], value["ci95"][1]
    if "ci_low" in value and "ci_high" in value:
        return value["ci_low"], value["ci_high"]
    return None


def render_value(value: Any, depth: int = 0) -> str:
    """A summary value as HTML: objects as key/value tables, lists of records as tables,
    ``{mean, ci95, n}`` and ``{mean, ci_low, ci_high, n}`` as ``mean [lo, hi] n=``."""
    if isinstance(value, dict):
        ci = _interval(value)
        if ci is not None:
            lo, hi = ci
            n = f" n={value['n']}" if "n" in value else ""
            return esc(f"{fmt(value['mean'])} [{fmt(lo)}, {fmt(hi)}]{n}")
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

TABLE_JS = """
const state = {offset: 0, size: 50, sort: null, desc: false, fcol: '', fop: 'contains', fval: ''};
async function load() {
  const q = new URLSearchParams({path: TABLE, offset: state.offset, size: state.size});
  if (state.sort) { q.set('sort', state.sort); q.set('desc', state.desc ? '1' : '0'); }
  if (state.fcol && state.fval !== '') {
    q.set('filter_column', state.fcol); q.set('filter_op', state.fop);
    q.set('filter_value', state.fval);
  }
  const r = await fetch(API + '?' + q);
  const d = await r.json();
  const err = document.getElementById('table-error');
  if (!r.ok) { err.textContent = d.error; err.style.display = ''; return; }
  err.style.display = 'none';
  const sel = document.getElementById('fcol');
  if (!sel.options.length) d.columns.forEach(c => sel.add(new Option(c, c)));
  const head = d.columns.map((c, i) => {
    const arrow = state.sort === c ? (state.desc ? ' ▼' : ' ▲') : '';
    return `<th class="sortable" data-col="${esc(c)}" title="${esc(d.types[i])}">` +
           `${esc(c)}${arrow}</th>`;
  }).join('');
  const body = d.rows.map(r => '<tr>' + r.map(v => `<td>${esc(fmt(v))}</td>`).join('') +
                          '</tr>').join('');
  document.getElementById('grid').innerHTML =
    `<thead><tr>${head}</tr></thead><tbody>${body}</tbody>`;
  document.querySelectorAll('th.sortable').forEach(th => th.onclick = () => {
    const c = th.dataset.col;
    state.desc = state.sort === c ? !state.desc : true;
    state.sort = c; state.offset = 0; load();
  });
  const last = Math.min(d.offset + d.rows.length, d.total);
  document.getElementById('table-status').textContent =
    d.total ? `rows ${d.offset + 1}–${last} of ${d.total}` : 'no rows';
  document.getElementById('prev').disabled = d.offset === 0;
  document.getElementById('next').disabled = last >= d.total;
}
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;',
  '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c])); }
function fmt(v) { return v === null ? '—' : (typeof v === 'number' && !Number.isInteger(v)
  ? Number(v.toPrecision(5)) : v); }
document.getElementById('prev').onclick = () => {
  state.offset = Math.max(0, state.offset - state.size); load(); };
document.getElementById('next').onclick = () => { state.offset += state.size; load(); };
document.getElementById('filter').onsubmit = e => {
  e.preventDefault();
  state.fcol = document.getElementById('fcol').value;
  state.fop = document.getElementById('fop').value;
  state.fval = document.getElementById('fval').value;
  state.offset = 0; load();
};
load();
"""


def table_page_html(run: Run, rel: str) -> str:
    ops = "".join(f"<option>{esc(o)}</option>" for o in FILTER_OPS)
    body = (f"<h1>{esc(rel)}</h1><p><a href='/runs/{run.id}'>{esc(run.name)}</a></p>"
            f"<section class='panel'><form id='filter' class='controls'>Filter <select "
            f"id='fcol'></select><select id='fop'>{ops}</select><input id='fval' "
            f"placeholder='value'><button>apply</button></form><div class='controls'><button "
            f"id='prev'>◀ previous</button><span id='table-status'>loading…</span><button "
            f"id='next'>next ▶</button></div><div id='table-error' class='error' "
            f"style='display:none'></div><table id='grid'></table></section>"
            f"<script>const TABLE = {json.dumps(rel)}; const API = "
            f"'/api/runs/{run.id}/table';{TABLE_JS}</script>")
    return page(rel, body)


# -- atlas ----------------------------------------------------------------------------------

ATLAS_JS = """
let D = null;
const PALETTE = ['#4c72b0', '#dd8452', '#55a868', '#c44e52', '#8172b3', '#937860', '#da8bc3',
                 '#8c8c8c', '#ccb974', '#64b5cd'];
function value(col, i) {
  const c = D.columns[col];
  if (!c) return null;
  return c.kind === 'cat' ? (c.codes[i] < 0 ? null : c.levels[c.codes[i]]) : c.values[i];
}
function hover(i) {
  const text = value('text', i) || '';
  const parts = [`<b>${esc(value('token', i))}</b>`];
  for (const k of ['model', 'segment', 'step', 'jump', 'sentiment']) {
    const v = value(k, i);
    if (v !== null && v !== undefined) parts.push(`${k}: ${typeof v === 'number' ?
      Number(v.toPrecision(4)) : esc(v)}`);
  }
  if (text) parts.push(esc(text.length > 120 ? text.slice(0, 119) + '…' : text));
  return parts.join('<br>');
}
function esc(s) { return String(s).replace(/[&<>]/g, c => ({'&': '&amp;', '<': '&lt;',
  '>': '&gt;'}[c])); }
function draw() {
  const by = document.getElementById('colour').value;
  const needle = document.getElementById('search').value.trim().toLowerCase();
  const tok = D.columns.token;
  let keep = [];
  for (let i = 0; i < D.n; i++) {
    if (!needle || String(value('token', i)).toLowerCase().includes(needle)) keep.push(i);
  }
  const col = D.columns[by];
  const traces = [];
  const base = {type: 'scattergl', mode: 'markers', hoverinfo: 'text'};
  if (col.kind === 'cat' && col.levels.length <= 20) {
    col.levels.forEach((level, k) => {
      const idx = keep.filter(i => col.codes[i] === k);
      if (!idx.length) return;
      traces.push({...base, name: level, x: idx.map(i => D.lon[i]), y: idx.map(i => D.lat[i]),
        text: idx.map(hover), customdata: idx, marker: {size: 5,
        color: PALETTE[k % PALETTE.length], opacity: 0.75}});
    });
  } else {
    const c = col.kind === 'cat' ? keep.map(i => col.codes[i]) : keep.map(i => col.values[i]);
    traces.push({...base, name: by, x: keep.map(i => D.lon[i]), y: keep.map(i => D.lat[i]),
      text: keep.map(hover), customdata: keep, marker: {size: 5, color: c, colorscale: 'Viridis',
      showscale: true, colorbar: {title: {text: by}}, opacity: 0.8}});
  }
  const layout = {height: 640, margin: {t: 30}, template: 'plotly_white', hovermode: 'closest',
    xaxis: {title: {text: 'longitude (°)'}, range: [-180, 180]},
    yaxis: {title: {text: 'latitude (°)'}, range: [-90, 90]}, legend: {title: {text: by}}};
  Plotly.react('atlas', traces, layout, {responsive: true}).then(gd => {
    gd.removeAllListeners && gd.removeAllListeners('plotly_click');
    gd.on('plotly_click', ev => { if (ev.points.length) sphere(ev.points[0].customdata); });
  });
  document.getElementById('atlas-status').textContent = needle
    ? `${keep.length} of ${D.n} points match “${needle}”` : `${D.n} points`;
}
// The selected point's paths (its prompt and continuations, one model) on the 3-D sphere.
async function sphere(i) {
  const pid = value('prompt_id', i), model = value('model', i), seg = value('segment', i);
  const status = document.getElementById('sphere-status');
  const r = await fetch(`${PATH_API}?prompt_id=${encodeURIComponent(pid)}` +
                        `&model=${encodeURIComponent(model)}`);
  const d = await r.json();
  if (!r.ok) { status.textContent = d.error; return; }
  const u = [...Array(25).keys()].map(k => -Math.PI + 2 * Math.PI * k / 24);
  const w = [...Array(13).keys()].map(k => -Math.PI / 2 + Math.PI * k / 12);
  const traces = [{type: 'surface', x: w.map(b => u.map(a => Math.cos(b) * Math.cos(a))),
    y: w.map(b => u.map(a => Math.cos(b) * Math.sin(a))), z: w.map(b => u.map(() =>
    Math.sin(b))), opacity: 0.08, showscale: false, hoverinfo: 'skip',
    colorscale: [[0, '#999'], [1, '#999']]}];
  const segs = [...new Set(d.points.map(p => p.segment))];
  segs.forEach((s, k) => {
    const pts = d.points.filter(p => p.segment === s);
    traces.push({type: 'scatter3d', mode: 'lines+markers', name: s, x: pts.map(p => p.x),
      y: pts.map(p => p.y), z: pts.map(p => p.z), text: pts.map(p => esc(p.token)),
      hoverinfo: 'text', line: {width: s === seg ? 7 : 3, color: PALETTE[k % PALETTE.length]},
      marker: {size: s === seg ? 4 : 2, color: PALETTE[k % PALETTE.length]}});
  });
  traces.push({type: 'scatter3d', mode: 'markers', name: 'selected', x: [D_xyz(i, 0)],
    y: [D_xyz(i, 1)], z: [D_xyz(i, 2)], marker: {size: 8, color: '#000', symbol: 'diamond'},
    text: [esc(value('token', i))], hoverinfo: 'text'});
  Plotly.react('sphere', traces, {height: 560, margin: {t: 10}, showlegend: true,
    scene: {aspectmode: 'cube'}}, {responsive: true});
  status.textContent = `prompt ${pid}, ${model}: ${segs.length} paths, ` +
    `${d.points.length} points; the selected point's path (${seg}) is drawn thick`;
}
function D_xyz(i, k) {
  const lon = D.lon[i] * Math.PI / 180, lat = D.lat[i] * Math.PI / 180;
  return [Math.cos(lat) * Math.cos(lon), Math.cos(lat) * Math.sin(lon), Math.sin(lat)][k];
}
async function start() {
  const r = await fetch(API);
  const d = await r.json();
  if (!r.ok) {
    const e = document.getElementById('atlas-error'); e.textContent = d.error;
    e.style.display = ''; document.getElementById('atlas-status').textContent = ''; return;
  }
  D = d;
  const sel = document.getElementById('colour');
  D.colour_by.forEach(c => sel.add(new Option(c, c)));
  sel.onchange = draw;
  let t = null;
  document.getElementById('search').oninput = () => { clearTimeout(t); t = setTimeout(draw, 200); };
  draw();
}
start();
"""


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
            f"the 3-D sphere.</p><div id='sphere'></div></section><script>const API = "
            f"'/api/runs/{run.id}/atlas', PATH_API = '/api/runs/{run.id}/path';{ATLAS_JS}"
            f"</script>")
    return page(f"Atlas · {run.name}", body, scripts=["/static/plotly.min.js"])


# -- token diff -----------------------------------------------------------------------------

#: How a token is shaded under a statistic (the stored and the live token views).
SHADE_JS = """
// Intensity in [0, 1]: how much a token stands out under the statistic.
function intensity(stat, v, scale) {
  if (v === null || typeof v !== 'number') return 0;
  if (stat === 'logprob') return Math.min(1, -v / scale);
  return Math.min(1, Math.abs(v) / scale);
}
function colour(stat, v, a) {
  if (stat === 'logprob_diff' && v < 0) return `rgba(33, 102, 172, ${a.toFixed(3)})`;
  return `rgba(214, 39, 40, ${a.toFixed(3)})`;
}
"""

TOKENS_JS = SHADE_JS + """
let TEXTS = [];
function esc(s) { return String(s).replace(/[&<>]/g, c => ({'&': '&amp;', '<': '&lt;',
  '>': '&gt;'}[c])); }
function num(v) { return typeof v === 'number' ? Number(v.toPrecision(4)) : v; }
async function show() {
  const id = document.getElementById('text').value;
  const stat = document.getElementById('stat').value;
  const r = await fetch(`${API}/tokens?text_id=${encodeURIComponent(id)}`);
  const d = await r.json();
  const err = document.getElementById('tokens-error');
  if (!r.ok) { err.textContent = d.error; err.style.display = ''; return; }
  err.style.display = 'none';
  const [bcol, tcol, label] = STATS[stat];
  const vals = d.tokens.flatMap(t => [t[bcol], t[tcol]]).filter(v => typeof v === 'number');
  const scale = Math.max(1e-9, ...vals.map(v => stat === 'logprob' ? -v : Math.abs(v)));
  const panels = [['base', bcol], ['tuned', tcol]].map(([model, key]) => {
    const spans = d.tokens.map(t => {
      const v = t[key], a = intensity(stat, v, scale);
      const tip = ['t ' + t.t, 'KL(tuned‖base) ' + num(t.kl_tuned_base),
        'KL(base‖tuned) ' + num(t.kl_base_tuned), 'entropy base ' + num(t.base_entropy) +
        ', tuned ' + num(t.tuned_entropy), 'log-prob base ' + num(t.base_logprob) +
        ', tuned ' + num(t.tuned_logprob), 'log-prob tuned − base ' + num(t.tuned_minus_base)]
        .join('\\n');
      return `<span class="tok" data-t="${t.t}" data-value="${v}" data-intensity="${a}" ` +
        `data-tip="${esc(tip)}" style="background:${colour(stat, v, a)}">${esc(t.text)}</span>`;
    }).join('');
    return `<h3>${model} <small>(${esc(label)})</small></h3><div class="tokens" ` +
           `data-model="${model}">${spans}</div>`;
  });
  const info = TEXTS.find(x => String(x.text_id) === String(id));
  const live = '/live/text?text=' + encodeURIComponent(d.tokens.map(t => t.text).join(''));
  document.getElementById('panels').innerHTML =
    `<p>text ${esc(id)}, sampled from ${esc(info ? info.source : '?')}; colour scale 0–` +
    `${num(scale)} · <a id="live-link" href="${live}">both models' top-k at each token ` +
    `(live, with --base/--tuned)</a></p>` + panels.join('');
  const tip = document.getElementById('tip');
  document.querySelectorAll('.tok').forEach(s => {
    s.onmouseenter = e => { tip.textContent = s.dataset.tip; tip.style.display = 'block'; };
    s.onmousemove = e => { tip.style.left = (e.clientX + 12) + 'px';
                           tip.style.top = (e.clientY + 12) + 'px'; };
    s.onmouseleave = () => { tip.style.display = 'none'; };
  });
}
async function start() {
  const r = await fetch(`${API}/texts`);
  const d = await r.json();
  if (!r.ok) { const e = document.getElementById('tokens-error'); e.textContent = d.error;
               e.style.display = ''; return; }
  TEXTS = d.texts;
  const sel = document.getElementById('text');
  TEXTS.forEach(x => sel.add(new Option(`${x.text_id} (${x.source}, max KL ` +
    `${num(x.max_kl)}): ${x.preview}`, x.text_id)));
  sel.onchange = show;
  document.getElementById('stat').onchange = show;
  if (TEXTS.length) show();
}
start();
"""


def tokens_page(run: Run, statistics: dict[str, tuple[str, str, str]]) -> str:
    opts = "".join(f"<option value='{esc(k)}'>{esc(v[2])}</option>"
                   for k, v in statistics.items())
    body = (f"<h1>Token diff · {esc(run.name)}</h1><p><a href='/runs/{run.id}'>overview</a> · "
            f"each text is shown once per model; a token's colour is that model's value of the "
            f"chosen statistic (KL and log-prob differences read as model ‖ other). Hover a "
            f"token for all its values.</p><section class='panel'><div class='controls'>Text "
            f"<select id='text' style='max-width:700px'></select> Statistic <select id='stat'>"
            f"{opts}</select></div><div id='tokens-error' class='error' style='display:none'>"
            f"</div><div id='panels'></div></section><div id='tip'></div><script>const API = "
            f"'/api/runs/{run.id}'; const STATS = {json.dumps(statistics)};{TOKENS_JS}"
            f"</script>")
    return page(f"Token diff · {run.name}", body)


def not_found_page(message: str) -> str:
    return page("Not found", f"<h1>Not found</h1>{error_box(message)}")
