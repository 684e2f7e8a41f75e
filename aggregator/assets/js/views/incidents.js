// Incidents and alerts: a board by status with the lifecycle actions the
// user's role allows, an incident's detail (reports, photos, SLA timer,
// comments), and the alert stream. Shown only when the aggregator answers
// GET /api/v1/incidents.

import { api, getToken } from '../api.js';
import { fmtAgo, fmtDateTime, fmtDuration, fmtTime, h, note, rafThrottle } from '../dom.js';
import { applyIncident, bus, loadIncidents, state } from '../state.js';

export const STATUSES = [
  ['new', 'New'], ['acknowledged', 'Acknowledged'], ['in_progress', 'In progress'],
  ['resolved', 'Resolved'], ['closed', 'Closed'], ['rejected', 'Rejected'],
];
const TITLE = Object.fromEntries(STATUSES);

/** Lifecycle moves: [from, to, button text, least role]. */
const MOVES = [
  ['new', 'acknowledged', 'Acknowledge', 'operator'],
  ['new', 'rejected', 'Reject', 'admin'],
  ['acknowledged', 'in_progress', 'Start work', 'operator'],
  ['acknowledged', 'rejected', 'Reject', 'admin'],
  ['in_progress', 'resolved', 'Resolve', 'operator'],
  ['resolved', 'closed', 'Close', 'admin'],
  ['resolved', 'in_progress', 'Reopen', 'operator'],
];

const title = (i) => i.title || i.summary || i.kind || `Incident ${i.id}`;
/** The deadline that matters now: acknowledge while new, resolve after. */
const due = (i) => (i.status === 'new' ? i.acknowledge_due : i.resolve_due) || i.sla_due_at || i.due_at || null;

function slaTimer(i, now = Date.now()) {
  const d = due(i);
  if (!d) return null;
  const left = new Date(d).getTime() - now;
  const done = ['resolved', 'closed', 'rejected'].includes(i.status);
  const cls = done ? 'muted' : left < 0 ? 'bad' : left < 15 * 60000 ? 'warn' : 'ok';
  return h('span', { class: `sla badge ${cls}`, title: `SLA due ${fmtDateTime(d)}` },
    done ? `SLA ${fmtDateTime(d)}` : left < 0 ? `SLA breached ${fmtDuration(-left)} ago` : `SLA ${fmtDuration(left)} left`);
}

async function act(i, body, feedback) {
  try {
    const updated = await api(`/api/v1/incidents/${encodeURIComponent(i.id)}`, { method: 'PATCH', body });
    applyIncident(updated && (updated.incident || updated));
    feedback.textContent = body.status ? `Moved to ${TITLE[body.status] || body.status}.` : 'Saved.';
    return true;
  } catch (e) {
    feedback.textContent = e.status === 403 ? 'Your role may not do that.' : `Failed: ${e.message}`;
    return false;
  }
}

function actions(i, ctx, feedback) {
  const moves = MOVES.filter(([from, , , role]) => from === i.status && ctx.can(role));
  return moves.map(([, to, text]) => h('button', {
    type: 'button', class: to === 'rejected' ? 'danger' : '', 'data-action': to,
    onclick: (ev) => { ev.currentTarget.disabled = true; act(i, { status: to }, feedback); },
  }, text));
}

export function mount(main, ctx) {
  if (state.incidentsAvailable === false) {
    main.append(h('h1', {}, 'Incidents'), note('This aggregator has no incidents API yet.'));
    return null;
  }
  return ctx.params.id ? mountDetail(main, ctx, decodeURIComponent(ctx.params.id)) : mountBoard(main, ctx);
}

function mountBoard(main, ctx) {
  const board = h('div', { class: 'board' });
  const feedback = h('p', { class: 'muted', role: 'status' });
  const alerts = h('ol', { class: 'alerts', 'aria-label': 'Alert stream' });
  main.append(h('h1', {}, 'Incidents'), feedback, board,
    h('section', { class: 'panel' }, h('h2', {}, 'Alert stream'), alerts));
  const draw = rafThrottle(() => {
    const now = Date.now();
    board.replaceChildren(...STATUSES.map(([status, label]) => {
      const list = state.incidents.filter((i) => i.status === status);
      return h('section', { class: 'column', 'data-status': status, 'aria-label': `${label}: ${list.length}` },
        h('h2', {}, label, ' ', h('span', { class: 'count' }, String(list.length))),
        h('ul', {}, list.map((i) => h('li', { class: 'card', 'data-incident-id': i.id },
          h('a', { href: `/ui/incidents/${encodeURIComponent(i.id)}`, 'data-route': true }, title(i)),
          h('div', { class: 'card-meta' }, i.severity || i.priority ? h('span', { class: 'badge' }, i.severity || i.priority) : null,
            ' ', h('span', { class: 'muted' }, fmtAgo(i.created_at || i.opened_at, now)), ' ', slaTimer(i, now)),
          i.assignee ? h('div', { class: 'muted' }, `Assigned to ${i.assignee}`) : null,
          h('div', { class: 'actions' }, actions(i, ctx, feedback))))));
    }));
    alerts.replaceChildren(...(state.alerts.length ? state.alerts.slice(0, 50).map((a) => h('li', { class: `alert sev-${a.severity || 'info'}` },
      h('time', {}, fmtTime(a.ts || a.received_at)), ' ', a.title || a.message || a.kind || '')) : [h('li', { class: 'muted' }, 'No alerts since this page opened.')]));
  });
  for (const e of ['incidents', 'alerts']) bus.addEventListener(e, draw);
  const clock = setInterval(draw, 1000);
  loadIncidents().catch(() => {});
  draw();
  return () => { for (const e of ['incidents', 'alerts']) bus.removeEventListener(e, draw); clearInterval(clock); };
}

