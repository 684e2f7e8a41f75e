// Drives Debian's Chromium (headless, through playwright-core; no browser
// download) against a running aggregator. Started by tests/dashboard.rs,
// which passes, in the environment:
//   EDGEQI_URL             http://127.0.0.1:PORT of the aggregator
//   EDGEQI_MQTT_PORT       its embedded broker, for mosquitto_pub
//   EDGEQI_USERNAME/_PASSWORD  a user created through the API (log in through the form), or
//   EDGEQI_ACCESS_TOKEN    a token for the "Sign in with an access token" form instead
//   EDGEQI_ARTIFACTS       where screenshots go
//   CHROMIUM               the browser (default /usr/bin/chromium)
// It asks its parent to restart the aggregator by printing
// "@@restart-aggregator" and waits for a line "@@restarted" on stdin.
// Exits non-zero on the first failed check or on any page error.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const BASE = mustEnv('EDGEQI_URL');
const MQTT_PORT = mustEnv('EDGEQI_MQTT_PORT');
const ARTIFACTS = process.env.EDGEQI_ARTIFACTS || 'target/test-artifacts';
const NODE = `browser-${Math.random().toString(36).slice(2, 8)}`;
mkdirSync(ARTIFACTS, { recursive: true });

function mustEnv(name) {
  const v = process.env[name];
  if (!v) { console.error(`${name} is not set`); process.exit(2); }
  return v;
}

const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

function mosquittoPub(topic, payloads) {
  return new Promise((resolve, reject) => {
    const lines = Array.isArray(payloads);
    const p = spawn('mosquitto_pub', ['-h', '127.0.0.1', '-p', MQTT_PORT, '-q', '1', '-t', topic, lines ? '-l' : '-s'],
      { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => { err += d; });
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`mosquitto_pub exited ${code}: ${err}`))));
    p.stdin.end(lines ? payloads.map((x) => JSON.stringify(x)).join('\n') + '\n' : JSON.stringify(payloads));
  });
}

function heartbeat(state = 'ok') {
  return {
    v: 1, node_id: NODE, ts: new Date().toISOString(), uptime_s: 5, cpu_pct: 12.5,
    mem_used_bytes: 512 * 2 ** 20, mem_total_bytes: 2 * 2 ** 30, backlog: 0, fps: 10, version: '0.1.0', interval_s: 5,
    cameras: [{ camera_id: 'north', state, fps: 10, frames_total: 12000, last_error: null },
      { camera_id: 'south', state: 'ok', fps: 5, frames_total: 6000, last_error: null }],
  };
}

let seq = 0;
const epoch = `ui-${Date.now().toString(36)}`;
function batch(detections) {
  seq += 1;
  return { v: 1, node_id: NODE, epoch, seq, sent_at: new Date().toISOString(), detections };
}
function detection(label, i = 0) {
  return {
    ts: new Date().toISOString(), camera_id: i % 2 ? 'south' : 'north', class_id: 0, label,
    score: 0.5 + (i % 50) / 100, bbox: [40 + (i % 300), 60, 240 + (i % 300), 300], track_id: 1000 + (i % 40), zone: i % 3 ? 'lane-1' : 'crossing',
  };
}

// ---- parent control: restart the aggregator ----------------------------------
const stdinLines = createInterface({ input: process.stdin });
const waiting = [];
stdinLines.on('line', (l) => { const w = waiting.shift(); if (w) w(l.trim()); });
function askParent(cmd) {
  return new Promise((resolve) => { waiting.push(resolve); console.log(`@@${cmd}`); });
}

// ---- checks -------------------------------------------------------------------
const errors = [];
let allowNetworkNoise = false;
function check(cond, msg) { if (!cond) throw new Error(`check failed: ${msg}`); }

async function shot(page, name) {
  const path = join(ARTIFACTS, `dashboard-${name}.png`);
  await page.screenshot({ path, fullPage: false });
  log(`screenshot ${path}`);
}

