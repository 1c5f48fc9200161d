// The operator console: shows and polls through the admin API, live counts from push.
// Errors stay on screen until dismissed or until the action that failed succeeds; the
// periodic refreshes never touch them.
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
  let refreshTimer = null;
  let live = null; // LiveClient following the current show's polls
  const meters = new Map(); // poll -> {meter, state}
  const MAX_FOLLOWED = 16; // subscriptions one socket may hold (docs/live-protocol.md)
  // The server's limits, read from its OpenAPI document; until then the server alone judges.
  const limits = { keyPattern: null, keyMax: 32, optionsMin: 2, optionsMax: 64 };

  const FIELD_NAMES = {
    title: "Question", options: "Options", max_count: "Max taps per request",
    max_votes_per_device: "Votes per device", name: "Show name", show_id: "Show",
    Authorization: "Admin token", poll: "Poll", body: "Request",
  };

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.field = (body && body.field) || null;
    }
  }

  async function call(method, path, body, base = apiBase) {
    const own = base === apiBase; // push's own /v1/ops refusing is not the admin API refusing
    const init = { method, headers: { Authorization: `Bearer ${token()}` } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(base + path, init);
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (r.status === 401 && own) {
      const err = new ApiError(401, data);
      refused(err);
      throw err;
    }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  function fieldName(field) {
    const m = /^options\[(\d+)\]\.(key|label)$/.exec(field);
    if (m) return `Option ${Number(m[1]) + 1} ${m[2]}`;
    return FIELD_NAMES[field] || field;
  }

  function fieldInput(form, field) {
    if (!form || !field) return null;
    const m = /^options\[(\d+)\]\.(key|label)$/.exec(field);
    if (m) {
      const row = $("option-rows").children[Number(m[1])];
      return row ? row.querySelector(`.opt-${m[2]}`) : $("poll-options");
    }
    if (field === "options") return $("poll-options");
    return form.querySelector(`[name="${CSS.escape(field)}"]`);
  }

  // An error box: what failed, the field it is about, and a button to dismiss it.
  function showError(id, err, form) {
    const box = $(id);
    box.replaceChildren();
    if (!err) {
      box.hidden = true;
      delete box.dataset.field;
      if (form) for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
      return;
    }
    const field = err.field || null;
    const text = document.createElement("span");
    text.className = "message";
    if (field) {
      const name = document.createElement("strong");
      name.textContent = `${fieldName(field)}: `;
      text.append(name);
    }
    text.append(String(err.message || err));
    const close = document.createElement("button");
    close.type = "button";
    close.className = "dismiss";
    close.textContent = "Dismiss";
    close.addEventListener("click", () => showError(id, null, form));
    box.append(text, close);
    box.dataset.field = field || "";
    box.hidden = false;
    const input = fieldInput(form, field);
    if (input) {
      input.classList.add("invalid");
      input.focus();
    }
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function button(label, onClick, cls) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = label; if (cls) b.className = cls;
    b.addEventListener("click", onClick);
    return b;
  }

  async function loadLimits() {
    try {
      const doc = await (await fetch(`${apiBase}/v1/openapi.json`)).json();
      // Found through the operations, not by schema name: a renamed struct still works.
      const deref = (s) => (s && s.$ref ? doc.components.schemas[s.$ref.split("/").pop()] : s);
      const bodyOf = (path) => deref(doc.paths[path].post.requestBody.content["application/json"].schema);
      const poll = bodyOf("/v1/admin/polls").properties, show = bodyOf("/v1/admin/shows").properties;
      const title = poll.title, opts = poll.options;
      const option = deref(opts.items).properties;
      const key = option.key, label = option.label;
      $("poll-title").maxLength = title.maxLength;
      $("show-name").maxLength = show.name.maxLength;
      $("poll-max-count").max = poll.max_count.maximum;
      limits.titleMax = title.maxLength;
      limits.labelMax = label.maxLength;
      limits.keyPattern = new RegExp(key.pattern);
      const bound = /\{\d+,(\d+)\}\$$/.exec(key.pattern);
      if (bound) limits.keyMax = Number(bound[1]) + 1;
      limits.optionsMin = opts.minItems;
      limits.optionsMax = opts.maxItems;
      for (const row of $("option-rows").children) applyRowLimits(row);
      document.body.dataset.limits = "server";
      titleCount();
    } catch (e) {
      document.body.dataset.limits = "unknown";
    }
  }

  // ----- options editor: keys made from labels until the operator edits them -----

  function slug(label) {
    return label.normalize("NFKD").replace(/\p{M}+/gu, "").toLowerCase()
      .replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, limits.keyMax).replace(/-+$/, "");
  }

  // Labels in scripts a slug cannot spell (日本語) become opt1, opt2...: a key only
  // has to be unique and safe, and the operator can still type a better one.
  function deriveKeys() {
    const rows = [...$("option-rows").children];
    const taken = new Set(rows.filter((r) => r.dataset.auto !== "true").map((r) => r.querySelector(".opt-key").value));
    rows.forEach((row, i) => {
      if (row.dataset.auto !== "true") return;
      const labelValue = row.querySelector(".opt-label").value.trim();
      let key = slug(labelValue);
      if (!key || (limits.keyPattern && !limits.keyPattern.test(key))) key = labelValue ? `opt${i + 1}` : "";
      let n = 2;
      const base = key;
      while (key && taken.has(key)) key = `${base.slice(0, limits.keyMax - String(n).length - 1)}-${n++}`;
      if (key) taken.add(key);
      row.querySelector(".opt-key").value = key;
    });
  }

  function applyRowLimits(row) {
    if (limits.labelMax) row.querySelector(".opt-label").maxLength = limits.labelMax;
    row.querySelector(".opt-key").maxLength = limits.keyMax;
  }

  function optionRow() {
    const row = document.createElement("div");
    row.className = "opt-row";
    row.dataset.auto = "true";
    const label = document.createElement("input");
    label.className = "opt-label"; label.placeholder = "Label shown to viewers"; label.required = true;
    const key = document.createElement("input");
    key.className = "opt-key"; key.placeholder = "key"; key.spellcheck = false;
    key.autocapitalize = "off";
    label.addEventListener("input", () => { label.classList.remove("invalid"); deriveKeys(); });
    key.addEventListener("input", () => {
      key.classList.remove("invalid");
      row.dataset.auto = key.value ? "false" : "true";
      if (!key.value) deriveKeys();
    });
    const remove = button("Remove", () => {
      if ($("option-rows").children.length <= limits.optionsMin) return;
      row.remove();
      deriveKeys();
      optionButtons();
    }, "secondary remove");
    remove.setAttribute("aria-label", "Remove option");
    row.append(label, key, remove);
    applyRowLimits(row);
    return row;
  }

  function optionButtons() {
    const n = $("option-rows").children.length;
    $("add-option").disabled = n >= limits.optionsMax;
    for (const b of $("option-rows").querySelectorAll(".remove")) b.disabled = n <= limits.optionsMin;
  }

  function resetOptions() {
    $("option-rows").replaceChildren(optionRow(), optionRow());
    optionButtons();
  }

  function readOptions() {
    return [...$("option-rows").children].map((row) => ({
      key: row.querySelector(".opt-key").value.trim(),
      label: row.querySelector(".opt-label").value.trim(),
    }));
  }

  function titleCount() {
    const max = limits.titleMax;
    $("poll-title-count").textContent = max ? `${$("poll-title").value.length} / ${max}` : "";
  }

  // ----- shows -----

  async function loadShows() {
    const { shows } = await call("GET", "/v1/admin/shows");
    $("shows").replaceChildren(...shows.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.show = s.id;
      const actions = document.createElement("td");
      actions.append(button("Polls", () => selectShow(s), "secondary"));
      tr.append(cell(s.name), cell(new Date(s.created_at).toLocaleString()), actions);
      return tr;
    }));
  }

  async function selectShow(show) {
    currentShow = show;
    $("show-title").textContent = show.name;
    $("polls-section").hidden = false;
    $("polls").replaceChildren();
    meters.clear();
    if (live) live.stop();
    live = new LiveClient(liveUrl("/v1/live", params.get("ws")), { onState: onLive });
    live.start();
    await refreshPolls();
  }

  // ----- polls: rows kept by id, so a refresh never rebuilds what the operator is using -----

  function onLive(m) {
    const entry = meters.get(m.poll);
    if (!entry) return;
    if (m.type === "snapshot") {
      const rate = Object.values(m.rates || {}).reduce((a, b) => a + b, 0);
      entry.meter.reset(m.total, rate, m.ts);
    } else {
      entry.meter.observe(m.total);
    }
    entry.total = m.total;
    entry.open = m.state === "open" && !m.final;
    paintLive(m.poll);
  }

  function paintLive(poll) {
    const entry = meters.get(poll);
    const tr = document.querySelector(`#polls tr[data-poll="${CSS.escape(poll)}"]`);
    if (!entry || !tr || entry.total === null) return;
    const votes = tr.querySelector(".votes");
    votes.textContent = entry.total.toLocaleString();
    votes.dataset.value = String(entry.total);
    const r = entry.open ? entry.meter.rate() : 0;
    const rate = tr.querySelector(".rate");
    rate.textContent = entry.open ? formatRate(r) : "–";
    rate.dataset.value = r.toFixed(1);
  }

  function follow(p) {
    if (p.state === "draft" || meters.has(p.id) || meters.size >= MAX_FOLLOWED || !live) return;
    meters.set(p.id, { meter: new RateMeter(10, 60), total: null, open: false });
    live.follow(p.id);
  }

  function stateText(p) {
    return p.final ? "closed (final)" : p.state === "closed" ? "closed (counting)" : p.state;
  }

  function actionsFor(p) {
    const td = document.createElement("td");
    const box = document.createElement("div");
    box.className = "actions";
    td.append(box);
    if (p.state === "draft") box.append(button("Open", () => setState(p, "open")));
    if (p.state === "open") box.append(button("Close", () => setState(p, "close"), "danger"));
    const link = document.createElement("a");
    link.href = `/results?poll=${encodeURIComponent(p.id)}`;
    link.target = "_blank"; link.rel = "noopener"; link.className = "results-link";
    link.textContent = "Results page";
    box.append(link);
    if (p.state === "closed") {
      box.append(button("CSV", () => download(p, "csv"), "secondary"), button("JSON", () => download(p, "json"), "secondary"));
    }
    if (p.archive_digest) {
      const digest = document.createElement("div");
      digest.className = "muted small digest";
      digest.title = `SHA-256 of the archived votes (buzzer audit export / recount): ${p.archive_digest}`;
      digest.textContent = `archive sha256 ${p.archive_digest}`;
      box.append(digest);
    }
    return td;
  }

  function pollRow(p) {
    const tr = document.createElement("tr");
    tr.dataset.poll = p.id;
    const title = document.createElement("td");
    const t = document.createElement("div");
    t.className = "poll-title"; t.textContent = p.title;
    const id = document.createElement("div");
    id.className = "muted small"; id.textContent = `${p.id} · ${p.options.map((o) => o.label).join(" / ")}`;
    title.append(t, id);
    tr.append(title, cell("", "state"), cell("–", "votes n"), cell("–", "rate n"), document.createElement("td"));
    return tr;
  }

  async function refreshPolls() {
    if (!currentShow) return;
    const show = currentShow;
    const { polls } = await call("GET", `/v1/admin/polls?show_id=${encodeURIComponent(show.id)}`);
    if (show !== currentShow) return;
    const body = $("polls");
    const rows = new Map([...body.children].map((tr) => [tr.dataset.poll, tr]));
    const wanted = polls.map((p) => {
      const tr = rows.get(p.id) || pollRow(p);
      const st = stateText(p);
      // The digest arrives after the freeze (once the archive is complete): redraw then too.
      const seen = p.archive_digest ? `${st} ${p.archive_digest}` : st;
      if (tr.dataset.state !== seen) {
        tr.dataset.state = seen;
        const state = tr.querySelector(".state");
        state.textContent = st;
        state.dataset.state = p.final ? "final" : p.state;
        tr.lastElementChild.replaceWith(actionsFor(p));
      }
      follow(p);
      return tr;
    });
    wanted.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
    while (body.children.length > wanted.length) body.lastElementChild.remove();
    body.dataset.refreshes = String(Number(body.dataset.refreshes || 0) + 1);
  }

  async function setState(poll, action) {
    const question = action === "open"
      ? `Open “${poll.title}”? Viewers can vote from now on.`
      : `Close “${poll.title}”? Votes after this are refused.`;
    if (!confirm(question)) return;
    try {
      await call("POST", `/v1/admin/polls/${encodeURIComponent(poll.id)}/${action}`);
      showError("poll-error", null, $("poll-form"));
    } catch (e) { showError("poll-error", e); }
    refreshAudit();
    try { await refreshPolls(); } catch (e) { /* the next refresh says it */ }
  }

  async function download(poll, ext) {
    try {
      const r = await fetch(`${apiBase}/v1/admin/polls/${encodeURIComponent(poll.id)}/result.${ext}`, {
        headers: { Authorization: `Bearer ${token()}` },
      });
      if (!r.ok) throw new Error(`result not available yet (HTTP ${r.status}): wait for “closed (final)”`);
      const a = document.createElement("a");
      a.href = URL.createObjectURL(await r.blob());
      a.download = `${poll.id}.${ext}`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    } catch (e) { showError("poll-error", e); }
  }

  // ----- audit log: who did what, when, as PostgreSQL recorded it -----

  const ACTIONS = {
    create_show: "Created show", create_poll: "Created poll",
    open_poll: "Opened poll", close_poll: "Closed poll",
  };

  function auditRow(e) {
    const tr = document.createElement("tr");
    tr.dataset.id = String(e.id);
    const at = new Date(e.at);
    const when = cell(at.toLocaleTimeString(), "when");
    when.title = at.toLocaleString();
    const d = e.detail || {};
    let what = ACTIONS[e.action] || e.action;
    if (d.changed === false) what += " (already so)";
    const named = d.title || d.name;
    const target = cell(named ? `${named} · ${e.target}` : e.target, "target");
    tr.append(when, cell(e.operator, "operator"), cell(what, "action"), target);
    return tr;
  }

  async function refreshAudit() {
    try {
      const { entries } = await call("GET", "/v1/admin/audit?limit=25");
      const body = $("audit");
      const latest = entries.length ? String(entries[0].id) : "";
      // Rebuilt only when something new happened: nothing moves under the operator's eyes.
      if (body.dataset.latest !== latest || body.children.length !== entries.length) {
        body.replaceChildren(...entries.map(auditRow));
        body.dataset.latest = latest;
      }
      $("audit-empty").hidden = entries.length > 0;
      showError("audit-error", null);
    } catch (e) { if (e.status !== 401) showError("audit-error", e); }
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

  // ----- session -----

  function enter() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("session").hidden = false;
    $("api-base").textContent = `Admin API: ${apiBase || location.origin}`;
    refreshOps();
    refreshAudit();
    clearInterval(refreshTimer);
    let ticks = 0;
    // Polls too: a closed poll turns final on its own once the streams drain.
    refreshTimer = setInterval(() => {
      refreshOps();
      refreshPolls().catch(() => {});
      // Other operators' actions show within 5 s; this console's own at once (afterAction).
      if (++ticks % 5 === 0) refreshAudit();
      for (const poll of meters.keys()) paintLive(poll);
    }, 1000);
  }

  function leave(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    clearInterval(refreshTimer);
    if (live) { live.stop(); live = null; }
    currentShow = null;
    $("audit").replaceChildren();
    delete $("audit").dataset.latest;
    $("app").hidden = true;
    $("session").hidden = true;
    $("login").hidden = false;
    showError("login-error", message ? new Error(message) : null);
    $("token").focus();
  }

  // A token the API refuses, at login or later (rotated): say so, never just go back.
  function refused(err) {
    leave(`Invalid token: the admin API refused it (${err.message}).`);
  }

  async function login() {
    try {
      await loadShows();
    } catch (e) {
      if (e.status !== 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        showError("login-error", new Error(`Cannot reach the admin API at ${apiBase || location.origin}: ${e.message}`));
      }
      return;
    }
    showError("login-error", null);
    enter();
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    login();
  });
  $("logout").addEventListener("click", () => leave(null));
  $("show-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await call("POST", "/v1/admin/shows", { name: $("show-name").value.trim() });
      $("show-name").value = "";
      showError("show-error", null, $("show-form"));
      refreshAudit();
      await loadShows();
    } catch (e) { if (e.status !== 401) showError("show-error", e, $("show-form")); }
  });
  $("add-option").addEventListener("click", () => {
    $("option-rows").append(optionRow());
    deriveKeys();
    optionButtons();
    $("option-rows").lastElementChild.querySelector(".opt-label").focus();
  });
  $("poll-title").addEventListener("input", () => { $("poll-title").classList.remove("invalid"); titleCount(); });
  $("poll-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const maxVotes = $("poll-max-votes").value;
    try {
      await call("POST", "/v1/admin/polls", {
        show_id: currentShow.id,
        title: $("poll-title").value.trim(),
        options: readOptions(),
        max_votes_per_device: maxVotes ? Number(maxVotes) : null,
        max_count: Number($("poll-max-count").value || 1),
      });
      showError("poll-error", null, $("poll-form"));
      $("poll-title").value = "";
      titleCount();
      resetOptions();
      refreshAudit();
      await refreshPolls();
    } catch (e) { if (e.status !== 401) showError("poll-error", e, $("poll-form")); }
  });

  resetOptions();
  loadLimits();
  if (token()) login();
})();
