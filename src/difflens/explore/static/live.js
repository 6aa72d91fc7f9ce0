// Shared by the live views (typed text, multiverse, steer): the models' info, posting JSON
// to /api/live/... and showing its error, and reading the form's numbers.
// CONFIG: {info: difflens.explore.live.info of the loaded models}.
const INFO = CONFIG.info;
async function post(url, body) {
  const r = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json'},
                              body: JSON.stringify(body)});
  const d = await r.json();
  const e = document.getElementById('live-error');
  if (!r.ok) { e.textContent = d.error; e.style.display = ''; return null; }
  e.style.display = 'none';
  return d;
}
// A whole number typed in a field, or the text itself (the server says what is wrong).
function intval(id) { const v = document.getElementById(id).value;
  return /^-?\d+$/.test(v.trim()) ? Number(v) : v; }
function numval(id) { const v = document.getElementById(id).value;
  return v.trim() !== '' && isFinite(Number(v)) ? Number(v) : v; }
