// Charts: detections per minute over the last hour by label, camera or zone,
// and distinct tracks seen in each zone (what line/zone counting reports).
// Each chart has its numbers in a table too, for screen readers.

import { TimeChart } from '../chart.js';
import { fmtNum, h, rafThrottle } from '../dom.js';
import { bus, MINUTES_KEPT, state } from '../state.js';

const DIMENSIONS = [['label', 'Label'], ['camera', 'Camera'], ['zone', 'Zone']];

export function mount(main) {
  const dimSel = h('select', { id: 'chart-dimension', name: 'dimension' }, DIMENSIONS.map(([v, t]) => h('option', { value: v }, t)));
  const minutesSel = h('select', { id: 'chart-window', name: 'window' }, [15, 30, 60].map((m) => h('option', { value: m, selected: m === 60 }, `${m} minutes`)));
  const countsHost = h('div', {});
  const tracksHost = h('div', {});
  const countsTable = h('table', { class: 'grid' });
  const tracksTable = h('table', { class: 'grid' });
  main.append(h('h1', {}, 'Charts'),
    h('div', { class: 'toolbar' },
      h('div', { class: 'field' }, h('label', { for: 'chart-dimension' }, 'Group by'), dimSel),
      h('div', { class: 'field' }, h('label', { for: 'chart-window' }, 'Window'), minutesSel)),
    h('section', { class: 'panel' }, h('h2', {}, 'Detections per minute'), countsHost,
      h('details', {}, h('summary', {}, 'Totals as a table'), countsTable)),
    h('section', { class: 'panel' }, h('h2', {}, 'Tracks per zone per minute (zone and line crossings)'), tracksHost,
      h('details', {}, h('summary', {}, 'Totals as a table'), tracksTable)));
  const counts = new TimeChart(countsHost, { label: 'Detections per minute', kind: 'bars', height: 240 });
  const tracks = new TimeChart(tracksHost, { label: 'Distinct tracks per zone per minute', kind: 'line', height: 200 });

  const draw = rafThrottle(() => {
    const dim = dimSel.value;
    const span = Math.min(MINUTES_KEPT, Number(minutesSel.value));
    const now = Date.now();
    const from = Math.floor(now / 60000) * 60000 - (span - 1) * 60000;
    const to = from + span * 60000;
    const series = new Map();
    const trackSeries = new Map();
    for (const [minute, m] of [...state.minutes].sort((a, b) => a[0] - b[0])) {
      if (minute < from) continue;
      for (const [k, n] of Object.entries(m[dim])) {
        if (!series.has(k)) series.set(k, []);
        series.get(k).push([minute, n]);
      }
      for (const [zone, set] of Object.entries(m.tracks)) {
        if (!trackSeries.has(zone)) trackSeries.set(zone, []);
        trackSeries.get(zone).push([minute, set.size]);
      }
    }
    const list = [...series].sort().map(([name, points]) => ({ name, points }));
    const tlist = [...trackSeries].sort().map(([name, points]) => ({ name, points }));
    counts.set(list, from, to);
    tracks.set(tlist, from, to);
    const table = (el, rows, head) => el.replaceChildren(
      h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.length ? rows.map((s) => h('tr', {}, h('th', { scope: 'row' }, s.name),
        h('td', { class: 'num' }, fmtNum(s.points.reduce((a, p) => a + p[1], 0))))) : h('tr', {}, h('td', { colspan: 2 }, 'No data yet.'))));
    table(countsTable, list, [DIMENSIONS.find(([v]) => v === dim)[1], `Detections, last ${span} min`]);
    table(tracksTable, tlist, ['Zone', `Track-minutes, last ${span} min`]);
  });
  dimSel.addEventListener('change', draw);
  minutesSel.addEventListener('change', draw);
  bus.addEventListener('detections', draw);
  bus.addEventListener('resynced', draw);
  const clock = setInterval(draw, 10000);
  draw();
  return () => {
    bus.removeEventListener('detections', draw); bus.removeEventListener('resynced', draw);
    clearInterval(clock); counts.destroy(); tracks.destroy();
  };
}
