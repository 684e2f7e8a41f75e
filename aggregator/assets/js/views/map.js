// Map: cameras, nodes and incidents that carry a position (lat/lng), plotted
// in Web Mercator on plain SVG. With a tile server URL (kept in this
// browser), its tiles are drawn underneath; offline, the points alone.

import { h, note, rafThrottle } from '../dom.js';
import { bus, state } from '../state.js';

const TILE_KEY = 'edgeqi.tileUrl';
const W = 800;
const H = 500;

function pos(o) {
  if (!o) return null;
  const lat = o.lat ?? o.latitude ?? (o.location && (o.location.lat ?? o.location.latitude));
  const lng = o.lng ?? o.lon ?? o.longitude ?? (o.location && (o.location.lng ?? o.location.lon ?? o.location.longitude));
  return Number.isFinite(lat) && Number.isFinite(lng) ? { lat, lng } : null;
}

/** Everything with a position. */
function points() {
  const out = [];
  for (const n of state.nodes.values()) {
    const hb = n.last_heartbeat || {};
    const p = pos(n) || pos(hb);
    if (p) out.push({ ...p, kind: 'node', name: n.node_id, bad: !n.online });
    for (const c of hb.cameras || []) {
      const cp = pos(c);
      if (cp) out.push({ ...cp, kind: 'camera', name: `${n.node_id}/${c.camera_id}`, bad: !n.online || c.state !== 'ok' });
    }
  }
  for (const i of state.incidents) {
    const p = pos(i);
    if (p && !['closed', 'rejected'].includes(i.status)) out.push({ ...p, kind: 'incident', name: i.title || `Incident ${i.id}`, id: i.id, bad: true });
  }
  return out;
}

// Web Mercator in "world pixels" at zoom z (256 px tiles).
const mx = (lng, z) => ((lng + 180) / 360) * 256 * 2 ** z;
const my = (lat, z) => {
  const s = Math.sin((Math.max(-85, Math.min(85, lat)) * Math.PI) / 180);
  return (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * 256 * 2 ** z;
};

export function mount(main) {
  const svg = h('svg:svg', { class: 'map', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Map of cameras, nodes and incidents' });
  const list = h('ul', { class: 'map-list', 'aria-label': 'Plotted items' });
  const tileInput = h('input', { id: 'tile-url', name: 'tile_url', type: 'url', placeholder: 'https://tiles.example/{z}/{x}/{y}.png', value: localStorage.getItem(TILE_KEY) || '' });
  const empty = note('Nothing reports a position yet. Cameras, nodes and incidents with lat/lng appear here.');
  main.append(h('h1', {}, 'Map'),
    h('form', { class: 'inline', onsubmit: (ev) => {
      ev.preventDefault();
      const v = tileInput.value.trim();
      if (v) localStorage.setItem(TILE_KEY, v); else localStorage.removeItem(TILE_KEY);
      draw();
    } }, h('label', { for: 'tile-url' }, 'Tile server (optional)'), tileInput, h('button', { type: 'submit' }, 'Apply')),
    empty, svg, list);

  const draw = rafThrottle(() => {
    const pts = points();
    empty.hidden = pts.length > 0;
    svg.replaceChildren();
    list.replaceChildren(...pts.map((p) => h('li', {}, `${p.kind}: ${p.name} (${p.lat.toFixed(5)}, ${p.lng.toFixed(5)})${p.bad ? ' — needs attention' : ''}`)));
    if (!pts.length) return;
    // The highest zoom at which everything fits, with a margin.
    let z = 18;
    const lats = pts.map((p) => p.lat);
    const lngs = pts.map((p) => p.lng);
    for (; z > 1; z--) {
      const w = mx(Math.max(...lngs), z) - mx(Math.min(...lngs), z);
      const hh = my(Math.min(...lats), z) - my(Math.max(...lats), z);
      if (w < W * 0.8 && hh < H * 0.8) break;
    }
    const cx = (mx(Math.max(...lngs), z) + mx(Math.min(...lngs), z)) / 2;
    const cy = (my(Math.min(...lats), z) + my(Math.max(...lats), z)) / 2;
    const ox = cx - W / 2;
    const oy = cy - H / 2;
    const tileUrl = localStorage.getItem(TILE_KEY);
    if (tileUrl) {
      for (let tx = Math.floor(ox / 256); tx * 256 < ox + W; tx++) {
        for (let ty = Math.floor(oy / 256); ty * 256 < oy + H; ty++) {
          if (ty < 0 || ty >= 2 ** z) continue;
          const wrapped = ((tx % 2 ** z) + 2 ** z) % 2 ** z;
          const href = tileUrl.replace('{z}', z).replace('{x}', wrapped).replace('{y}', ty);
          svg.append(h('svg:image', { href, x: tx * 256 - ox, y: ty * 256 - oy, width: 256, height: 256 }));
        }
      }
    } else {
      svg.append(h('svg:rect', { x: 0, y: 0, width: W, height: H, class: 'map-bg' }));
    }
    for (const p of pts) {
      const x = mx(p.lng, z) - ox;
      const y = my(p.lat, z) - oy;
      const shape = p.kind === 'incident'
        ? h('svg:path', { d: `M${x} ${y - 9}L${x + 8} ${y + 6}L${x - 8} ${y + 6}Z`, class: 'pin incident' })
        : h('svg:circle', { cx: x, cy: y, r: p.kind === 'node' ? 7 : 5, class: `pin ${p.kind} ${p.bad ? 'bad' : 'ok'}` });
      svg.append(h('svg:g', {}, h('svg:title', {}, `${p.kind} ${p.name}`), shape,
        h('svg:text', { x: x + 9, y: y + 4, class: 'pin-label' }, p.name)));
    }
  });
  for (const e of ['nodes', 'incidents']) bus.addEventListener(e, draw);
  draw();
  return () => { for (const e of ['nodes', 'incidents']) bus.removeEventListener(e, draw); };
}
