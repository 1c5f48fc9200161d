// A browser client for the push websocket protocol (docs/live-protocol.md): follows
// polls, resumes with the last version it saw, and reconnects by itself with jittered
// exponential backoff. No dependencies, no build step.
"use strict";

// Close codes after which reconnecting cannot help.
const LIVE_FATAL = new Set([1003, 1007, 1008, 1009, 4001, 4003, 4004]);

class LiveClient {
  constructor(url, { onState, onStatus, baseDelayMs = 500, maxDelayMs = 30000 } = {}) {
    this.url = url;
    this.onState = onState || (() => {});
    this.onStatus = onStatus || (() => {});
    this.baseDelayMs = baseDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.polls = new Map(); // poll -> last version seen
    this.attempt = 0;
    this.ws = null;
    this.timer = null;
    this.stopped = false;
  }

  follow(poll) {
    if (!this.polls.has(poll)) this.polls.set(poll, null);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this._subscribe(poll);
  }

  start() { this.stopped = false; this._connect(); }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
  }

  _subscribe(poll) {
    const msg = { type: "subscribe", poll };
    const v = this.polls.get(poll);
    if (v !== null && v !== undefined) msg.since_version = v;
    this.ws.send(JSON.stringify(msg));
  }

  _connect() {
    // A retry after a drop is still "reconnecting": the page keeps saying so until live.
    if (this.attempt) this.onStatus("reconnecting", `reconnecting (attempt ${this.attempt})`);
    else this.onStatus("connecting", "connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => { for (const poll of this.polls.keys()) this._subscribe(poll); };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m.type === "snapshot" || m.type === "update") {
        const seen = this.polls.get(m.poll);
        // Versions only grow; a final state may follow its non-final twin.
        if (seen !== null && seen !== undefined && m.version < seen) return;
        this.polls.set(m.poll, m.version);
        this.attempt = 0;
        this.onStatus(m.final ? "final" : "live", m.final ? "closed — final" : "live");
        this.onState(m);
      } else if (m.type === "uptodate") {
        this.attempt = 0;
        this.onStatus("live", "live");
      } else if (m.type === "error") {
        this.onStatus("error", m.message || m.code);
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws || this.stopped) return;
      if (LIVE_FATAL.has(ev.code)) {
        this.onStatus("error", `disconnected: ${ev.reason || ev.code} (${ev.code})`);
        return;
      }
      // Full jitter: a studio full of phones dropped at once must not come back at once.
      const cap = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** this.attempt);
      const delay = Math.round(Math.random() * cap);
      this.attempt += 1;
      const why = ev.reason ? `${ev.reason} (${ev.code})` : `code ${ev.code}`;
      this.onStatus("reconnecting", `disconnected — ${why}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
      this.timer = setTimeout(() => this._connect(), delay);
    };
  }
}

function liveUrl(path, base) {
  if (base) return base.replace(/\/$/, "") + path;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

// Votes per second over the last `windowS` whole seconds, from per-second buckets the
// page fills itself: each message's count increase goes to the second it arrived in.
// Reading it against the wall clock is what lets the figure fall to 0 when votes stop:
// no message arrives then, and a value kept from the last message would stay frozen.
class RateMeter {
  constructor(windowS = 10, historyS = 60) {
    this.windowS = windowS;
    this.historyS = historyS;
    this.buckets = new Map(); // whole second (epoch) -> votes counted in it
    this.total = null;
  }

  // A snapshot (first message, or a resync after a reconnect): its count jump is not
  // traffic of one second, so the window restarts from the server's own 10 s rate,
  // spread over the seconds it covers (`ts` may be a cached read, hence its age).
  reset(total, serverRate, ts, nowMs = Date.now()) {
    this.buckets.clear();
    this.total = total;
    const age = Math.min(Math.max(0, nowMs - (ts || nowMs)), this.windowS * 1000);
    const end = Math.floor((nowMs - age) / 1000);
    if (serverRate > 0) {
      for (let s = end - this.windowS; s < end; s++) this.buckets.set(s, serverRate);
    }
  }

  observe(total, nowMs = Date.now()) {
    if (this.total === null) { this.total = total; return; }
    const delta = total - this.total;
    this.total = total;
    if (delta <= 0) return;
    const s = Math.floor(nowMs / 1000);
    this.buckets.set(s, (this.buckets.get(s) || 0) + delta);
    for (const k of this.buckets.keys()) if (k < s - this.historyS) this.buckets.delete(k);
  }

  rate(nowMs = Date.now()) {
    const now = Math.floor(nowMs / 1000);
    let sum = 0;
    for (let s = now - this.windowS; s < now; s++) sum += this.buckets.get(s) || 0;
    return sum / this.windowS;
  }

  // Votes in each of the last `historyS` whole seconds, oldest first (the sparkline).
  series(nowMs = Date.now()) {
    const now = Math.floor(nowMs / 1000);
    const out = [];
    for (let s = now - this.historyS; s < now; s++) out.push(this.buckets.get(s) || 0);
    return out;
  }
}

function formatRate(r) {
  if (r <= 0) return "0";
  return r >= 10 ? Math.round(r).toLocaleString() : r.toFixed(1);
}
