// Fabrik dashboard: vanilla JS, no build step. Hash routes:
//   #/overview  #/devices  #/devices/<id>  #/explorer  #/pipelines[/<name>[/<window_id>]]  #/usecases[/<name>]
//   #/alerts[/<state>]  #/audit
// API base: same origin, or `?api=http://host:port` (needs the server to allow it, or dev/proxy.js).

const uPlot = window.uPlot;
const API = (new URLSearchParams(location.search).get('api') || '').replace(/\/+$/, '');
const main = document.getElementById('main');

// ---------------------------------------------------------------- helpers

class Raw { constructor(s) { this.s = s; } toString() { return this.s; } }
const raw = (s) => new Raw(String(s));
const isBlobId = (v) => typeof v === 'string' && /^sha256:[0-9a-f]{64}$/.test(v);
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const part = (v) => (v instanceof Raw ? v.s : Array.isArray(v) ? v.map(part).join('') : v === null || v === undefined || v === false ? '' : esc(v));
/** Tagged template: interpolations are escaped unless wrapped in raw() or produced by html``. */
function html(strings, ...vals) {
  let out = strings[0];
  vals.forEach((v, i) => { out += part(v) + strings[i + 1]; });
  return new Raw(out);
}
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const sqlStr = (s) => `'${String(s).replace(/'/g, "''")}'`;
const sqlId = (s) => `"${String(s).replace(/"/g, '""')}"`;
const enc = encodeURIComponent;

/** ms since epoch from ns integers, RFC 3339 strings, or the query engine's zone-less UTC strings. */
function toMs(v) {
  if (v === null || v === undefined || v === '') return NaN;
  if (typeof v === 'number') return v > 1e16 ? v / 1e6 : v > 1e13 ? v / 1e3 : v;
  let s = String(v).trim().replace(' ', 'T');
  s = s.replace(/(\.\d{3})\d+/, '$1');
  if (/T/.test(s) && !/(Z|[+-]\d\d:?\d\d)$/.test(s)) s += 'Z';
  return Date.parse(s);
}
const pad = (n) => String(n).padStart(2, '0');
function fmtTime(v, withDate = true) {
  const ms = toMs(v);
  if (!Number.isFinite(ms)) return '—';
  const d = new Date(ms);
  const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return withDate ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${t}` : t;
}
function fmtAgo(v) {
  const ms = toMs(v);
  if (!Number.isFinite(ms)) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
/** A span of seconds as people say it: 45 s, 10 min, 2 h, 3 d. */
function fmtDuration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}
function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || v === '') return '—';
  if (typeof v !== 'number') return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return v.toLocaleString('en-US');
  const a = Math.abs(v);
  if (a >= 1000) return v.toLocaleString('en-US', { maximumFractionDigits: 1 });
  return String(Number(v.toPrecision(digits)));
}
const time = (v) => html`<time datetime="${new Date(toMs(v) || 0).toISOString()}" title="${fmtTime(v)}">${fmtAgo(v)}</time>`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const STATE_CLASS = {
  online: 'ok', running: 'ok', firing: 'bad', failed: 'bad', offline: 'bad', pending: 'warn',
  stopped: 'warn', silent: 'warn', never: '', resolved: '', true_positive: 'bad', false_positive: 'ok',
};
/** Online by its connection, but nothing heard for a minute. */
const SILENT_AFTER_MS = 60000;
const isSilent = (d) => d.state === 'online' && (!d.last_seen || Date.now() - toMs(d.last_seen) > SILENT_AFTER_MS);
const pill = (state, label) => html`<span class="pill ${STATE_CLASS[state] ?? ''}">${label ?? String(state).replace('_', ' ')}</span>`;

/** A classifier's estimated performance (CBPE): the reference, then the newest chunks first,
 * each metric's estimate ± its sampling error (an alert outside the reference's thresholds)
 * and, once half the chunk's windows have outcomes, the realized value beside. */
function performanceView(r) {
  if (!r.reference) return html`<div class="notice warn" id="pl-perf-problem">${r.problem || 'No estimate yet.'}</div>`;
  const ref = r.reference;
  const bound = (b) => (b == null ? '—' : fmtNum(b, 3));
  const chunks = r.chunks.slice(-10).reverse();
  return html`${r.problem ? html`<div class="notice warn">${r.problem}</div>` : ''}<dl class="kv">
    <dt>Reference</dt><dd id="pl-perf-reference">${fmtNum(ref.windows)} windows with outcomes (${fmtNum(ref.positives)} positive) of ${fmtNum(ref.span_windows)} scored, ${fmtTime(ref.from)} – ${fmtTime(ref.until)}${ref.calibrated ? ', scores calibrated' : ''}${ref.fixed_at ? html` <span class="muted" title="later outcomes for earlier windows, or retention, do not move it; a new model version or chunk size finds a new one, and so does fabrik pipeline performance --new-reference">· fixed ${fmtTime(ref.fixed_at)}${ref.searched_from ? `, looked for from ${fmtTime(ref.searched_from)}` : ''}</span>` : ''}</dd>
    <dt>Alert outside</dt><dd>${ref.metrics.map((m) => html`<span class="tag">${m.metric} ${bound(m.lower_threshold)} – ${bound(m.upper_threshold)}</span> `)}</dd>
    <dt>Prediction</dt><dd>positive from probability ${fmtNum(r.decision_threshold)}, chunks of ${fmtNum(r.chunk)} windows${r.pending ? html` <span class="muted">(${fmtNum(r.pending)} scored since)</span>` : ''}</dd></dl>
    ${chunks.length ? html`<table id="pl-perf-chunks"><thead><tr><th>Chunk</th><th class="num">Outcomes</th>${r.metrics.map((m) => html`<th class="num">${m}</th><th class="num">realized</th>`)}</tr></thead><tbody>
      ${chunks.map((c) => html`<tr><td title="${`${fmtNum(c.windows)} windows from ${fmtTime(c.from)}`}">${time(c.until)}</td><td class="num">${fmtNum(c.with_outcomes)} / ${fmtNum(c.windows)}</td>
        ${c.estimates.map((e) => html`<td class="num">${e.alert ? pill('firing', fmtNum(e.estimated, 3)) : fmtNum(e.estimated, 3)} <span class="muted">±${fmtNum(e.sampling_error, 2)}</span></td><td class="num">${e.realized == null ? '—' : fmtNum(e.realized, 3)}</td>`)}</tr>`)}
      </tbody></table>` : html`<div class="empty">No whole chunk after the reference yet.</div>`}`;
}

/** An A/B split's arms: each model's alert rate and precision where it acted, and the
 * permutation p-values (over devices) of their differences. */
function armsText(a) {
  const pct = (x) => (x == null ? '—' : `${fmtNum(x * 100, 3)} %`);
  const diff = (d) => (d.difference == null ? '—' : `${d.difference > 0 ? '+' : ''}${fmtNum(d.difference * 100, 3)} points, p ${d.p_value == null ? '—' : fmtNum(d.p_value, 3)}`);
  const num = (x) => (x == null ? '—' : fmtNum(x, 4));
  // A direction and its p-value, not a verdict: three pumps against three cannot show one.
  const kpis = (a.kpis ?? []).map((k) => `; ${k.name}${k.unit ? ` (${k.unit}, ${k.better} is better)` : ` (${k.better} is better)`}: challenger ${num(k.challenger)} vs ${num(k.champion)}${k.comparison.p_value == null ? '' : `, p ${fmtNum(k.comparison.p_value, 3)}`}${k.error ? ` (not measured: ${k.error})` : ''}`).join('')
    + (a.kpi_error ? `; KPIs not compared: ${a.kpi_error}` : '');
  return `alert rate: challenger ${pct(a.challenger.alert_rate)} on ${a.challenger.devices} device(s), champion ${pct(a.champion.alert_rate)} on ${a.champion.devices} (${diff(a.alert_rate)}); precision: ${pct(a.challenger.precision)} vs ${pct(a.champion.precision)} (${diff(a.precision)})${kpis}; p over devices`;
}

/** Each KPI's challenger-minus-champion difference over the recorded intervals (`ab_kpis`,
 * oldest first), with the latest interval's two values: the trend a reading over days hides. */
function armSeries(kpis, rows) {
  return kpis.map((k) => {
    const mine = rows.filter((r) => r.kpi === k.name).reverse();
    if (!mine.length) return '';
    // Placed by time, one point per interval: an interval without windows wrote no row and
    // shows as a gap, not as a line drawn across it.
    const times = mine.map((r) => Number(r.t));
    const step = times.slice(1).reduce((m, t, i) => Math.min(m, t - times[i]), Infinity);
    const slots = Number.isFinite(step) && step > 0 ? Math.min(48, Math.round((times[times.length - 1] - times[0]) / step) + 1) : mine.length;
    const values = new Array(slots).fill(null);
    mine.forEach((r, i) => {
      const slot = Number.isFinite(step) && step > 0 ? Math.round((times[i] - times[0]) / step) : i;
      if (slot < slots && r.challenger != null && r.champion != null) values[slot] = r.challenger - r.champion;
    });
    const last = mine[mine.length - 1];
    return html`<div data-kpi="${k.name}">${k.name} <span class="muted small-text">(challenger − champion${k.unit ? `, ${k.unit}` : ''}, ${k.better} is better)</span> ${sparkline({ name: `${k.name}, challenger minus champion`, values })} <span class="muted small-text">latest: ${fmtNum(last.challenger)} vs ${fmtNum(last.champion)}</span></div>`;
  });
}

/** A shadow comparison's sequential decision: the verdict, and what it rests on. */
function shadowDecision(d) {
  const verdict = d.verdict === 'challenger_better' ? pill('online', 'challenger right more often')
    : d.verdict === 'champion_better' ? pill('pending', 'champion right more often')
      : pill('never', 'undecided');
  if (!d.windows) return html`${verdict} <span class="muted">no labelled windows yet</span>`;
  const diff = d.difference == null ? '' : ` · ${d.difference >= 0 ? '+' : ''}${fmtNum(d.difference * 100, 3)} points`;
  return html`${verdict} <span class="muted" title="${`${d.test}, alpha ${d.alpha}, tau² ${d.tau2}, over every labelled window of these two versions: reading it often does not raise the chance of a wrong verdict`}">right on ${d.champion_right} (champion) vs ${d.challenger_right} (challenger) of ${d.windows} labelled${diff} · p ${fmtNum(d.p_value, 3)}${d.decided_at ? html` · at the window of ${time(d.decided_at)}` : ''}</span>${d.challenger_missed ? html` <span class="tag">the challenger missed ${d.challenger_missed} confirmed</span>` : ''}${d.champion_missed ? html` <span class="tag">the champion missed ${d.champion_missed} confirmed</span>` : ''}`;
}

let toastTimer;
function toast(msg, ms = 3500) {
  const el = $('#toast');
  el.textContent = msg;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, ms);
}

// ---------------------------------------------------------------- API and sign-in

const auth = {
  get mode() { return localStorage.getItem('fabrik.auth') === 'cookie' ? 'cookie' : sessionStorage.getItem('fabrik.token') ? 'token' : null; },
  get token() { return sessionStorage.getItem('fabrik.token'); },
  clear() { localStorage.removeItem('fabrik.auth'); sessionStorage.removeItem('fabrik.token'); },
};
const caps = { session: false, stream: false };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra = {}) {
  const h = { ...extra };
  if (auth.mode === 'token') h.Authorization = `Bearer ${auth.token}`;
  return h;
}

async function api(path, { method = 'GET', body, accept = 'application/json', signal, token } = {}) {
  const h = headers({ Accept: accept });
  if (token) h.Authorization = `Bearer ${token}`;
  if (body !== undefined) h['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(API + path, {
      method, headers: h, signal, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: API ? 'include' : 'same-origin', cache: 'no-store',
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'The server cannot be reached.');
  }
  if (res.status === 401 && !token) {
    auth.clear();
    showSignIn('Your session has ended. Sign in again.');
    throw new ApiError(401, 'Not signed in.');
  }
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`;
    try { const j = await res.json(); msg = j.error || j.message || msg; } catch { /* not JSON */ }
    throw new ApiError(res.status, msg);
  }
  if (res.status === 204) return null;
  if (accept === 'application/json') return res.json();
  if (accept.startsWith('text/')) return res.text();
  return res;
}
const query = (sql, opts) => api('/api/v1/query', { method: 'POST', body: { sql }, ...opts });

async function loadCaps(token) {
  const spec = await api('/api/v1/openapi.json', { token });
  const paths = spec.paths || {};
  caps.session = Boolean(paths['/api/v1/session']);
  caps.stream = Object.keys(paths).some((p) => /^\/api\/v1\/devices\/\{[^}]+\}\/stream$/.test(p));
  caps.notifiers = Boolean(paths['/api/v1/notifiers']);
}

async function signIn(token) {
  // The contract (which needs a valid token) tells whether cookie sessions exist; it also checks the token.
  await loadCaps(token);
  if (caps.session) {
    try {
      await api('/api/v1/session', { method: 'POST', body: { token }, token });
      localStorage.setItem('fabrik.auth', 'cookie');
      sessionStorage.removeItem('fabrik.token');
      return;
    } catch (e) {
      if (e.status !== 404 && e.status !== 405) throw e;
    }
  }
  localStorage.removeItem('fabrik.auth');
  sessionStorage.setItem('fabrik.token', token);
}

/** User name and password → session cookie (no token ever reaches the page). */
async function signInUser(username, password) {
  let res;
  try {
    res = await fetch(`${API}/api/v1/session`, {
      method: 'POST', headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ username, password }), credentials: API ? 'include' : 'same-origin', cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, 'The server cannot be reached.');
  }
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`;
    try { const j = await res.json(); msg = j.error || j.message || msg; } catch { /* not JSON */ }
    throw new ApiError(res.status, msg);
  }
  localStorage.setItem('fabrik.auth', 'cookie');
  sessionStorage.removeItem('fabrik.token');
  await loadCaps();
}

async function showIdentity() {
  const el = $('#whoami');
  if (!caps.session) { el.textContent = ''; return; }
  try {
    const me = await api('/api/v1/session');
    el.textContent = `${me.name} · ${me.role}`;
    el.title = `Signed in as ${me.name} (${me.role})`;
    document.body.dataset.role = me.role;
  } catch { el.textContent = ''; }
}

async function signOut() {
  if (auth.mode === 'cookie') {
    try { await api('/api/v1/session', { method: 'DELETE' }); } catch { /* signed out anyway */ }
  }
  auth.clear();
  showSignIn();
}

function showSignIn(message) {
  leavePage();
  stopGlobal();
  $('#topbar').hidden = true;
  document.title = 'Sign in · Fabrik';
  let mode = localStorage.getItem('fabrik.signin') === 'user' ? 'user' : 'token';
  main.innerHTML = String(html`
    <div class="signin">
      <div class="card">
        <h1>Sign in to Fabrik</h1>
        <div class="seg" role="group" aria-label="Sign in with">
          <button type="button" id="mode-user" aria-pressed="false">User name</button>
          <button type="button" id="mode-token" aria-pressed="false">Token</button>
        </div>
        <p class="muted" id="signin-help"></p>
        ${message ? html`<div class="notice warn" role="status">${message}</div>` : ''}
        <form id="signin-form" novalidate>
          <div class="field" data-mode="user">
            <label for="signin-user">User name</label>
            <input id="signin-user" name="username" autocomplete="username" spellcheck="false" autocapitalize="none">
          </div>
          <div class="field" data-mode="user">
            <label for="signin-password">Password</label>
            <input id="signin-password" name="password" type="password" autocomplete="current-password">
          </div>
          <div class="field" data-mode="token">
            <label for="signin-token">Token</label>
            <input id="signin-token" name="token" type="password" autocomplete="current-password" spellcheck="false">
          </div>
          <div id="signin-error" class="notice bad" role="alert" hidden></div>
          <button class="primary" type="submit" id="signin-submit">Sign in</button>
        </form>
      </div>
    </div>`);
  const form = $('#signin-form');
  const setMode = (m) => {
    mode = m;
    localStorage.setItem('fabrik.signin', m);
    $('#mode-user').setAttribute('aria-pressed', String(m === 'user'));
    $('#mode-token').setAttribute('aria-pressed', String(m === 'token'));
    $$('[data-mode]', form).forEach((f) => { f.hidden = f.dataset.mode !== m; });
    $('#signin-help').innerHTML = m === 'user'
      ? 'Use the name and password an administrator gave you (<code>fabrik user add</code>).'
      : 'Use the admin token (<code>auth.admin_token</code>, or <code>admin.token</code> in the data directory) or an API token.';
    (m === 'user' ? $('#signin-user') : $('#signin-token')).focus();
  };
  $('#mode-user').addEventListener('click', () => setMode('user'));
  $('#mode-token').addEventListener('click', () => setMode('token'));
  setMode(mode);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const err = $('#signin-error');
    err.hidden = true;
    const fail = (text) => { err.textContent = text; err.hidden = false; };
    let attempt;
    if (mode === 'user') {
      const username = $('#signin-user').value.trim();
      const password = $('#signin-password').value;
      if (!username || !password) return fail('Enter your user name and password.');
      attempt = () => signInUser(username, password);
    } else {
      const token = $('#signin-token').value.trim();
      if (!token) return fail('Enter a token.');
      attempt = () => signIn(token);
    }
    $('#signin-submit').disabled = true;
    try {
      await attempt();
      startApp();
    } catch (e) {
      const wrong = mode === 'user' ? 'That user name and password were not accepted.' : 'That token was not accepted.';
      fail(e.status === 401 ? wrong : e.message);
      $('#signin-submit').disabled = false;
      (mode === 'user' ? $('#signin-password') : $('#signin-token')).select();
    }
  });
}

// ---------------------------------------------------------------- theme

function currentTheme() {
  const t = document.documentElement.dataset.theme;
  if (t) return t;
  return matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}
function syncThemeButton() {
  const next = currentTheme() === 'dark' ? 'light' : 'dark';
  const b = $('#theme-toggle');
  b.setAttribute('aria-label', `Switch to ${next} theme`);
  b.title = `Switch to ${next} theme`;
}
$('#theme-toggle').addEventListener('click', () => {
  const next = currentTheme() === 'dark' ? 'light' : 'dark';
  document.documentElement.dataset.theme = next;
  localStorage.setItem('fabrik.theme', next);
  syncThemeButton();
  charts.forEach((c) => c.restyle());
});
matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => { syncThemeButton(); charts.forEach((c) => c.restyle()); });
$('#sign-out').addEventListener('click', signOut);

// ---------------------------------------------------------------- charts (uPlot)

const PALETTE = ['#3b82f6', '#e8803a', '#22a06b', '#c04bd6', '#d6a400', '#e5484d', '#0ea5b7', '#8b5cf6', '#7c8a9e', '#b45f06', '#2dd4bf', '#f472b6'];
const charts = new Set();
const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/**
 * A time-series chart that resizes with its container, follows the theme, and updates in place.
 * series: [{label, color?, points?, dash?, width?}]; data: [times (s), ...values].
 */
class Chart {
  constructor(el, { series, data, height = 220, band, sync, yLabel, logY } = {}) {
    this.el = el; this.series = series; this.height = height; this.band = band; this.sync = sync; this.yLabel = yLabel; this.logY = logY;
    this.data = data || [[], ...series.map(() => [])];
    this.build();
    this.ro = new ResizeObserver(() => {
      const w = this.el.clientWidth;
      if (this.u && w && Math.abs(w - this.u.width) > 1) this.u.setSize({ width: w, height: this.height });
    });
    this.ro.observe(el);
    charts.add(this);
    this.mark();
  }
  opts() {
    const axis = { stroke: cssVar('--muted'), grid: { stroke: cssVar('--grid'), width: 1 }, ticks: { stroke: cssVar('--grid'), width: 1 }, font: '11px system-ui, sans-serif' };
    const band = this.band;
    return {
      width: Math.max(this.el.clientWidth, 200), height: this.height,
      cursor: { sync: this.sync ? { key: this.sync } : undefined, drag: { x: true, y: false } },
      legend: { show: this.series.length > 1, live: true },
      scales: { x: { time: true }, y: this.logY ? { distr: 3, log: 10 } : {} },
      axes: [{ ...axis, space: 72, values: timeTicks }, { ...axis, size: 56, label: this.yLabel, labelSize: this.yLabel ? 16 : 0, labelFont: '11px system-ui, sans-serif' }],
      series: [{}, ...this.series.map((s, i) => {
        const color = s.color || PALETTE[i % PALETTE.length];
        return {
          label: s.label, stroke: color, width: s.width ?? 1.6, dash: s.dash, spanGaps: true,
          value: (u, v) => (v === null || v === undefined ? '—' : fmtNum(v)),
          points: s.points ? { show: true, size: 6, fill: color, stroke: color } : { show: false },
          paths: s.points ? () => null : undefined,
        };
      })],
      hooks: band ? {
        drawClear: [(u) => {
          const x0 = u.valToPos(band[0], 'x', true); const x1 = u.valToPos(band[1], 'x', true);
          u.ctx.save();
          u.ctx.fillStyle = 'rgba(229, 72, 77, 0.10)';
          u.ctx.fillRect(x0, u.bbox.top, x1 - x0, u.bbox.height);
          u.ctx.restore();
        }],
      } : {},
    };
  }
  build() {
    this.el.innerHTML = '';
    this.u = new uPlot(this.opts(), this.data, this.el);
    this.widenSingle();
  }
  /** One sample (a single inference, a fresh device) would get uPlot's padding of years around
   * it: show a minute either side instead. */
  widenSingle() {
    const t = this.data[0];
    if (t.length === 1) this.u.setScale('x', { min: t[0] - 60, max: t[0] + 60 });
  }
  restyle() { this.build(); }
  setData(data) { this.data = data; this.u.setData(data); this.widenSingle(); this.mark(); }
  mark() { this.el.dataset.points = String(this.data[0].length); }
  destroy() { this.ro.disconnect(); this.u.destroy(); charts.delete(this); }
}

/** x-axis labels that never overlap: seconds for short spans, dates only when the span needs them. */
function timeTicks(u, splits) {
  const span = (u.scales.x.max ?? 0) - (u.scales.x.min ?? 0);
  return splits.map((v) => {
    const d = new Date(v * 1000);
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    if (span <= 900) return `${hm}:${pad(d.getSeconds())}`;
    if (span <= 2 * 86400) return hm;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}${span <= 14 * 86400 ? ` ${hm}` : ''}`;
  });
}

