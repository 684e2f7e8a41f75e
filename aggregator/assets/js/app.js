// The dashboard shell: who is signed in, the router (History API over
// /ui/*, which the aggregator answers with this page), and the live feed.

import { authEvents, getToken, request, setToken } from './api.js';
import { clear, h } from './dom.js';
import { LiveConnection } from './live.js';
import { bus, loadIncidents, reset, resync, state } from './state.js';
import * as login from './views/login.js';
import * as overview from './views/overview.js';
import * as nodes from './views/nodes.js';
import * as feed from './views/feed.js';
import * as charts from './views/charts.js';
import * as incidents from './views/incidents.js';
import * as map from './views/map.js';
import * as events from './views/events.js';

const ROLES = ['viewer', 'operator', 'admin'];
/** True when the signed-in user has at least `role`. */
export function can(role) {
  return !!state.user && ROLES.indexOf(state.user.role) >= ROLES.indexOf(role);
}

const routes = [
  [/^\/ui\/login$/, login, 'Sign in'],
  [/^\/ui\/overview$/, overview, 'Overview'],
  [/^\/ui\/nodes$/, nodes, 'Nodes'],
  [/^\/ui\/nodes\/(?<id>[^/]+)$/, nodes, 'Node'],
  [/^\/ui\/live$/, feed, 'Live feed'],
  [/^\/ui\/charts$/, charts, 'Charts'],
  [/^\/ui\/incidents$/, incidents, 'Incidents'],
  [/^\/ui\/incidents\/(?<id>[^/]+)$/, incidents, 'Incident'],
  [/^\/ui\/map$/, map, 'Map'],
  [/^\/ui\/events$/, events, 'Events'],
];

const main = document.getElementById('main');
const topbar = document.querySelector('.topbar');
const live = new LiveConnection(document.getElementById('conn'));
let unmount = null;
let started = false;

export function navigate(path, { replace = false } = {}) {
  if (path !== location.pathname + location.search) {
    history[replace ? 'replaceState' : 'pushState']({}, '', path);
  }
  render();
}

function render() {
  const path = location.pathname;
  if (path === '/' || path === '/ui' || path === '/ui/') {
    navigate(`/ui/overview${location.search}`, { replace: true });
    return;
  }
  if (!state.user && path !== '/ui/login') {
    navigate(`/ui/login?next=${encodeURIComponent(path + location.search)}`, { replace: true });
    return;
  }
  let match = null;
  for (const [re, view, title] of routes) {
    const m = path.match(re);
    if (m) { match = { view, title, params: m.groups || {} }; break; }
  }
  if (unmount) { try { unmount(); } catch (e) { console.error(e); } unmount = null; }
  clear(main);
  topbar.hidden = !state.user;
  if (!match) {
    main.append(h('h1', {}, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '/ui/overview', 'data-route': true }, 'Go to the overview')));
    return;
  }
  document.title = `${match.title} · EdgeQI`;
  for (const a of document.querySelectorAll('#nav a')) {
    const here = path === a.getAttribute('href') || path.startsWith(`${a.getAttribute('href')}/`) ||
      (a.getAttribute('href') === '/ui/overview' && (path === '/' || path === '/ui' || path === '/ui/'));
    if (here) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  unmount = match.view.mount(main, { params: match.params, navigate, can, signedIn }) || null;
  // Move focus to the new page's heading so keyboard and screen-reader users land on it.
  const h1 = main.querySelector('h1');
  if (h1 && document.activeElement !== document.body && !main.contains(document.activeElement)) {
    h1.tabIndex = -1; h1.focus({ preventScroll: true });
  }
}

/** /auth/me answers a principal ({name, role, tenant_id}); login answers a user ({username, …}). */
export function asUser(body) {
  const u = body.user || body;
  return { username: u.username || u.name || 'user', role: String(u.role || 'viewer').toLowerCase(), tenant_id: u.tenant_id ?? null };
}

