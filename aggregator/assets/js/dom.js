// Small DOM and formatting helpers. Text always goes in through textContent,
// never innerHTML, so nothing a node or a citizen sends can inject markup.

/** h('div', {class: 'x', onclick: f}, child, 'text', [more]) */
export function h(tag, attrs = {}, ...children) {
  const svg = tag.startsWith('svg:');
  const el = svg
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'text') el.textContent = v;
    // Through the CSSOM: the page's CSP (style-src 'self') blocks style attributes.
    else if (k === 'style') el.style.cssText = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function fmtTime(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? '—' : d.toLocaleTimeString([], { hour12: false });
}

export function fmtDateTime(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? '—' : d.toLocaleString([], { hour12: false });
}

export function fmtAgo(ts, now = Date.now()) {
  if (!ts) return 'never';
  const s = Math.round((now - new Date(ts).getTime()) / 1000);
  if (!Number.isFinite(s)) return '—';
  if (s < 2) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function fmtDuration(ms) {
  const neg = ms < 0;
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const mm = Math.floor(s / 60); s -= mm * 60;
  const body = d ? `${d}d ${hh}h` : hh ? `${hh}h ${mm}m` : `${mm}m ${s}s`;
  return neg ? `-${body}` : body;
}

export function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  return n.toLocaleString([], { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function pct(part, whole) {
  return whole > 0 ? (100 * part) / whole : null;
}

/** Calls fn at most once per animation frame, with the latest arguments. */
export function rafThrottle(fn) {
  let queued = false;
  let args = [];
  return (...a) => {
    args = a;
    if (queued) return;
    queued = true;
    // A hidden tab gets no animation frames; a timeout still runs, slowly.
    const run = () => { if (!queued) return; queued = false; fn(...args); };
    requestAnimationFrame(run);
    setTimeout(run, 250);
  };
}

/** A stable colour per series name, readable on the dark and light themes. */
const PALETTE = ['#38bdf8', '#f59e0b', '#34d399', '#f472b6', '#a78bfa', '#fb7185', '#facc15', '#2dd4bf', '#60a5fa', '#fb923c'];
export function colorFor(name) {
  let hsh = 0;
  for (const ch of String(name)) hsh = (hsh * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[hsh % PALETTE.length];
}

/** Empty-state or notice paragraph. */
export function note(text, kind = 'muted') {
  return h('p', { class: `note ${kind}` }, text);
}
