// The results page: live bars per option (count, share, rate) and rate sparklines.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const poll = params.get("poll");
  const HISTORY = 60;
  const $ = (id) => document.getElementById(id);
  const state = { options: [], counts: {}, rates: {}, history: {}, totalHistory: [], final: false };

  function setStatus(kind, text) {
    const el = $("status");
    // Once final, a later reconnect must not hide that the poll is over.
    const shown = state.final && kind !== "reconnecting" && kind !== "error" ? "final" : kind;
    el.dataset.state = shown;
    el.textContent = shown === "final" ? "Closed — final" : text.charAt(0).toUpperCase() + text.slice(1);
    const down = $("banner-down");
    down.hidden = !(kind === "reconnecting" || kind === "error");
    down.textContent = down.hidden ? "" : (kind === "error" ? "Disconnected: " : "") + text;
    document.body.dataset.connection = kind;
  }

  function spark(svg, values) {
    const w = svg.viewBox.baseVal.width, h = svg.viewBox.baseVal.height;
    const max = Math.max(1e-9, ...values);
    const step = values.length > 1 ? w / (HISTORY - 1) : 0;
    const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
    svg.querySelector("polyline").setAttribute("points", pts.join(" "));
  }

  function row(opt) {
    const div = document.createElement("div");
    div.className = "option";
    div.dataset.option = opt.key;
    div.innerHTML =
      '<div class="label"></div><div class="track"><div class="fill"></div></div>' +
      '<div class="figures"><span class="count" data-value="0">0</span>' +
      '<span class="share" data-value="0">0%</span><span class="rate" data-value="0">0/s</span></div>' +
      '<svg class="spark" viewBox="0 0 120 32" preserveAspectRatio="none"><polyline points=""/></svg>';
    div.querySelector(".label").textContent = opt.label;
    return div;
  }

  function setOptions(options) {
    state.options = options;
    const box = $("options");
    box.replaceChildren(...options.map(row));
  }

  function render(m) {
    if (m.type === "snapshot") {
      $("title").textContent = m.title;
      document.title = `${m.title} — live results`;
      const keys = m.options.map((o) => o.key).join("\u0000");
      if (keys !== state.options.map((o) => o.key).join("\u0000")) setOptions(m.options);
    }
    if (!state.options.length) setOptions(Object.keys(m.counts).map((k) => ({ key: k, label: k })));
    state.final = !!m.final;
    const total = m.total;
    let rateSum = 0;
    for (const opt of state.options) {
      const count = m.counts[opt.key] || 0;
      const rate = (m.rates && m.rates[opt.key]) || 0;
      rateSum += rate;
      const hist = (state.history[opt.key] = state.history[opt.key] || []);
      hist.push(rate);
      if (hist.length > HISTORY) hist.shift();
      const share = total > 0 ? (100 * count) / total : 0;
      const el = document.querySelector(`.option[data-option="${CSS.escape(opt.key)}"]`);
      if (!el) continue;
      el.querySelector(".fill").style.width = `${share.toFixed(2)}%`;
      const c = el.querySelector(".count");
      c.dataset.value = String(count);
      c.textContent = count.toLocaleString();
      const s = el.querySelector(".share");
      s.dataset.value = share.toFixed(1);
      s.textContent = `${share.toFixed(1)}%`;
      const r = el.querySelector(".rate");
      r.dataset.value = String(rate);
      r.textContent = `${rate.toFixed(1)}/s`;
      spark(el.querySelector("svg.spark"), hist);
    }
    state.totalHistory.push(rateSum);
    if (state.totalHistory.length > HISTORY) state.totalHistory.shift();
    $("total").dataset.value = String(total);
    $("total").textContent = total.toLocaleString();
    $("rate").dataset.value = rateSum.toFixed(1);
    $("rate").textContent = rateSum.toFixed(1);
    spark($("spark-total"), state.totalHistory);
    $("version").textContent = String(m.version);
    $("banner-final").hidden = !m.final;
    document.body.dataset.final = String(!!m.final);
    document.body.dataset.version = String(m.version);
  }

  if (!poll) {
    setStatus("error", "no poll given: open /results?poll=ID");
    return;
  }
  const client = new LiveClient(liveUrl("/v1/live", params.get("ws")), {
    onState: render,
    onStatus: setStatus,
  });
  client.follow(poll);
  client.start();
  window.buzzerLive = client;
})();