function mountDetail(main, ctx, id) {
  const head = h('div', {});
  const body = h('div', {});
  const feedback = h('p', { class: 'muted', role: 'status' });
  main.append(h('p', {}, h('a', { href: '/ui/incidents', 'data-route': true }, '← Board')), head, feedback, body);
  let incident = state.incidents.find((i) => String(i.id) === id) || null;

  const draw = () => {
    if (!incident) { head.replaceChildren(h('h1', {}, `Incident ${id}`)); return; }
    const i = incident;
    head.replaceChildren(h('h1', {}, title(i)),
      h('p', {}, h('span', { class: 'badge', 'data-status': i.status }, TITLE[i.status] || i.status), ' ', slaTimer(i),
        ' ', h('span', { class: 'muted' }, `opened ${fmtDateTime(i.created_at || i.opened_at)}`)),
      h('div', { class: 'actions' }, actions(i, ctx, feedback)));
    // An <img> cannot send the bearer header; the API takes ?access_token= as well.
    const tokenQ = getToken() ? `?access_token=${encodeURIComponent(getToken())}` : '';
    const photos = [...(i.photos || []), ...(i.reports || []).map((r) => r.photo_url || `/api/v1/reports/${encodeURIComponent(r.id)}/photo${tokenQ}`)];
    const comments = i.comments || [];
    const commentBox = h('textarea', { id: 'comment', name: 'comment', rows: 3, required: true });
    const assignee = h('input', { id: 'assignee', name: 'assignee', value: i.assignee || '' });
    body.replaceChildren(...[
      i.description ? h('section', { class: 'panel' }, h('h2', {}, 'Description'), h('p', {}, i.description)) : null,
      h('section', { class: 'panel' }, h('h2', {}, 'Reports'), (i.reports || []).length
        ? h('ul', {}, i.reports.map((r) => h('li', {}, h('strong', {}, r.reporter || r.category || 'report'), ' ',
          h('span', { class: 'muted' }, `${fmtDateTime(r.created_at || r.ts)}${r.severity ? ` · ${r.severity}` : ''}`),
          h('p', {}, r.notes || r.text || r.description || ''))))
        : note('No reports attached.')),
      photos.length ? h('section', { class: 'panel' }, h('h2', {}, 'Photos'),
        h('div', { class: 'photos' }, photos.map((p, n) => h('a', { href: p.url || p, target: '_blank', rel: 'noopener' },
          h('img', { src: p.url || p, alt: `Photo ${n + 1} of the incident`, loading: 'lazy' }))))) : null,
      h('section', { class: 'panel' }, h('h2', {}, 'Comments'),
        comments.length ? h('ol', { class: 'comments' }, comments.map((c) => h('li', {},
          h('strong', {}, c.author || c.user || ''), ' ', h('span', { class: 'muted' }, fmtDateTime(c.created_at || c.ts)),
          h('p', {}, c.text || c.comment || c.body || '')))) : note('No comments yet.'),
        ctx.can('operator') ? h('form', { class: 'stack', onsubmit: async (ev) => {
          ev.preventDefault();
          if (await act(i, { comment: commentBox.value }, feedback)) { commentBox.value = ''; load(); }
        } }, h('label', { for: 'comment' }, 'Add a comment'), commentBox, h('button', { type: 'submit' }, 'Comment')) : null,
        ctx.can('operator') ? h('form', { class: 'inline', onsubmit: async (ev) => {
          ev.preventDefault();
          if (await act(i, { assignee: assignee.value.trim() || null }, feedback)) load();
        } }, h('label', { for: 'assignee' }, 'Assignee'), assignee, h('button', { type: 'submit' }, 'Assign')) : null),
    ].filter(Boolean));
  };

  async function load() {
    try {
      const r = await api(`/api/v1/incidents/${encodeURIComponent(id)}`);
      incident = r.incident || r;
      draw();
    } catch (e) {
      if (!incident) body.replaceChildren(note(e.status === 404 ? 'No such incident.' : `Could not load it: ${e.message}`, 'warn'));
    }
  }
  const onUpdate = () => {
    const i = state.incidents.find((x) => String(x.id) === id);
    if (i) { incident = { ...incident, ...i }; draw(); }
  };
  bus.addEventListener('incidents', onUpdate);
  const clock = setInterval(() => { const s = head.querySelector('.sla'); if (s && incident) s.replaceWith(slaTimer(incident)); }, 1000);
  draw();
  load();
  return () => { bus.removeEventListener('incidents', onUpdate); clearInterval(clock); };
}
