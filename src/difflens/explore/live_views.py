"""The pages of the live views (typed text, multiverse, steer and monitor): plain HTML with
a little JavaScript each, which posts to the ``/api/live/...`` endpoints of
:mod:`difflens.explore.app` and draws what comes back.
"""

import json
from typing import Any

from difflens.explore.live import NO_MODELS
from difflens.explore.views import SHADE_JS, error_box, esc, page

#: JavaScript every live page shares: escaping, numbers, posting JSON, showing errors.
COMMON_JS = """
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;',
  '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c])); }
function num(v) { return typeof v === 'number' ? Number(v.toPrecision(4)) : '—'; }
async function post(url, body) {
  const r = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json'},
                              body: JSON.stringify(body)});
  const d = await r.json();
  const e = document.getElementById('live-error');
  if (!r.ok) { e.textContent = d.error; e.style.display = ''; return null; }
  e.style.display = 'none';
  return d;
}
function intval(id) { const v = document.getElementById(id).value;
  return /^-?\\d+$/.test(v.trim()) ? Number(v) : v; }
function numval(id) { const v = document.getElementById(id).value;
  return v.trim() !== '' && isFinite(Number(v)) ? Number(v) : v; }
"""


def _live_page(title: str, intro: str, form: str, result: str, script: str,
               info: dict[str, Any] | None) -> str:
    if info is None:
        return page(title, f"<h1>{esc(title)}</h1><p>{intro}</p>{error_box(NO_MODELS)}")
    models = ", ".join(f"{esc(k)}: <b>{esc(v)}</b>" for k, v in info["models"].items())
    body = (f"<h1>{esc(title)}</h1><p>{intro}</p><p class='path'>Models: {models}</p>"
            f"<section class='panel'>{form}<div id='live-error' class='error' role='alert' "
            f"style='display:none'></div><div id='live-status'></div>{result}</section>"
            f"<script>const INFO = {json.dumps(info)};{COMMON_JS}{script}</script>")
    return page(title, body)


# -- typed text -----------------------------------------------------------------------------

TEXT_JS = SHADE_JS + """
let D = null, PINNED = null;
function row(t) { return t === 'next' ? D.next : D.tokens.find(x => String(x.t) === t); }
function showTop(t) {
  const r = row(t);
  if (!r) return;
  const where = t === 'next' ? 'after the text' : `at token ${t} «${esc(r.text)}» ` +
    '(what each model expected in its place)';
  const tables = D.models.map(m => {
    const rows = (r.top[m] || []).map(x => `<tr data-token-id="${x.token_id}"><td>` +
      `<code>${esc(JSON.stringify(x.text))}</code></td><td class="p">${num(x.prob)}</td>` +
      `<td class="bar"><div class="fill" style="width:${(100 * x.prob).toFixed(1)}%">` +
      `</div></td></tr>`).join('');
    return `<div><h4>${esc(m)}</h4><table class="topk" data-model="${esc(m)}">${rows}` +
      `</table></div>`;
  }).join('');
  document.getElementById('topk').innerHTML =
    `<p>Top ${D.top_k} next tokens ${where}</p><div class="side">${tables}</div>`;
}
function draw() {
  if (!D) return;
  const stat = document.getElementById('stat').value;
  const s = INFO.statistics[stat];
  const vals = D.tokens.flatMap(t => D.models.map(m => t[s.columns[m]]))
    .filter(v => typeof v === 'number');
  const scale = Math.max(1e-9, ...vals.map(v => stat === 'logprob' ? -v : Math.abs(v)));
  const panels = D.models.map(m => {
    const key = s.columns[m];
    const spans = D.tokens.map(t => {
      const v = t[key], a = intensity(stat, v, scale);
      const tip = [`KL(tuned‖base) ${num(t.kl_tuned_base)}`,
        `KL(base‖tuned) ${num(t.kl_base_tuned)}`].concat(D.models.map(x =>
        `${x}: entropy ${num(t[x + '_entropy'])}, log-prob ${num(t[x + '_logprob'])}`));
      return `<span class="tok" data-t="${t.t}" data-value="${v}" data-intensity="${a}" ` +
        `title="${esc(tip.join('\\n'))}" style="background:${colour(stat, v, a)}">` +
        `${esc(t.text)}</span>`;
    }).join('') + '<span class="tok next" data-t="next" title="next token">⟶</span>';
    return `<h3>${esc(m)} <small>(${esc(s.label)})</small></h3><div class="tokens" ` +
      `data-model="${esc(m)}">${spans}</div>`;
  });
  document.getElementById('panels').innerHTML =
    `<p>${D.n_tokens} tokens; colour scale 0–${num(scale)}. Hover a token for both ` +
    `models' top ${D.top_k}; click to keep it.</p>` + panels.join('');
  document.querySelectorAll('#panels .tok').forEach(el => {
    el.onmouseenter = () => showTop(el.dataset.t);
    el.onmouseleave = () => { if (PINNED !== null) showTop(PINNED); };
    el.onclick = () => {
      PINNED = el.dataset.t;
      document.querySelectorAll('#panels .tok').forEach(x =>
        x.classList.toggle('pinned', x.dataset.t === PINNED));
      showTop(PINNED);
    };
  });
  if (PINNED !== null) showTop(PINNED);
}
async function score(e) {
  if (e) e.preventDefault();
  document.getElementById('live-status').textContent = 'scoring…';
  const top_k = intval('top_k');
  const d = await post('/api/live/score', {text: document.getElementById('text').value, top_k});
  document.getElementById('live-status').textContent = '';
  if (!d) return;
  D = d; D.top_k = top_k; PINNED = null;
  document.getElementById('topk').innerHTML = '';
  draw();
}
const sel = document.getElementById('stat');
Object.entries(INFO.statistics).forEach(([k, v]) => sel.add(new Option(v.label, k)));
sel.onchange = draw;
document.getElementById('form').onsubmit = score;
// ?text=...: a text handed over by another view (e.g. a stored run's token diff), scored now
const given = new URLSearchParams(location.search).get('text');
if (given) { document.getElementById('text').value = given; score(); }
"""