/** Aligns rows [{t: ms, key, value}] into uPlot data with one series per key. */
function align(rows, keys) {
  const times = [...new Set(rows.map((r) => r.t))].sort((a, b) => a - b);
  const idx = new Map(times.map((t, i) => [t, i]));
  const cols = keys.map(() => new Array(times.length).fill(null));
  const kIdx = new Map(keys.map((k, i) => [k, i]));
  for (const r of rows) if (kIdx.has(r.key)) cols[kIdx.get(r.key)][idx.get(r.t)] = r.value;
  return [times.map((t) => t / 1000), ...cols];
}

// ---------------------------------------------------------------- router and page lifecycle

let page = null; // { cleanups: [], alive }
function leavePage() {
  if (!page) return;
  page.alive = false;
  page.cleanups.forEach((f) => { try { f(); } catch { /* already gone */ } });
  page = null;
}
function newPage() {
  leavePage();
  page = { cleanups: [], alive: true };
  return page;
}
/** Runs fn now and every ms while the page is shown; never overlaps itself; pauses when hidden. */
function every(p, ms, fn) {
  let busy = false;
  const tick = async () => {
    if (busy || !p.alive || document.hidden || document.querySelector('dialog[open]')) return;
    busy = true;
    try { await fn(); } catch (e) { if (e.status !== 401 && e.name !== 'AbortError') showError(e, p); } finally { busy = false; }
  };
  const id = setInterval(tick, ms);
  p.cleanups.push(() => clearInterval(id));
  return tick();
}
function chartIn(p, el, opts) {
  const c = new Chart(el, opts);
  p.cleanups.push(() => c.destroy());
  return c;
}
function showError(e, p) {
  if (p && !p.alive) return;
  const box = $('#page-error');
  if (box) { box.textContent = e.message || String(e); box.hidden = false; } else toast(e.message || String(e));
}
/** Sets innerHTML only when it changed, so periodic refreshes keep focus and scroll. */
function patch(el, content) {
  if (!el) return;
  const s = part(content);
  if (el._html !== s) { el.innerHTML = s; el._html = s; }
}

