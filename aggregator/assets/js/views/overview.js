// Overview: the five numbers an operator looks at first, detections per
// minute over the last half hour, and the latest alerts.

import { TimeChart } from '../chart.js';
import { fmtNum, fmtTime, h, note, rafThrottle } from '../dom.js';
import { activeIncidents, bus, detectionsPerMinute, state } from '../state.js';

export function camerasBlind() {
  const blind = [];
  for (const n of state.nodes.values()) {
    for (const c of (n.last_heartbeat && n.last_heartbeat.cameras) || []) {
      if (!n.online || c.state !== 'ok') blind.push({ node: n.node_id, camera: c.camera_id, state: n.online ? c.state : 'node offline', error: c.last_error });
    }
  }
  // A failing camera on a live node needs someone first; offline nodes show on the Nodes page.
  return blind.sort((a, b) => (a.state === 'node offline') - (b.state === 'node offline'));
}

/** Frames the edge analysed and kept, against detections it sent. */
export function bandwidth() {
  let frames = 0;
  for (const n of state.nodes.values()) {
    for (const c of (n.last_heartbeat && n.last_heartbeat.cameras) || []) frames += c.frames_total || 0;
  }
  const sent = state.summary ? state.summary.detections_total : 0;
  return { frames, sent };
}

function tile(key, label, value, detail, href) {
  const body = [h('span', { class: 'tile-label', id: `tile-${key}` }, label),
    h('strong', { class: 'tile-value', 'aria-describedby': `tile-${key}` }, value),
    h('span', { class: 'tile-detail' }, detail)];
  return href
    ? h('a', { class: 'tile', href, 'data-route': true, 'data-metric': key }, body)
    : h('div', { class: 'tile', 'data-metric': key }, body);
}

export function mount(main) {
  const tiles = h('div', { class: 'tiles', 'aria-live': 'off' });
  const chartHost = h('div', {});
  const alerts = h('ol', { class: 'alerts', 'aria-label': 'Latest alerts' });
  main.append(h('h1', {}, 'Overview'), tiles,
    h('section', { class: 'panel' }, h('h2', {}, 'Detections per minute, last 30 minutes'), chartHost),
    h('section', { class: 'panel' }, h('h2', {}, 'Alerts'), alerts));
  const chart = new TimeChart(chartHost, { label: 'Detections per minute by label', kind: 'bars', height: 200 });

  const draw = rafThrottle(() => {
    const nodes = [...state.nodes.values()];
    const online = nodes.filter((n) => n.online).length;
    const blind = camerasBlind();
    const bw = bandwidth();
    const ratio = bw.sent > 0 ? bw.frames / bw.sent : null;
    const inc = state.incidentsAvailable ? tile('incidents', 'Active incidents', fmtNum(activeIncidents()), `${state.incidents.length} in total`, '/ui/incidents') : null;
    tiles.replaceChildren(...[
      tile('nodes-online', 'Nodes online', `${online} / ${nodes.length}`, nodes.length - online ? `${nodes.length - online} offline` : 'all reporting', '/ui/nodes'),
      tile('detections-per-minute', 'Detections / min', fmtNum(detectionsPerMinute()),
        state.summary ? `${fmtNum(state.summary.detections_total)} stored` : '', '/ui/live'),
      inc,
      tile('bandwidth', 'Bandwidth saved', bw.frames ? fmtNum(bw.frames) : '—',
        bw.frames ? `frames analysed and kept on the edge; ${fmtNum(bw.sent)} detections sent${ratio ? ` (1 per ${fmtNum(ratio, ratio < 10 ? 1 : 0)} frames)` : ''}` : 'no frame counts in heartbeats yet'),
      tile('cameras-blind', 'Cameras blind', fmtNum(blind.length),
        blind.length ? blind.slice(0, 3).map((b) => `${b.node}/${b.camera}: ${b.state}`).join(', ') : 'all cameras see', '/ui/nodes'),
    ].filter(Boolean));
    for (const t of tiles.querySelectorAll('[data-metric="cameras-blind"]')) t.classList.toggle('bad', blind.length > 0);

    const now = Date.now();
    const from = Math.floor(now / 60000) * 60000 - 29 * 60000;
    const byLabel = new Map();
    for (const [minute, m] of state.minutes) {
      if (minute < from) continue;
      for (const [label, n] of Object.entries(m.label)) {
        if (!byLabel.has(label)) byLabel.set(label, []);
        byLabel.get(label).push([minute, n]);
      }
    }
    chart.set([...byLabel].sort().map(([name, points]) => ({ name, points })), from, from + 30 * 60000);

    if (!state.alerts.length) alerts.replaceChildren(h('li', { class: 'muted' }, 'No alerts since this page opened.'));
    else alerts.replaceChildren(...state.alerts.slice(0, 10).map((a) => h('li', { class: `alert sev-${a.severity || 'info'}` },
      h('time', {}, fmtTime(a.ts || a.received_at)), ' ', a.title || a.message || a.kind || JSON.stringify(a))));
  });

  const events = ['nodes', 'detections', 'summary', 'incidents', 'alerts', 'resynced'];
  for (const e of events) bus.addEventListener(e, draw);
  const clock = setInterval(draw, 5000);
  draw();
  return () => { for (const e of events) bus.removeEventListener(e, draw); clearInterval(clock); chart.destroy(); };
}
