// The dashboard's in-memory model of the system, filled from REST and kept
// current by the live feed. Everything here is bounded: a ring of recent
// detections, per-minute counts for an hour, a few hundred heartbeats a node.

import { api, request } from './api.js';

export const DETECTION_RING = 5000;
export const HEARTBEAT_HISTORY = 360;
export const MINUTES_KEPT = 60;
const ALERTS_KEPT = 200;

/** Fixed-capacity ring of detections, newest first, deduplicated by id. */
export class DetectionRing {
  constructor(capacity) {
    this.capacity = capacity;
    this.buf = new Array(capacity);
    this.start = 0; // index of the oldest
    this.length = 0;
    this.ids = new Set();
  }
  /** Adds one; returns false when it was already there. */
  push(d) {
    if (this.ids.has(d.id)) return false;
    if (this.length === this.capacity) {
      this.ids.delete(this.buf[this.start].id);
      this.buf[this.start] = d;
      this.start = (this.start + 1) % this.capacity;
    } else {
      this.buf[(this.start + this.length) % this.capacity] = d;
      this.length++;
    }
    this.ids.add(d.id);
    return true;
  }
  /** i = 0 is the newest. */
  get(i) { return this.buf[(this.start + this.length - 1 - i) % this.capacity]; }
  *newestFirst() { for (let i = 0; i < this.length; i++) yield this.get(i); }
}

export const bus = new EventTarget();
function emit(type, detail) { bus.dispatchEvent(new CustomEvent(type, { detail })); }

export const state = {
  user: null,
  nodes: new Map(),
  heartbeats: new Map(), // node_id -> [{t, cpu, mem, fps, backlog}]
  detections: new DetectionRing(DETECTION_RING),
  minutes: new Map(), // minute (ms) -> {total, label:{}, camera:{}, zone:{}, tracks:{zone:Set}}
  seconds: new Map(), // detection second (ms) -> count, for the per-minute rate
  labels: new Set(), cameras: new Set(), zones: new Set(),
  summary: null,
  newestTs: null, // newest detection ts seen, where a resync starts
  incidentsAvailable: undefined,
  incidents: [],
  alerts: [],
};

// ---- detections ----------------------------------------------------------

let pending = [];
let flushTimer = null;

/** Queues detections; listeners get them in batches at most ~10 times a second. */
export function addDetections(list) {
  for (const d of list) pending.push(d);
  if (pending.length > DETECTION_RING) pending = pending.slice(-DETECTION_RING);
  if (!flushTimer) flushTimer = setTimeout(flushDetections, 80);
}

function flushDetections() {
  flushTimer = null;
  const batch = pending;
  pending = [];
  const fresh = [];
  for (const d of batch) {
    if (!state.detections.push(d)) continue;
    fresh.push(d);
    count(d);
  }
  if (!fresh.length) return;
  pruneCounts();
  if (state.summary) {
    state.summary.detections_total += fresh.length;
    for (const d of fresh) state.summary.by_class[d.label] = (state.summary.by_class[d.label] || 0) + 1;
  }
  emit('detections', fresh);
}

function count(d) {
  const t = new Date(d.ts).getTime();
  if (!Number.isFinite(t)) return;
  if (!state.newestTs || t > state.newestTs) state.newestTs = t;
  const minute = Math.floor(t / 60000) * 60000;
  let m = state.minutes.get(minute);
  if (!m) { m = { total: 0, label: {}, camera: {}, zone: {}, tracks: {} }; state.minutes.set(minute, m); }
  m.total++;
  m.label[d.label] = (m.label[d.label] || 0) + 1;
  const cam = `${d.node_id}/${d.camera_id}`;
  m.camera[cam] = (m.camera[cam] || 0) + 1;
  const zone = d.zone || '(none)';
  m.zone[zone] = (m.zone[zone] || 0) + 1;
  if (d.zone && d.track_id !== null && d.track_id !== undefined) {
    (m.tracks[d.zone] ||= new Set()).add(`${cam}#${d.track_id}`);
  }
  state.labels.add(d.label);
  state.cameras.add(d.camera_id);
  if (d.zone) state.zones.add(d.zone);
  // By detection time, so history loaded after a gap lands where it belongs.
  if (t > Date.now() - 60000) {
    const sec = Math.floor(t / 1000) * 1000;
    state.seconds.set(sec, (state.seconds.get(sec) || 0) + 1);
  }
}