const routes = { overview: pageOverview, devices: pageDevices, explorer: pageExplorer, pipelines: pagePipelines, usecases: pageUseCases, alerts: pageAlerts, audit: pageAudit };
async function route() {
  if (!auth.mode) return showSignIn();
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  const name = routes[parts[0]] ? parts[0] : 'overview';
  if (!routes[parts[0]] && location.hash !== '#/overview') { history.replaceState(null, '', '#/overview'); }
  $$('.nav a').forEach((a) => { if (a.dataset.route === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current'); });
  const p = newPage();
  main.innerHTML = '';
  main._html = undefined;
  try {
    await routes[name](p, parts.slice(1));
  } catch (e) {
    if (e.status === 401 || !p.alive) return;
    main.insertAdjacentHTML('afterbegin', String(html`<div class="notice bad" role="alert">${e.message}</div>`));
  }
}
function setTitle(t) { document.title = `${t} · Fabrik`; }
const errorBox = html`<div id="page-error" class="notice bad" role="alert" hidden></div>`;
/** `null` for a module this process does not run (`--target`, or a read-only query node); other errors stay errors. */
const elsewhere = (e) => {
  if (e?.status === 503 && /does not run in this process/.test(e.message)) return null;
  throw e;
};

// Global: firing-alert badge in the nav.
let globalTimer = null;
function stopGlobal() { clearInterval(globalTimer); globalTimer = null; }
async function refreshBadge() {
  if (!auth.mode || document.hidden) return;
  try {
    const firing = await api('/api/v1/alerts?state=firing&limit=1000');
    const el = $('#nav-alerts');
    el.innerHTML = firing.length ? String(html`<span class="pill bad plain" aria-label="${firing.length} firing">${firing.length}</span>`) : '';
  } catch { /* shown by pages */ }
}

let tablesCache = null;
async function tables(force) {
  if (!tablesCache || force || Date.now() - tablesCache.at > 10000) tablesCache = { at: Date.now(), list: await api('/api/v1/tables') };
  return tablesCache.list;
}
async function hasTable(name) { return (await tables()).some((t) => t.name === name); }
const NUMERIC = new Set(['float', 'integer', 'uinteger', 'double', 'int', 'f64', 'i64', 'u64']);

// ---------------------------------------------------------------- Overview

const ingest = { last: null, history: [] }; // survives page changes: points/s samples
async function sampleIngest() {
  const text = await api('/metrics', { accept: 'text/plain' });
  const m = text.match(/^fabrik_store_points_written_total(?:\{[^}]*\})?\s+([0-9.eE+]+)/m);
  if (!m) return null;
  const now = Date.now(); const v = Number(m[1]);
  if (ingest.last && now > ingest.last.t) {
    const rate = Math.max(0, (v - ingest.last.v) / ((now - ingest.last.t) / 1000));
    ingest.history.push({ t: now, rate });
    if (ingest.history.length > 180) ingest.history.shift();
  }
  ingest.last = { t: now, v };
  return ingest.history.at(-1)?.rate ?? null;
}

async function pageOverview(p) {
  setTitle('Overview');
  main.innerHTML = String(html`
    <div class="page-head"><div><h1>Overview</h1><div class="sub">Fleet health, live</div></div><div class="muted" id="ov-updated" aria-live="off"></div></div>
    ${errorBox}
    <div id="ov-store" class="notice" role="note" hidden></div>
    <section class="stats" aria-label="Key figures">
      <div class="card stat" id="st-devices"><div class="label">Devices online</div><div class="value">—</div></div>
      <div class="card stat" id="st-ingest"><div class="label">Ingest rate</div><div class="value">—</div></div>
      <div class="card stat" id="st-alerts"><div class="label">Active alerts</div><div class="value">—</div></div>
      <div class="card stat" id="st-pipelines"><div class="label">Pipelines running</div><div class="value">—</div></div>
    </section>
    <div class="grid cols-side">
      <div class="stack">
        <section class="card" aria-labelledby="h-active"><div class="card-head"><h2 id="h-active">Active alerts</h2><a href="#/alerts">All alerts →</a></div><div id="ov-alerts"></div></section>
        <section class="card" aria-labelledby="h-ingest"><div class="card-head"><h2 id="h-ingest">Points written per second</h2><span class="muted">this session</span></div><div class="chart" id="ov-ingest-chart" hidden></div><div class="empty" id="ov-ingest-empty">Measuring: the rate needs a few samples of <code>/metrics</code>, 5 s apart.</div></section>
        <section class="card" aria-labelledby="h-pipes"><div class="card-head"><h2 id="h-pipes">Pipelines</h2><a href="#/pipelines">Details →</a></div><div id="ov-pipelines"></div></section>
      </div>
      <div class="stack">
        <section class="card" aria-labelledby="h-attn"><div class="card-head"><h2 id="h-attn">Devices</h2><a href="#/devices">All devices →</a></div><div id="ov-devices"></div></section>
        <section class="card" aria-labelledby="h-svc"><h2 id="h-svc">Services</h2><div id="ov-services"></div></section>
        <section class="card" aria-labelledby="h-releases" id="ov-releases-card" hidden><h2 id="h-releases">Releases</h2><div id="ov-releases"></div></section>
        <section class="card" aria-labelledby="h-fleet" id="ov-fleet-card" hidden><h2 id="h-fleet">Fleet releases</h2><div id="ov-fleet"></div></section>
      </div>
    </div>`);
  const ingestChart = chartIn(p, $('#ov-ingest-chart'), { series: [{ label: 'points/s', color: PALETTE[0] }], height: 160 });

  await every(p, 5000, async () => {
    const [devices, active, pending, pipelines, services, rate, updates, fleet, keys, store] = await Promise.all([
      api('/api/v1/devices'), api('/api/v1/alerts?state=firing&limit=200').catch(elsewhere),
      api('/api/v1/alerts?state=pending&limit=200').catch(elsewhere),
      api('/api/v1/pipelines').catch(elsewhere), api('/services'), sampleIngest().catch(() => null), api('/api/v1/updates').catch(() => null),
      api('/api/v1/fleet/releases').catch(() => null), api('/api/v1/fleet/recipients').catch(() => null),
      api('/api/v1/store').catch(() => null),
    ]);
    if (!p.alive) return;
    // A query node reads what another node's store persisted (decision 0079): say whose, and how fresh.
    const reader = store?.role === 'read_only';
    $('#ov-store').hidden = !reader;
    if (reader) {
      patch($('#ov-store'), html`Read-only query node over <code>${store.bucket}</code>: the rows store <code>${store.store_id}</code> persisted, up to its WAL record ${store.persisted_seq}; its manifest read ${store.read_at ? fmtAgo(store.read_at) : 'never'} (every ${fmtDuration(store.refresh_interval_s)}). Writes, pipelines and alert rules run on the node that owns the store.`);
    }
    const count = (s) => devices.filter((d) => d.state === s).length;
    const on = count('online'); const off = count('offline'); const never = count('never'); const total = devices.length || 1;
    // Silent: connected (or polled) but nothing heard for a minute — a stuck gateway or PLC.
    const silent = devices.filter((d) => isSilent(d)).length;
    patch($('#st-devices'), html`<div class="label">Devices online</div>
      <div class="value">${on}<small>/ ${devices.length}</small></div>
      <div class="hint"><span>${silent} silent</span> · <span>${off} offline</span> · <span>${never} never connected</span></div>
      <div class="bar3" role="img" aria-label="${on - silent} online and reporting, ${silent} silent, ${off} offline, ${never} never connected">
        <span style="width:${((on - silent) / total) * 100}%;background:var(--ok)"></span><span style="width:${(silent / total) * 100}%;background:var(--warn)"></span><span style="width:${(off / total) * 100}%;background:var(--bad)"></span></div>`);
    $('#st-devices').className = `card stat ${off || silent ? 'warn' : 'ok'}`;
    if (reader) {
      patch($('#st-ingest'), html`<div class="label">Ingest rate</div><div class="value">—</div><div class="hint">rows are written on the owning node</div>`);
    } else {
      patch($('#st-ingest'), html`<div class="label">Ingest rate</div>
        <div class="value">${rate === null ? '…' : fmtNum(Math.round(rate * 10) / 10)}<small>points/s</small></div>
        <div class="hint">${rate === null ? 'measuring (needs two samples)' : 'from /metrics, 5 s average'}</div>`);
    }
    const notHere = (what) => html`<div class="empty">The ${what} module does not run in this process.</div>`;
    if (active && pending) {
      const activeAll = [...active, ...pending];
      patch($('#st-alerts'), html`<div class="label">Active alerts</div><div class="value">${activeAll.length}</div>
        <div class="hint">${active.length} firing · ${pending.length} pending</div>`);
      $('#st-alerts').className = `card stat ${active.length ? 'bad' : pending.length ? 'warn' : 'ok'}`;
      patch($('#ov-alerts'), activeAll.length ? alertsTable(activeAll.slice(0, 8), { compact: true }) : html`<div class="empty">No active alerts. All clear.</div>`);
    } else {
      patch($('#st-alerts'), html`<div class="label">Active alerts</div><div class="value">—</div><div class="hint">evaluated in another process</div>`);
      $('#st-alerts').className = 'card stat';
      patch($('#ov-alerts'), notHere('alerts'));
    }
    if (pipelines) {
      const running = pipelines.filter((x) => x.state === 'running').length;
      patch($('#st-pipelines'), html`<div class="label">Pipelines running</div><div class="value">${running}<small>/ ${pipelines.length}</small></div>
        <div class="hint">${pipelines.reduce((a, x) => a + x.anomalies, 0)} anomalies flagged</div>`);
      $('#st-pipelines').className = `card stat ${pipelines.some((x) => x.state === 'failed') ? 'bad' : 'ok'}`;
      patch($('#ov-pipelines'), pipelinesTable(pipelines));
    } else {
      patch($('#st-pipelines'), html`<div class="label">Pipelines running</div><div class="value">—</div><div class="hint">run in another process</div>`);
      $('#st-pipelines').className = 'card stat';
      patch($('#ov-pipelines'), notHere('pipelines'));
    }
    const healthy = (d) => d.state === 'online' && !isSilent(d);
    const attention = [...devices].sort((a, b) => healthy(a) - healthy(b) || a.id.localeCompare(b.id));
    patch($('#ov-devices'), html`<table><caption class="muted" hidden>Devices</caption><thead><tr><th>Device</th><th>State</th><th>Last seen</th></tr></thead><tbody>
      ${attention.slice(0, 10).map((d) => html`<tr><td><a href="#/devices/${enc(d.id)}">${d.id}</a></td><td>${isSilent(d) ? pill('silent') : pill(d.state)}</td><td>${d.last_seen ? time(d.last_seen) : '—'}</td></tr>`)}
      </tbody></table>`);
    patch($('#ov-services'), html`<table><tbody>${services.map((s) => html`<tr><td>${s.name}</td><td>${pill(s.state)}</td><td class="wrap muted">${s.error || ''}</td></tr>`)}</tbody></table>`);
    // What this node installs from its release repository ([updates]); hidden when it follows none.
    $('#ov-releases-card').hidden = !updates?.configured;
    if (updates?.configured) patch($('#ov-releases'), releasesView(updates.status));
    // Other nodes' releases (their uplinks bring their records): shown on a hub, not for this
    // node alone, which the Releases card already shows.
    const own = updates?.status?.node;
    const others = (fleet?.releases || []).filter((r) => r.node !== own);
    // Other nodes' keys show before their first release: when a publisher needs them.
    const otherKeys = (keys?.recipients || []).filter((k) => k.node !== own);
    $('#ov-fleet-card').hidden = !others.length && !otherKeys.length;
    if (others.length || otherKeys.length) patch($('#ov-fleet'), fleetView(fleet?.releases || [], fleet?.nodes || 0, keys?.recipients || []));
    const enough = ingest.history.length >= 2;
    $('#ov-ingest-chart').hidden = !enough;
    $('#ov-ingest-empty').hidden = enough;
    if (enough) ingestChart.setData([ingest.history.map((h) => h.t / 1000), ingest.history.map((h) => h.rate)]);
    $('#ov-updated').textContent = `Updated ${fmtTime(Date.now(), false)}`;
  });
}

const RELEASE_STATE = { installed: 'online', not_for_this_node: 'never', refused: 'failed', waiting_for_keys: 'pending' };
function releasesView(u) {
  const head = u.last_verified_at
    ? html`<p class="small-text" id="rel-trusted">Targets v${u.targets_version} from <span class="mono wrap-id">${u.repository}</span>, verified ${time(u.last_verified_at)}; valid until <time id="rel-expires" datetime="${u.expires_at || ''}">${u.expires_at ? fmtTime(u.expires_at) : '—'}</time></p>`
    : html`<p class="small-text muted" id="rel-trusted">Not verified yet: <span class="mono wrap-id">${u.repository}</span></p>`;
  // The key publishers encrypt to (`fabrik release add --recipient`).
  const previous = (u.previous_recipients || []).length ? html`; previous keys, still read until retired: ${u.previous_recipients.map((k) => html`<code class="wrap-id">${k}</code> `)}` : '';
  const key = u.recipient ? html`<p class="small-text muted">Node <b>${u.node}</b>, key <code class="wrap-id" id="rel-recipient">${u.recipient}</code>${previous}</p>` : '';
  const error = u.last_error ? html`<div class="notice bad" role="alert" id="rel-error">${u.last_error}</div>` : '';
  // Keys that did not open (decision 0071): encrypted targets wait, the rest installs.
  const keyError = u.key_error ? html`<div class="notice bad" role="alert" id="rel-key-error">Node <b>${u.node}</b>: its keys for encrypted targets cannot be opened; encrypted targets wait, tried again at each check. ${u.key_error}</div>` : '';
  // A new build of Fabrik on trial (decision 0066): how many of its runs failed, and when it stays.
  const b = u.binary_unconfirmed;
  const back = b && (b.rollback_after_failed_runs
    ? `at ${b.rollback_after_failed_runs} failed runs it goes back to the previous build`
    : 'it is not rolled back by itself ([updates] rollback_after_failed_runs = 0)');
  const trial = b ? html`<div class="notice warn" role="status" id="rel-binary">This node runs a new Fabrik build (<span class="mono">${(u.binary_sha256 || '').slice(0, 12)}…</span>) that has not confirmed itself yet: run ${b.runs}, ${b.failed_runs} earlier run${b.failed_runs === 1 ? '' : 's'} failed; ${back}. It confirms itself after ${fmtDuration(b.confirm_after_seconds)} with every module up.</div>` : '';
  const rows = u.targets.length ? html`<table id="rel-targets"><thead><tr><th>Release</th><th>Kind</th><th>State</th></tr></thead><tbody>
    ${u.targets.map((t) => html`<tr data-target="${t.target}"><td class="wrap-id">${t.name || t.target}</td><td>${t.kind}${t.encrypted ? html` <span class="muted small-text" title="encrypted to this node's key">· encrypted</span>` : ''}</td>
      <td>${pill(RELEASE_STATE[t.state] || 'pending', t.state.replaceAll('_', ' '))}${t.reason ? html` <span class="muted" title="${t.reason}">⚠</span>` : ''}</td></tr>`)}
    </tbody></table>` : html`<div class="empty">The repository publishes nothing for Fabrik yet.</div>`;
  return html`${head}${key}${keyError}${error}${trial}${rows}`;
}

function fleetView(releases, nodes, keys) {
  // The keys nodes reported through their uplinks (decision 0068): what `fabrik release
  // recipients` prints for a publisher; a node still reading previous keys has not retired them.
  const keyTable = keys.length ? html`<h3 class="small-text">Keys for encrypted releases</h3>
    <table id="fleet-keys"><thead><tr><th>Node</th><th>Key</th><th>Reported</th></tr></thead><tbody>
    ${keys.map((k) => html`<tr data-node="${k.node}"><td class="wrap-id">${k.node}</td><td><code class="wrap-id" title="${k.recipient}">${k.recipient.slice(0, 16)}…</code>${k.sealed ? html` <span class="muted small-text" title="sealed to the node's TPM: a copy of its disk does not carry it${k.sealed_pcrs ? `; bound to PCRs ${k.sealed_pcrs}: it opens only on the boot it was sealed on` : ''}">· sealed${k.sealed_pcrs ? ` to PCRs ${k.sealed_pcrs}` : ''}</span>` : ''}${k.previous_recipients.length ? html` <span class="muted small-text" title="${k.previous_recipients.join(' ')}">· still reads ${k.previous_recipients.length} previous</span>` : ''}</td>
      <td>${time(k.reported_at)}</td></tr>`)}
    </tbody></table>` : '';
  return html`<p class="small-text muted">${nodes} node${nodes === 1 ? '' : 's'}: each one's latest install or refusal</p>
    <table id="fleet-releases"><thead><tr><th>Node</th><th>Release</th><th>State</th><th>Runs since</th></tr></thead><tbody>
    ${releases.map((r) => html`<tr data-node="${r.node}" data-target="${r.target}"><td class="wrap-id">${r.node}</td><td class="wrap-id">${r.name || r.target}</td>
      <td>${pill(RELEASE_STATE[r.state] || 'pending', r.state)}${r.reason ? html` <span class="muted" title="${r.reason}">⚠</span>` : ''}</td>
      <td>${r.installed_at ? time(r.installed_at) : html`<span class="muted">—</span>`}</td></tr>`)}
    </tbody></table>${keyTable}`;
}

function pipelinesTable(pipelines) {
  if (!pipelines.length) return html`<div class="empty">No pipelines yet: define them in the configuration file or with <code>fabrik pipeline apply</code>.</div>`;
  return html`<div class="table-wrap"><table><thead><tr><th>Pipeline</th><th>State</th><th>Model</th><th class="num">Devices</th><th class="num">Training</th><th class="num">Inferences</th><th class="num">Anomalies</th><th>Data up to</th></tr></thead><tbody>
    ${pipelines.map((x) => html`<tr><td><a href="#/pipelines/${enc(x.name)}">${x.name}</a></td><td>${pill(x.state)}${x.error?.startsWith('waiting for data') ? html` <span class="muted small-text" title="${x.error}">waiting for data</span>` : x.error ? html` <span class="muted" title="${x.error}">⚠</span>` : ''}</td>
      <td>${x.model}</td><td class="num">${x.devices}</td><td class="num">${x.training_devices}</td><td class="num">${fmtNum(x.inferences)}</td>
      <td class="num">${fmtNum(x.anomalies)}</td><td>${x.horizon ? time(x.horizon) : '—'}</td></tr>`)}
    </tbody></table></div>`;
}

// ---------------------------------------------------------------- Devices

async function pageDevices(p, args) {
  if (args[0]) return pageDevice(p, args[0]);
  setTitle('Devices');
  const f = JSON.parse(sessionStorage.getItem('fabrik.devfilter') || '{}');
  main.innerHTML = String(html`
    <div class="page-head"><div><h1>Devices</h1><div class="sub" id="dev-count">Loading…</div></div></div>
    ${errorBox}
    <section class="card">
      <form class="filters" id="dev-filters" role="search" aria-label="Filter devices">
        <div class="field"><label for="f-site">Site</label><select id="f-site" name="site"><option value="">All sites</option></select></div>
        <div class="field"><label for="f-type">Type</label><select id="f-type" name="type"><option value="">All types</option></select></div>
        <div class="field"><label for="f-state">State</label><select id="f-state" name="state">
          <option value="">Any state</option><option value="online">Online</option><option value="offline">Offline</option><option value="never">Never connected</option></select></div>
        <div class="field"><label for="f-label">Label</label><input id="f-label" name="label" placeholder="key=value" value="${f.label || ''}" spellcheck="false"></div>
        <button type="button" id="f-clear">Clear filters</button>
      </form>
      <div id="dev-table"></div>
    </section>
    <section class="card" aria-labelledby="h-fleet-devices" id="dev-fleet-card" hidden><div class="card-head"><h2 id="h-fleet-devices">Fleet devices</h2><span class="muted">registered on the edges that forward here; use cases defined here scope by their site, type and labels</span></div><div id="dev-fleet"></div></section>`);
  const form = $('#dev-filters');
  let all = [];
  const fillSelect = (sel, values, current) => {
    const opts = [...new Set(values)].sort();
    const first = sel.options[0].outerHTML;
    sel.innerHTML = first + opts.map((v) => `<option value="${esc(v)}">${esc(v)}</option>`).join('');
    sel.value = opts.includes(current) ? current : '';
  };
  const load = async () => {
    const q = new URLSearchParams();
    for (const k of ['site', 'type', 'state', 'label']) {
      const v = form.elements[k].value.trim();
      if (v && (k !== 'label' || v.includes('='))) q.set(k, v);
    }
    sessionStorage.setItem('fabrik.devfilter', JSON.stringify(Object.fromEntries(q)));
    const list = await api(`/api/v1/devices${q.size ? `?${q}` : ''}`);
    if (!p.alive) return;
    $('#dev-count').textContent = `${list.length} of ${all.length} devices`;
    patch($('#dev-table'), list.length ? html`<div class="table-wrap"><table id="devices-table"><thead><tr>
        <th>Device</th><th>Name</th><th>Type</th><th>Site</th><th>State</th><th>Labels</th><th>Last seen</th><th class="num">Messages</th><th class="num">Errors</th></tr></thead><tbody>
        ${list.map((d) => html`<tr data-device="${d.id}"><td><a href="#/devices/${enc(d.id)}">${d.id}</a></td><td>${d.name}</td><td>${d.device_type}</td><td>${d.site}</td>
          <td>${isSilent(d) ? pill("silent") : pill(d.state)}${d.disabled ? html` <span class="pill warn plain">disabled</span>` : ''}</td>
          <td>${Object.entries(d.labels || {}).map(([k, v]) => html`<span class="tag">${k}=${v}</span>`)}</td>
          <td>${d.last_seen ? time(d.last_seen) : '—'}</td><td class="num">${fmtNum(d.messages)}</td><td class="num">${d.errors ? html`<span style="color:var(--bad)">${fmtNum(d.errors)}</span>` : '0'}</td></tr>`)}
        </tbody></table></div>` : html`<div class="empty">${all.length ? 'No device matches these filters.' : 'No device is registered on this node.'}</div>`);
  };
  all = await api('/api/v1/devices');
  fillSelect(form.elements.site, all.map((d) => d.site), f.site);
  fillSelect(form.elements.type, all.map((d) => d.device_type), f.type);
  form.elements.state.value = f.state || '';
  form.addEventListener('change', load);
  let deb;
  form.elements.label.addEventListener('input', () => { clearTimeout(deb); deb = setTimeout(load, 300); });
  form.addEventListener('submit', (e) => { e.preventDefault(); load(); });
  $('#f-clear').addEventListener('click', () => { form.reset(); form.elements.label.value = ''; load(); });
  every(p, 30000, () => loadFleetDevices(p));
  await every(p, 5000, load);
}

/** Other nodes' devices, as their uplinks describe them (a hub's `_devices`). */
async function loadFleetDevices(p) {
  const fleet = await api('/api/v1/fleet/devices').catch(() => null);
  if (!p.alive) return;
  const list = fleet?.devices || [];
  $('#dev-fleet-card').hidden = !list.length;
  if (!list.length) return;
  patch($('#dev-fleet'), html`<p class="small-text muted">${list.length} device${list.length === 1 ? '' : 's'} on ${fleet.nodes} node${fleet.nodes === 1 ? '' : 's'}</p>
    <div class="table-wrap"><table id="fleet-devices"><thead><tr><th>Node</th><th>Device</th><th>Type</th><th>Site</th><th>Labels</th><th>Described</th></tr></thead><tbody>
    ${list.map((d) => html`<tr data-node="${d.node}" data-device="${d.device}"><td class="wrap-id">${d.node}</td><td class="wrap-id">${d.device}</td><td>${d.type}</td><td>${d.site}</td>
      <td>${Object.entries(d.labels || {}).map(([k, v]) => html`<span class="tag">${k}=${v}</span>`)}</td><td>${time(d.described_at)}</td></tr>`)}
    </tbody></table></div>`);
}

async function pageDevice(p, id) {
  setTitle(id);
  let d;
  try {
    d = await api(`/api/v1/devices/${enc(id)}`);
  } catch (e) {
    if (e.status !== 404) throw e;
    // Alerts and inferences are keyed by a table's device column, which can name devices that
    // write without registering (line protocol, a bridge): say so instead of failing.
    main.innerHTML = String(html`<div class="crumbs"><a href="#/devices">Devices</a> / ${id}</div>
      <div class="page-head"><div><h1>${id}</h1><div class="sub">Not a registered device</div></div></div>
      <section class="card"><p><span class="mono">${id}</span> is not in the device registry: its rows came in without a registered identity (line protocol, a bridge or a replay). Its alerts are on the <a href="#/alerts">alerts page</a>; its rows can be queried in the <a href="#/explorer">data explorer</a>.</p></section>`);
    return;
  }
  const tbl = (await tables()).find((t) => t.name === d.device_type);
  const numeric = tbl ? Object.entries(tbl.fields).filter(([, t]) => NUMERIC.has(t)).map(([k]) => k).sort() : [];
  const preferred = ['vibration_rms', 'motor_current'];
  const saved = JSON.parse(sessionStorage.getItem(`fabrik.signals.${d.device_type}`) || 'null');
  let chosen = (saved || preferred).filter((s) => numeric.includes(s)).slice(0, 6);
  if (!chosen.length) chosen = numeric.slice(0, 2);

  main.innerHTML = String(html`
    <div class="crumbs"><a href="#/devices">Devices</a> / ${id}</div>
    <div class="page-head">
      <div><h1>${d.name || id}</h1><div class="sub"><span class="mono">${id}</span> · ${d.device_type} · ${d.site}</div></div>
      <div class="row" id="dev-actions"></div>
    </div>
    ${errorBox}
    <div id="token-box"></div>
    <div class="grid cols-side">
      <div class="stack">
        <section class="card" aria-labelledby="h-live">
          <div class="card-head"><h2 id="h-live">Live signals</h2><span class="muted" id="live-mode"></span></div>
          ${numeric.length ? html`
            <fieldset><legend>Signals to plot</legend><div class="checks" id="signal-picks">
              ${numeric.map((s) => html`<label><input type="checkbox" value="${s}" ${chosen.includes(s) ? raw('checked') : ''}> ${s}</label>`)}
            </div></fieldset>
            <div class="charts" id="live-chart" aria-label="Live chart of the chosen signals" role="img"></div>`
          : html`<div class="empty">No telemetry table <code>${d.device_type}</code> yet.</div>`}
        </section>
        <section class="card" aria-labelledby="h-last"><div class="card-head"><h2 id="h-last">Last values</h2><span class="muted" id="last-time"></span></div><div class="values" id="last-values"><div class="muted">Waiting for data…</div></div></section>
        <section class="card" aria-labelledby="h-inf"><div class="card-head"><h2 id="h-inf">Recent inferences</h2></div><div id="dev-inferences"></div></section>
      </div>
      <div class="stack">
        <section class="card" aria-labelledby="h-meta"><h2 id="h-meta">Details</h2><div id="dev-meta"></div><div id="dev-attest"></div></section>
        <div id="dev-setpoints"></div>
        <section class="card" aria-labelledby="h-alerts"><div class="card-head"><h2 id="h-alerts">Recent alerts</h2><a href="#/alerts">All alerts →</a></div><div id="dev-alerts"></div></section>
        <section class="card" aria-labelledby="h-events"><h2 id="h-events">Connection history</h2><ul class="timeline" id="dev-events" aria-label="Connection history"></ul></section>
      </div>
    </div>`);

  const renderMeta = (dev) => {
    patch($('#dev-actions'), html`
      <button type="button" id="btn-disable" aria-pressed="${dev.disabled}">${dev.disabled ? 'Enable device' : 'Disable device'}</button>
      <button type="button" id="btn-rotate">Rotate token</button>`);
    patch($('#dev-meta'), html`<dl class="kv">
      <dt>State</dt><dd>${pill(dev.state)}${dev.disabled ? html` <span class="pill warn plain">disabled</span>` : ''}</dd>
      <dt>Last seen</dt><dd>${dev.last_seen ? html`${time(dev.last_seen)} <span class="muted">(${fmtTime(dev.last_seen)})</span>` : 'never'}</dd>
      <dt>Id</dt><dd class="mono">${dev.id}</dd><dt>Name</dt><dd>${dev.name}</dd>
      <dt>Type</dt><dd>${dev.device_type}</dd><dt>Site</dt><dd>${dev.site}</dd>
      <dt>Labels</dt><dd>${Object.entries(dev.labels || {}).map(([k, v]) => html`<span class="tag">${k}=${v}</span>`)}${Object.keys(dev.labels || {}).length ? '' : '—'}</dd>
      <dt>Messages</dt><dd>${fmtNum(dev.messages)}</dd><dt>Errors</dt><dd>${fmtNum(dev.errors)} <span class="muted">(dead-lettered)</span></dd>
      <dt>Sparkplug node</dt><dd>${dev.sparkplug_node || '—'}</dd><dt>Registered</dt><dd>${fmtTime(dev.created_at)}</dd></dl>`);
  };
  renderMeta(d);
  // Setpoints (decision 0090): the points of this device the configuration declares writable;
  // for a Sparkplug edge node, its own metrics' and its devices' (decision 0091).
  const node = d.sparkplug_node;
  const ours = (s) => s.device === id || (!!node && (s.device === node || s.device.startsWith(`${node}/`)));
  const writable = (await api('/api/v1/setpoints').catch(() => [])).filter(ours);
  if (!p.alive) return;
  if (writable.length) renderSetpoints(p, id, writable);
  $('#dev-actions').addEventListener('click', async (ev) => {
    const b = ev.target.closest('button');
    if (!b) return;
    if (b.id === 'btn-rotate') {
      const ok = await confirmDialog('Rotate token?', `The device ${id} will be disconnected until it is given the new token. The old token stops working at once.`, 'Rotate token');
      if (!ok) return;
      try {
        const r = await api(`/api/v1/devices/${enc(id)}/token`, { method: 'POST' });
        $('#token-box').innerHTML = String(html`<div class="notice ok" role="alert"><strong>New token for ${id}.</strong> It is shown only once: copy it now.
          <div class="secret"><code id="new-token">${r.token}</code><button type="button" id="copy-token">Copy</button><button type="button" id="dismiss-token">Done</button></div></div>`);
        $('#copy-token').addEventListener('click', async () => { try { await navigator.clipboard.writeText(r.token); toast('Token copied.'); } catch { toast('Select the token and copy it.'); } });
        $('#dismiss-token').addEventListener('click', () => { $('#token-box').innerHTML = ''; });
        $('#copy-token').focus();
      } catch (e) { showError(e, p); }
    }
    if (b.id === 'btn-disable') {
      const cur = b.getAttribute('aria-pressed') === 'true';
      try {
        const dev = await api(`/api/v1/devices/${enc(id)}`, { method: 'PATCH', body: { disabled: !cur } });
        renderMeta(dev && dev.id ? dev : await api(`/api/v1/devices/${enc(id)}`));
        toast(cur ? 'Device enabled.' : 'Device disabled.');
        $('#btn-disable')?.focus();
      } catch (e) { showError(e, p); }
    }
  });

  // Live data: seed from the table, then the SSE stream (or polling the query API).
  // `latest`: per signal, its newest value that was not null and when (`{ v, ms }`). A
  // connector reports each changed point on its own (OPC UA data changes, Sparkplug reports by
  // exception), so the newest row holds few of them; rows can come late or share a
  // millisecond, which the charts (one point per millisecond, in order) merge or pass over.
  const live = { times: [], cols: Object.fromEntries(numeric.map((s) => [s, []])), lastMs: 0, last: null, latest: {} };
  const WINDOW_S = 300;
  let liveCharts = [];
  const buildCharts = () => {
    liveCharts.forEach((c) => c.destroy());
    const box = $('#live-chart');
    if (!box) return;
    box.innerHTML = chosen.length ? '' : '<div class="empty">Pick at least one signal.</div>';
    box.dataset.points = String(live.times.length);
    liveCharts = chosen.map((s) => {
      box.insertAdjacentHTML('beforeend', `<div class="chart-title">${esc(s)}</div><div class="chart" data-signal="${esc(s)}"></div>`);
      return new Chart(box.lastElementChild, { series: [{ label: s, color: PALETTE[numeric.indexOf(s) % PALETTE.length] }], height: chosen.length > 2 ? 130 : 170, sync: `dev-${id}`, data: [live.times, live.cols[s]] });
    });
  };
  p.cleanups.push(() => liveCharts.forEach((c) => c.destroy()));
  const redraw = () => {
    const cut = Date.now() / 1000 - WINDOW_S;
    let drop = 0;
    while (drop < live.times.length && live.times[drop] < cut) drop++;
    if (drop) { live.times.splice(0, drop); numeric.forEach((s) => live.cols[s].splice(0, drop)); }
    liveCharts.forEach((c, i) => c.setData([live.times, live.cols[chosen[i]]]));
    const box = $('#live-chart');
    if (box) box.dataset.points = String(live.times.length);
  };
  const push = (ms, values) => {
    if (!Number.isFinite(ms)) return false;
    let changed = false;
    for (const [k, v] of Object.entries(values)) {
      if (k.startsWith('_') || k === 'device' || k === 'time') continue;
      if (v == null) { live.latest[k] ??= { v: null, ms: 0 }; continue; }
      if (!(live.latest[k]?.ms > ms)) { live.latest[k] = { v, ms }; changed = true; }
    }
    if (ms > live.lastMs) {
      live.lastMs = ms;
      live.times.push(ms / 1000);
      numeric.forEach((s) => live.cols[s].push(typeof values[s] === 'number' ? values[s] : null));
      live.last = { ms };
      return true;
    }
    // The same millisecond as the newest point: its values join that point.
    if (ms === live.lastMs && live.times.length) {
      const i = live.times.length - 1;
      numeric.forEach((s) => { if (typeof values[s] === 'number') live.cols[s][i] = values[s]; });
      return true;
    }
    return changed;
  };
  const showLast = () => {
    const vals = Object.entries(live.latest).sort(([a], [b]) => a.localeCompare(b));
    if (!vals.length) return;
    // Text is cut to fit its tile (the whole of it is the tooltip); a value older than the
    // newest row by more than 10 s says when it was reported, so it is not read as current.
    // The stream's first row is the device's newest however old: when that is older than the
    // charts' window, ages count from now.
    const recent = live.last && Date.now() - live.last.ms < WINDOW_S * 1000;
    const newest = recent ? live.last.ms : Date.now();
    const shown = (v) => (typeof v === 'boolean' ? (v ? 'true' : 'false') : typeof v === 'string' && v.length > 40 ? `${v.slice(0, 39)}…` : fmtNum(v));
    const age = (ms) => (ms && newest - ms > 10000 ? html` <span class="muted">· ${fmtAgo(ms)}</span>` : '');
    patch($('#last-values'), vals.map(([k, { v, ms }]) => html`<div class="v"><div class="k">${k}${age(ms)}</div><div class="n" title="${typeof v === 'string' ? v : ''}">${shown(v)}</div></div>`));
    $('#last-time').textContent = !live.last ? 'no rows in the last 5 minutes' : `at ${fmtTime(live.last.ms, !recent)}`;
  };
  if (tbl) {
    // Each signal's newest value however old (a point reported only when it changes), then
    // the last five minutes' rows for the charts.
    const [latest, rows] = await Promise.all([
      api(`/api/v1/devices/${enc(id)}/latest?table=${enc(tbl.name)}`).catch(() => null),
      query(`SELECT * FROM ${sqlId(tbl.name)} WHERE device = ${sqlStr(id)} AND time >= now() - interval '${WINDOW_S} seconds' ORDER BY time`),
    ]);
    for (const [k, { value, time }] of Object.entries(latest?.values ?? {})) live.latest[k] = { v: value, ms: toMs(time) };
    rows.forEach((r) => push(toMs(r.time), r));
    if (!p.alive) return;
    buildCharts();
    showLast();
    $('#signal-picks')?.addEventListener('change', () => {
      chosen = $$('#signal-picks input:checked').map((x) => x.value);
      sessionStorage.setItem(`fabrik.signals.${d.device_type}`, JSON.stringify(chosen));
      buildCharts();
    });
    // Drawn once per frame, however many rows an event burst brings.
    let drawing = false;
    const onPoint = (ms, values) => {
      if (!push(ms, values) || drawing) return;
      drawing = true;
      requestAnimationFrame(() => { drawing = false; if (p.alive) { redraw(); showLast(); } });
    };
    startLive(p, id, tbl.name, () => live.lastMs, onPoint, (mode) => { $('#live-mode').textContent = mode; });
  }

  // Slower panels.
  const hasInf = await hasTable('inferences');
  await every(p, 5000, async () => {
    const [dev, events, alerts, infs, attest] = await Promise.all([
      api(`/api/v1/devices/${enc(id)}`), api(`/api/v1/devices/${enc(id)}/events?limit=50`), api('/api/v1/alerts?limit=300'),
      (hasInf || await hasTable('inferences')) ? query(`SELECT time, pipeline, score, threshold, flag, top_signal, window_id FROM inferences WHERE device = ${sqlStr(id)} ORDER BY time DESC LIMIT 10`) : Promise.resolve(null),
      api(`/api/v1/devices/${enc(id)}/attestation`).catch(() => null),
    ]);
    if (!p.alive) return;
    if (!document.activeElement?.closest('#dev-actions')) renderMeta(dev);
    patch($('#dev-attest'), attestationText(attest));
    patch($('#dev-events'), events.length ? events.map((e) => html`<li><span class="muted">${fmtTime(e.time)}</span><span>${pill(EVENT_STATE[e.kind] ?? 'never', e.kind.replace('_', ' '))}</span><span class="mono muted">${e.detail}</span></li>`) : html`<li class="muted">No events.</li>`);
    const mine = alerts.filter((a) => a.key === id).slice(0, 8);
    patch($('#dev-alerts'), mine.length ? alertsTable(mine, { compact: true, noDevice: true }) : html`<div class="empty">No alerts for this device.</div>`);
    patch($('#dev-inferences'), infs === null ? html`<div class="empty">No inferences yet (pipelines are still training).</div>` : inferencesTable(infs, { device: false }));
  });
}

/** A device page's setpoints card (decision 0090): each writable point with its range, set by
 * operators and admins; the answer says what the device read back, and the writes made so far
 * are listed from `_device_writes`. */
function renderSetpoints(p, id, points) {
  const may = ['operator', 'admin'].includes(document.body.dataset.role);
  const from = {
    device: ' (declared by the device)',
    'configuration and device': ' (narrowed by the device)',
    "configuration outside the device's": " (outside the device's EURange: every write is refused)",
  };
  // Text points (decision 0095) take a string; an OPC UA node of a number type with no range
  // known (none configured, no EURange) takes no writes; any other point without a range is a
  // switch.
  const text = (s) => ['string', 'String', 'Text'].includes(s.data_type);
  const unranged = (s) => !text(s) && s.min == null && s.protocol === 'opcua' && !['Boolean', 'node'].includes(s.data_type);
  const range = (s) => (text(s) ? 'text' : unranged(s) ? `a ${s.data_type} with no range: configure min and max to write it`
    : s.min == null ? 'true or false' : `${s.min} to ${s.max}${s.unit ? ` ${s.unit}` : ''}${from[s.range_from] ?? ''}`);
  // One form per point, its elements named by position (a signal's name is the device's, and
  // could be anything): Enter in a field sets that point and no other.
  $('#dev-setpoints').innerHTML = String(html`<section class="card" aria-labelledby="h-setpoints">
    <div class="card-head"><h2 id="h-setpoints">Setpoints</h2><span class="muted">${may ? 'written to the device, then read back' : 'operators and admins set them'}</span></div>
    <div class="stack" id="sp-points">
      ${points.map((s, i) => html`<form class="row sp-point" data-signal="${s.signal}" data-index="${i}">
        <label for="sp-value-${i}" class="mono">${s.device === id ? '' : html`<span class="muted">${s.device} · </span>`}${s.signal}</label>
        ${text(s)
          ? html`<input id="sp-value-${i}" name="value" type="text" aria-describedby="sp-range-${i}">`
          : unranged(s)
          ? html`<input id="sp-value-${i}" name="value" type="number" disabled aria-describedby="sp-range-${i}">`
          : s.min == null
          ? html`<select id="sp-value-${i}" name="value"><option value="true">true (on)</option><option value="false">false (off)</option></select>`
          : html`<input id="sp-value-${i}" name="value" type="number" step="any" min="${s.min}" max="${s.max}" placeholder="${s.min} to ${s.max}" aria-describedby="sp-range-${i}">`}
        <button type="submit" class="small" ${may && !unranged(s) ? '' : raw('disabled')}>Set</button>
        <span class="muted" id="sp-range-${i}">${range(s)} · ${s.protocol} <span class="mono">${s.address}</span></span></form>`)}
      <label>Note <input id="sp-note" maxlength="500" placeholder="work order, reason (kept with the write)"></label>
    </div>
    <div id="sp-result" role="status" aria-live="polite"></div>
    <h3>Recent writes</h3><ul class="timeline" id="sp-writes" aria-label="Recent writes"></ul></section>`);
  const showWrites = async () => {
    // The table appears with the first write anywhere; asking for it before would be an error.
    const any = (await tables(true).catch(() => [])).some((t) => t.name === '_device_writes');
    const devices = [...new Set([id, ...points.map((s) => s.device)])].map(sqlStr).join(', ');
    // `SELECT *`: a text write's columns (`text`, `read_back_text`) exist only once one was made.
    const rows = any ? await query(`SELECT * FROM _device_writes WHERE device IN (${devices}) ORDER BY time DESC LIMIT 8`).catch(() => []) : [];
    if (!p.alive) return;
    const shown = (r) => (r.text != null ? { value: JSON.stringify(r.text), held: r.read_back_text == null ? null : JSON.stringify(r.read_back_text) }
      : { value: r.value, held: r.read_back });
    patch($('#sp-writes'), rows.length ? rows.map((r) => { const { value, held } = shown(r); return html`<li><span class="muted">${fmtTime(r.time)}</span><span>${pill(r.status === 'confirmed' ? 'online' : 'offline', r.status)}</span>
      <span><span class="mono">${r.device === id ? '' : `${r.device} · `}${r.signal}</span> = ${value}${held != null && held !== value ? html` (holds ${held})` : ''} · ${r.actor}${r.note ? html` · ${r.note}` : ''}</span></li>`; })
      : html`<li class="muted">None yet.</li>`);
  };
  showWrites();
  $('#sp-points').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const form = ev.target.closest('form.sp-point');
    const point = form && points[Number(form.dataset.index)];
    if (!point || !may) return;
    const signal = point.signal;
    const input = form.elements.value;
    let value;
    if (text(point)) value = input.value;
    else if (point.min == null) value = input.value === 'true';
    else if (input.value.trim() === '' || !Number.isFinite(Number(input.value))) {
      patch($('#sp-result'), html`<div class="notice bad" role="alert">Give ${signal} a number from ${range(point)}.</div>`);
      return;
    } else value = Number(input.value);
    const said = text(point) ? JSON.stringify(value) : value;
    const note = $('#sp-note').value.trim();
    const button = form.querySelector('button');
    button.disabled = true;
    try {
      const r = await api(`/api/v1/devices/${enc(point.device)}/setpoints/${enc(signal)}`, { method: 'POST', body: note ? { value, note } : { value } });
      if (!p.alive) return;
      patch($('#sp-result'), r.confirmed
        ? html`<div class="notice ok" id="sp-done">${signal} = ${said}: the device holds it (read back ${JSON.stringify(r.read_back)}).</div>`
        : r.read_back_error
          ? html`<div class="notice warn" id="sp-done">${signal} = ${said} was acknowledged, but could not be read back: ${r.read_back_error}</div>`
          : html`<div class="notice warn" id="sp-done">${signal} = ${said} was answered, but the device holds ${JSON.stringify(r.read_back)}: it did not take the value as written.</div>`);
    } catch (e) {
      if (p.alive) patch($('#sp-result'), html`<div class="notice bad" role="alert" id="sp-done">${e.message}</div>`);
    } finally {
      button.disabled = false;
      showWrites();
    }
  });
}