def text_page(info: dict[str, Any] | None) -> str:
    top = info["limits"]["max_top_k"] if info else 10
    form = (f"<form id='form'><textarea id='text' rows='3' style='width:100%' placeholder="
            f"'type a text to score'></textarea><div class='controls'>Statistic <select "
            f"id='stat'></select> Top-k <input id='top_k' value='5' size='3' title='1 to "
            f"{top}'><button id='score'>score</button></div></form>")
    result = "<div id='panels'></div><div id='topk'></div>"
    intro = ("Type a text: each model scores it, and it is shown once per model, each token "
             "shaded by that model's value of the statistic (computed from the distribution "
             "that predicted the token). Hover or click a token for both models' top next "
             "tokens at that place; ⟶ shows what they expect after the text.")
    return _live_page("Type text", intro, form, result, TEXT_JS, info)


# -- the multiverse -------------------------------------------------------------------------

TREE_JS = """
let T = null;
function nodeHtml(m, n) {
  const kids = n.children.length ? `<ul class="tree">${n.children.map(c => nodeHtml(m, c))
    .join('')}</ul>` : '';
  return `<li><span class="node" data-model="${esc(m)}" data-path="${n.path.join(',')}" ` +
    `data-prob="${n.prob}" data-seq="${n.seq_prob}" data-expanded="${n.children.length ? 1 : 0}" ` +
    `style="background:rgba(76,114,176,${(0.35 * n.seq_prob).toFixed(3)})">` +
    `${esc(JSON.stringify(n.text))} <span class="p">p=${num(n.prob)} · ` +
    `P(path)=${num(n.seq_prob)}</span></span><button class="loom" data-path=` +
    `"${n.path.join(',')}" title="continue greedily from here">▸ continue</button>${kids}</li>`;
}
function bind() {
  document.querySelectorAll('.node').forEach(el => el.onclick = () => expand(el));
  document.querySelectorAll('.loom').forEach(el => el.onclick = () => loom(el.dataset.path));
}
function pathOf(s) { return s === '' ? [] : s.split(',').map(Number); }
async function grow(e) {
  if (e) e.preventDefault();
  document.getElementById('live-status').textContent = 'growing…';
  const d = await post('/api/live/tree', {prompt: document.getElementById('prompt').value,
    depth: intval('depth'), top_k: intval('top_k')});
  document.getElementById('live-status').textContent = '';
  if (!d) return;
  T = d;
  document.getElementById('trees').innerHTML = Object.entries(d.trees).map(([m, root]) =>
    `<div><h3>${esc(m)}</h3><div class="tree" data-model="${esc(m)}"><span class="root">` +
    `${esc(d.prompt)}</span> <button class="loom" data-path="">▸ continue</button>` +
    `<ul class="tree">${root.children.map(c => nodeHtml(m, c)).join('')}</ul></div></div>`)
    .join('');
  document.getElementById('loom-out').innerHTML = '';
  bind();
}
async function expand(el) {
  const li = el.parentElement;
  const sub = li.querySelector(':scope > ul');
  if (sub) { sub.style.display = sub.style.display === 'none' ? '' : 'none'; return; }
  const d = await post('/api/live/expand', {model: el.dataset.model, prompt: T.prompt,
    path: pathOf(el.dataset.path), top_k: intval('top_k')});
  if (!d) return;
  const seq = Number(el.dataset.seq);
  d.children.forEach(c => { c.seq_prob = c.prob * seq; });
  li.insertAdjacentHTML('beforeend', `<ul class="tree">${d.children.map(c =>
    nodeHtml(el.dataset.model, c)).join('')}</ul>`);
  el.dataset.expanded = '1';
  if (!d.exact) document.getElementById('live-status').textContent =
    'note: this path\\'s text tokenizes differently; its children are those of the text';
  bind();
}
async function loom(path) {
  document.getElementById('live-status').textContent = 'continuing…';
  const d = await post('/api/live/continue', {prompt: T.prompt, path: pathOf(path),
    max_new_tokens: intval('max_new_tokens')});
  document.getElementById('live-status').textContent = '';
  if (!d) return;
  document.getElementById('loom-out').innerHTML = `<h3>Greedy continuations of ` +
    `<code>${esc(JSON.stringify(d.branch))}</code></h3><div class="side">` +
    Object.entries(d.continuations).map(([m, c]) => `<div><h4>${esc(m)}</h4><div ` +
    `class="gen" data-model="${esc(m)}"><b>${esc(d.branch)}</b>${esc(c.text)}</div></div>`)
    .join('') + '</div>';
}
document.getElementById('form').onsubmit = grow;
"""


