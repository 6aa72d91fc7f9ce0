// The atlas view: every point of a trajectories run on a longitude/latitude map (plotly
// scattergl), and a clicked point's paths on the 3-D sphere.
// CONFIG: {api: the points' JSON endpoint, path_api: one prompt's paths}.
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
function draw() {
  const by = document.getElementById('colour').value;
  const needle = document.getElementById('search').value.trim().toLowerCase();
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
  const r = await fetch(`${CONFIG.path_api}?prompt_id=${encodeURIComponent(pid)}` +
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
  const r = await fetch(CONFIG.api);
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