function pruneCounts() {
  const now = Date.now();
  const oldestMinute = Math.floor(now / 60000) * 60000 - MINUTES_KEPT * 60000;
  for (const k of state.minutes.keys()) if (k < oldestMinute) state.minutes.delete(k);
  for (const k of state.seconds.keys()) if (k < now - 60000) state.seconds.delete(k);
}

/** Detections stamped within the last 60 s. */
export function detectionsPerMinute() {
  pruneCounts();
  let n = 0;
  for (const v of state.seconds.values()) n += v;
  return n;
}

// ---- nodes and heartbeats --------------------------------------------------

export function applyHeartbeat(hb) {
  if (!hb || !hb.node_id) return;
  let node = state.nodes.get(hb.node_id);
  if (!node) {
    node = { node_id: hb.node_id, first_seen: hb.ts, heartbeat_interval_s: hb.interval_s };
    state.nodes.set(hb.node_id, node);
    scheduleNodesReload();
  }
  node.last_heartbeat = hb;
  node.last_heartbeat_at = hb.ts;
  node.last_seen = new Date().toISOString();
  node.online = true;
  recordHeartbeat(hb);
  emit('nodes');
}

function recordHeartbeat(hb) {
  let hist = state.heartbeats.get(hb.node_id);
  if (!hist) { hist = []; state.heartbeats.set(hb.node_id, hist); }
  const t = new Date(hb.ts).getTime();
  if (hist.length && hist[hist.length - 1].t >= t) return;
  hist.push({
    t, cpu: hb.cpu_pct, fps: hb.fps, backlog: hb.backlog,
    mem: hb.mem_total_bytes ? (100 * hb.mem_used_bytes) / hb.mem_total_bytes : null,
  });
  if (hist.length > HEARTBEAT_HISTORY) hist.splice(0, hist.length - HEARTBEAT_HISTORY);
}

export function applyNodeStatus(s) {
  const node = state.nodes.get(s.node_id);
  if (!node) { scheduleNodesReload(); return; }
  node.online = !!s.online;
  node.status_cause = s.cause;
  emit('nodes');
}

let nodesTimer = null;
function scheduleNodesReload() {
  if (!nodesTimer) nodesTimer = setTimeout(() => { nodesTimer = null; loadNodes().catch(() => {}); }, 300);
}

/** Every node, page after page (the list is paginated like every other). */
export async function loadNodes() {
  const seen = new Set();
  let cursor = null;
  do {
    const q = new URLSearchParams({ limit: '1000' });
    if (cursor) q.set('cursor', cursor);
    const body = await api(`/api/v1/nodes?${q}`);
    for (const n of body.items || []) {
      seen.add(n.node_id);
      state.nodes.set(n.node_id, { ...state.nodes.get(n.node_id), ...n });
      if (n.last_heartbeat) recordHeartbeat(n.last_heartbeat);
    }
    cursor = body.next_cursor;
  } while (cursor);
  for (const id of [...state.nodes.keys()]) if (!seen.has(id)) state.nodes.delete(id);
  emit('nodes');
}

export async function loadSummary() {
  state.summary = await api('/api/v1/stats/summary');
  emit('summary');
}

/** Detections since the newest one we hold (or the last hour), a few pages at most. */
export async function loadDetections() {
  const since = state.newestTs ? new Date(state.newestTs - 5000) : new Date(Date.now() - MINUTES_KEPT * 60000);
  let cursor = null;
  for (let page = 0; page < 5; page++) {
    const q = new URLSearchParams({ since: since.toISOString(), limit: '1000' });
    if (cursor) q.set('cursor', cursor);
    const body = await api(`/api/v1/detections?${q}`);
    addDetections((body.items || []).slice().reverse());
    cursor = body.next_cursor;
    if (!cursor) break;
  }
}