async function main() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'edgeqi-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1366, height: 860 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    page.on('pageerror', (e) => { errors.push(`page error: ${e.stack || e.message}`); });
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      const text = m.text();
      // Chromium logs every non-2xx fetch (probing the optional incidents API,
      // the 401 before login) and, while the aggregator restarts, failed WebSockets.
      if (/Failed to load resource/.test(text)) return;
      if (allowNetworkNoise && /WebSocket|ERR_CONNECTION_REFUSED/.test(text)) return;
      errors.push(`console error: ${text}`);
    });
    page.setDefaultTimeout(10000);

    // 1. Log in.
    await page.goto(`${BASE}/`);
    await page.waitForURL(/\/ui\/login/);
    await shot(page, 'login');
    if (process.env.EDGEQI_USERNAME) {
      await page.fill('input[name=username]', process.env.EDGEQI_USERNAME);
      await page.fill('input[name=password]', process.env.EDGEQI_PASSWORD || '');
      await page.click('button[type=submit]');
      log('logging in through the form as', process.env.EDGEQI_USERNAME);
    } else {
      await page.click('summary:has-text("access token")');
      await page.fill('input[name=access_token]', mustEnv('EDGEQI_ACCESS_TOKEN'));
      await page.click('button:has-text("Use token")');
      log('logging in with an access token (no users API on this aggregator)');
    }
    await page.waitForURL(/\/ui\/overview/);
    await page.waitForSelector('header.topbar:not([hidden])');
    const who = await page.textContent('#who');
    log('signed in as', who);
    await page.waitForSelector('#conn[data-state="live"]');
    log('live feed connected');

    // 2. A node sends a heartbeat and appears online.
    await page.click('nav a:has-text("Nodes")');
    await page.waitForURL(/\/ui\/nodes$/);
    const hbAt = Date.now();
    await mosquittoPub(`edgeqi/v1/nodes/${NODE}/heartbeat`, heartbeat('failed'));
    await page.waitForSelector(`tr[data-node-id="${NODE}"] [data-status="online"]`, { timeout: 5000 });
    log(`node ${NODE} shown online ${Date.now() - hbAt} ms after its heartbeat`);
    await shot(page, 'nodes');

    // 3. A detection published over MQTT shows up in the live feed within 2 s.
    await page.click('nav a:has-text("Live feed")');
    await page.waitForURL(/\/ui\/live$/);
    const label = `probe-${Math.random().toString(36).slice(2, 8)}`;
    const pubAt = Date.now();
    await mosquittoPub(`edgeqi/v1/nodes/${NODE}/detections`, batch([detection(label)]));
    await page.waitForSelector(`.feed-row[data-label="${label}"]`, { timeout: 2000 });
    const latency = Date.now() - pubAt;
    log(`detection ${label} on the page ${latency} ms after mosquitto_pub started`);
    check(latency <= 2000, `detection appeared after ${latency} ms`);

    // 4. A burst (about 2,000 detections as fast as the broker takes them): the
    // page stays responsive and the list stays virtualised.
    const lines = [];
    for (let b = 0; b < 20; b++) lines.push(batch(Array.from({ length: 100 }, (_, i) => detection(i % 7 ? 'car' : 'person', b * 100 + i))));
    const burstAt = Date.now();
    const burst = mosquittoPub(`edgeqi/v1/nodes/${NODE}/detections`, lines);
    let worstPing = 0;
    while (Date.now() - burstAt < 3000) {
      const p0 = Date.now();
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
      worstPing = Math.max(worstPing, Date.now() - p0);
      await page.waitForTimeout(50);
    }
    await burst;
    const shown = await page.evaluate(() => document.querySelectorAll('.feed-row').length);
    log(`burst: worst animation-frame round trip ${worstPing} ms, ${shown} rows in the DOM`);
    check(shown > 0 && shown < 80, `the feed should render only visible rows, has ${shown}`);
    check(worstPing < 1500, `the page froze for ${worstPing} ms during a burst`);
    await page.click('#feed-pause');
    check(await page.getAttribute('#feed-pause', 'aria-pressed') === 'true', 'pause is pressed');
    await shot(page, 'live');
    await page.click('#feed-pause');

    // 5. Overview, charts, node detail.
    await page.click('nav a:has-text("Overview")');
    await page.waitForSelector('[data-metric="nodes-online"] .tile-value');
    await page.waitForFunction(() => /[1-9]\d* \/ \d+/.test(document.querySelector('[data-metric="nodes-online"] .tile-value').textContent));
    const blind = await page.textContent('[data-metric="cameras-blind"]');
    check(blind.includes(`${NODE}/north: failed`), `the failed camera is counted blind: ${blind}`);
    await shot(page, 'overview');
    await page.click('nav a:has-text("Charts")');
    await page.waitForSelector('canvas');
    await shot(page, 'charts');
    await page.goto(`${BASE}/ui/nodes/${NODE}`); // a reload on a deep link: the SPA fallback
    await page.waitForSelector('table.ledger');
    const ledgerText = await page.textContent('table.ledger');
    check(ledgerText.includes(epoch), `the ledger lists epoch ${epoch}`);
    await shot(page, 'node-detail');

    // 5b. Tracker events with their snapshot, and the line counts.
    const photoFile = process.env.EDGEQI_REPORT_PHOTO || '../shared/testdata/bus.jpg';
    if (existsSync(photoFile)) {
      const run = `ui${Date.now().toString(36)}`;
      const key = `${run}-north-7`;
      const now = new Date().toISOString();
      const ev = (kind, n, extra = {}) => ({
        id: `${key}-${n}`, ts: now, camera_id: 'north', track_id: 7, track_key: key, kind, class_id: 5,
        label: 'bus', score: 0.88, bbox: [10, 20, 300, 400], zone: null, line: null, direction: null, dwell_s: null, ...extra,
      });
      await mosquittoPub(`edgeqi/v1/nodes/${NODE}/events`, {
        v: 1, node_id: NODE, sent_at: now,
        events: [ev('appeared', 1), ev('line_crossed', 2, { line: 'stop-line', direction: 'left_to_right' }), ev('left', 3, { dwell_s: 4.5 })],
        line_counts: [{ camera_id: 'north', line: 'stop-line', label: 'bus', direction: 'left_to_right', count: 3, since: now }],
      });
      await mosquittoPub(`edgeqi/v1/nodes/${NODE}/snapshots`, {
        v: 1, node_id: NODE, camera_id: 'north', track_id: 7, track_key: key, event_id: `${key}-3`, ts: now,
        class_id: 5, label: 'bus', score: 0.88, bbox: [10, 20, 300, 400], content_type: 'image/jpeg',
        jpeg_b64: readFileSync(photoFile).toString('base64'), frame_jpeg_b64: null,
      });
      await page.click('nav a:has-text("Events")');
      await page.waitForURL(/\/ui\/events$/);
      // Events are stored asynchronously: filter (reload) until they show.
      const row = `.event[data-event-id="${key}-3"]`;
      for (let i = 0; i < 20 && !(await page.$(`${row} img.snapshot`)); i++) {
        await page.waitForTimeout(250);
        await page.click('form.inline button[type=submit]');
      }
      await page.waitForSelector(`${row} img.snapshot`, { timeout: 5000 });
      await page.waitForFunction((sel) => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0; },
        `${row} img.snapshot`, { timeout: 5000 });
      const text = await page.textContent(`.event[data-event-id="${key}-2"]`);
      check(text.includes('crossed stop-line, left to right'), `line crossing shown: ${text}`);
      const counts = await page.textContent('table.line-counts');
      check(counts.includes('stop-line') && counts.includes('left to right'), `line counts shown: ${counts}`);
      log('tracker events, the track snapshot and the line counts shown on the events page');
      await shot(page, 'events');
    }

    // 6. Incidents, when this aggregator has them.
    const incidents = await page.evaluate(async () => {
      const r = await fetch('/api/v1/incidents', { headers: { Authorization: `Bearer ${sessionStorage.getItem('edgeqi.token')}` } });
      return { status: r.status, body: r.ok ? await r.json() : null };
    });
    if (incidents.status === 200) {
      let items = Array.isArray(incidents.body) ? incidents.body : incidents.body.items || [];
      const photoPath = process.env.EDGEQI_REPORT_PHOTO || '../shared/testdata/bus.jpg';
      if (!items.some((i) => i.status === 'new') && existsSync(photoPath)) {
        // A citizen files a report with a photo: that opens an incident.
        const photo = readFileSync(photoPath);
        const form = new FormData();
        form.append('photo', new Blob([photo], { type: 'image/jpeg' }), 'bus.jpg');
        form.append('lat', '52.3702'); form.append('lng', '4.8952'); form.append('notes', 'Bus blocking the crossing');
        const r = await fetch(`${BASE}/api/v1/reports`, { method: 'POST', body: form });
        log(`citizen report: HTTP ${r.status}`);
        const after = await page.evaluate(async () => {
          const res = await fetch('/api/v1/incidents', { headers: { Authorization: `Bearer ${sessionStorage.getItem('edgeqi.token')}` } });
          return res.json();
        });
        items = after.items || [];
      }
      await page.click('nav a:has-text("Incidents")');
      await page.waitForSelector('.board');
      const target = items.find((i) => i.status === 'new');
      if (target) {
        await page.click(`.card[data-incident-id="${target.id}"] button[data-action="acknowledged"]`);
        await page.waitForSelector(`.column[data-status="acknowledged"] .card[data-incident-id="${target.id}"]`);
        log(`incident ${target.id} acknowledged from the board`);
        await page.click(`.card[data-incident-id="${target.id}"] a`);
        await page.waitForSelector('textarea[name=comment]');
        await page.fill('textarea[name=comment]', 'Crew on the way');
        await page.click('button:has-text("Comment")');
        await page.waitForSelector('.comments >> text=Crew on the way');
        log('commented on it from its page');
        await shot(page, 'incident-detail');
      } else {
        log('incidents API present but no new incident to act on; board rendered');
      }
      await shot(page, 'incidents');
    } else {
      const navHidden = await page.isHidden('li[data-needs="incidents"]');
      check(navHidden, 'the incidents board is hidden when the API is absent');
      log(`no incidents API (HTTP ${incidents.status}): board hidden`);
    }

    // 7. The aggregator restarts: the indicator shows it, recovers, and the page resyncs.
    await page.click('nav a:has-text("Live feed")');
    allowNetworkNoise = true;
    const reply = await askParent('restart-aggregator');
    check(reply === '@@restarted', `parent answered ${reply}`);
    await page.waitForSelector('#conn:not([data-state="live"])', { timeout: 5000 }).catch(() => {
      log('(the reconnect was faster than we could look)');
    });
    await page.waitForSelector('#conn[data-state="live"]', { timeout: 30000 });
    allowNetworkNoise = false;
    log('live indicator recovered after the restart');
    const after = `after-${Math.random().toString(36).slice(2, 8)}`;
    await mosquittoPub(`edgeqi/v1/nodes/${NODE}/detections`, batch([detection(after)]));
    await page.waitForSelector(`.feed-row[data-label="${after}"]`, { timeout: 5000 });
    log('a detection after the restart arrives live');

    // 8. Tablet width.
    await page.setViewportSize({ width: 768, height: 1024 });
    await page.click('nav a:has-text("Nodes")');
    await page.waitForSelector(`tr[data-node-id="${NODE}"]`);
    await shot(page, 'nodes-tablet');

    // 9. Sign out returns to the form.
    await page.setViewportSize({ width: 1366, height: 860 });
    await page.click('#logout');
    await page.waitForSelector('input[name=username]');

    if (errors.length) throw new Error(`page errors:\n${errors.join('\n')}`);
    log('all browser checks passed');
  } finally {
    await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e.stack || String(e));
  if (errors.length) console.error(`page errors:\n${errors.join('\n')}`);
  process.exit(1);
});
