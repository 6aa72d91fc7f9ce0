// The discover view of a stored discover run: every word opens the texts where the two
// models differ most on it; the α slider shows the amplified samples at that α; the
// Patchscope grid is shaded by probability (shade.js).
// CONFIG: {api: the run's discover endpoints, alphas: [α, ...], words: the hypothesis,
// support: {word: [methods]}, placed: whether a change's token can be marked in its text}.

// Text in pieces [[text, marked], ...] as HTML, the marked ones in <mark>.
function marked(pieces) {
  return pieces.map(([t, m]) => m ? `<mark>${esc(t)}</mark>` : esc(t)).join('');
}

// One text of the word view: before, the token at the change's position, after it; the
// word the tuned model then predicts more (or less) is shown after the token.
function wordText(t) {
  const sign = t.direction === 'up' ? 'raised' : 'lowered';
  const head = `text ${t.text}: the tuned model ${sign} “${esc(t.word)}” by ` +
    `${num(Math.abs(t.diff))} nats after token ${t.position}`;
  let body;
  if (t.placed) {
    const [[before], [at], [after]] = t.pieces;
    body = `${esc(before)}<mark class="at" title="token ${t.position}">${esc(at)}</mark>` +
      `<span class="then ${t.direction}">→ ${esc(t.word)}</span>${esc(after)}`;
  } else {
    body = marked(t.pieces);
  }
  return `<div class="wtext" data-text="${t.text}" data-direction="${esc(t.direction)}">` +
    `<div class="path">${head}</div><div class="gen">${body}</div></div>`;
}

let wordAsked = 0;
async function openWord(word) {
  const box = document.getElementById('word-view');
  const list = document.getElementById('word-texts');
  const asked = ++wordAsked;
  box.hidden = false;
  document.getElementById('word-title').textContent = word;
  // own keys only: a word such as "constructor" is no key of the support object
  const sup = Object.prototype.hasOwnProperty.call(CONFIG.support, word)
    ? CONFIG.support[word] : null;
  document.getElementById('word-support').textContent = Array.isArray(sup)
    ? `in the hypothesis, listed by ${sup.join(', ')}` : '';
  document.querySelectorAll('.word.selected').forEach(b => b.classList.remove('selected'));
  document.querySelectorAll('.word').forEach(b => {
    if (b.dataset.word === word) b.classList.add('selected'); });
  list.innerHTML = '<p>loading…</p>';
  const r = await fetch(`${CONFIG.api}/word?word=${encodeURIComponent(word)}`);
  const d = await r.json();
  if (asked !== wordAsked) return;  // a later click wins
  if (!r.ok) { list.innerHTML = `<div class="error">${esc(d.error)}</div>`; return; }
  const matched = d.matched.length && (d.matched.length > 1 || d.matched[0] !== d.word)
    ? `<p class="path">texts of ${d.matched.map(esc).join(', ')}</p>` : '';
  const where = d.texts.length && !CONFIG.placed
    ? '<p class="path">This run stores no token positions (an older difflens wrote it), ' +
      'so each text is shown whole.</p>' : '';
  list.innerHTML = (d.note ? `<p>${esc(d.note)}</p>` : '') + matched + where +
    d.texts.map(wordText).join('');
}

let alphaAsked = 0;
async function showAlpha() {
  const i = Number(document.getElementById('alpha').value);
  const alpha = CONFIG.alphas[i];
  const asked = ++alphaAsked;
  document.getElementById('alpha-value').textContent = `α = ${alpha}`;
  document.querySelectorAll('#alpha-table tr[data-i]').forEach(tr =>
    tr.classList.toggle('sel', Number(tr.dataset.i) === i));
  const row = document.querySelector(`#alpha-table tr[data-i="${i}"]`);
  const cells = row ? [...row.querySelectorAll('td')].map(td => td.textContent) : [];
  document.getElementById('alpha-stats').textContent = cells.length
    ? `hypothesis rate ${cells[1]} · distinct-2 ${cells[2]} · perplexity ${cells[3]}` : '';
  const r = await fetch(`${CONFIG.api}/samples?alpha=${encodeURIComponent(alpha)}`);
  const d = await r.json();
  if (asked !== alphaAsked) return;  // the slider moved on
  const err = document.getElementById('samples-error');
  if (!r.ok) { err.textContent = d.error; err.style.display = ''; return; }
  err.style.display = 'none';
  const shown = d.samples.length < d.total ? ` (the first ${d.samples.length} shown)` : '';
  document.getElementById('samples-status').textContent =
    `${d.marked} of ${d.samples.length} samples at α = ${alpha} hold a hypothesis word` +
    ` (marked); ${d.total} samples${shown}.`;
  const list = document.getElementById('samples');
  list.dataset.alpha = alpha;
  list.innerHTML = d.samples.map(s => `<li class="gen" data-sample="${s.sample}">` +
    `${marked(s.pieces)}</li>`).join('');
}

// The Patchscope grid: each cell shaded by its probability, on one scale for the grid.
function shadeGrid() {
  const cells = [...document.querySelectorAll('#grid td[data-p]')];
  const scale = Math.max(1e-9, ...cells.map(td => Number(td.dataset.p)));
  cells.forEach(td => {
    const v = Number(td.dataset.p), a = intensity('probability', v, scale);
    td.dataset.intensity = a;
    td.style.background = colour('probability', v, a);
  });
}

document.addEventListener('click', e => {
  const w = e.target.closest('.word[data-word]');
  if (w) openWord(w.dataset.word);
});
document.getElementById('word-close').onclick = () => {
  document.getElementById('word-view').hidden = true;
  document.querySelectorAll('.word.selected').forEach(b => b.classList.remove('selected'));
};
shadeGrid();
const slider = document.getElementById('alpha');
if (slider && CONFIG.alphas.length) { slider.oninput = showAlpha; showAlpha(); }
