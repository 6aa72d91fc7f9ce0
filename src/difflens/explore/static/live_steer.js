// The live steer-and-monitor view: greedy generations, unsteered and steered, each
// token shaded by the probe's score.
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
