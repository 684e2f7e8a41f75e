// A small canvas chart: time series as lines (or stacked bars), with axes,
// a legend in HTML (readable by screen readers) and device-pixel sharpness.
// Enough for counts per minute and heartbeat history; no dependencies.

import { colorFor, h } from './dom.js';

export class TimeChart {
  /**
   * @param {HTMLElement} host where the canvas and legend go
   * @param {{label: string, yUnit?: string, yMax?: number, kind?: 'line'|'bars', height?: number}} opts
   */
  constructor(host, opts) {
    this.opts = { kind: 'line', height: 180, ...opts };
    this.canvas = h('canvas', { role: 'img', 'aria-label': opts.label, height: this.opts.height });
    this.legend = h('ul', { class: 'legend', 'aria-label': `${opts.label}: series` });
    this.wrap = h('figure', { class: 'chart' }, opts.caption ? h('figcaption', {}, opts.label) : null, this.canvas, this.legend);
    host.append(this.wrap);
    this.data = { series: [], from: 0, to: 1 };
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(this.wrap);
  }

  destroy() { this.resize.disconnect(); this.wrap.remove(); }

  /** series: [{name, points: [[t_ms, value]...]}] over [from, to] ms */
  set(series, from, to) {
    this.data = { series, from, to };
    this.draw();
    const names = series.map((s) => s.name).join('\u0000');
    if (names !== this.legendNames) {
      this.legendNames = names;
      this.legend.replaceChildren(...series.map((s) => h('li', {},
        h('span', { class: 'swatch', style: `background:${s.color || colorFor(s.name)}`, 'aria-hidden': 'true' }), s.name)));
    }
    const total = series.reduce((a, s) => a + s.points.reduce((b, p) => b + (p[1] || 0), 0), 0);
    this.canvas.setAttribute('aria-label', `${this.opts.label}. ${series.length} series` +
      (this.opts.kind === 'bars' ? `, ${Math.round(total)} in total` : ''));
  }

  draw() {
    const c = this.canvas;
    const width = this.wrap.clientWidth;
    if (!width) return;
    const dpr = window.devicePixelRatio || 1;
    const height = this.opts.height;
    if (c.width !== Math.round(width * dpr) || c.height !== Math.round(height * dpr)) {
      c.width = Math.round(width * dpr); c.height = Math.round(height * dpr);
      c.style.width = `${width}px`; c.style.height = `${height}px`;
    }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, width, height);
    const css = getComputedStyle(document.documentElement);
    const fg = css.getPropertyValue('--muted').trim() || '#999';
    const grid = css.getPropertyValue('--grid').trim() || '#333';
    const { series, from, to } = this.data;
    const pad = { l: 44, r: 10, t: 10, b: 22 };
    const w = width - pad.l - pad.r;
    const hgt = height - pad.t - pad.b;
    const bars = this.opts.kind === 'bars';

    // Stacked bars need the per-time sum for the scale.
    let yMax = this.opts.yMax || 0;
    if (!this.opts.yMax) {
      if (bars) {
        const sums = new Map();
        for (const s of series) for (const [t, v] of s.points) sums.set(t, (sums.get(t) || 0) + v);
        for (const v of sums.values()) yMax = Math.max(yMax, v);
      } else {
        for (const s of series) for (const [, v] of s.points) if (v !== null) yMax = Math.max(yMax, v);
      }
      yMax = niceCeil(yMax || 1);
    }
    const x = (t) => pad.l + ((t - from) / Math.max(1, to - from)) * w;
    const y = (v) => pad.t + hgt - (v / yMax) * hgt;

    g.font = '11px system-ui, sans-serif';
    g.fillStyle = fg; g.strokeStyle = grid; g.lineWidth = 1;
    g.textAlign = 'right'; g.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath(); g.moveTo(pad.l, yy); g.lineTo(pad.l + w, yy); g.stroke();
      g.fillText(fmtTick(v) + (i === 4 && this.opts.yUnit ? this.opts.yUnit : ''), pad.l - 4, yy);
    }
    g.textAlign = 'center'; g.textBaseline = 'top';
    const ticks = Math.max(2, Math.min(6, Math.floor(w / 90)));
    for (let i = 0; i <= ticks; i++) {
      const t = from + ((to - from) * i) / ticks;
      g.textAlign = i === 0 ? 'left' : i === ticks ? 'right' : 'center';
      g.fillText(new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false }), x(t), pad.t + hgt + 5);
    }

    if (bars) {
      const times = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
      const slot = times.length > 1 ? Math.min(...times.slice(1).map((t, i) => t - times[i])) : 60000;
      const bw = Math.max(1, (slot / Math.max(1, to - from)) * w - 2);
      const base = new Map();
      for (const s of series) {
        g.fillStyle = s.color || colorFor(s.name);
        for (const [t, v] of s.points) {
          if (!v) continue;
          const b0 = base.get(t) || 0;
          g.fillRect(x(t) + 1, y(b0 + v), bw, y(b0) - y(b0 + v));
          base.set(t, b0 + v);
        }
      }
    } else {
      g.lineWidth = 2; g.lineJoin = 'round';
      for (const s of series) {
        g.strokeStyle = s.color || colorFor(s.name);
        g.beginPath();
        let pen = false;
        for (const [t, v] of s.points) {
          if (v === null || v === undefined) { pen = false; continue; }
          if (pen) g.lineTo(x(t), y(v)); else g.moveTo(x(t), y(v));
          pen = true;
        }
        g.stroke();
        // Sparse series (a node's first heartbeats) show their points.
        if (s.points.length < 40) {
          g.fillStyle = g.strokeStyle;
          for (const [t, v] of s.points) {
            if (v === null || v === undefined) continue;
            g.beginPath(); g.arc(x(t), y(v), 3, 0, 2 * Math.PI); g.fill();
          }
        }
      }
    }
  }
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmtTick(v) {
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(v >= 1e4 ? 0 : 1)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}
