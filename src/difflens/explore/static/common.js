// Shared by every page of the explorer that runs a script: the page's config, HTML
// escaping and numbers for people.

// What the server tells the page (API addresses, the run's choices, the live models): the
// JSON of <script type="application/json" id="config">.
const CONFIG = JSON.parse((document.getElementById('config') || {}).textContent || '{}');

// Text for HTML (and plotly labels): the escapes of difflens.inputs.tokens.format_token,
// quotes as numeric references (plotly knows no &quot;).
const ESCAPES = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&#34;', "'": '&#39;'};
function esc(s) { return String(s).replace(/[&<>"']/g, c => ESCAPES[c]); }

// A number to 4 significant digits; anything else (a missing value) as a dash.
function num(v) { return typeof v === 'number' ? Number(v.toPrecision(4)) : '—'; }
