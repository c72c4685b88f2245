// Dev server: serves crates/fabrik-api/ui the way the binary will (/ -> index.html, /ui/<file>) and forwards the
// API to a running Fabrik, so the dashboard works same-origin without CORS.
//   node dev/proxy.js [port] [upstream]      e.g. node dev/proxy.js 8080 http://127.0.0.1:7811
// Also used by tests/browser.mjs when the binary does not embed the dashboard yet.
const http = require('http');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..', '..', '..', 'crates', 'fabrik-api', 'ui');
const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.svg': 'image/svg+xml', '.json': 'application/json', '.md': 'text/plain; charset=utf-8' };
const forwarded = /^\/(api\/|services|metrics|ready|write)/;

// With `emulate` (env FABRIK_EMULATE=1), the proxy also stands in for the two endpoints the server
// is getting, so the dashboard's code paths for them can be exercised against an older binary:
//   POST/DELETE /api/v1/session (HttpOnly SameSite=Strict cookie), GET /api/v1/devices/{id}/stream (SSE),
// and it lists both in /api/v1/openapi.json.
function createProxy(upstreamUrl, { emulate = process.env.FABRIK_EMULATE === '1' } = {}) {
  const upstream = new URL(upstreamUrl);
  const sessions = new Map();
  const sid = (req) => (req.headers.cookie || '').match(/(?:^|;\s*)fabrik_session=([^;]+)/)?.[1];
  const body = (req) => new Promise((r) => { let b = ''; req.on('data', (c) => { b += c; }); req.on('end', () => r(b)); });
  const up = (p, token, init = {}) => fetch(upstream.origin + p, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } });
  async function emulated(req, res, url) {
    const token = req.headers.authorization?.replace(/^Bearer /, '') || sessions.get(sid(req));
    if (url.pathname === '/api/v1/session' && req.method === 'POST') {
      let t = '';
      try { t = JSON.parse(await body(req)).token || ''; } catch { /* empty */ }
      const ok = t && (await up('/api/v1/tables', t)).ok;
      if (!ok) { res.writeHead(401, { 'content-type': 'application/json' }); res.end('{"error":"bad token","code":"unauthorized","message":"bad token"}'); return true; }
      const id = Math.random().toString(36).slice(2) + Date.now().toString(36);
      sessions.set(id, t);
      res.writeHead(204, { 'set-cookie': `fabrik_session=${id}; HttpOnly; SameSite=Strict; Path=/` });
      res.end();
      return true;
    }
    if (url.pathname === '/api/v1/session' && req.method === 'DELETE') {
      sessions.delete(sid(req));
      res.writeHead(204, { 'set-cookie': 'fabrik_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0' });
      res.end();
      return true;
    }
    if (token && !req.headers.authorization) req.headers.authorization = `Bearer ${token}`;
    if (url.pathname === '/api/v1/openapi.json') {
      const r = await up('/api/v1/openapi.json', token || '');
      if (!r.ok) return false;
      const spec = await r.json();
      spec.paths['/api/v1/session'] = { post: { summary: 'emulated by dev/proxy.js' }, delete: { summary: 'emulated' } };
      spec.paths['/api/v1/devices/{id}/stream'] = { get: { summary: 'emulated by dev/proxy.js' } };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(spec));
      return true;
    }
    const m = url.pathname.match(/^\/api\/v1\/devices\/([^/]+)\/stream$/);
    if (m && req.method === 'GET') {
      const dev = await up(`/api/v1/devices/${m[1]}`, token || '');
      if (!dev.ok) { res.writeHead(dev.status, { 'content-type': 'application/json' }); res.end(await dev.text()); return true; }
      const { id, device_type: table } = await dev.json();
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
      let last = '';
      const tick = async () => {
        const sql = `SELECT * FROM "${table}" WHERE device = '${id.replace(/'/g, "''")}' ORDER BY time DESC LIMIT 1`;
        const r = await up('/api/v1/query', token, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ sql }) }).catch(() => null);
        const [row] = r?.ok ? await r.json() : [];
        if (!row || row.time === last) return;
        last = row.time;
        const values = Object.fromEntries(Object.entries(row).filter(([k]) => k !== 'time' && k !== 'device' && !k.startsWith('_')));
        res.write(`data: ${JSON.stringify({ time: `${row.time.replace(/(\.\d{3})\d*/, '$1')}Z`, values })}\n\n`);
      };
      const timer = setInterval(tick, 1000);
      tick();
      res.on('close', () => clearInterval(timer));
      return true;
    }
    return false;
  }
  return http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    if (emulate && forwarded.test(url.pathname) && await emulated(req, res, url)) return;
    if (forwarded.test(url.pathname)) {
      const up = http.request({ host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: { ...req.headers, host: upstream.host } },
        (r) => { res.writeHead(r.statusCode, r.headers); r.pipe(res); });
      up.on('error', (e) => { res.writeHead(502, { 'content-type': 'text/plain' }); res.end(`upstream: ${e.message}`); });
      res.on('close', () => { if (!res.writableFinished) up.destroy(); });
      req.pipe(up);
      return;
    }
    const file = url.pathname === '/' ? 'index.html' : url.pathname.startsWith('/ui/') ? decodeURIComponent(url.pathname.slice(4)) : null;
    const full = file && path.normalize(path.join(root, file));
    if (!full || !full.startsWith(root + path.sep) || !fs.existsSync(full) || fs.statSync(full).isDirectory()) {
      res.writeHead(404, { 'content-type': 'text/plain' }); res.end('not found'); return;
    }
    res.writeHead(200, { 'content-type': types[path.extname(full)] || 'application/octet-stream', 'cache-control': 'no-store' });
    fs.createReadStream(full).pipe(res);
  });
}
module.exports = { createProxy };

if (require.main === module) {
  const port = Number(process.argv[2] || process.env.PORT || 8080);
  const upstream = process.argv[3] || process.env.FABRIK_URL || 'http://127.0.0.1:7811';
  createProxy(upstream).listen(port, '127.0.0.1', () => console.log(`dashboard on http://127.0.0.1:${port}/ -> ${upstream}${process.env.FABRIK_EMULATE === '1' ? ' (emulating /api/v1/session and /devices/{id}/stream)' : ''}`));
}
