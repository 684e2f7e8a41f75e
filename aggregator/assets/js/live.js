// The live feed: one WebSocket, reconnected with capped exponential backoff
// and jitter. Each (re)connection and every `lagged` frame triggers a resync
// from REST, so a gap never leaves the page silently behind.

import { liveUrl } from './api.js';
import { addDetections, applyAlert, applyHeartbeat, applyIncident, applyNodeStatus, bus, resync } from './state.js';

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;

export class LiveConnection {
  constructor(indicator) {
    this.indicator = indicator;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.countdown = null;
    this.stopped = true;
    this.onOnline = () => { if (!this.stopped && !this.ws) this.reconnectNow(); };
    this.onVisible = () => { if (!document.hidden) this.onOnline(); };
  }

  start() {
    this.stopped = false;
    window.addEventListener('online', this.onOnline);
    document.addEventListener('visibilitychange', this.onVisible);
    this.open();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener('online', this.onOnline);
    document.removeEventListener('visibilitychange', this.onVisible);
    clearTimeout(this.timer); clearInterval(this.countdown);
    if (this.ws) { this.ws.onclose = null; this.ws.close(1000, 'signed out'); this.ws = null; }
    this.show('offline', 'Disconnected');
  }

  reconnectNow() {
    clearTimeout(this.timer); clearInterval(this.countdown);
    this.open();
  }

  open() {
    if (this.stopped) return;
    this.show('connecting', this.attempt ? 'Reconnecting…' : 'Connecting…');
    let ws;
    try {
      ws = new WebSocket(liveUrl());
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.show('live', 'Live');
      bus.dispatchEvent(new CustomEvent('live-open'));
      // Whatever happened while we were not connected comes from REST.
      resync();
    };
    ws.onmessage = (ev) => this.handle(ev.data);
    ws.onclose = () => {
      if (this.ws === ws) this.ws = null;
      bus.dispatchEvent(new CustomEvent('live-closed'));
      this.scheduleReconnect();
    };
    ws.onerror = () => {}; // onclose follows and does the work
  }

  scheduleReconnect() {
    if (this.stopped) return;
    const base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempt++;
    const until = Date.now() + delay;
    const tick = () => {
      const s = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      this.show('reconnecting', 'Reconnecting', `in ${s}s`);
    };
    tick();
    clearInterval(this.countdown);
    this.countdown = setInterval(tick, 1000);
    this.timer = setTimeout(() => { clearInterval(this.countdown); this.open(); }, delay);
  }

  handle(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { return; }
    const d = msg.data;
    switch (msg.type) {
      case 'detection': addDetections([d]); break;
      case 'heartbeat': applyHeartbeat(d); break;
      case 'node_status': applyNodeStatus(d); break;
      case 'incident': applyIncident(d && (d.incident || d)); break;
      case 'alert': applyAlert(d); break;
      case 'lagged':
        this.show('live', `Live (caught up after ${d && d.missed} missed)`);
        resync();
        break;
      default: break; // hello, subscribed, error: nothing to show
    }
  }

  /** `text` is announced to screen readers; the countdown `eta` is not. */
  show(stateName, text, eta = '') {
    const el = this.indicator;
    if (!el) return;
    el.dataset.state = stateName;
    const t = el.querySelector('.conn-text');
    if (t && t.textContent !== text) t.textContent = text;
    const e = el.querySelector('.conn-eta');
    if (e) e.textContent = eta;
    el.title = `Live feed: ${text} ${eta}`.trim();
  }
}