/**
 * Per-minute counts for the last hour from GET /api/v1/stats/timeseries, when
 * the aggregator has it: the charts then show history older than the page.
 * Merged by taking the larger count per minute and key, so the live tally
 * and the server's never add up twice.
 */
export async function loadTimeseries() {
  const since = new Date(Date.now() - MINUTES_KEPT * 60000).toISOString();
  for (const by of ['label', 'zone']) {
    const r = await request(`/api/v1/stats/timeseries?bucket=1m&by=${by}&since=${encodeURIComponent(since)}`);
    if (!r.ok || !r.body || !Array.isArray(r.body.points)) return; // not there (yet): live counts only
    const totals = new Map();
    for (const p of r.body.points) {
      const minute = Math.floor(new Date(p.bucket).getTime() / 60000) * 60000;
      if (!Number.isFinite(minute)) continue;
      let m = state.minutes.get(minute);
      if (!m) { m = { total: 0, label: {}, camera: {}, zone: {}, tracks: {} }; state.minutes.set(minute, m); }
      const key = by === 'zone' && !p.key ? '(none)' : p.key;
      m[by][key] = Math.max(m[by][key] || 0, p.count);
      if (by === 'label') { state.labels.add(key); totals.set(minute, (totals.get(minute) || 0) + p.count); } else if (p.key) state.zones.add(p.key);
    }
    for (const [minute, n] of totals) { const m = state.minutes.get(minute); m.total = Math.max(m.total, n); }
  }
  pruneCounts();
}

// ---- incidents and alerts (optional API) ----------------------------------

const OPEN_STATUSES = new Set(['new', 'acknowledged', 'in_progress']);
export function activeIncidents() {
  return state.incidents.filter((i) => OPEN_STATUSES.has(i.status)).length;
}

/** Loads incidents when the aggregator has the endpoint; hides the board otherwise. */
export async function loadIncidents() {
  const r = await request('/api/v1/incidents?limit=500');
  if (r.ok) {
    state.incidentsAvailable = true;
    state.incidents = Array.isArray(r.body) ? r.body : (r.body && r.body.items) || [];
  } else if (r.status === 404 || r.status === 405 || r.status === 501) {
    state.incidentsAvailable = false;
    state.incidents = [];
  } // other failures (network, 5xx): keep what we had
  emit('incidents');
}

export function applyIncident(inc) {
  if (!inc || inc.id === undefined) return;
  state.incidentsAvailable = true;
  const i = state.incidents.findIndex((x) => x.id === inc.id);
  if (i >= 0) state.incidents[i] = { ...state.incidents[i], ...inc };
  else state.incidents.unshift(inc);
  emit('incidents');
}

export function applyAlert(alert) {
  state.alerts.unshift({ ...alert, received_at: new Date().toISOString() });
  if (state.alerts.length > ALERTS_KEPT) state.alerts.length = ALERTS_KEPT;
  emit('alerts');
}

/** Everything REST knows, after login and after every live-feed gap. */
export async function resync() {
  await Promise.allSettled([loadNodes(), loadDetections(), loadIncidents()]);
  await loadTimeseries().catch(() => {});
  // After the detections, so the total it brings replaces the live tally.
  await loadSummary().catch(() => {});
  emit('resynced');
}

export function reset() {
  state.nodes.clear(); state.heartbeats.clear(); state.minutes.clear(); state.seconds.clear();
  state.detections = new DetectionRing(DETECTION_RING);
  state.labels.clear(); state.cameras.clear(); state.zones.clear();
  state.summary = null; state.newestTs = null; state.incidents = []; state.alerts = [];
  state.incidentsAvailable = undefined;
}