/** Who the token (or the lack of one) makes us; null when a login is needed. */
async function whoAmI() {
  if (getToken()) {
    const me = await request('/api/v1/auth/me');
    if (me.ok && me.body) return asUser(me.body);
    if (me.status === 401) { setToken(null); return null; }
    // No auth API on this aggregator: a bearer token that opens the API is the admin token.
    const nodesProbe = await request('/api/v1/nodes');
    if (nodesProbe.ok) return { username: 'admin token', role: 'admin' };
    if (nodesProbe.status === 401) setToken(null);
    return null;
  }
  // An aggregator without EDGEQI_ADMIN_TOKEN or users is open to anyone who reaches it.
  const open = await request('/api/v1/nodes', { auth: false });
  return open.ok ? { username: 'anonymous', role: 'admin', open: true } : null;
}

/** Called by the login view with what /auth/login (or a token) gave. */
export function signedIn(user) {
  state.user = asUser(user);
  start();
  const next = new URLSearchParams(location.search).get('next');
  navigate(next && next.startsWith('/') && !next.startsWith('//') && !next.startsWith('/ui/login') ? next : '/ui/overview', { replace: true });
}

// Session tokens expire (expires_at from /auth/login); renew one a little
// before, so an operator watching the wall screen is not signed out.
const EXPIRES_KEY = 'edgeqi.expires';
let refreshTimer = null;
export function scheduleRefresh(expiresAt) {
  clearTimeout(refreshTimer);
  if (expiresAt) sessionStorage.setItem(EXPIRES_KEY, expiresAt);
  const at = new Date(expiresAt || sessionStorage.getItem(EXPIRES_KEY) || NaN).getTime();
  if (!Number.isFinite(at)) return;
  const wait = Math.max(5000, Math.min(at - Date.now() - 120000, 2 ** 31 - 1));
  refreshTimer = setTimeout(async () => {
    const r = await request('/api/v1/auth/refresh', { method: 'POST' });
    if (r.ok && r.body && r.body.token) {
      setToken(r.body.token);
      scheduleRefresh(r.body.expires_at);
    }
    // Otherwise the next 401 sends the user to the login form.
  }, wait);
}

let summaryTimer = null;
function start() {
  if (started) return;
  started = true;
  document.body.dataset.role = state.user.role;
  const who = document.getElementById('who');
  who.textContent = `${state.user.username} (${state.user.role})`;
  document.getElementById('logout').hidden = !!state.user.open;
  updateIncidentNav();
  scheduleRefresh();
  live.start();
  resync();
  // Slow refresh of what the live feed does not carry (totals, ledger-based online state).
  summaryTimer = setInterval(() => { if (!document.hidden) resync(); }, 30000);
}

function signOut(message) {
  setToken(null);
  sessionStorage.removeItem(EXPIRES_KEY);
  clearTimeout(refreshTimer);
  state.user = null;
  started = false;
  clearInterval(summaryTimer);
  live.stop();
  reset();
  delete document.body.dataset.role;
  navigate(`/ui/login${message ? `?msg=${encodeURIComponent(message)}` : ''}`, { replace: true });
}

function updateIncidentNav() {
  for (const el of document.querySelectorAll('[data-needs="incidents"]')) el.hidden = state.incidentsAvailable !== true;
}

async function boot() {
  document.addEventListener('click', (ev) => {
    const a = ev.target.closest('a[data-route]');
    if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    ev.preventDefault();
    navigate(a.getAttribute('href'));
  });
  window.addEventListener('popstate', render);
  document.getElementById('logout').addEventListener('click', () => signOut());
  authEvents.addEventListener('unauthorized', () => { if (state.user) signOut('Your session ended; sign in again.'); });
  bus.addEventListener('incidents', updateIncidentNav);

  state.user = await whoAmI();
  if (state.user) start();
  render();
  if (state.user && state.incidentsAvailable === undefined) loadIncidents().catch(() => {});
}

boot();