/** How a device event is coloured: connections and passed attestations green, losses and refusals red. */
const EVENT_STATE = {
  connected: 'online', birth: 'online', attested: 'online',
  disconnected: 'offline', death: 'offline', attestation_failed: 'offline', refused: 'offline', revoked: 'offline',
};

/** A device's attestation (decisions 0050, 0053): whether it must attest, may connect now and why, and how its key was enrolled. */
const attestationText = (a) => (!a ? '' : html`<dl class="kv">
  <dt>Attestation</dt><dd>${a.required ? pill(a.may_connect ? 'online' : 'offline', a.may_connect ? 'attested' : 'not attested') : html`<span class="muted">not required</span>`} <span class="muted">${a.reason}</span></dd>
  ${a.key ? html`<dt>Attestation key</dt><dd class="mono">${a.key.algorithm} ${a.key.fingerprint.slice(0, 16)}…</dd>` : ''}
  ${a.key ? html`<dt>Endorsement</dt><dd>${a.key.endorsement ? html`${a.key.endorsement.ek_algorithm.toUpperCase()} EK <span class="mono">${a.key.endorsement.ek_fingerprint.slice(0, 16)}…</span> <span class="muted">${a.key.endorsement.certificate_issuer ? `certificate by ${a.key.endorsement.certificate_issuer}` : 'certificate not checked'}</span>` : html`<span class="muted">enrolled by an operator, not through the TPM's EK</span>`}</dd>` : ''}</dl>`);

/** Streams a device's latest values: SSE (GET /devices/{id}/stream) when the server has it, else polls SQL each second. */
function startLive(p, id, table, lastMs, onPoint, setMode) {
  const ctl = new AbortController();
  p.cleanups.push(() => ctl.abort());
  const poll = async () => {
    setMode('polling every second');
    while (p.alive) {
      if (!document.hidden) {
        try {
          const since = lastMs() ? `'${new Date(lastMs()).toISOString()}'` : "now() - interval '10 seconds'";
          const rows = await query(`SELECT * FROM ${sqlId(table)} WHERE device = ${sqlStr(id)} AND time > ${since} ORDER BY time`, { signal: ctl.signal });
          rows.forEach((r) => onPoint(toMs(r.time), r));
        } catch (e) { if (e.name === 'AbortError' || e.status === 401) return; }
      }
      await sleep(1000);
    }
  };
  const sse = async () => {
    let failures = 0;
    // The last event's id: a reconnect goes on after that row, as EventSource does.
    let lastId = null;
    while (p.alive) {
      try {
        const res = await fetch(`${API}/api/v1/devices/${enc(id)}/stream`, {
          headers: headers(lastId ? { Accept: 'text/event-stream', 'Last-Event-ID': lastId } : { Accept: 'text/event-stream' }), credentials: API ? 'include' : 'same-origin', signal: ctl.signal, cache: 'no-store',
        });
        if (res.status === 404 || res.status === 405 || !res.body) return poll();
        if (res.status === 401) { auth.clear(); showSignIn('Your session has ended. Sign in again.'); return; }
        if (!res.ok) throw new Error(String(res.status));
        setMode('live (stream)');
        failures = 0;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf = (buf + value).replace(/\r\n?/g, '\n');
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
            const idLine = chunk.split('\n').find((l) => l.startsWith('id:'));
            if (idLine) lastId = idLine.slice(3).trim();
            const data = chunk.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
            if (!data) continue;
            try {
              const msg = JSON.parse(data);
              onPoint(toMs(msg.time), msg.values || {});
            } catch { /* skip a malformed event */ }
          }
        }
      } catch (e) {
        if (e.name === 'AbortError' || !p.alive) return;
        failures++;
      }
      if (failures > 3) return poll();
      setMode('reconnecting…');
      await sleep(2000);
    }
  };
  return caps.stream ? sse() : poll();
}

