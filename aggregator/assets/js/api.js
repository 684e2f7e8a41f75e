// REST client: adds the session's bearer token, turns the API's
// {"error":{"code","message"}} bodies into ApiError, and reports 401s so the
// app can send the user back to the login form.

const TOKEN_KEY = 'edgeqi.token';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code || 'http_error';
  }
}

let token = sessionStorage.getItem(TOKEN_KEY);
export const authEvents = new EventTarget();

export function getToken() { return token; }

export function setToken(t) {
  token = t || null;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Low level: never throws for HTTP statuses; returns {status, ok, body}. */
export async function request(path, { method = 'GET', body, signal, auth = true } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, {
      method, headers, signal, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    return { status: 0, ok: false, body: { error: { code: 'network', message: 'the aggregator cannot be reached' } } };
  }
  let parsed = null;
  const text = await resp.text().catch(() => '');
  if (text) {
    try { parsed = JSON.parse(text); } catch { parsed = { raw: text }; }
  }
  return { status: resp.status, ok: resp.ok, body: parsed };
}

/** GET/POST/PATCH that throws ApiError on failure. */
export async function api(path, opts = {}) {
  const r = await request(path, opts);
  if (r.ok) return r.body;
  const err = r.body && r.body.error ? r.body.error : {};
  if (r.status === 401 && opts.auth !== false) {
    authEvents.dispatchEvent(new CustomEvent('unauthorized'));
  }
  throw new ApiError(r.status, err.code, err.message);
}

/** The WebSocket URL of the live feed (browsers cannot set headers on it). */
export function liveUrl() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = token ? `?access_token=${encodeURIComponent(token)}` : '';
  return `${proto}//${location.host}/api/v1/ws${q}`;
}
