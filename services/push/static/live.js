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
    this.onStatus("connecting", this.attempt ? `reconnecting (attempt ${this.attempt})` : "connecting");
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
