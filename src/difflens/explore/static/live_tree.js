// The live multiverse: each model's tree of likely continuations; a click expands or
// folds a node, ▸ continue runs every model greedily from a branch.
let T = null;
function nodeHtml(m, n) {
  const kids = n.children.length ? `<ul class="tree">${n.children.map(c => nodeHtml(m, c))
    .join('')}</ul>` : '';
  return `<li><span class="node" data-model="${esc(m)}" data-path="${n.path.join(',')}" ` +
    `data-prob="${n.prob}" data-seq="${n.seq_prob}" data-expanded="${n.children.length ? 1 : 0}" ` +
    `style="background:rgba(76,114,176,${(0.35 * n.seq_prob).toFixed(3)})">` +
    `${esc(n.shown)} <span class="p">p=${num(n.prob)} · ` +
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
    'note: this path\'s text tokenizes differently; its children are those of the text';
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
