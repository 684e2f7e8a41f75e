// Nodes: a grid of every edge node with its latest heartbeat, and a node's
// detail page with heartbeat history charts, its detection ledger, and its
// registered cameras with the remote config the node runs against the one
// the registry wants.

import { api } from '../api.js';
import { TimeChart } from '../chart.js';
import { fmtAgo, fmtBytes, fmtDateTime, fmtNum, h, note, pct, rafThrottle } from '../dom.js';
import { bus, state } from '../state.js';

export function mount(main, ctx) {
  return ctx.params.id ? mountDetail(main, decodeURIComponent(ctx.params.id)) : mountGrid(main);
}

function statusBadge(n) {
  return h('span', { class: `badge ${n.online ? 'ok' : 'bad'}`, 'data-status': n.online ? 'online' : 'offline' },
    n.online ? '● Online' : '○ Offline');
}

function cameraChips(hb) {
  const cams = (hb && hb.cameras) || [];
  if (!cams.length) return h('span', { class: 'muted' }, '—');
  return h('ul', { class: 'chips' }, cams.map((c) => h('li', {
    class: `chip cam-${c.state}`, title: c.last_error || `${c.state}, ${fmtNum(c.fps, 1)} fps`,
  }, `${c.camera_id}: ${c.state}`)));
}

function mountGrid(main) {
  const tbody = h('tbody', {});
  const empty = note('No node has reported yet. Start an agent, or publish a heartbeat over MQTT.');
  main.append(h('h1', {}, 'Nodes'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'grid nodes' },
      h('caption', { class: 'sr-only' }, 'Edge nodes and their latest heartbeat'),
      h('thead', {}, h('tr', {}, ['Node', 'Status', 'CPU', 'Memory', 'FPS', 'Backlog', 'Last seen', 'Cameras'].map((c) => h('th', { scope: 'col' }, c)))),
      tbody)), empty);
  const draw = rafThrottle(() => {
    const nodes = [...state.nodes.values()].sort((a, b) => a.node_id.localeCompare(b.node_id));
    empty.hidden = nodes.length > 0;
    const now = Date.now();
    tbody.replaceChildren(...nodes.map((n) => {
      const hb = n.last_heartbeat || {};
      const mem = pct(hb.mem_used_bytes, hb.mem_total_bytes);
      return h('tr', { 'data-node-id': n.node_id, class: n.online ? '' : 'offline' },
        h('th', { scope: 'row' }, h('a', { href: `/ui/nodes/${encodeURIComponent(n.node_id)}`, 'data-route': true }, n.node_id)),
        h('td', {}, statusBadge(n)),
        h('td', { class: 'num' }, hb.cpu_pct === undefined ? '—' : `${fmtNum(hb.cpu_pct, 1)}%`),
        h('td', { class: 'num', title: `${fmtBytes(hb.mem_used_bytes)} of ${fmtBytes(hb.mem_total_bytes)}` }, mem === null ? '—' : `${fmtNum(mem, 0)}%`),
        h('td', { class: 'num' }, fmtNum(hb.fps, 1)),
        h('td', { class: `num ${hb.backlog > 0 ? 'warn' : ''}` }, fmtNum(hb.backlog)),
        h('td', {}, h('time', { datetime: n.last_seen, title: fmtDateTime(n.last_seen) }, fmtAgo(n.last_seen, now))),
        h('td', {}, cameraChips(hb)));
    }));
  });
  bus.addEventListener('nodes', draw);
  const clock = setInterval(draw, 5000);
  draw();
  return () => { bus.removeEventListener('nodes', draw); clearInterval(clock); };
}