/** A model's tag as its inferences carry it (`pipelines::model_tag`). */
const modelTag = (m) => (m.model !== 'onnx' ? m.model
  : m.model_name ? `onnx:${m.model_name}` : m.model_path ? `onnx:${m.model_path.split('/').pop().replace(/\.[^.]*$/, '')}` : m.model);

/** The challenger's tag when it acts on some devices (an A/B split) and its verdicts can be told from the champion's. */
function liveChallenger(def) {
  const s = def?.shadow;
  if (!s || !(s.live_devices?.length || s.live_share > 0)) return null;
  return modelTag(s) !== modelTag(def) ? modelTag(s) : null;
}

function inferencesTable(rows, { device = true, selected, challenger } = {}) {
  if (!rows.length) return html`<div class="empty">No inferences.</div>`;
  return html`<div class="table-wrap"><table class="inf-table"><thead><tr><th>Window end</th>${device ? html`<th>Device</th>` : html`<th>Pipeline</th>`}<th class="num">Score</th><th class="num">Threshold</th><th>Result</th><th>Top signal</th></tr></thead><tbody>
    ${rows.map((r) => html`<tr class="clickable" data-window="${r.window_id}" aria-selected="${selected === r.window_id}">
      <td><a href="#/pipelines/${enc(r.pipeline)}/${enc(r.window_id)}" title="Show the input window">${fmtTime(r.time)}</a></td>
      ${device ? html`<td>${r.device}</td>` : html`<td>${r.pipeline}</td>`}
      <td class="num">${fmtNum(r.score)}</td><td class="num">${fmtNum(r.threshold)}</td>
      <td>${r.flag ? pill('firing', 'anomaly') : pill('online', 'normal')}${challenger && r.model === challenger ? html` <span class="tag" title="An A/B split: the challenger's verdict">${r.model}</span>` : ''}</td><td class="mono">${r.top_signal || '—'}</td></tr>`)}
    </tbody></table></div>`;
}

// ---------------------------------------------------------------- Data explorer

