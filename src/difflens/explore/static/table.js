// The table view: a page of a run's Parquet table, sorted and filtered on the server.
// CONFIG: {table: the table's path in the run, api: its JSON endpoint}.
const state = {offset: 0, size: 50, sort: null, desc: false, fcol: '', fop: 'contains', fval: ''};
async function load() {
  const q = new URLSearchParams({path: CONFIG.table, offset: state.offset, size: state.size});
  if (state.sort) { q.set('sort', state.sort); q.set('desc', state.desc ? '1' : '0'); }
  if (state.fcol && state.fval !== '') {
    q.set('filter_column', state.fcol); q.set('filter_op', state.fop);
    q.set('filter_value', state.fval);
  }
  const r = await fetch(CONFIG.api + '?' + q);
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
  const body = d.rows.map(r => '<tr>' + r.map(v => `<td>${esc(cellText(v))}</td>`).join('') +
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
// A cell: missing as a dash, fractions to 5 significant digits, anything else as it is.
function cellText(v) { return v === null ? '—' : (typeof v === 'number' && !Number.isInteger(v)
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