function mountDetail(main, id) {
  const head = h('div', { class: 'node-head' });
  const facts = h('dl', { class: 'facts' });
  const cams = h('div', {});
  const ledger = h('div', {});
  const remote = h('div', {});
  const chartsHost = h('div', { class: 'chart-grid' });
  main.append(h('p', {}, h('a', { href: '/ui/nodes', 'data-route': true }, '← All nodes')),
    h('h1', {}, `Node ${id}`), head,
    h('section', { class: 'panel' }, h('h2', {}, 'Latest heartbeat'), facts, cams),
    h('section', { class: 'panel' }, h('h2', {}, 'Heartbeat history'),
      note('Since this page was loaded, plus the latest stored heartbeat.'), chartsHost),
    h('section', { class: 'panel' }, h('h2', {}, 'Detection ledger'), ledger),
    h('section', { class: 'panel' }, h('h2', {}, 'Cameras and remote config'), remote));
  const charts = {
    cpu: new TimeChart(chartsHost, { label: 'CPU %', caption: true, yMax: 100, yUnit: '%' }),
    mem: new TimeChart(chartsHost, { label: 'Memory %', caption: true, yMax: 100, yUnit: '%' }),
    fps: new TimeChart(chartsHost, { label: 'Frames per second', caption: true }),
    backlog: new TimeChart(chartsHost, { label: 'Outbox backlog (batches)', caption: true }),
  };

  const draw = rafThrottle(() => {
    const n = state.nodes.get(id);
    if (!n) { head.replaceChildren(note('This node is not known (yet).', 'warn')); return; }
    const hb = n.last_heartbeat || {};
    head.replaceChildren(statusBadge(n), ' ', h('span', { class: 'muted' }, `last seen ${fmtAgo(n.last_seen)}, first seen ${fmtDateTime(n.first_seen)}`));
    const ob = hb.outbox || {};
    const rows = [
      ['Version', hb.version], ['Detector', hb.detector], ['Uptime', hb.uptime_s !== undefined ? `${fmtNum(hb.uptime_s / 3600, 1)} h` : null],
      ['CPU', hb.cpu_pct !== undefined ? `${fmtNum(hb.cpu_pct, 1)}%` : null],
      ['Memory', hb.mem_total_bytes ? `${fmtBytes(hb.mem_used_bytes)} of ${fmtBytes(hb.mem_total_bytes)}` : null],
      ['Disk free', hb.disk_total_bytes ? `${fmtBytes(hb.disk_free_bytes)} of ${fmtBytes(hb.disk_total_bytes)}` : null],
      ['Temperature', hb.temperature_c !== undefined && hb.temperature_c !== null ? `${fmtNum(hb.temperature_c, 1)} °C` : null],
      ['FPS', fmtNum(hb.fps, 1)], ['Backlog', fmtNum(hb.backlog)], ['Heartbeat every', `${n.heartbeat_interval_s || hb.interval_s || '—'} s`],
      ['Outbox', ob.epoch ? `${fmtNum(ob.pending_batches)} batches, ${fmtBytes(ob.pending_bytes)} of ${fmtBytes(ob.max_bytes)}; compacted ${fmtNum(ob.compacted_detections)}, shed ${fmtNum(ob.shed_detections)}` : null],
    ].filter(([, v]) => v !== null && v !== undefined);
    facts.replaceChildren(...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
    const camList = hb.cameras || [];
    cams.replaceChildren(camList.length ? h('table', { class: 'grid' },
      h('thead', {}, h('tr', {}, ['Camera', 'State', 'FPS', 'Frames', 'Last error'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, camList.map((c) => h('tr', {}, h('th', { scope: 'row' }, c.camera_id),
        h('td', {}, h('span', { class: `chip cam-${c.state}` }, c.state)), h('td', { class: 'num' }, fmtNum(c.fps, 1)),
        h('td', { class: 'num' }, fmtNum(c.frames_total)), h('td', {}, c.last_error || '—'))))) : note('No cameras reported.'));

    const hist = state.heartbeats.get(id) || [];
    const now = Date.now();
    const from = hist.length ? Math.min(hist[0].t, now - 5 * 60000) : now - 5 * 60000;
    for (const key of Object.keys(charts)) {
      charts[key].set([{ name: key === 'mem' ? 'memory' : key, points: hist.map((p) => [p.t, p[key]]) }], from, now);
    }
  });

  async function loadLedger() {
    try {
      const body = await api(`/api/v1/nodes/${encodeURIComponent(id)}`);
      state.nodes.set(id, { ...state.nodes.get(id), ...body });
      const entries = body.ledger || [];
      ledger.replaceChildren(entries.length ? h('table', { class: 'grid ledger' },
        h('thead', {}, h('tr', {}, ['Epoch', 'Acked seq', 'Max seq', 'Batches', 'Gaps'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, entries.map((e) => h('tr', {},
          h('th', { scope: 'row' }, h('code', {}, e.epoch || '(none)')),
          h('td', { class: 'num' }, fmtNum(e.acked_seq)), h('td', { class: 'num' }, fmtNum(e.max_seq)), h('td', { class: 'num' }, fmtNum(e.batches)),
          h('td', { class: e.holes && e.holes.length ? 'warn' : '' }, e.holes && e.holes.length
            ? e.holes.map(([a, b]) => (a === b ? `${a}` : `${a}–${b}`)).join(', ') : 'none'))))) : note('No detection batches stored from this node.'));
      drawRemote(body);
      draw();
    } catch (e) {
      ledger.replaceChildren(note(e.status === 404 ? 'No such node.' : `Could not load the ledger: ${e.message}`, 'warn'));
    }
  }

  function drawRemote(body) {
    const c = body.config || {};
    const cams = body.cameras || [];
    const sync = c.in_sync
      ? h('span', { class: 'badge ok', 'data-config': 'in-sync' }, `✓ version ${c.desired_version} applied`)
      : h('span', { class: 'badge bad', 'data-config': 'pending' },
        `version ${c.desired_version} wanted, ${c.applied_version === null || c.applied_version === undefined ? 'none' : c.applied_version} applied`);
    const err = c.last_error
      ? note(`The node refused version ${c.last_error.version ?? '?'}: ${c.last_error.reason}`, 'warn') : null;
    const unknown = (c.unknown_cameras || []).length
      ? note(`Registered but not on the node: ${c.unknown_cameras.join(', ')}`, 'warn') : null;
    const table = cams.length ? h('table', { class: 'grid' },
      h('thead', {}, h('tr', {}, ['Camera', 'Name', 'Location', 'Heading', 'Zones', 'Lines'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, cams.map((cam) => h('tr', {},
        h('th', { scope: 'row' }, cam.camera_id), h('td', {}, cam.name || '—'),
        h('td', {}, cam.location ? `${fmtNum(cam.location.lat, 5)}, ${fmtNum(cam.location.lng, 5)}` : '—'),
        h('td', { class: 'num' }, cam.heading === null || cam.heading === undefined ? '—' : `${fmtNum(cam.heading, 0)}°`),
        h('td', {}, cam.zones.map((z) => z.id).join(', ') || '—'),
        h('td', {}, cam.lines.map((l) => l.id).join(', ') || '—')))))
      : note('No cameras registered: the node runs its config file. Register cameras with POST /api/v1/nodes/{id}/cameras.');
    remote.replaceChildren(...[c.desired_version ? sync : null, err, unknown, table].filter(Boolean));
  }

  bus.addEventListener('nodes', draw);
  const timer = setInterval(loadLedger, 10000);
  loadLedger();
  draw();
  return () => { bus.removeEventListener('nodes', draw); clearInterval(timer); Object.values(charts).forEach((c) => c.destroy()); };
}
