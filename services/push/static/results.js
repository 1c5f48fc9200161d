// The results graphic: one bar per option (share, count), the poll's state, the total
// and a votes-per-second figure computed here from per-second data (live.js RateMeter).
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const poll = params.get("poll");
  const theme = params.get("theme");
  if (theme === "transparent" || theme === "chroma") document.documentElement.dataset.theme = theme;
  const $ = (id) => document.getElementById(id);
  const meter = new RateMeter(10, 60);
  const state = { options: [], pollState: null, final: false, connection: "connecting" };
  const STATE_TEXT = { live: "Live", closed: "Voting closed", final: "Final result", draft: "Opens soon",
    connecting: "Connecting", reconnecting: "Reconnecting", error: "Off air" };

  // What the pill says: the poll's own state, unless the connection is what matters.
  function showStatus() {
    const c = state.connection;
    let shown;
    if (state.final) shown = "final"; // a final result cannot change: a dropped socket is no news
    else if (c === "reconnecting" || c === "error" || c === "connecting") shown = c;
    else shown = state.pollState === "open" ? "live" : state.pollState || "connecting";
    const el = $("status");
    el.dataset.state = shown;
    el.textContent = STATE_TEXT[shown];
    document.body.dataset.state = shown;
  }

  function setConnection(kind, text) {
    // LiveClient reports "live"/"final" on every message; the poll's state decides those.
    state.connection = kind === "final" ? "live" : kind;
    const down = $("banner-down");
    down.hidden = !(kind === "reconnecting" || kind === "error");
    down.textContent = down.hidden ? "" : text;
    document.body.dataset.connection = state.connection;
    showStatus();
  }

  function row(opt) {
    const div = document.createElement("div");
    div.className = "option";
    div.dataset.option = opt.key;
    div.innerHTML =
      '<div class="track"><div class="fill"></div><div class="label"></div>' +
      '<div class="figures"><span class="share" data-value="0">0%</span>' +
      '<span class="count" data-value="0">0</span></div></div>';
    const label = div.querySelector(".label");
    label.textContent = opt.label;
    label.title = opt.label;
    return div;
  }

  function setOptions(options) {
    state.options = options;
    const box = $("options");
    box.replaceChildren(...options.map(row));
    box.dataset.n = String(options.length);
  }

  function share(count, total) {
    return total > 0 ? (100 * count) / total : 0;
  }

  function render(m) {
    const now = Date.now();
    if (m.type === "snapshot") {
      $("title").textContent = m.title;
      document.title = m.title;
      const keys = m.options.map((o) => o.key).join("\u0000");
      if (keys !== state.options.map((o) => o.key).join("\u0000")) setOptions(m.options);
      const serverRate = Object.values(m.rates || {}).reduce((a, b) => a + b, 0);
      meter.reset(m.total, serverRate, m.ts, now);
    } else {
      meter.observe(m.total, now);
    }
    if (!state.options.length) setOptions(Object.keys(m.counts).map((k) => ({ key: k, label: k })));
    state.final = !!m.final;
    state.pollState = m.state;
    const total = m.total;
    const leader = Math.max(0, ...state.options.map((o) => m.counts[o.key] || 0));
    for (const opt of state.options) {
      const count = m.counts[opt.key] || 0;
      const pct = share(count, total);
      const el = document.querySelector(`.option[data-option="${CSS.escape(opt.key)}"]`);
      if (!el) continue;
      // CSSOM, not a style attribute: allowed by the page's Content-Security-Policy.
      el.querySelector(".fill").style.transform = `scaleX(${(pct / 100).toFixed(4)})`;
      el.classList.toggle("leader", count > 0 && count === leader);
      const c = el.querySelector(".count");
      c.dataset.value = String(count);
      c.textContent = count.toLocaleString();
      const s = el.querySelector(".share");
      s.dataset.value = pct.toFixed(1);
      s.textContent = `${Math.round(pct)}%`;
    }
    $("total").dataset.value = String(total);
    $("total").textContent = total.toLocaleString();
    document.body.dataset.final = String(state.final);
    document.body.dataset.version = String(m.version);
    showStatus();
    tick();
  }

  function spark(values) {
    const svg = $("spark-total");
    const w = svg.viewBox.baseVal.width, h = svg.viewBox.baseVal.height;
    const max = Math.max(1, ...values);
    const step = w / Math.max(1, values.length - 1);
    const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 3 - (v / max) * (h - 6)).toFixed(1)}`);
    svg.querySelector("polyline").setAttribute("points", pts.join(" "));
  }

  // Once a second is enough for a per-second figure; 4 ticks keep it on the boundary.
  let lastSecond = null;
  function tick() {
    const now = Date.now();
    // A closed poll takes no votes: whatever is still being counted is not traffic.
    const open = state.pollState === "open" && !state.final;
    const r = open ? meter.rate(now) : 0;
    const el = $("rate");
    el.dataset.value = r.toFixed(1);
    el.textContent = formatRate(r);
    const sec = Math.floor(now / 1000);
    if (sec !== lastSecond) {
      lastSecond = sec;
      spark(meter.series(now));
    }
  }

  if (!poll) {
    setConnection("error", "No poll given: open /results?poll=ID");
    return;
  }
  setInterval(tick, 250);
  const client = new LiveClient(liveUrl("/v1/live", params.get("ws")), {
    onState: render,
    onStatus: setConnection,
  });
  client.follow(poll);
  client.start();
  window.buzzerLive = client;
})();
