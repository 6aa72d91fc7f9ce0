// The live typed-text view: the text scored by every model, each token shaded by a
// statistic (shade.js), both models' top-k next tokens where the pointer is.
let D = null, PINNED = null;
function row(t) { return t === 'next' ? D.next : D.tokens.find(x => String(x.t) === t); }
function showTop(t) {
  const r = row(t);
  if (!r) return;
  const where = t === 'next' ? 'after the text' : `at token ${t} «${esc(r.text)}» ` +
    '(what each model expected in its place)';
  const tables = D.models.map(m => {
    const rows = (r.top[m] || []).map(x => `<tr data-token-id="${x.token_id}"><td>` +
      `<code>${esc(x.shown)}</code></td><td class="p">${num(x.prob)}</td>` +
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
        `title="${esc(tip.join('\n'))}" style="background:${colour(stat, v, a)}">` +
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