def tree_page(info: dict[str, Any] | None) -> str:
    lim = info["limits"] if info else {"max_depth": 5, "max_top_k": 10, "max_new_tokens": 64}
    form = (f"<form id='form' class='controls'>Prompt <input id='prompt' size='50' "
            f"placeholder='a prompt'> Depth <input id='depth' value='2' size='2' title='1 to "
            f"{lim['max_depth']}'> Top-k <input id='top_k' value='3' size='2' title='1 to "
            f"{lim['max_top_k']}'> Continue for <input id='max_new_tokens' value='20' "
            f"size='3' title='1 to {lim['max_new_tokens']}'> tokens <button id='grow'>grow"
            f"</button></form>")
    result = "<div id='trees' class='side'></div><div id='loom-out'></div>"
    intro = ("The most likely continuations of a prompt as a tree, each model on its own "
             "side: p is the probability of a token after its path, P(path) that of the whole "
             "path. Click a node to expand it (its top-k children, computed now) or fold it; "
             "▸ continue runs every model greedily from that branch.")
    return _live_page("Multiverse", intro, form, result, TREE_JS, info)


# -- steer and monitor ----------------------------------------------------------------------

STEER_JS = """
function layers() {
  const v = INFO.vectors.find(x => x.id === document.getElementById('vector').value);
  const sel = document.getElementById('layer');
  sel.innerHTML = '';
  if (!v) return;
  v.layers.forEach(l => sel.add(new Option(l, l)));
  sel.value = v.layers[Math.floor(v.layers.length / 2)];
}
function genHtml(m, kind, g, threshold) {
  const spans = g.tokens.map(t => {
    const s = t.score, a = typeof s === 'number' ? s : 0;
    const over = typeof s === 'number' && threshold !== null && s > threshold;
    return `<span class="tok" data-score="${s === null ? '' : s}" data-over="${over ? 1 : 0}"` +
      ` title="score ${num(s)}, steering ${num(t.coef)}" style="background:` +
      `rgba(214,39,40,${(0.8 * a).toFixed(3)})">${esc(t.text)}</span>`;
  }).join('');
  return `<h4>${kind}</h4><div class="gen" data-model="${esc(m)}" data-kind="${kind}" ` +
    `data-text="${esc(g.text)}">${spans}</div>`;
}
async function run(e) {
  if (e) e.preventDefault();
  document.getElementById('live-status').textContent = 'generating…';
  const body = {prompt: document.getElementById('prompt').value,
    vector: document.getElementById('vector').value || null,
    alpha: numval('alpha'), probe: document.getElementById('probe').value || null,
    controller: document.getElementById('controller').value, gain: numval('gain'),
    max_new_tokens: intval('max_new_tokens')};
  if (body.vector) body.layer = intval('layer');
  const d = await post('/api/live/steer', body);
  document.getElementById('live-status').textContent = '';
  if (!d) return;
  const what = (d.vector ? `α=${d.alpha} × ${d.vector} at layer ${d.layer}` : 'no vector') +
    (d.probe ? `; probe ${d.probe} (threshold ${num(d.threshold)}), controller ` +
     `${d.controller} gain ${d.gain}` : '; no probe');
  document.getElementById('gens').innerHTML = `<p>${esc(what)}</p>` +
    d.notes.map(n => `<p class="path">note: ${esc(n)}</p>`).join('') +
    '<div class="side">' + Object.entries(d.models).map(([m, g]) => `<div><h3>${esc(m)}` +
    `</h3>${genHtml(m, 'unsteered', g.plain, d.threshold)}` +
    `${genHtml(m, 'steered', g.steered, d.threshold)}</div>`).join('') + '</div>';
}
const vs = document.getElementById('vector');
INFO.vectors.forEach(v => vs.add(new Option(v.id, v.id)));
vs.onchange = layers;
const ps = document.getElementById('probe');
INFO.probes.forEach(p => ps.add(new Option(`${p.id} (layer ${p.layer})`, p.id)));
const cs = document.getElementById('controller');
INFO.controllers.forEach(c => cs.add(new Option(c, c)));
document.getElementById('form').onsubmit = run;
"""


