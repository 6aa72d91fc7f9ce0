// The token diff of a stored collapse divergence run: each text once per model, each token
// shaded by that model's value of a statistic (shade.js), its values on hover.
// CONFIG: {api: the run's JSON endpoints, stats: {name: [base column, tuned column, label]}}.
let TEXTS = [];
async function show() {
  const id = document.getElementById('text').value;
  const stat = document.getElementById('stat').value;
  const r = await fetch(`${CONFIG.api}/tokens?text_id=${encodeURIComponent(id)}`);
  const d = await r.json();
  const err = document.getElementById('tokens-error');
  if (!r.ok) { err.textContent = d.error; err.style.display = ''; return; }
  err.style.display = 'none';
  const [bcol, tcol, label] = CONFIG.stats[stat];
  const vals = d.tokens.flatMap(t => [t[bcol], t[tcol]]).filter(v => typeof v === 'number');
  const scale = Math.max(1e-9, ...vals.map(v => stat === 'logprob' ? -v : Math.abs(v)));
  const panels = [['base', bcol], ['tuned', tcol]].map(([model, key]) => {
    const spans = d.tokens.map(t => {
      const v = t[key], a = intensity(stat, v, scale);
      const tip = ['t ' + t.t, 'KL(tuned‖base) ' + num(t.kl_tuned_base),
        'KL(base‖tuned) ' + num(t.kl_base_tuned), 'entropy base ' + num(t.base_entropy) +
        ', tuned ' + num(t.tuned_entropy), 'log-prob base ' + num(t.base_logprob) +
        ', tuned ' + num(t.tuned_logprob), 'log-prob tuned − base ' + num(t.tuned_minus_base)]
        .join('\n');
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
  const r = await fetch(`${CONFIG.api}/texts`);
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