const DEFAULT_SQL = "SELECT time, device, vibration_rms, motor_current\nFROM pump\nWHERE time >= now() - interval '5 minutes'\nORDER BY time";
async function pageExplorer(p) {
  setTitle('Data explorer');
  const sql = sessionStorage.getItem('fabrik.sql') || DEFAULT_SQL;
  main.innerHTML = String(html`
    <div class="page-head"><div><h1>Data explorer</h1><div class="sub">Read-only SQL over every table (SELECT, SHOW, DESCRIBE, EXPLAIN)</div></div></div>
    <div class="grid cols-side" style="grid-template-columns:minmax(0,3fr) minmax(0,1fr)">
      <section class="card" aria-labelledby="h-sql">
        <h2 id="h-sql"><label for="sql">Query</label></h2>
        <textarea id="sql" rows="7" spellcheck="false" aria-describedby="sql-hint">${sql}</textarea>
        <div class="editor-bar">
          <button class="primary" type="button" id="run">Run query</button>
          <button type="button" id="csv" disabled>Export CSV</button>
          <span class="muted" id="sql-hint"><span class="kbd">Ctrl</span>+<span class="kbd">Enter</span> runs the query</span>
          <span class="spacer"></span><span class="muted" id="sql-status" role="status" aria-live="polite"></span>
        </div>
      </section>
      <section class="card" aria-labelledby="h-tables"><h2 id="h-tables">Tables</h2><div id="tables-list" class="muted">Loading…</div></section>
    </div>
    <div id="sql-error" class="notice bad" role="alert" hidden style="margin-top:16px"></div>
    <section class="card" id="result-chart-card" hidden style="margin-top:16px" aria-labelledby="h-rchart">
      <div class="card-head"><h2 id="h-rchart">Chart</h2><span class="muted" id="chart-note"></span></div><div class="chart" id="result-chart"></div></section>
    <section class="card" id="result-card" hidden style="margin-top:16px" aria-labelledby="h-result">
      <div class="card-head"><h2 id="h-result">Result</h2></div><div class="table-wrap" id="result"></div>
      <div class="pager" id="pager"></div></section>`);
  const ta = $('#sql');
  let result = null; let pageNo = 0; let chart = null; let lastSql = '';
  const PAGE = 50;
  p.cleanups.push(() => chart?.destroy());

  const list = await tables();
  $('#tables-list').innerHTML = String(html`<ul class="bars" style="list-style:none">${list.map((t) => html`<li style="display:block"><button type="button" class="small" data-table="${t.name}" aria-label="Query table ${t.name}">${t.name}</button>
    <span class="muted" style="font-size:12px">${[...t.tags, ...Object.keys(t.fields)].slice(0, 6).join(', ')}${Object.keys(t.fields).length + t.tags.length > 6 ? '…' : ''}</span></li>`)}</ul>`);
  $('#tables-list').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-table]');
    if (!b) return;
    ta.value = `SELECT *\nFROM ${/^[a-z_][a-z0-9_]*$/.test(b.dataset.table) ? b.dataset.table : sqlId(b.dataset.table)}\nORDER BY time DESC\nLIMIT 100`;
    ta.focus();
    run();
  });

  const renderPage = () => {
    const cols = result.length ? Object.keys(result[0]) : [];
    const pages = Math.max(1, Math.ceil(result.length / PAGE));
    pageNo = Math.min(pageNo, pages - 1);
    const rows = result.slice(pageNo * PAGE, pageNo * PAGE + PAGE);
    $('#result').innerHTML = String(result.length ? html`<table class="result-table"><thead><tr>${cols.map((c) => html`<th scope="col">${c}</th>`)}</tr></thead><tbody>
      ${rows.map((r) => html`<tr>${cols.map((c) => { const v = r[c]; return typeof v === 'number' ? html`<td class="num">${v}</td>` : html`<td title="${typeof v === 'object' && v !== null ? JSON.stringify(v) : v ?? ''}">${v === null ? html`<span class="muted">null</span>` : typeof v === 'object' ? JSON.stringify(v) : String(v)}</td>`; })}</tr>`)}
      </tbody></table>` : html`<div class="empty">The query returned no rows.</div>`);
    $('#pager').innerHTML = String(result.length > PAGE ? html`<span class="muted">Rows ${pageNo * PAGE + 1}–${Math.min(result.length, (pageNo + 1) * PAGE)} of ${result.length}</span>
      <button type="button" class="small" id="pg-prev" ${pageNo === 0 ? raw('disabled') : ''} aria-label="Previous page">← Prev</button>
      <span>Page ${pageNo + 1} / ${pages}</span>
      <button type="button" class="small" id="pg-next" ${pageNo >= pages - 1 ? raw('disabled') : ''} aria-label="Next page">Next →</button>` : '');
  };
  $('#pager').addEventListener('click', (e) => {
    const id = e.target.closest('button')?.id;
    if (id === 'pg-prev') pageNo--; else if (id === 'pg-next') pageNo++; else return;
    renderPage();
    $(`#${id}`)?.focus();
  });

  const renderChart = () => {
    chart?.destroy(); chart = null;
    const card = $('#result-chart-card');
    card.hidden = true;
    if (!result.length || !('time' in result[0])) return;
    const sample = result.slice(0, 50);
    const cols = Object.keys(result[0]).filter((c) => c !== 'time' && !c.startsWith('_') && sample.some((r) => typeof r[c] === 'number') && sample.every((r) => r[c] === null || typeof r[c] === 'number'));
    if (!cols.length) return;
    const devCol = ['device', 'key'].find((c) => c in result[0] && typeof result[0][c] === 'string');
    const groups = devCol ? [...new Set(result.map((r) => r[devCol]))] : [null];
    let keys = []; const pts = [];
    const split = groups.length > 1 && groups.length <= 12;
    for (const r of result) {
      const t = toMs(r.time);
      if (!Number.isFinite(t)) continue;
      for (const c of cols) {
        const key = split ? (cols.length > 1 ? `${r[devCol]} · ${c}` : r[devCol]) : c;
        if (typeof r[c] === 'number') pts.push({ t, key, value: r[c] });
      }
    }
    keys = [...new Set(pts.map((x) => x.key))].sort();
    let note = '';
    if (keys.length > 12) { note = `showing 12 of ${keys.length} series`; keys = keys.slice(0, 12); }
    card.hidden = false;
    $('#chart-note').textContent = note || `${keys.length} series`;
    chart = new Chart($('#result-chart'), { series: keys.map((k) => ({ label: k })), data: align(pts, keys), height: 280 });
  };

  const run = async () => {
    const text = ta.value.trim();
    if (!text) return;
    sessionStorage.setItem('fabrik.sql', ta.value);
    $('#sql-error').hidden = true;
    $('#sql-status').textContent = 'Running…';
    $('#run').disabled = true;
    const t0 = performance.now();
    try {
      result = await query(text);
      if (!p.alive) return;
      lastSql = text;
      if (!Array.isArray(result)) result = [];
      pageNo = 0;
      $('#sql-status').textContent = `${result.length.toLocaleString('en-US')} row${result.length === 1 ? '' : 's'} in ${Math.round(performance.now() - t0)} ms`;
      $('#result-card').hidden = false;
      $('#csv').disabled = false;
      renderPage();
      renderChart();
    } catch (e) {
      if (!p.alive || e.status === 401) return;
      $('#sql-status').textContent = '';
      $('#sql-error').textContent = e.message;
      $('#sql-error').hidden = false;
    } finally {
      if (p.alive) $('#run').disabled = false;
    }
  };
  $('#run').addEventListener('click', run);
  ta.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') { e.preventDefault(); run(); }
  });
  $('#csv').addEventListener('click', async () => {
    try {
      const text = await api('/api/v1/query', { method: 'POST', body: { sql: lastSql || ta.value }, accept: 'text/csv' });
      const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
      const a = document.createElement('a');
      a.href = url; a.download = `fabrik-query-${new Date().toISOString().replace(/[:.]/g, '-')}.csv`;
      document.body.append(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (e) { $('#sql-error').textContent = e.message; $('#sql-error').hidden = false; }
  });
  run();
}

// ---------------------------------------------------------------- Pipelines

async function pagePipelines(p, args) {
  setTitle('Pipelines');
  const pipelines = await api('/api/v1/pipelines');
  const name = args[0] || pipelines[0]?.name;
  const windowId = args[1];
  // A replaying pipeline (start = "earliest") learns from the first stored windows: a retrain
  // would replay the same ones, and the API refuses it.
  const retrainable = pipelines.find((x) => x.name === name)?.definition?.start !== 'earliest';
  main.innerHTML = String(html`
    <div class="page-head"><div><h1>Pipelines</h1><div class="sub">Windows scored by each model, and why</div></div></div>
    ${errorBox}
    <section class="card" aria-labelledby="h-plist"><h2 id="h-plist">All pipelines</h2><div id="pl-table"></div></section>
    ${name ? html`
    <section class="card" aria-labelledby="h-pdef"><div class="card-head"><h2 id="h-pdef">${name}</h2><div class="row"><span id="pl-state"></span>${document.body.dataset.role === 'admin' && retrainable ? html`<button type="button" class="small" id="btn-retrain" title="Every device learns its normal afresh from the stored windows before now">Retrain</button>` : ''}</div></div><div id="pl-def"></div></section>
    <section class="card" aria-labelledby="h-scores"><div class="card-head"><h2 id="h-scores">Scores over the last hour</h2><span class="muted">one point per window and device; dashed: threshold; log scale</span></div><div class="chart" id="score-chart"></div><div id="score-empty"></div></section>
    <div class="grid cols-2" style="margin-top:16px">
      <section class="card" aria-labelledby="h-drift"><div class="card-head"><h2 id="h-drift">Input drift</h2><span class="muted">each device's latest check against the windows its model learnt from</span></div><div id="pl-drift"></div></section>
      <section class="card" aria-labelledby="h-shadow"><div class="card-head"><h2 id="h-shadow">Shadow model</h2><span class="muted">a challenger on the same windows; it alerts only where it is live (A/B)</span></div><div id="pl-shadow"></div></section>
    </div>
    <section class="card" style="margin-top:16px" aria-labelledby="h-perf"><div class="card-head"><h2 id="h-perf">Estimated performance</h2><span class="muted">a classifier's metrics per chunk of windows, before their outcomes arrive (CBPE)</span></div><div id="pl-perf"></div></section>
    <div class="grid cols-2" style="margin-top:16px">
      <section class="card" aria-labelledby="h-anom"><div class="card-head"><h2 id="h-anom">Latest inferences</h2>
        <div class="seg" role="group" aria-label="Which inferences"><button type="button" data-only="1" aria-pressed="true">Anomalies</button><button type="button" data-only="0" aria-pressed="false">All</button></div></div>
        <div id="pl-inferences"></div></section>
      <section class="card" aria-labelledby="h-win" id="win-card"><h2 id="h-win">Input window</h2><div id="win-detail"><div class="empty">Select an inference to see its input window and what drove its score.</div></div></section>
    </div>` : html`<div class="empty">No pipelines yet: define them in the configuration file or with <code>fabrik pipeline apply</code>.</div>`}`);
  if (!name) return;
  let onlyAnomalies = true; let selected = windowId || null; let scoreChart = null; let winCharts = [];
  p.cleanups.push(() => { scoreChart?.destroy(); winCharts.forEach((c) => c.destroy()); });

  $('#btn-retrain')?.addEventListener('click', async () => {
    const ok = await confirmDialog(`Retrain ${name}?`, 'Every device learns its normal afresh from the stored windows before now. A restart otherwise keeps the model each device has: retrain when one learnt a fault as normal.', 'Retrain');
    if (!ok) return;
    try { await api(`/api/v1/pipelines/${enc(name)}/retrain`, { method: 'POST' }); toast(`${name} is retraining.`); } catch (err) { showError(err, p); }
  });
  $('.seg').addEventListener('click', (e) => {
    const b = e.target.closest('button');
    if (!b) return;
    onlyAnomalies = b.dataset.only === '1';
    $$('.seg button').forEach((x) => x.setAttribute('aria-pressed', String(x === b)));
    refreshList();
  });
  $('#pl-inferences').addEventListener('click', (e) => {
    const tr = e.target.closest('tr[data-window]');
    if (!tr || e.target.closest('a')) return;
    location.hash = `#/pipelines/${enc(name)}/${enc(tr.dataset.window)}`;
  });

  const refreshList = async () => {
    if (!(await hasTable('inferences'))) { patch($('#pl-inferences'), html`<div class="empty">No inferences yet: the model is still learning each device's normal.</div>`); return; }
    const rows = await query(`SELECT time, device, pipeline, model, score, threshold, flag, top_signal, window_id FROM inferences WHERE pipeline = ${sqlStr(name)}${onlyAnomalies ? ' AND flag = true' : ''} ORDER BY time DESC LIMIT 15`);
    if (!p.alive) return;
    patch($('#pl-inferences'), rows.length ? inferencesTable(rows, { selected, challenger: liveChallenger(pipelines.find((x) => x.name === name)?.definition) }) : html`<div class="empty">${onlyAnomalies ? 'No anomalies flagged yet.' : 'No inferences yet.'}</div>`);
  };

  /** Lineage (/api/v1/lineage): the exact rows the window read and the raw messages, as
   *  received, they were decoded from. */
  const showLineage = async (wid) => {
    let l;
    try { l = await api(`/api/v1/lineage?window_id=${enc(wid)}`); } catch (e) {
      if (p.alive && $('#win-lineage')?.dataset.window === wid) $('#win-lineage').innerHTML = String(html`<div class="muted">No lineage: ${e.message}</div>`);
      return;
    }
    const box = $('#win-lineage');
    // Another window may have been opened while this answer was on its way.
    if (!p.alive || !box || box.dataset.window !== wid) return;
    const messages = l.messages.rows;
    const sources = Object.entries(l.inputs.sources).map(([s, n]) => `${s} ${n}`).join(', ') || '—';
    const short = (text) => (String(text ?? '').length > 160 ? `${String(text).slice(0, 160)}…` : String(text ?? ''));
    box.innerHTML = String(html`<h3 style="margin-top:16px">Raw messages <span style="text-transform:none;letter-spacing:0;font-weight:400">(the window read ${l.inputs.rows.length}${l.inputs.truncated ? '+' : ''} rows of ${l.inputs.table}; by source: ${sources})</span></h3>
      ${messages.length ? html`<table aria-label="Raw messages of the window's input rows"><thead><tr><th>Received</th><th>Source</th><th>Topic</th><th>Payload</th></tr></thead><tbody>
        ${messages.slice(0, 50).map((m) => html`<tr><td>${fmtTime(toMs(m.time) * 1e6)}</td><td>${m.source ?? ''}</td><td class="mono">${m.topic ?? ''}</td><td class="mono wrap">${short(m.payload)}</td></tr>`)}</tbody></table>
        ${messages.length > 50 ? html`<div class="muted">${messages.length - 50} more: <code>fabrik pipeline lineage ${wid} --json</code></div>` : ''}` : ''}
      ${l.messages.rows_without_message ? html`<div class="muted">${l.messages.rows_without_message} of its rows have no raw message here (written over HTTP, polled over Modbus or OPC UA, or not kept).</div>` : ''}`);
  };

  const showWindow = async (wid) => {
    const [inf] = await query(`SELECT * FROM inferences WHERE pipeline = ${sqlStr(name)} AND window_id = ${sqlStr(wid)} LIMIT 1`);
    const def = pipelines.find((x) => x.name === name);
    if (!p.alive) return;
    if (!inf) { $('#win-detail').innerHTML = String(html`<div class="empty">Inference ${wid} not found.</div>`); return; }
    const ws = Number(inf.window_start); const we = Number(inf.window_end);
    const pad = Math.max(5e9, (we - ws) / 2);
    const signals = def?.signals || [];
    const deviceColumn = def?.definition?.device_column || def?.device_column || 'device';
    const rows = signals.length ? await query(`SELECT time, ${signals.map(sqlId).join(', ')} FROM ${sqlId(def.table)} WHERE ${sqlId(deviceColumn)} = ${sqlStr(inf.device)} AND time >= to_timestamp_nanos(${Math.round(ws - pad)}) AND time < to_timestamp_nanos(${Math.round(we + pad)}) ORDER BY time`) : [];
    if (!p.alive) return;
    // A text signal holding blob ids is a clip signal (WAV recordings): listed with a player
    // instead of plotted.
    const clipSignals = signals.filter((s) => rows.some((r) => isBlobId(r[s])));
    const plotted = signals.filter((s) => !clipSignals.includes(s));
    const around = rows.flatMap((r) => clipSignals.filter((s) => isBlobId(r[s])).map((s) => ({ t: toMs(r.time) * 1e6, signal: s, id: r[s] })));
    const ids = [...new Set(around.map((c) => c.id))].slice(0, 200);
    // `SELECT *`: a listing of files other than WAV clips has no duration or rate columns.
    const listed = ids.length && await hasTable('_blobs') ? await query(`SELECT * FROM _blobs WHERE id IN (${ids.map(sqlStr).join(', ')})`) : [];
    if (!p.alive) return;
    const header = new Map(listed.map((b) => [b.id, b]));
    around.forEach((c) => {
      const b = header.get(c.id);
      c.duration = Number(b?.duration_s ?? 0); c.rate = b?.sample_rate;
      c.inWindow = c.t < we && c.t + c.duration * 1e9 > ws;
    });
    around.sort((a, b) => (b.inWindow - a.inWindow) || (a.t - b.t));
    const clips = around.slice(0, 24);
    let contrib = {};
    try { contrib = JSON.parse(inf.contributions || '{}'); } catch { /* shown empty */ }
    const entries = Object.entries(contrib).filter(([, v]) => typeof v === 'number').sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
    const total = entries.reduce((a, [, v]) => a + Math.abs(v), 0) || 1;
    winCharts.forEach((c) => c.destroy()); winCharts = [];
    $('#win-detail').innerHTML = String(html`
      <dl class="kv" style="margin-bottom:12px"><dt>Device</dt><dd><a href="#/devices/${enc(inf.device)}">${inf.device}</a></dd>
        <dt>Window</dt><dd>${fmtTime(ws)} → ${fmtTime(we, false)} <span class="muted">(${inf.samples} samples)</span></dd>
        <dt>Score</dt><dd><strong>${fmtNum(inf.score)}</strong> <span class="muted">threshold ${fmtNum(inf.threshold)}</span> ${inf.flag ? pill('firing', 'anomaly') : pill('online', 'normal')}</dd>
        <dt>Window id</dt><dd class="mono">${inf.window_id}</dd>
        ${inf.trained_until != null ? html`<dt>Learnt from</dt><dd>${fmtTime(Number(inf.trained_from))} → ${fmtTime(Number(inf.trained_until))} <span class="muted">(model ${inf.model_version || ''})</span></dd>` : ''}</dl>
      <h3>What drove the score</h3>
      ${entries.length ? html`<ul class="bars" aria-label="Per-feature contributions">${entries.map(([k, v]) => html`<li><span class="name" title="${k}">${k}</span>
        <span class="track" role="img" aria-label="${k}: ${Math.round((Math.abs(v) / total) * 100)} percent"><span class="fill" style="display:block;width:${(Math.abs(v) / total) * 100}%"></span></span><span class="pct">${Math.round((Math.abs(v) / total) * 100)}%</span></li>`)}</ul>` : html`<div class="muted">No contributions recorded.</div>`}
      ${clips.length ? html`<h3 style="margin-top:16px">Clips <span style="text-transform:none;letter-spacing:0;font-weight:400">(those in the window first)</span></h3>
        <ul class="clips" id="win-clips">${clips.map((c) => html`<li class="${c.inWindow ? '' : 'muted'}" data-clip="${c.id}">
          <span>${fmtTime(c.t)}</span><span class="tag">${c.signal}</span>${c.inWindow ? html`<span class="tag">in window</span>` : html`<span class="muted">outside</span>`}
          <span class="muted">${c.duration ? `${fmtNum(c.duration)} s` : ''}${c.rate ? ` · ${c.rate} Hz` : ''}</span>
          <audio controls preload="none" src="${API}/api/v1/blobs/${c.id}" aria-label="${`Clip of ${c.signal} at ${fmtTime(c.t)}`}"></audio>
          <a href="${API}/api/v1/blobs/${c.id}" download="${`${inf.device}-${c.signal}-${Math.round(c.t / 1e6)}.wav`}">WAV</a></li>`)}</ul>` : ''}
      ${plotted.length ? html`<h3 style="margin-top:16px">Input signals <span style="text-transform:none;letter-spacing:0;font-weight:400">(window shaded)</span></h3>` : ''}
      <div class="charts" id="win-charts"></div>
      <div id="win-lineage" data-window="${wid}"></div>`);
    showLineage(wid);
    const box = $('#win-charts');
    const t = rows.map((r) => toMs(r.time) / 1000);
    box.dataset.points = String(t.length);
    winCharts = plotted.map((s, i) => {
      box.insertAdjacentHTML('beforeend', `<div class="chart-title">${esc(s)}</div><div class="chart"></div>`);
      return new Chart(box.lastElementChild, { series: [{ label: s, color: PALETTE[i % PALETTE.length] }], data: [t, rows.map((r) => r[s] ?? null)], height: 110, band: [ws / 1e9, we / 1e9], sync: `win-${name}` });
    });
  };

  // Drift checks and the shadow comparison change every few minutes at most.
  const refreshMonitoring = async () => {
    const status = await api(`/api/v1/pipelines/${enc(name)}`);
    const def = status.definition || {};
    if (!p.alive) return;
    if (!def.drift) {
      patch($('#pl-drift'), html`<div class="empty">No drift watch: add <code>[pipelines.drift]</code> to compare each device's recent windows with those its model learnt from.</div>`);
    } else {
      const checks = await api(`/api/v1/pipelines/${enc(name)}/drift`);
      if (!p.alive) return;
      patch($('#pl-drift'), checks.length ? html`<table><thead><tr><th>Device</th><th>Input</th><th class="num">Features drifted</th><th>Most drifted</th><th>Checked</th></tr></thead><tbody>
        ${checks.map((c) => html`<tr data-drift="${c.device}"><td><a href="#/devices/${enc(c.device)}">${c.device}</a></td>
          <td>${c.retrained ? pill('pending', 'retrained') : c.dataset_drift ? pill('firing', 'drifted') : pill('online', 'stable')}${c.consecutive > 1 ? html` <span class="muted">${c.consecutive} in a row</span>` : ''}</td>
          <td class="num">${Math.round(c.drifted_share * c.features.length)} / ${c.features.length}</td>
          <td class="wrap">${c.drifted_features.slice(0, 3).map((f) => html`<span class="tag">${f}</span>`)}</td>
          <td title="${`${c.windows} windows from ${fmtTime(c.current_from)}, against ${c.reference_windows} learnt from ${fmtTime(c.reference_from)}`}">${time(c.current_until)}</td></tr>`)}
        </tbody></table>` : html`<div class="empty">No check yet: a device is checked every ${def.drift.windows || 'training'} scored windows.</div>`);
    }
    if (!def.performance) {
      patch($('#pl-perf'), html`<div class="empty">No estimate: add <code>[pipelines.performance]</code> to a classifier's pipeline, naming the table its outcomes arrive in.</div>`);
    } else {
      const r = await api(`/api/v1/pipelines/${enc(name)}/performance`);
      if (!p.alive) return;
      patch($('#pl-perf'), performanceView(r));
    }
    if (!def.shadow) {
      patch($('#pl-shadow'), html`<div class="empty">No shadow model: add <code>[pipelines.shadow]</code> to score a challenger on the same windows before switching to it.</div>`);
      return;
    }
    const c = await api(`/api/v1/pipelines/${enc(name)}/shadow`);
    // The arms per interval of the KPI series (decision 0072), newest 24 per KPI: this
    // process's own rows (not those edges forward to a hub), of the use case the pipeline
    // serves.
    // (A store without the table yet answers with an error: no series.)
    const series = c.arms && (c.arms.kpis || []).length && def.use_case
      ? await query(`SELECT CAST(time AS BIGINT) AS t, kpi, champion, challenger FROM ab_kpis WHERE pipeline = ${sqlStr(name)} AND use_case = ${sqlStr(def.use_case)} AND _source NOT LIKE 'uplink:%' ORDER BY time DESC LIMIT ${24 * c.arms.kpis.length}`).catch(() => [])
      : [];
    if (!p.alive) return;
    patch($('#pl-shadow'), html`${status.shadow_error ? html`<div class="notice warn">${status.shadow_error}</div>` : ''}<dl class="kv"><dt>Champion</dt><dd>${c.champion} <span class="muted mono">${c.champion_version || ''}</span></dd><dt>Challenger</dt><dd>${c.challenger} <span class="muted mono">${c.challenger_version || ''}</span></dd>
      <dt>Windows both scored</dt><dd>${fmtNum(c.windows)} <span class="muted">last ${c.days} days</span></dd>
      <dt>Flagged</dt><dd>champion ${fmtNum(c.champion_flags)} · challenger ${fmtNum(c.challenger_flags)} · both ${fmtNum(c.both_flagged)}</dd>
      <dt>Same verdict</dt><dd>${c.agreement == null ? '—' : `${fmtNum(c.agreement * 100, 3)} %`}</dd>
      ${c.live_windows ? html`<dt>A/B split</dt><dd id="pl-shadow-live">the challenger acts on ${fmtNum(c.live_windows)} of these windows <span class="muted">(${c.devices.filter((d) => d.live_windows).map((d) => d.device).join(', ')})</span></dd>` : ''}
      <dt>Confirmed faults</dt><dd>${!c.confirmed ? html`<span class="muted">none labelled yet</span>` : c.live_windows ? `${c.confirmed}: flagged by the champion ${c.confirmed_flagged_by_champion}, by the challenger ${c.confirmed_flagged_by_challenger}` : `${c.confirmed_flagged_by_challenger} of ${c.confirmed} flagged by the challenger too`}</dd>
      <dt>False alarms</dt><dd>${!c.false_alarms ? html`<span class="muted">none labelled yet</span>` : c.live_windows ? `${c.false_alarms}: raised by the champion ${c.false_alarms_flagged_by_champion}, by the challenger ${c.false_alarms_flagged_by_challenger}` : `${c.false_alarms_flagged_by_challenger} of ${c.false_alarms} raised by the challenger too`}</dd>
      ${c.arms ? html`<dt>Arms</dt><dd id="pl-shadow-arms">${armsText(c.arms)}</dd>` : ''}
      ${series.length ? html`<dt>Arms per interval</dt><dd id="pl-shadow-series">${armSeries(c.arms.kpis, series)}</dd>` : ''}
      <dt>Decision</dt><dd id="pl-shadow-decision">${shadowDecision(c.decision)}</dd></dl>`);
  };
  every(p, 30000, refreshMonitoring);

  // Throughput from the counters since the page opened (polls every 5 s), so a 10 s window
  // that closes between two polls does not make the rate jump between 0 and double.
  let firstCounts = null;
  const throughput = (x) => {
    const now = Date.now();
    if (!firstCounts || x.samples < firstCounts.samples) firstCounts = { t: now, samples: x.samples, windows: x.windows };
    const dt = (now - firstCounts.t) / 1000;
    if (dt < 1) return 'throughput: measuring…';
    return `throughput ${fmtNum((x.samples - firstCounts.samples) / dt, 3)} samples/s · ${fmtNum(((x.windows - firstCounts.windows) / dt) * 60, 3)} windows/min`;
  };
  await every(p, 5000, async () => {
    const list = await api('/api/v1/pipelines');
    if (!p.alive) return;
    patch($('#pl-table'), pipelinesTable(list));
    const x = list.find((y) => y.name === name);
    if (!x) { patch($('#pl-def'), html`<div class="notice bad">Pipeline ${name} not found.</div>`); return; }
    patch($('#pl-state'), pill(x.state));
    patch($('#pl-def'), html`${x.error ? html`<div class="notice ${x.state === 'failed' ? 'bad' : 'warn'}">${x.error}</div>` : ''}
      <div class="grid cols-2"><dl class="kv"><dt>Input table</dt><dd class="mono">${x.table}</dd>${x.filter ? html`<dt>Rows where</dt><dd class="mono">${x.filter}</dd>` : ''}<dt>Signals</dt><dd>${x.signals.map((s) => html`<span class="tag">${s}</span>`)}</dd>
        <dt>Model</dt><dd>${x.model}</dd><dt>Defined in</dt><dd>${({ config: 'the configuration file', api: 'the API (kept across restarts)', demo: 'the demo plant' })[x.origin] || x.origin}</dd><dt>Window</dt><dd>${x.window}</dd><dt>Threshold</dt><dd class="mono">${x.threshold}</dd><dt>Features</dt><dd>${x.features.length}</dd></dl>
      <div class="stats" style="grid-template-columns:repeat(3,minmax(0,1fr));margin:0">
        ${[['Devices', x.devices], ['Training', x.training_devices], ['Windows', x.windows], ['Inferences', x.inferences], ['Anomalies', x.anomalies], ['Incomplete', x.incomplete_windows]].map(([k, v]) => html`<div class="stat"><div class="label">${k}</div><div class="value" style="font-size:20px">${fmtNum(v)}</div></div>`)}
      </div></div>
      <div class="muted" style="margin-top:8px">Data complete up to ${x.horizon ? fmtTime(x.horizon) : '—'} · ${fmtNum(x.samples)} samples read · <span id="pl-rate">${throughput(x)}</span></div>`);
    if (await hasTable('inferences')) {
      const rows = await query(`SELECT time, device, score, threshold FROM inferences WHERE pipeline = ${sqlStr(name)} AND time >= now() - interval '1 hour' ORDER BY time LIMIT 20000`);
      if (!p.alive) return;
      const devices = [...new Set(rows.map((r) => r.device))].sort();
      // Log scale: a stuck or spiking sensor scores in the hundreds while normal windows score ~1.
      const pts = rows.map((r) => ({ t: toMs(r.time), key: r.device, value: Math.max(r.score, 0.01) }));
      const thr = new Map();
      rows.forEach((r) => thr.set(toMs(r.time), Math.max(thr.get(toMs(r.time)) ?? -Infinity, r.threshold)));
      thr.forEach((v, t) => pts.push({ t, key: '__thr', value: v }));
      const data = align(pts, [...devices, '__thr']);
      const series = [...devices.map((dv) => ({ label: dv, points: true })), { label: 'threshold', color: '#e5484d', dash: [6, 4], width: 1.2 }];
      if (!scoreChart || scoreChart.series.length !== series.length) { scoreChart?.destroy(); scoreChart = new Chart($('#score-chart'), { series, data, height: 240, yLabel: 'score (log)', logY: true }); } else scoreChart.setData(data);
      patch($('#score-empty'), rows.length ? '' : html`<div class="empty">No inferences in the last hour.</div>`);
    } else {
      patch($('#score-empty'), html`<div class="empty">No inferences yet: ${x.training_devices} device(s) still learning their normal.</div>`);
    }
    await refreshList();
  });
  if (selected) {
    try { await showWindow(selected); $('#win-card').scrollIntoView({ block: 'nearest' }); } catch (e) { showError(e, p); }
  }
}

// ---------------------------------------------------------------- Alerts

function alertsTable(alerts, { compact = false, noDevice = false, actions = false } = {}) {
  return html`<div class="table-wrap"><table class="alerts-table"><thead><tr><th>State</th><th>Rule</th>${noDevice ? '' : html`<th>Device</th>`}
    ${compact ? '' : html`<th>Severity</th>`}<th>Started</th>${compact ? '' : html`<th>Fired / resolved</th><th class="num" title="The value at the last evaluation: a resolved alert's is the one that cleared it">Last value</th><th>Top signal</th>`}<th>Acknowledged</th>${actions ? html`<th><span class="sr">Actions</span></th>` : ''}</tr></thead><tbody>
    ${alerts.map((a) => html`<tr data-alert="${a.id}"><td>${pill(a.state)}${a.inhibited_by ? html` <span class="pill plain" title="${`Held back while ${a.inhibited_by} fires`}">inhibited</span>` : a.silenced && a.state === 'resolved' ? html` <span class="pill plain" title="A silence or an inhibition held its notifications back">held back</span>` : a.silenced ? html` <span class="pill plain" title="A silence matched">silenced</span>` : ''}</td>
      <td class="wrap-id">${a.rule}${a.annotations?.summary ? html`<div class="muted small-text${compact ? ' clamp' : ''}" title="${compact ? a.annotations.summary : ''}">${a.annotations.summary}</div>` : ''}</td>${noDevice ? '' : html`<td class="wrap-id"><a href="#/devices/${enc(a.key)}">${a.key}</a></td>`}
      ${compact ? '' : html`<td>${pill(a.severity === 'critical' ? 'failed' : a.severity === 'warning' ? 'pending' : '', a.severity)}</td>`}
      <td>${time(a.started_at)}</td>
      ${compact ? '' : html`<td><div>${a.fired_at ? fmtTime(a.fired_at) : '—'}</div>${a.resolved_at ? html`<div class="muted">→ ${fmtTime(a.resolved_at)}</div>` : ''}</td><td class="num">${fmtNum(a.value)}</td><td class="mono">${windowLink(a)}</td>`}
      <td>${a.ack ? html`<span title="${a.ack.comment || ''}">${pill(a.ack.feedback)} <span class="muted">by ${a.ack.by}</span></span>` : html`<span class="muted">—</span>`}${a.applied?.length ? html`<div class="muted small-text applied" title="${a.applied.map((w) => `${fmtTime(w.time)} ${w.by}: ${w.signal} = ${w.value} (${w.status})`).join('\n')}">applied by ${a.applied[a.applied.length - 1].by}: ${a.applied[a.applied.length - 1].signal} = ${a.applied[a.applied.length - 1].value} (${a.applied[a.applied.length - 1].status})</div>` : ''}</td>
      ${actions ? html`<td><div class="stack">${a.action && a.state === 'firing' && ['operator', 'admin'].includes(document.body.dataset.role) ? html`<button type="button" class="small" data-apply="${a.id}" title="${`Set ${a.action.signal} of ${a.action.device} to ${a.action.value}`}" aria-label="Apply the proposed action of ${a.rule} on ${a.key}">Apply: ${a.action.signal} = ${String(a.action.value)}</button>` : ''}${a.ack || a.state === 'pending' ? '' : html`<button type="button" class="small" data-ack="${a.id}" aria-label="Acknowledge alert ${a.rule} on ${a.key}">Acknowledge</button>`}
        <button type="button" class="small" data-silence="${a.id}" aria-label="Silence ${a.rule} on ${a.key}">Silence</button></div></td>` : ''}</tr>`)}
    </tbody></table></div>`;
}

/** An alert's top signal, linked to the inference window that fired it when the rule
 *  carries `window_id` and `pipeline` (the demo's does): alert → inference → input samples. */
function windowLink(a) {
  const n = a.annotations || {};
  const label = n.top_signal || (n.window_id ? 'window' : '—');
  if (!n.window_id || !n.pipeline) return label;
  return html`<a href="#/pipelines/${enc(n.pipeline)}/${enc(n.window_id)}" title="Show the input window that fired it" data-window-link>${label}</a>`;
}

/** A rule's condition as an operator reads it, e.g. `pressure > 6 for 30s`. */
function ruleCondition(d) {
  const forText = d.for && d.for !== '0s' ? ` for ${d.for}` : '';
  switch (d.condition) {
    case 'above': return `${d.value} > ${d.threshold}${forText}`;
    case 'below': return `${d.value} < ${d.threshold}${forText}`;
    case 'rate_above': return `|d(${d.value})/dt| > ${d.threshold}/s${forText}`;
    case 'absent': return `no row for ${d.threshold}s${forText}`;
    case 'unchanged': return `${d.value} unchanged for ${d.threshold}s${forText}`;
    case 'change': return `level of ${d.value} changed (ADWIN, confidence ${d.threshold})`;
    case 'distribution': return `distribution of ${d.value} changed (KSWIN, level ${d.threshold})`;
    case 'error_rate': return `share of errors in ${d.value} rose (HDDM_A, confidence ${d.threshold})`;
    default: return d.condition;
  }
}

function rulesTable(rules) {
  return html`<div class="table-wrap"><table><thead><tr><th>Rule</th><th>Health</th><th>Condition</th><th>Table</th><th>Severity</th><th class="num">Pending</th><th class="num">Firing</th><th>Evaluated</th><th>Origin</th></tr></thead><tbody>
    ${rules.map((r) => html`<tr><td>${r.name}</td><td>${pill(RULE_HEALTH[r.health] ?? r.health, r.health)}${r.error ? html`<div class="muted small-text clamp rule-error" title="${r.error}">⚠ ${r.error}</div>` : ''}</td>
      <td class="wrap"><code>${ruleCondition(r.definition)}</code></td><td>${r.definition.table}</td><td>${r.definition.severity}</td>
      <td class="num">${r.pending}</td><td class="num">${r.firing}</td><td>${r.last_evaluated ? time(r.last_evaluated) : html`<span class="muted">not yet</span>`}</td><td>${r.origin}</td></tr>`)}</tbody></table></div>`;
}
/** Rule health → the state whose colour it takes. */
const RULE_HEALTH = { ok: 'running', starting: 'pending', waiting: 'pending', failing: 'failed', invalid: 'failed' };

// ---------------------------------------------------------------- Audit (admins)

async function pageAudit(p) {
  setTitle('Audit log');
  // The log is an admin's to read: anyone else asking would only add refusals to it.
  const role = document.body.dataset.role;
  if (role && role !== 'admin') {
    main.innerHTML = String(html`<div class="page-head"><div><h1>Audit log</h1></div></div>
      <div class="notice" id="audit-not-admin">Only admins can read the audit log.</div>`);
    return;
  }
  main.innerHTML = String(html`
    <div class="page-head"><div><h1>Audit log</h1><div class="sub">Changes made through the API, refusals and sign-ins, each chained to the one before</div></div></div>
    ${errorBox}
    <div class="row"><div id="audit-chain"></div><button type="button" id="audit-verify" title="Recompute every entry's hash from the first on">Check the chain</button></div>
    <section class="card" aria-labelledby="h-audit"><h2 id="h-audit">Entries, newest first</h2><div id="audit-table"></div>
      <div class="row" style="margin-top:8px"><button type="button" id="audit-older" hidden>Older entries</button></div></section>
    <section class="card" aria-labelledby="h-compliance"><h2 id="h-compliance">Security controls</h2>
      <div class="sub">IEC 62443-3-3, NIST 800-53 and GDPR, assessed from this installation's configuration and state (<code>fabrik compliance</code>)</div><div id="compliance"></div></section>`);
  let before = null; // null: the newest page, refreshed
  const statusPill = (s) => pill(s < 300 ? 'online' : s === 401 || s === 403 ? 'failed' : 'pending', String(s));
  // The check reads every entry: on opening the page and on request, not with each refresh.
  const verify = async () => {
    const check = await api('/api/v1/audit/verify');
    if (!p.alive) return;
    patch($('#audit-chain'), check.intact
      ? html`<div class="notice" id="audit-intact">Chain intact: ${fmtNum(check.entries)} entries; head #${check.head_seq} <span class="mono" title="${check.head_hash}">${check.head_hash.slice(0, 16)}…</span> (compare with the shipped process log)</div>`
      : html`<div class="notice bad" role="alert" id="audit-broken">The chain is broken at entry ${check.broken_at}: ${check.problem}${check.broken_entries > 1 ? html` <span id="audit-broken-count">(${fmtNum(check.broken_entries)} of ${fmtNum(check.entries)} entries do not fit: ${check.breaks.map((b) => b.seq).join(', ')}${check.broken_entries > check.breaks.length ? '…' : ''})</span>` : ''}</div>`);
  };
  const load = async () => {
    const entries = await api(`/api/v1/audit?limit=50${before ? `&before=${before}` : ''}`);
    if (!p.alive) return;
    patch($('#audit-table'), entries.length ? html`<div class="table-wrap"><table id="audit-entries"><thead><tr><th class="num">#</th><th>Time</th><th>Actor</th><th>Action</th><th>Target</th><th>Status</th></tr></thead><tbody>
      ${entries.map((e) => html`<tr data-seq="${e.seq}"><td class="num">${e.seq}</td><td>${time(e.time)}</td><td class="wrap-id">${e.actor}</td><td class="mono">${e.action}</td><td class="mono wrap-id">${e.target}</td><td>${statusPill(e.status)}</td></tr>`)}
      </tbody></table></div>` : html`<div class="empty">Nothing recorded yet.</div>`);
    const older = $('#audit-older');
    older.hidden = !entries.length || entries[entries.length - 1].seq <= 1;
    older.dataset.before = entries.length ? entries[entries.length - 1].seq : '';
  };
  $('#audit-older').addEventListener('click', async (e) => { before = Number(e.currentTarget.dataset.before); await load(); });
  $('#audit-verify').addEventListener('click', () => verify().catch((err) => showError(err, p)));
  verify().catch((err) => showError(err, p));
  // Like the chain's check, assessed on opening the page.
  const COMPLIANCE_STATE = { met: 'online', partial: 'pending', not_met: 'failed' };
  api('/api/v1/compliance').then((report) => {
    if (!p.alive) return;
    patch($('#compliance'), html`<p id="compliance-summary">${report.met} met, ${report.partial} partial, ${report.not_met} not met</p>
      <div class="table-wrap"><table id="compliance-controls"><thead><tr><th>Status</th><th>Control</th><th>Found (✓ evidence, ✗ gap)</th></tr></thead><tbody>
      ${report.controls.map((c) => html`<tr><td>${pill(COMPLIANCE_STATE[c.status], c.status.replace('_', ' '))}</td>
        <td><strong>${c.title}</strong><div class="muted">${c.references.join(', ')}</div></td>
        <td class="wrap"><ul class="findings">${c.evidence.map((e) => html`<li>✓ ${e}</li>`)}${c.gaps.map((g) => html`<li class="gap">✗ ${g}</li>`)}</ul></td></tr>`)}
      </tbody></table></div>`);
  }).catch((err) => showError(err, p));
  await every(p, 10000, () => (before ? Promise.resolve() : load()));
}

// ---------------------------------------------------------------- use cases

const STAGES = [['pilot', 'Pilot'], ['scale_up', 'Scale-up'], ['enterprise', 'Enterprise']];
const stageName = (s) => (STAGES.find(([v]) => v === s) || [s, s])[1];
const stagePill = (s) => html`<span class="pill ${s === 'enterprise' ? 'ok' : ''}" data-stage="${s}">${stageName(s)}</span>`;
/** A KPI's number with its unit (a `ratio` is shown bare: 0.83 of alerts were real). */
const kpiNumber = (v, unit) => (v === null || v === undefined ? '—' : `${fmtNum(v, 4)}${unit && unit !== 'ratio' ? ` ${unit}` : ''}`);
const signedPercent = (v) => (v === null || v === undefined ? '—' : `${v >= 0 ? '+' : ''}${fmtNum(v * 100, 3)} %`);
/** The checks of a gate that did not hold, as a list (what a forced promotion overrode). */
const failedChecks = (gate) => html`<ul class="findings">${(gate?.checks || []).filter((c) => !c.passed).map((c) => html`<li class="gap">✗ ${c.criterion} <span class="muted">(measured ${c.measured_text})</span></li>`)}</ul>`;

async function pageUseCases(p, args) {
  if (args[0]) return pageUseCase(p, args[0]);
  setTitle('Use cases');
  main.innerHTML = String(html`
    <div class="page-head"><div><h1>Use cases</h1><div class="sub">Each use case serves a business objective, measures its KPIs from the data, and widens the devices its pipelines score only through its stage gates: pilot → scale-up → enterprise</div></div></div>
    ${errorBox}
    <section class="card" aria-labelledby="h-uc"><h2 id="h-uc">All use cases</h2><div id="uc-list"></div></section>`);
  await every(p, 10000, async () => {
    const list = await api('/api/v1/usecases');
    if (!p.alive) return;
    patch($('#uc-list'), list.length ? html`<div class="table-wrap"><table id="usecases-table"><thead><tr><th>Use case</th><th>Stage</th><th>Objective</th><th>Owner</th><th class="num">Devices</th><th>Pipelines</th></tr></thead><tbody>
      ${list.map((u) => html`<tr data-usecase="${u.name}"><td><a href="#/usecases/${enc(u.name)}">${u.name}</a></td><td>${stagePill(u.stage)} <span class="muted">${time(u.stage_since)}</span></td>
        <td class="wrap">${u.definition.objective}</td><td>${u.definition.owner || '—'}</td><td class="num">${u.devices ? u.devices.length : 'all'}</td><td>${u.pipelines.join(', ') || '—'}</td></tr>`)}
      </tbody></table></div>` : html`<div class="empty">No use case is defined. Define one with <code>fabrik usecase define FILE</code> or <code>PUT /api/v1/usecases/{name}</code>.</div>`);
  });
}

/** A KPI's values bucket by bucket as a small line; buckets without a value are gaps. */
function sparkline(trend) {
  const values = trend?.values || [];
  const known = values.filter((v) => v !== null);
  if (known.length < 2) return html`<span class="muted">—</span>`;
  const [lo, hi] = [Math.min(...known), Math.max(...known)];
  const x = (i) => (i / (values.length - 1)) * 96 + 2;
  const y = (v) => (hi === lo ? 12 : 22 - ((v - lo) / (hi - lo)) * 20);
  const runs = [];
  let run = [];
  values.forEach((v, i) => { if (v === null) { if (run.length) runs.push(run); run = []; } else run.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`); });
  if (run.length) runs.push(run);
  const label = `${trend.name}, oldest first: ${values.map((v) => (v === null ? '—' : fmtNum(v, 4))).join(', ')}`;
  return html`<svg class="spark" width="100" height="24" viewBox="0 0 100 24" role="img" aria-label="${label}"><title>${label}</title>${runs.map((r) => html`<polyline points="${r.join(' ')}"/>`)}</svg>`;
}

function kpiTable(kpis, withBaseline, history) {
  if (!kpis.length) return html`<div class="empty">No KPI is defined.</div>`;
  const trendOf = (name) => history?.kpis.find((t) => t.name === name);
  return html`<div class="table-wrap"><table id="uc-kpi-table"><thead><tr><th>KPI</th><th class="num">Value</th><th title="12 equal steps since the stage began">Trend</th>${withBaseline ? html`<th class="num">Baseline</th><th class="num" title="Relative to the baseline; positive is better">Change vs baseline</th>` : ''}<th class="num">Target</th><th>Detail</th></tr></thead><tbody>
    ${kpis.map((k) => html`<tr data-kpi="${k.name}"><td>${k.name}<div class="muted small-text">${k.kind.replace('_', ' ')}, ${k.better} is better</div></td>
      <td class="num" data-value>${kpiNumber(k.current.value, k.unit)}</td><td>${sparkline(trendOf(k.name))}</td>
      ${withBaseline ? html`<td class="num">${k.baseline ? kpiNumber(k.baseline.value, k.unit) : '—'}</td><td class="num">${signedPercent(k.improvement)}</td>` : ''}
      <td class="num">${k.target === null ? '—' : html`${kpiNumber(k.target, k.unit)} ${k.target_met === null ? '' : pill(k.target_met ? 'online' : 'failed', k.target_met ? 'met' : 'not met')}`}</td>
      <td class="wrap muted small-text">${k.current.error ? html`<span class="bad-text">${k.current.error}</span>` : k.current.detail}</td></tr>`)}
    </tbody></table></div>
    ${withBaseline ? '' : html`<p class="muted">No baseline period: set the use case's <code>baseline</code> to compare each KPI with the time before it.</p>`}`;
}

async function pageUseCase(p, name) {
  setTitle(name);
  main.innerHTML = String(html`<div class="crumbs"><a href="#/usecases">Use cases</a> / ${name}</div>
    ${errorBox}
    <section class="card" aria-labelledby="h-ucdef"><div class="card-head"><h2 id="h-ucdef">${name}</h2><div class="row" id="uc-actions"></div></div><div id="uc-def"></div></section>
    <section class="card" aria-labelledby="h-uckpi"><h2 id="h-uckpi">KPIs since the stage began</h2><div class="sub" id="uc-kpi-scope"></div><div id="uc-kpis"></div></section>
    <section class="card" aria-labelledby="h-ucgate"><h2 id="h-ucgate">Gate to the next stage</h2><div id="uc-gate"></div></section>
    <section class="card" aria-labelledby="h-ucdec"><h2 id="h-ucdec">Stage decisions</h2><div id="uc-decisions"></div></section>`);
  let current = null;
  // The trend costs a query per KPI and step: read once a minute (or when the stage changed),
  // not with every refresh, and a failure waits its minute too.
  let history = null;
  let historyAt = 0;
  let historyStage = null;
  const load = async () => {
    const u = await api(`/api/v1/usecases/${enc(name)}`);
    const trend = Date.now() - historyAt > 60000 || historyStage !== u.stage
      ? api(`/api/v1/usecases/${enc(name)}/kpis/history?buckets=12`).catch(() => null)
      : null;
    if (trend) { historyAt = Date.now(); historyStage = u.stage; }
    // Below enterprise the gate carries the KPIs of the same period: measured once. A
    // failure of one answer leaves the rest of the page shown.
    const [measured, decisions] = await Promise.allSettled([
      u.stage === 'enterprise' ? api(`/api/v1/usecases/${enc(name)}/kpis`) : api(`/api/v1/usecases/${enc(name)}/gate`),
      api(`/api/v1/usecases/${enc(name)}/decisions`),
    ]);
    if (trend) history = await trend;
    if (!p.alive) return;
    const gate = u.stage !== 'enterprise' && measured.status === 'fulfilled' ? measured.value : null;
    const kpis = measured.status === 'fulfilled' ? measured.value.kpis : null;
    current = { u, gate };
    const d = u.definition;
    patch($('#uc-def'), html`<dl class="kv">
      <dt>Objective</dt><dd id="uc-objective">${d.objective}</dd>
      <dt>Owner</dt><dd>${d.owner || '—'}${d.stakeholders.length ? html` <span class="muted">with ${d.stakeholders.join(', ')}</span>` : ''}</dd>
      <dt>Stage</dt><dd id="uc-stage"><span class="stages">${STAGES.map(([v, l], i) => html`${i ? html`<span class="muted" aria-hidden="true">→</span>` : ''}<span class="stage${v === u.stage ? ' current' : ''}" ${v === u.stage ? raw('aria-current="step"') : ''}>${l}</span>`)}</span> since ${time(u.stage_since)}</dd>
      <dt>Devices now</dt><dd id="uc-devices">${u.devices ? (u.devices.length ? u.devices.map((id, i) => html`${i ? ', ' : ''}<a href="#/devices/${enc(id)}">${id}</a>`) : 'none') : 'every device its pipelines select'}</dd>
      <dt>Pipelines</dt><dd>${u.pipelines.length ? u.pipelines.map((n, i) => html`${i ? ', ' : ''}<a href="#/pipelines/${enc(n)}">${n}</a>`) : '—'}</dd>
      ${d.baseline ? html`<dt>Baseline</dt><dd>${fmtTime(d.baseline.from)} – ${fmtTime(d.baseline.to)}</dd>` : ''}</dl>`);
    patch($('#uc-kpi-scope'), u.devices ? html`On the ${u.devices.length} devices of the stage` : html`On every device of each KPI's table`);
    patch($('#uc-kpis'), kpis ? kpiTable(kpis, Boolean(d.baseline), history) : html`<div class="notice bad" role="alert">${measured.reason?.message}</div>`);
    patch($('#uc-gate'), u.stage === 'enterprise' ? html`<p class="muted">At enterprise: no further gate.</p>`
      : !gate ? html`<div class="notice bad" role="alert">${measured.reason?.message}</div>`
        : html`<p id="uc-gate-verdict">${stageName(gate.from)} → ${stageName(gate.to)}: ${gate.passed ? pill('online', 'passes') : pill('failed', 'does not pass')}</p>
      ${gate.checks.length ? html`<ul class="findings" id="uc-gate-checks">${gate.checks.map((c) => html`<li class="${c.passed ? '' : 'gap'}">${c.passed ? '✓' : '✗'} ${c.criterion} <span class="muted">(measured ${c.measured_text})</span></li>`)}</ul>`
        : html`<p class="muted">The gate has no criteria: a promotion is a recorded decision to force it.</p>`}`);
    patch($('#uc-decisions'), decisions.status === 'rejected' ? html`<div class="notice bad" role="alert">${decisions.reason?.message}</div>`
      : decisions.value.length ? html`<div class="table-wrap"><table id="uc-decision-table"><thead><tr><th>Time</th><th>Change</th><th>By</th><th>Reason</th></tr></thead><tbody>
      ${[...decisions.value].reverse().map((x) => html`<tr><td>${time(x.time)}</td><td>${stageName(x.from)} → ${stageName(x.to)}${x.forced ? html` ${pill('pending', 'forced')}` : ''}</td><td>${x.actor}</td>
        <td class="wrap">${x.reason}${x.forced ? html`<div class="small-text">Overrode:</div>${failedChecks(x.gate)}` : ''}</td></tr>`)}
      </tbody></table></div>` : html`<div class="empty">No stage change yet.</div>`);
    const admin = document.body.dataset.role === 'admin';
    const next = STAGES[STAGES.findIndex(([v]) => v === u.stage) + 1]?.[0];
    patch($('#uc-actions'), admin ? html`${next ? html`<button type="button" class="small primary" id="uc-promote">Promote to ${stageName(next)}</button>` : ''}${u.stage !== 'pilot' ? html`<button type="button" class="small" id="uc-demote">Step back</button>` : ''}` : '');
  };
  // `main` outlives the page: the listener goes with it.
  const onClick = async (e) => {
    if (!current || !p.alive) return;
    const { u, gate } = current;
    const index = STAGES.findIndex(([v]) => v === u.stage);
    let to = null;
    if (e.target.id === 'uc-promote') to = STAGES[index + 1][0];
    else if (e.target.id === 'uc-demote') to = STAGES[index - 1][0];
    if (!to) return;
    const promotion = e.target.id === 'uc-promote';
    if (await stageDialog(name, u.stage, to, promotion, gate)) await load();
  };
  main.addEventListener('click', onClick);
  p.cleanups.push(() => main.removeEventListener('click', onClick));
  await every(p, 15000, load);
}

/** Asks for the reason of a stage change. A promotion may be forced past its gate (the server
 *  judges the gate again and records whether it was forced); the gate as last shown says
 *  whether that will be needed. */
function stageDialog(name, from, to, promotion, gate) {
  const failing = promotion && gate && !gate.passed;
  return dialog(html`<form id="stage-form" aria-labelledby="stage-title"><h2 id="stage-title">Move ${name} to ${stageName(to)}</h2>
    ${failing ? html`<div class="notice bad">The gate does not pass${gate.checks.length ? ':' : ' (it has no criteria).'}${failedChecks(gate)}Moving on anyway is recorded as forced.</div>` : ''}
    ${promotion ? html`<label><input type="checkbox" name="force"${failing ? raw(' required') : ''}> Force it if the gate does not pass (recorded as forced)</label>` : ''}
    <div class="field"><label for="stage-reason">Reason (kept with the decision)</label><textarea id="stage-reason" name="reason" rows="3" required style="font-family:inherit"></textarea></div>
    <div class="notice bad" role="alert" hidden></div>
    <div class="actions"><button type="button" data-cancel>Cancel</button><button type="submit" class="primary">Move to ${stageName(to)}</button></div></form>`,
  async (fd) => {
    const body = { from, to, reason: String(fd.get('reason') || '').trim(), force: fd.get('force') === 'on' };
    await api(`/api/v1/usecases/${enc(name)}/stage`, { method: 'POST', body });
    toast(`${name} is at ${stageName(to)}.`);
    return true;
  });
}

async function pageAlerts(p, args) {
  setTitle('Alerts');
  const state = ['firing', 'pending', 'resolved'].includes(args[0]) ? args[0] : '';
  // `#/alerts/id/<alert id>`: the one alert a notification links to (its generatorURL).
  const only = args[0] === 'id' && args[1] ? args[1] : null;
  main.innerHTML = String(html`<div id="alerts-page">
    <div class="page-head"><div><h1>Alerts</h1><div class="sub" id="al-count"></div></div>
      <div class="row"><button type="button" id="new-silence">New silence</button></div></div>
    ${errorBox}
    <section class="card" aria-labelledby="h-alist">
      <div class="card-head"><h2 id="h-alist">Alerts</h2>
        <nav class="seg" aria-label="Filter by state">${[['', 'All'], ['firing', 'Firing'], ['pending', 'Pending'], ['resolved', 'Resolved']].map(([v, l]) => html`<a class="btn" style="border:0;border-radius:0" href="#/alerts${v ? `/${v}` : ''}" aria-pressed="${state === v}" ${state === v ? raw('aria-current="page"') : ''}>${l}</a>`)}</nav></div>
      <div id="al-table"></div>
    </section>
    <section class="card" aria-labelledby="h-sil"><h2 id="h-sil">Active silences</h2><div id="sil-table"></div></section>
    <section class="card" aria-labelledby="h-rules"><h2 id="h-rules">Rules</h2><div id="rule-table"></div></section>
    ${caps.notifiers ? html`<section class="card" aria-labelledby="h-notifiers"><h2 id="h-notifiers">Notifiers</h2><div id="notifier-table"></div></section>` : ''}</div>`);
  $$('.seg a').forEach((a) => { if (a.getAttribute('aria-pressed') === 'true') a.style.boxShadow = 'inset 0 -2px 0 var(--accent)'; });
  let alerts = [];
  const load = async () => {
    const listed = only ? api(`/api/v1/alerts/${enc(only)}`).then((a) => [a]) : api(`/api/v1/alerts?limit=500${state ? `&state=${state}` : ''}`);
    const [list, silences, rules, notifiers] = await Promise.all([listed, api('/api/v1/silences'), api('/api/v1/alert-rules'),
      caps.notifiers ? api('/api/v1/notifiers') : Promise.resolve(null)]);
    if (!p.alive) return;
    alerts = list;
    if (only) $('#al-count').innerHTML = String(html`Alert <span class="mono">${only}</span> · <a href="#/alerts">all alerts</a>`);
    else $('#al-count').textContent = `${list.length} ${state || ''} alert${list.length === 1 ? '' : 's'}`.replace('  ', ' ');
    patch($('#al-table'), list.length ? alertsTable(list, { actions: true }) : html`<div class="empty">No ${state} alerts.</div>`);
    const active = silences.filter((s) => toMs(s.until) > Date.now());
    patch($('#sil-table'), active.length ? html`<div class="table-wrap"><table><thead><tr><th>Rule</th><th>Device</th><th>From</th><th>Until</th><th>By</th><th>Comment</th><th><span class="sr">Actions</span></th></tr></thead><tbody>
      ${active.map((s) => html`<tr><td>${s.rule || html`<span class="muted">any</span>`}</td><td>${s.key || html`<span class="muted">any</span>`}</td><td>${s.from && toMs(s.from) > Date.now() ? html`${fmtTime(s.from)} <span class="pill plain">scheduled</span>` : html`<span class="muted">now</span>`}</td><td>${fmtTime(s.until)}</td><td>${s.by}</td><td class="wrap">${s.comment || ''}</td>
        <td><button type="button" class="small danger" data-unsilence="${s.id}" aria-label="Remove silence ${s.id}">Remove</button></td></tr>`)}</tbody></table></div>` : html`<div class="empty">No active silences.</div>`);
    patch($('#rule-table'), rules.length ? rulesTable(rules) : html`<div class="empty">No alert rules: define them in the configuration file or with <code>fabrik alert rule apply</code>.</div>`);
    if (notifiers) {
      // Whether notifications get through: what waits in the outbox, and why it failed.
      patch($('#notifier-table'), notifiers.length ? html`<div class="table-wrap"><table><thead><tr><th>Name</th><th>Kind</th><th>Target</th><th class="num">Queued</th><th class="num">Retrying</th><th>Last delivered</th><th>Last error</th></tr></thead><tbody>
        ${notifiers.map((n) => html`<tr data-notifier="${n.name}"><td>${n.name}</td><td>${n.kind}</td><td class="wrap mono">${n.target}</td><td class="num">${n.queued}</td>
          <td class="num">${n.retrying ? pill('failed', `${n.retrying}`) : '0'}</td><td>${n.last_delivered_at ? time(n.last_delivered_at) : html`<span class="muted">not since the start</span>`}</td>
          <td class="wrap">${n.last_error || ''}</td></tr>`)}</tbody></table></div>` : html`<div class="empty">No notifiers: alerts are listed here only. Add <code>[[alerting.notifiers]]</code> (webhook, MQTT, e-mail) to the configuration file.</div>`);
    }
  };
  $('#alerts-page').addEventListener('click', async (e) => {
    const b = e.target.closest('button');
    if (!b || !p.alive) return;
    if (b.dataset.ack) {
      const a = alerts.find((x) => x.id === b.dataset.ack);
      if (a && await ackDialog(a)) { await load(); refreshBadge(); }
    } else if (b.dataset.apply) {
      const a = alerts.find((x) => x.id === b.dataset.apply);
      if (a && await applyDialog(a)) await load();
    } else if (b.dataset.silence) {
      const a = alerts.find((x) => x.id === b.dataset.silence);
      if (a && await silenceDialog(a)) await load();
    } else if (b.dataset.unsilence) {
      try { await api(`/api/v1/silences/${enc(b.dataset.unsilence)}`, { method: 'DELETE' }); toast('Silence removed.'); await load(); } catch (err) { showError(err, p); }
    } else if (b.id === 'new-silence') {
      if (await silenceDialog(null)) await load();
    }
  });
  await every(p, 5000, load);
}

// ---------------------------------------------------------------- dialogs

function dialog(content, onSubmit) {
  return new Promise((resolve) => {
    const dlg = document.createElement('dialog');
    dlg.innerHTML = String(content);
    document.body.append(dlg);
    const opener = document.activeElement;
    let result = false;
    dlg.addEventListener('close', () => { dlg.remove(); if (opener?.isConnected) opener.focus(); resolve(result); });
    $('[data-cancel]', dlg)?.addEventListener('click', () => dlg.close());
    $('form', dlg).addEventListener('submit', async (e) => {
      e.preventDefault();
      const err = $('.notice.bad', dlg);
      const submit = $('button[type=submit]', dlg);
      submit.disabled = true;
      try {
        result = (await onSubmit(new FormData(e.target))) ?? true;
        dlg.close();
      } catch (ex) {
        if (err) { err.textContent = ex.message; err.hidden = false; }
        submit.disabled = false;
      }
    });
    dlg.showModal();
  });
}
function confirmDialog(title, text, action) {
  return dialog(html`<form><h2>${title}</h2><p style="margin:0">${text}</p><div class="notice bad" role="alert" hidden></div>
    <div class="actions"><button type="button" data-cancel>Cancel</button><button type="submit" class="primary">${action}</button></div></form>`, () => true);
}
function ackDialog(a) {
  return dialog(html`<form id="ack-form" aria-labelledby="ack-title"><h2 id="ack-title">Acknowledge alert</h2>
    <div class="muted">${a.rule} on <strong>${a.key}</strong>, started ${fmtTime(a.started_at)}${a.annotations?.top_signal ? html` · top signal <code>${a.annotations.top_signal}</code>` : ''}</div>
    <fieldset><legend>Was it a real problem?</legend>
      <label><input type="radio" name="feedback" value="true_positive" checked> Yes, a real problem (true positive)</label>
      <label><input type="radio" name="feedback" value="false_positive"> No, a false alarm (false positive)</label></fieldset>
    <div class="field"><label for="ack-comment">Comment (optional)</label><textarea id="ack-comment" name="comment" rows="3" style="font-family:inherit"></textarea></div>
    <div class="notice bad" role="alert" hidden></div>
    <div class="actions"><button type="button" data-cancel>Cancel</button><button type="submit" class="primary">Acknowledge</button></div></form>`,
  async (fd) => {
    const body = { feedback: fd.get('feedback') };
    const comment = String(fd.get('comment') || '').trim();
    if (comment) body.comment = comment;
    await api(`/api/v1/alerts/${enc(a.id)}/ack`, { method: 'POST', body });
    toast(`Alert on ${a.key} acknowledged.`);
    return true;
  });
}
/** Applies an alert's proposed setpoint (decision 0092): the rule's advice, a person's act. */
function applyDialog(a) {
  const act = a.action;
  return dialog(html`<form id="apply-form" aria-labelledby="apply-title"><h2 id="apply-title">Apply the proposed action</h2>
    <div class="muted">${a.rule} on <strong>${a.key}</strong> proposes:</div>
    <p style="margin:0">Set <code>${act.signal}</code> of <strong>${act.device}</strong> to <strong>${String(act.value)}</strong>.${act.summary ? html` <span class="muted">${act.summary}</span>` : ''}</p>
    <div class="field"><label for="apply-note">Note (optional, kept with the write)</label><input id="apply-note" name="note" maxlength="500"></div>
    <div class="notice bad" role="alert" hidden></div>
    <div class="actions"><button type="button" data-cancel>Cancel</button><button type="submit" class="primary">Write to the device</button></div></form>`,
  async (fd) => {
    const note = String(fd.get('note') || '').trim();
    const r = await api(`/api/v1/alerts/${enc(a.id)}/apply`, { method: 'POST', body: note ? { note } : {} });
    toast(r.confirmed
      ? `${act.signal} of ${act.device} = ${JSON.stringify(r.read_back)}: the device holds it.`
      : r.read_back_error
        ? `${act.signal} of ${act.device} was written, but not read back: ${r.read_back_error}`
        : `${act.signal} of ${act.device} was answered, but the device holds ${JSON.stringify(r.read_back)}.`);
    return true;
  });
}
function silenceDialog(a) {
  return dialog(html`<form id="silence-form" aria-labelledby="sil-title"><h2 id="sil-title">Silence alerts</h2>
    <div class="field"><label for="sil-rule">Rule</label><input id="sil-rule" name="rule" value="${a?.rule || ''}" placeholder="a rule; * for every rule" spellcheck="false"></div>
    <div class="field"><label for="sil-device">Device</label><input id="sil-device" name="device" value="${a?.key || ''}" placeholder="any device; pump-* for every pump" spellcheck="false"></div>
    <div class="field"><label for="sil-duration">Duration</label><select id="sil-duration" name="duration">
      ${['30m', '1h', '2h', '4h', '8h', '24h', '7d'].map((d) => html`<option value="${d}" ${d === '2h' ? raw('selected') : ''}>${d}</option>`)}</select></div>
    <div class="field"><label for="sil-comment">Comment (optional)</label><input id="sil-comment" name="comment"></div>
    <div class="notice bad" role="alert" hidden></div>
    <div class="actions"><button type="button" data-cancel>Cancel</button><button type="submit" class="primary">Silence</button></div></form>`,
  async (fd) => {
    const body = { duration: fd.get('duration') };
    for (const k of ['rule', 'device', 'comment']) { const v = String(fd.get(k) || '').trim(); if (v) body[k] = v; }
    const made = await api('/api/v1/silences', { method: 'POST', body });
    toast(`Silenced for ${body.duration}.${made?.warnings?.length ? ` Warning: ${made.warnings.join(' ')}` : ''}`);
    return true;
  });
}

// ---------------------------------------------------------------- start

async function startApp() {
  $('#topbar').hidden = false;
  syncThemeButton();
  // Pages that depend on the role (the audit log) need it before the first route.
  await showIdentity();
  if (!globalTimer) { refreshBadge(); globalTimer = setInterval(refreshBadge, 10000); }
  if (!location.hash || location.hash === '#' || location.hash === '#/') history.replaceState(null, '', '#/overview');
  await route();
  main.focus({ preventScroll: true });
}

window.addEventListener('hashchange', () => { if (auth.mode) { route(); main.focus({ preventScroll: true }); } });

(async function boot() {
  syncThemeButton();
  if (!auth.mode) return showSignIn();
  try {
    await loadCaps();
    startApp();
  } catch (e) {
    if (e.status !== 401) showSignIn(e.message);
  }
}());