def steer_page(info: dict[str, Any] | None) -> str:
    lim = info["limits"] if info else {"max_alpha": 1000, "max_gain": 100,
                                       "max_new_tokens": 64}
    problems = "".join(f"<p class='path'>not usable: {esc(p)}</p>"
                       for p in (info or {}).get("problems", []))
    none = ("" if info is None or info["vectors"] or info["probes"] else
            "<p class='path'>No concept vectors or probes in the runs given: pass the --out "
            "folder of `difflens concepts extract` or `difflens control train-probe` to "
            "difflens explore.</p>")
    form = (f"{none}{problems}<form id='form'><div class='controls'>Prompt <input id='prompt' "
            f"size='50' placeholder='a prompt'> Tokens <input id='max_new_tokens' value='20' "
            f"size='3' title='1 to {lim['max_new_tokens']}'></div><div class='controls'>"
            f"Vector <select id='vector'><option value=''>(none)</option></select> Layer "
            f"<select id='layer'></select> α <input id='alpha' value='0' size='5' title="
            f"'-{lim['max_alpha']} to {lim['max_alpha']}'></div><div class='controls'>Probe "
            f"<select id='probe'><option value=''>(none)</option></select> Controller "
            f"<select id='controller'></select> Gain <input id='gain' value='0' size='4' "
            f"title='0 to {lim['max_gain']}'><button id='generate'>generate</button></div>"
            f"</form>")
    intro = ("Generate greedily from every model, unsteered and steered: α times a concept "
             "vector added to the residual stream at a layer, and a controller acting on a "
             "state probe. With a probe, each token is shaded by its score (measured before "
             "any steering at its position).")
    return _live_page("Steer and monitor", intro, form, "<div id='gens'></div>", STEER_JS, info)
