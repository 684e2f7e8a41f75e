// Events: what the agents' trackers saw — objects appearing and leaving,
// zone entries with dwell times, line crossings — with the best snapshot of
// each finished track, and the traffic counts per line, class and direction.

import { api, getToken } from '../api.js';
import { fmtDateTime, fmtNum, h, note } from '../dom.js';

const KINDS = ['appeared', 'left', 'zone_entered', 'zone_left', 'line_crossed'];
const PAGE = 50;

export function mount(main) {
  const kind = h('select', { name: 'kind', 'aria-label': 'Event kind' },
    h('option', { value: '' }, 'All kinds'), KINDS.map((k) => h('option', { value: k }, k.replace('_', ' '))));
  const node = h('input', { name: 'node_id', placeholder: 'Node id', 'aria-label': 'Node id', size: 14 });
  const camera = h('input', { name: 'camera_id', placeholder: 'Camera id', 'aria-label': 'Camera id', size: 12 });
  const list = h('ul', { class: 'event-list' });
  const empty = note('No tracker events yet. Agents send them when objects appear, leave, enter zones or cross lines.');
  const more = h('button', { type: 'button', class: 'ghost', hidden: true }, 'Older events');
  const lines = h('tbody', {});
  const noLines = note('No line has been crossed yet. Lines are drawn per camera in the agent config or the camera registry.');
  const failure = h('p', { class: 'form-error', role: 'alert', hidden: true });
  main.append(h('h1', {}, 'Events'),
    h('section', { class: 'panel' }, h('h2', {}, 'Traffic counts'),
      h('div', { class: 'table-wrap' }, h('table', { class: 'grid line-counts' },
        h('caption', { class: 'sr-only' }, 'Crossings per line, class and direction'),
        h('thead', {}, h('tr', {}, ['Node', 'Camera', 'Line', 'Class', 'Direction', 'Crossings'].map((c) => h('th', { scope: 'col' }, c)))),
        lines)), noLines),
    h('section', { class: 'panel' }, h('h2', {}, 'Tracker events'),
      h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); reload(); } },
        kind, node, camera, h('button', { type: 'submit' }, 'Filter')),
      failure, list, empty, more));

  let cursor = null;
  let alive = true;
  const ctl = new AbortController();

  async function loadLines() {
    const rows = [];
    let next = null;
    do {
      const q = new URLSearchParams({ limit: '500' });
      if (next) q.set('cursor', next);
      const page = await api(`/api/v1/stats/lines?${q}`, { signal: ctl.signal });
      rows.push(...(page.items || []));
      next = page.next_cursor;
    } while (next && rows.length < 5000 && alive);
    noLines.hidden = rows.length > 0;
    lines.replaceChildren(...rows.map((r) => h('tr', {
      'data-line': r.line, 'data-label': r.label, 'data-direction': r.direction,
    }, h('td', {}, r.node_id), h('td', {}, r.camera_id), h('th', { scope: 'row' }, r.line), h('td', {}, r.label),
    h('td', {}, r.direction.replaceAll('_', ' ')), h('td', { class: 'num' }, fmtNum(r.count)))));
  }

  async function loadEvents(append) {
    const q = new URLSearchParams({ limit: String(PAGE) });
    for (const input of [kind, node, camera]) if (input.value.trim()) q.set(input.name, input.value.trim());
    if (append && cursor) q.set('cursor', cursor);
    const page = await api(`/api/v1/events?${q}`, { signal: ctl.signal });
    if (!alive) return;
    cursor = page.next_cursor;
    more.hidden = !cursor;
    const rows = (page.items || []).map(eventRow);
    if (append) list.append(...rows); else list.replaceChildren(...rows);
    empty.hidden = list.children.length > 0;
  }

  function fail(e) {
    if (e.name === 'AbortError' || !alive) return;
    failure.textContent = `Could not load: ${e.message}`;
    failure.hidden = false;
  }

  function reload() {
    failure.hidden = true;
    cursor = null;
    loadLines().catch(fail);
    loadEvents(false).catch(fail);
  }

  more.addEventListener('click', () => loadEvents(true).catch(fail));
  reload();
  return () => { alive = false; ctl.abort(); };
}

function eventRow(e) {
  const what = {
    appeared: 'appeared',
    left: e.dwell_s == null ? 'left' : `left after ${fmtNum(e.dwell_s, 1)} s`,
    zone_entered: `entered ${e.zone}`,
    zone_left: e.dwell_s == null ? `left ${e.zone}` : `left ${e.zone} after ${fmtNum(e.dwell_s, 1)} s`,
    line_crossed: `crossed ${e.line}${e.direction ? `, ${e.direction.replaceAll('_', ' ')}` : ''}`,
  }[e.kind] || e.kind;
  // An <img> cannot send the bearer header; the API takes ?access_token= as well.
  const token = getToken();
  const src = `/api/v1/events/${encodeURIComponent(e.id)}/snapshot${token ? `?access_token=${encodeURIComponent(token)}` : ''}`;
  const thumb = e.has_snapshot
    ? h('img', { class: 'snapshot', src, alt: `Snapshot of ${e.label} ${e.track_id}`, loading: 'lazy', width: 96, height: 96 })
    : h('span', { class: 'snapshot none', 'aria-hidden': 'true' });
  return h('li', { class: 'event', 'data-event-id': e.id, 'data-kind': e.kind },
    thumb,
    h('div', {},
      h('strong', {}, `${e.label} #${e.track_id}`), ' ', what,
      h('div', { class: 'muted' },
        `${e.node_id} / ${e.camera_id} · score ${fmtNum(e.score, 2)} · `,
        h('time', { datetime: e.ts }, fmtDateTime(e.ts)))));
}
