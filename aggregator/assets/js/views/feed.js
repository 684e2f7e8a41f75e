// Live feed: detections as they arrive, newest first, with filters and pause.
// Built for bursts of 1,000+ events/s: arrivals come in batches (state.js),
// the list is virtualised (only the visible rows exist in the DOM, redrawn
// at most once per frame), and the buffer is a bounded ring.

import { colorFor, fmtNum, fmtTime, h, rafThrottle } from '../dom.js';
import { bus, state } from '../state.js';

const ROW_H = 44;
const OVERSCAN = 6;

/** Largest coordinates seen per camera: our best guess at its frame size. */
const frameSize = new Map();
function frameOf(d) {
  const key = `${d.node_id}/${d.camera_id}`;
  let f = frameSize.get(key);
  if (!f) { f = { w: 640, hh: 360 }; frameSize.set(key, f); }
  const [, , x2, y2] = d.bbox || [0, 0, 0, 0];
  if (x2 > f.w) f.w = x2 > 1280 ? 1920 : 1280;
  if (y2 > f.hh) f.hh = y2 > 720 ? 1080 : 720;
  return f;
}

/** A snapshot thumbnail when the detection has one, else the frame outline; the box drawn on top. */
function thumb(d) {
  const f = frameOf(d);
  const [x1, y1, x2, y2] = d.bbox || [0, 0, 0, 0];
  const color = colorFor(d.label);
  return h('svg:svg', { class: 'thumb', viewBox: `0 0 ${f.w} ${f.hh}`, preserveAspectRatio: 'none', 'aria-hidden': 'true' },
    d.snapshot_url
      ? h('svg:image', { href: d.snapshot_url, x: 0, y: 0, width: f.w, height: f.hh, preserveAspectRatio: 'none' })
      : h('svg:rect', { x: 0, y: 0, width: f.w, height: f.hh, class: 'thumb-frame' }),
    h('svg:rect', { x: x1, y: y1, width: Math.max(1, x2 - x1), height: Math.max(1, y2 - y1), fill: 'none', stroke: color, 'stroke-width': f.w / 40 }));
}

function row(d, index, total) {
  return h('div', {
    class: 'feed-row', role: 'listitem', 'aria-posinset': index + 1, 'aria-setsize': total,
    'data-detection-id': d.id, 'data-label': d.label, style: `transform:translateY(${index * ROW_H}px)`,
  },
  thumb(d),
  h('time', { datetime: d.ts }, fmtTime(d.ts)),
  h('span', { class: 'feed-label', style: `--c:${colorFor(d.label)}` }, d.label),
  h('span', { class: 'feed-score', title: 'score' }, `${fmtNum(100 * d.score, 0)}%`),
  h('span', { class: 'feed-where' }, `${d.node_id} / ${d.camera_id}`),
  h('span', { class: 'feed-zone' }, d.zone || ''),
  h('span', { class: 'feed-track' }, d.track_id === null || d.track_id === undefined ? '' : `track ${d.track_id}`));
}

function select(id, label) {
  const el = h('select', { id, name: id }, h('option', { value: '' }, 'All'));
  return { el, wrap: h('div', { class: 'field' }, h('label', { for: id }, label), el) };
}

export function mount(main) {
  const labelSel = select('filter-label', 'Label');
  const cameraSel = select('filter-camera', 'Camera');
  const zoneSel = select('filter-zone', 'Zone');
  const pause = h('button', { type: 'button', 'aria-pressed': 'false', id: 'feed-pause' }, 'Pause');
  const rate = h('span', { class: 'muted', 'aria-live': 'off' });
  const spacer = h('div', { class: 'feed-spacer' });
  const viewport = h('div', { class: 'feed-viewport', tabindex: '0', role: 'list', 'aria-label': 'Detections, newest first' }, spacer);
  const empty = h('p', { class: 'note muted' }, 'Waiting for detections…');
  main.append(h('h1', {}, 'Live feed'),
    h('div', { class: 'toolbar', role: 'group', 'aria-label': 'Feed controls' }, labelSel.wrap, cameraSel.wrap, zoneSel.wrap, pause, rate),
    viewport, empty);

  let items = [];
  let paused = false;
  let missed = 0;
  const filter = { label: '', camera: '', zone: '' };
  const matches = (d) => (!filter.label || d.label === filter.label) &&
    (!filter.camera || d.camera_id === filter.camera) && (!filter.zone || d.zone === filter.zone);

  function rebuild() {
    items = [];
    for (const d of state.detections.newestFirst()) if (matches(d)) items.push(d);
    viewport.scrollTop = 0;
    draw();
  }

  const draw = rafThrottle(() => {
    empty.hidden = items.length > 0;
    spacer.style.height = `${items.length * ROW_H}px`;
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_H) - OVERSCAN);
    const last = Math.min(items.length, Math.ceil((viewport.scrollTop + viewport.clientHeight) / ROW_H) + OVERSCAN);
    const rows = [];
    for (let i = first; i < last; i++) rows.push(row(items[i], i, items.length));
    spacer.replaceChildren(...rows);
  });

  function syncOptions(sel, values) {
    const have = new Set([...sel.el.options].map((o) => o.value));
    for (const v of [...values].sort()) if (!have.has(v)) sel.el.append(h('option', { value: v }, v));
  }

  const arrivals = [];
  const onBatch = (ev) => {
    const fresh = ev.detail;
    const now = Date.now();
    arrivals.push([now, fresh.length]);
    syncOptions(labelSel, state.labels); syncOptions(cameraSel, state.cameras); syncOptions(zoneSel, state.zones);
    if (paused) { missed += fresh.length; pause.textContent = `Resume (${fmtNum(missed)} new)`; return; }
    const add = [];
    for (let i = fresh.length - 1; i >= 0; i--) if (matches(fresh[i])) add.push(fresh[i]);
    if (!add.length) return;
    // Detections can arrive out of order (resends, resyncs): keep the view newest first.
    items = add.concat(items);
    if (add.some((d, i) => i + 1 < items.length && items[i + 1].ts > d.ts)) items.sort((a, b) => (a.ts < b.ts ? 1 : a.ts > b.ts ? -1 : b.id - a.id));
    if (items.length > state.detections.capacity) items.length = state.detections.capacity;
    // Someone reading further down keeps their place.
    if (viewport.scrollTop > 0) viewport.scrollTop += add.length * ROW_H;
    draw();
  };

  const showRate = setInterval(() => {
    const now = Date.now();
    while (arrivals.length && arrivals[0][0] < now - 5000) arrivals.shift();
    const n = arrivals.reduce((a, [, c]) => a + c, 0);
    rate.textContent = `${fmtNum(n / 5, 1)} events/s · ${fmtNum(items.length)} shown`;
  }, 1000);

  for (const [sel, key] of [[labelSel, 'label'], [cameraSel, 'camera'], [zoneSel, 'zone']]) {
    sel.el.addEventListener('change', () => { filter[key] = sel.el.value; rebuild(); });
  }
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    if (paused) { missed = 0; pause.textContent = 'Resume'; } else { pause.textContent = 'Pause'; rebuild(); }
  });
  viewport.addEventListener('scroll', draw, { passive: true });
  const ro = new ResizeObserver(draw);
  ro.observe(viewport);
  bus.addEventListener('detections', onBatch);
  syncOptions(labelSel, state.labels); syncOptions(cameraSel, state.cameras); syncOptions(zoneSel, state.zones);
  rebuild();
  return () => { bus.removeEventListener('detections', onBatch); clearInterval(showRate); ro.disconnect(); };
}
