// The operator console: shows and polls through the admin API, live ops figures from push.
"use strict";

(async function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "buzzer.adminToken";
  const params = new URLSearchParams(location.search);
  let apiBase = params.get("api");
  if (apiBase === null) {
    try { apiBase = (await (await fetch("/config.json")).json()).api_base || ""; } catch (e) { apiBase = ""; }
  }
  apiBase = apiBase.replace(/\/$/, "");
  let currentShow = null;
  let opsTimer = null;

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  async function call(method, path, body, base = apiBase) {
    const init = { method, headers: { Authorization: `Bearer ${token()}` } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(base + path, init);
    if (r.status === 401) { logout(); throw new Error("admin token rejected"); }
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!r.ok) {
      const msg = data && data.message ? `${data.message}${data.field ? ` (${data.field})` : ""}` : `HTTP ${r.status}`;
      throw new Error(msg);
    }
    return data;
  }

  function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
  function button(label, onClick, secondary) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = label; if (secondary) b.className = "secondary";
    b.addEventListener("click", onClick);
    return b;
  }
  function showError(id, err) { $(id).textContent = err ? String(err.message || err) : ""; }

  async function loadShows() {
    try {
      const { shows } = await call("GET", "/v1/admin/shows");
      $("shows").replaceChildren(...shows.map((s) => {
        const tr = document.createElement("tr");
        tr.dataset.show = s.id;
        const actions = document.createElement("td");
        actions.append(button("Polls", () => selectShow(s), true));
        tr.append(cell(s.name), cell(new Date(s.created_at).toLocaleString()), actions);
        return tr;
      }));
      showError("show-error", null);
    } catch (e) { showError("show-error", e); }
  }

  async function selectShow(show) {
    currentShow = show;
    $("show-title").textContent = show.name;
    $("polls-section").hidden = false;
    await loadPolls();
  }

  async function download(poll, ext) {
    try {
      const r = await fetch(`${apiBase}/v1/admin/polls/${encodeURIComponent(poll.id)}/result.${ext}`, {
        headers: { Authorization: `Bearer ${token()}` },
      });
      if (!r.ok) throw new Error(`result not available (HTTP ${r.status})`);
      const a = document.createElement("a");
      a.href = URL.createObjectURL(await r.blob());
      a.download = `${poll.id}.${ext}`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    } catch (e) { showError("poll-error", e); }
  }

  async function loadPolls() {
    if (!currentShow) return;
    try {
      const { polls } = await call("GET", `/v1/admin/polls?show_id=${encodeURIComponent(currentShow.id)}`);
      $("polls").replaceChildren(...polls.map((p) => {
        const tr = document.createElement("tr");
        tr.dataset.poll = p.id;
        const actions = document.createElement("td");
        if (p.state === "draft") actions.append(button("Open", () => setState(p, "open")));
        if (p.state === "open") actions.append(button("Close", () => setState(p, "close")));
        const link = document.createElement("a");
        link.href = `/results?poll=${encodeURIComponent(p.id)}`;
        link.target = "_blank"; link.rel = "noopener"; link.textContent = " results page ";
        actions.append(link);
        if (p.state === "closed") {
          actions.append(button("CSV", () => download(p, "csv"), true), button("JSON", () => download(p, "json"), true));
        }
        const state = cell(p.final ? "closed (final)" : p.state);
        state.className = "state";
        tr.append(cell(p.title), state, actions);
        return tr;
      }));
      showError("poll-error", null);
    } catch (e) { showError("poll-error", e); }
  }

  async function setState(poll, action) {
    if (action === "close" && !confirm(`Close “${poll.title}”? Votes after this are refused.`)) return;
    try { await call("POST", `/v1/admin/polls/${encodeURIComponent(poll.id)}/${action}`); }
    catch (e) { showError("poll-error", e); }
    await loadPolls();
  }

  function parseOptions(text) {
    return text.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
      const i = line.indexOf(":");
      const label = (i >= 0 ? line.slice(i + 1) : line).trim();
      const key = (i >= 0 ? line.slice(0, i) : line).trim().toLowerCase().replace(/[^a-z0-9_-]+/g, "-").replace(/^-|-$/g, "");
      return { key, label: label || key };
    });
  }

  async function refreshOps() {
    try {
      const o = await call("GET", "/v1/ops", undefined, "");
      $("ops-rate").textContent = Number(o.ingest_rate).toFixed(1);
      $("ops-lag").textContent = o.tally_backlog === null ? "unknown" : String(o.tally_backlog);
      $("ops-lag").title = `lag ${o.tally_lag}, pending ${o.tally_pending}`;
      $("ops-viewers").textContent = String(o.viewers);
      showError("ops-error", null);
    } catch (e) { showError("ops-error", e); }
  }

  function login() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("api-base").textContent = `Admin API: ${apiBase || location.origin}`;
    loadShows();
    refreshOps();
    // The poll list too: a closed poll turns final on its own once the streams drain.
    opsTimer = setInterval(() => { refreshOps(); loadPolls(); }, 1000);
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    clearInterval(opsTimer);
    $("app").hidden = true;
    $("login").hidden = false;
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    login();
  });
  $("logout").addEventListener("click", logout);
  $("show-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await call("POST", "/v1/admin/shows", { name: $("show-name").value.trim() });
      $("show-name").value = "";
      await loadShows();
    } catch (e) { showError("show-error", e); }
  });
  $("poll-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const maxVotes = $("poll-max-votes").value;
    try {
      await call("POST", "/v1/admin/polls", {
        show_id: currentShow.id,
        title: $("poll-title").value.trim(),
        options: parseOptions($("poll-options").value),
        max_votes_per_device: maxVotes ? Number(maxVotes) : null,
        max_count: Number($("poll-max-count").value || 1),
      });
      $("poll-title").value = ""; $("poll-options").value = "";
      await loadPolls();
    } catch (e) { showError("poll-error", e); }
  });

  if (token()) login();
})();
