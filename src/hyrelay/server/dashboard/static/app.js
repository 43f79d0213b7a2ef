// The hyrelay dashboard: sign in with a Manage key, watch hybrid connections live, create new ones.
//
// Data comes from the admin REST API (/$admin/...) and the event stream (/$admin/events), both
// authorized with SAS tokens this page signs itself. The key is kept in memory and, so a reload
// keeps you signed in, in this tab's sessionStorage; it is never sent anywhere.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_TTL = 3600; // seconds; tokens are cheap, each request signs a fresh one
  const STORAGE_KEY = "hyrelay.dashboard.credentials";
  const HISTORY_SECONDS = 120;
  const LOG_LIMIT = 100;
  const EVENT_TYPES = ["listener_online", "listener_offline", "upgrade_failed", "connection_opened",
    "connection_closed", "http_request", "hc_created", "hc_deleted", "hc_updated", "rules_changed"];

  const state = {
    creds: null, // {keyName, key}
    namespace: "",
    hcs: new Map(), // lower-case name -> {name, requiresClientAuthorization, listeners: Map, connections, bytes}
    selected: null, // lower-case name of the HC in the details panel
    history: [], // [{t, connections, rate}]
    lastTotals: null, // {t, bytes}
    source: null,
    reconnectTimer: null,
    refreshTimer: null,
  };

  // -- credentials and requests ---------------------------------------------------------------------

  function adminAudience() {
    return `${location.origin}/$admin`;
  }

  function token() {
    return window.HyrelaySas.buildToken(adminAudience(), state.creds.keyName, state.creds.key, TOKEN_TTL);
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: await token(), Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = text; }
    }
    if (!resp.ok) {
      const message = data && data.error && data.error.message;
      throw new ApiError(resp.status, message || `${resp.status} ${resp.statusText}`);
    }
    return data;
  }

  function hcPath(name) {
    // Slashes of a name go as %2F, so a segment named "rules" or "listeners" is never a sub-resource.
    return "/$admin/hcs/" + encodeURIComponent(name);
  }

  /** The admin API's list shapes vary (a plain array, or {value: [...]}, ARM style): accept both. */
  function items(data, ...keys) {
    if (Array.isArray(data)) return data;
    for (const key of ["value", ...keys]) {
      if (data && Array.isArray(data[key])) return data[key];
    }
    return [];
  }

  function prop(obj, name) {
    if (obj && obj[name] !== undefined) return obj[name];
    return obj && obj.properties ? obj.properties[name] : undefined;
  }

  function credentialsFrom(secret, keyName) {
    secret = secret.trim();
    if (/sharedaccesskey\s*=/i.test(secret) || /^endpoint\s*=/i.test(secret)) {
      const cs = window.HyrelaySas.parseConnectionString(secret);
      if (cs.keyName && cs.key) return { keyName: cs.keyName, key: cs.key };
      return null;
    }
    if (secret && keyName.trim()) return { keyName: keyName.trim(), key: secret };
    return null;
  }

  // -- sign in and out ------------------------------------------------------------------------------

  async function signIn(creds) {
    state.creds = creds;
    let list;
    try {
      list = await api("GET", "/$admin/hcs");
    } catch (err) {
      state.creds = null;
      throw err;
    }
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(creds));
    $("signin-view").hidden = true;
    $("main-view").hidden = false;
    $("session").hidden = false;
    $("who").textContent = creds.keyName;
    applyList(list);
    openStream();
  }

  function signOut(message) {
    closeStream();
    state.creds = null;
    state.hcs.clear();
    state.history = [];
    state.lastTotals = null;
    sessionStorage.removeItem(STORAGE_KEY);
    // Leave nothing behind that came from the signed-in session, keys above all.
    $("cs-value").value = "";
    $("cs-rule").replaceChildren();
    $("details").hidden = true;
    state.selected = null;
    $("hc-rows").replaceChildren();
    $("event-log").replaceChildren();
    $("main-view").hidden = true;
    $("session").hidden = true;
    $("signin-view").hidden = false;
    showError("signin-error", message || "");
  }

  function signInMessage(err) {
    if (err.status === 401) return `Sign-in failed: the key name or key is not right (${err.message})`;
    if (err.status === 403) return `Sign-in failed: this key does not grant Manage on the namespace (${err.message})`;
    if (err instanceof ApiError) return `Sign-in failed: ${err.message}`;
    return `Sign-in failed: the relay could not be reached (${err.message})`;
  }

  async function onSignInSubmit(event) {
    event.preventDefault();
    const secretInput = $("secret");
    const creds = credentialsFrom(secretInput.value, $("key-name").value);
    // Whatever happens next, the pasted secret does not stay in the form.
    secretInput.value = "";
    showError("signin-error", "");
    if (!creds) {
      showError("signin-error", "Paste a connection string with SharedAccessKeyName and SharedAccessKey, " +
        "or a key together with its key name.");
      return;
    }
    const button = $("signin-button");
    button.disabled = true;
    try {
      await signIn(creds);
    } catch (err) {
      showError("signin-error", signInMessage(err));
    } finally {
      button.disabled = false;
    }
  }

  // -- state from the REST API ------------------------------------------------------------------------

  function entry(name) {
    const key = name.toLowerCase();
    let hc = state.hcs.get(key);
    if (!hc) {
      hc = { name, requiresClientAuthorization: true, listeners: new Map(), listenerCount: null,
        connections: 0, bytes: 0 };
      state.hcs.set(key, hc);
    }
    return hc;
  }

  function applyList(data) {
    const seen = new Set();
    for (const item of items(data, "hybridConnections", "hcs")) {
      const name = item.name;
      if (!name) continue;
      const hc = entry(name);
      hc.name = name;
      const auth = prop(item, "requiresClientAuthorization");
      if (auth !== undefined) hc.requiresClientAuthorization = !!auth;
      const count = prop(item, "listenerCount");
      if (typeof count === "number" && hc.listenerCount === null) hc.listenerCount = count;
      seen.add(name.toLowerCase());
    }
    for (const key of [...state.hcs.keys()]) {
      if (!seen.has(key)) state.hcs.delete(key);
    }
    if (state.selected && !state.hcs.has(state.selected)) closeDetails();
    renderTable();
  }

  function refreshListSoon() {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(async () => {
      try {
        applyList(await api("GET", "/$admin/hcs"));
      } catch (err) {
        handleAuthFailure(err);
      }
    }, 150);
  }

  function handleAuthFailure(err) {
    if (err.status === 401 || err.status === 403) {
      signOut("You were signed out: the relay no longer accepts this key.");
      return true;
    }
    return false;
  }

  async function createHc(event) {
    event.preventDefault();
    const name = $("create-name").value.trim();
    showError("create-error", "");
    if (!name) return;
    const button = $("create-button");
    button.disabled = true;
    try {
      await api("PUT", hcPath(name), { requiresClientAuthorization: $("create-auth").checked });
      $("create-name").value = "";
      applyList(await api("GET", "/$admin/hcs"));
      select(name.toLowerCase());
    } catch (err) {
      if (!handleAuthFailure(err)) showError("create-error", `Could not create '${name}': ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // -- the event stream -----------------------------------------------------------------------------

  async function openStream() {
    closeStream();
    if (!state.creds) return;
    const source = new EventSource("/$admin/events?token=" + encodeURIComponent(await token()));
    state.source = source;
    setLive("connecting");
    const on = (type, handler) => source.addEventListener(type, (e) => {
      if (state.source === source) handler(JSON.parse(e.data));
    });
    source.addEventListener("open", () => setLive("on"));
    on("snapshot", onSnapshot);
    on("stats", onStats);
    for (const type of EVENT_TYPES) on(type, onEvent);
    // Events were lost, or the token ran out: start over with a fresh snapshot.
    on("dropped", () => { logLine({ type: "dropped", hc: "", time: Date.now() / 1000, data: {} }); reconnect(0); });
    on("expired", () => reconnect(0));
    source.onerror = () => {
      if (state.source !== source) return;
      source.close();
      setLive("off");
      reconnect(2000);
    };
  }

  function closeStream() {
    clearTimeout(state.reconnectTimer);
    if (state.source) state.source.close();
    state.source = null;
  }

  function reconnect(delay) {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(async () => {
      if (!state.creds) return;
      try {
        // EventSource cannot tell a 401 from a network error: ask the REST API which it is.
        applyList(await api("GET", "/$admin/hcs"));
        openStream();
      } catch (err) {
        if (!handleAuthFailure(err)) reconnect(5000);
      }
    }, delay);
  }

  function setLive(mode) {
    const live = $("live");
    live.className = "live" + (mode === "on" ? " on" : mode === "off" ? " off" : "");
    $("live-text").textContent = mode === "on" ? "live" : mode === "off" ? "reconnecting" : "connecting";
  }

  function onSnapshot(snap) {
    state.namespace = snap.namespace;
    $("where").textContent = `${snap.namespace} · ${location.host}`;
    for (const item of snap.hcs) {
      const hc = entry(item.name);
      hc.requiresClientAuthorization = item.requiresClientAuthorization;
      hc.listeners = new Map(item.listeners.map((l) => [l.listener, l]));
      hc.listenerCount = hc.listeners.size;
      hc.connections = item.connections;
    }
    renderTable();
    if (state.selected) renderDetails();
  }

  function onStats(stats) {
    // Rows come only for HCs whose numbers changed; the totals come every time.
    for (const row of stats.hcs) {
      const hc = entry(row.name); // an HC created a moment ago may reach us here before the REST list
      hc.connections = row.connections;
      hc.bytes = row.bytes;
      hc.listenerCount = row.listeners;
    }
    const { connections, bytes } = stats.totals;
    const last = state.lastTotals;
    // Deleting an HC lowers the total; never draw that as negative traffic.
    const rate = last && stats.time > last.t ? Math.max(0, (bytes - last.bytes) / (stats.time - last.t)) : 0;
    state.lastTotals = { t: stats.time, bytes };
    state.history.push({ t: stats.time, connections, rate });
    const cutoff = stats.time - HISTORY_SECONDS - 5;
    while (state.history.length && state.history[0].t < cutoff) state.history.shift();
    $("tile-throughput").textContent = `${formatBytes(rate)}/s`;
    renderTable();
    drawCharts();
  }

  function onEvent(event) {
    const data = event.data || {};
    const hc = event.hc ? state.hcs.get(event.hc.toLowerCase()) : null;
    switch (event.type) {
      case "listener_online":
        if (hc) {
          hc.listeners.set(data.listener, { listener: data.listener, remote: data.remote, since: event.time });
          hc.listenerCount = hc.listeners.size;
        }
        break;
      case "listener_offline":
        if (hc) {
          hc.listeners.delete(data.listener);
          hc.listenerCount = hc.listeners.size;
        }
        break;
      case "connection_opened":
        if (hc) hc.connections += 1;
        break;
      case "connection_closed":
        if (hc) hc.connections = Math.max(0, hc.connections - 1);
        break;
      case "hc_created":
      case "hc_deleted":
      case "hc_updated":
        refreshListSoon();
        break;
      case "rules_changed":
        if (state.selected && state.hcs.has(state.selected)) loadRules(state.hcs.get(state.selected));
        break;
      default:
        break;
    }
    logLine(event);
    renderTable();
    if (hc && state.selected === event.hc.toLowerCase()) renderDetails();
  }

  // -- rendering (DOM APIs and textContent only: names come from clients) -------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    node.append(...children);
    return node;
  }

  function listenerCount(hc) {
    return hc.listenerCount === null ? hc.listeners.size : hc.listenerCount;
  }

  function renderTable() {
    const hcs = [...state.hcs.values()].sort((a, b) => a.name.localeCompare(b.name));
    const rows = hcs.map((hc) => {
      const count = listenerCount(hc);
      const row = el("tr", { className: state.selected === hc.name.toLowerCase() ? "selected" : "" },
        el("td", { className: "name" }, hc.name),
        el("td", { className: "num" }, el("span", { className: "badge" + (count ? " on" : "") }, String(count))),
        el("td", { className: "num" }, String(hc.connections)),
        el("td", { className: "num" }, formatBytes(hc.bytes)),
        el("td", {}, hc.requiresClientAuthorization ? "required" : "open"));
      row.dataset.hc = hc.name;
      row.addEventListener("click", () => select(hc.name.toLowerCase()));
      return row;
    });
    $("hc-rows").replaceChildren(...rows);
    $("hc-empty").hidden = hcs.length > 0;
    $("tile-hcs").textContent = String(hcs.length);
    $("tile-listeners").textContent = String(hcs.reduce((n, hc) => n + listenerCount(hc), 0));
    $("tile-connections").textContent = String(hcs.reduce((n, hc) => n + hc.connections, 0));
  }

  async function select(key) {
    const hc = state.hcs.get(key);
    if (!hc) return;
    state.selected = key;
    $("details").hidden = false;
    document.querySelector(".columns").classList.add("with-details");
    $("cs-value").value = "";
    showError("cs-error", "");
    renderTable();
    renderDetails();
    $("cs-rule").replaceChildren();
    loadListeners(hc);
    loadRules(hc);
  }

  function closeDetails() {
    state.selected = null;
    $("details").hidden = true;
    $("cs-value").value = "";
    document.querySelector(".columns").classList.remove("with-details");
    renderTable();
  }

  async function loadListeners(hc) {
    try {
      const data = await api("GET", `${hcPath(hc.name)}/listeners`);
      hc.listeners = new Map(items(data).map((l) => [l.id, {
        listener: l.id, remote: l.remoteAddress, since: Date.parse(l.connectedSince) / 1000 || null,
      }]));
      hc.listenerCount = hc.listeners.size;
      if (state.selected === hc.name.toLowerCase()) renderDetails();
      renderTable();
    } catch (err) {
      handleAuthFailure(err);
    }
  }

  async function loadRules(hc) {
    // Namespace rules and the HC's own rules; the HC's own (narrower) rules come first.
    const select = $("cs-rule");
    try {
      const [own, shared] = await Promise.all([api("GET", `${hcPath(hc.name)}/rules`), api("GET", "/$admin/rules")]);
      if (state.selected !== hc.name.toLowerCase()) return;
      const option = (rule, entity) => {
        const node = el("option", {}, `${rule.name} — ${rule.rights.join(", ")}`);
        node.value = JSON.stringify({ name: rule.name, entity });
        return node;
      };
      const groups = [
        el("optgroup", { label: "This hybrid connection" }, ...items(own).map((r) => option(r, hc.name))),
        el("optgroup", { label: "Namespace" }, ...items(shared).map((r) => option(r, null))),
      ].filter((group) => group.children.length);
      const options = groups.flatMap((group) => [...group.children]);
      const previous = select.value;
      select.replaceChildren(...groups);
      const signedIn = JSON.stringify({ name: state.creds.keyName, entity: null });
      const own0 = options.find((o) => JSON.parse(o.value).entity !== null);
      select.value = options.some((o) => o.value === previous) ? previous : own0 ? own0.value : signedIn;
      loadConnectionString(hc); // also after a key was regenerated: the string changed
    } catch (err) {
      if (!handleAuthFailure(err)) showError("cs-error", `Could not list the rules: ${err.message}`);
    }
  }

  async function loadConnectionString(hc) {
    const choice = $("cs-rule").value;
    if (!choice) return;
    const { name, entity } = JSON.parse(choice);
    const base = entity ? `${hcPath(entity)}/rules` : "/$admin/rules";
    $("cs-value").value = "";
    showError("cs-error", "");
    try {
      const keys = await api("POST", `${base}/${encodeURIComponent(name)}/listKeys`);
      if (state.selected !== hc.name.toLowerCase() || $("cs-rule").value !== choice) return;
      let cs = keys.primaryConnectionString || "";
      // A namespace rule's string names no entity; add the HC the way Azure's clients expect it.
      if (cs && !/;\s*entitypath=/i.test(cs)) cs = `${cs.replace(/;+$/, "")};EntityPath=${hc.name}`;
      $("cs-value").value = cs;
    } catch (err) {
      if (!handleAuthFailure(err)) showError("cs-error", `Could not get the connection string: ${err.message}`);
    }
  }

  function renderDetails() {
    const hc = state.selected && state.hcs.get(state.selected);
    if (!hc) return;
    $("details-name").textContent = hc.name;
    const items = [...hc.listeners.values()].map((l) => el("li", {},
      el("span", { className: "id" }, l.listener),
      el("span", { className: "meta" }, [l.remote, l.since ? `since ${formatTime(l.since)}` : ""]
        .filter(Boolean).join(" · "))));
    $("details-listeners").replaceChildren(...items);
    $("details-no-listeners").hidden = items.length > 0;
  }

  function logLine(event) {
    const data = event.data || {};
    const details = [];
    for (const key of ["listener", "connection", "method", "status", "ms", "bytes", "action", "reason", "count"]) {
      if (data[key] !== undefined) details.push(`${key}=${data[key]}`);
    }
    const good = ["listener_online", "connection_opened", "hc_created"].includes(event.type);
    const bad = ["upgrade_failed", "dropped"].includes(event.type);
    const line = el("li", {},
      el("span", { className: "time" }, formatTime(event.time)),
      el("span", { className: "type" + (good ? " good" : bad ? " bad" : "") }, event.type),
      el("span", {}, [event.hc, ...details].filter(Boolean).join("  ")));
    const log = $("event-log");
    log.prepend(line);
    while (log.children.length > LOG_LIMIT) log.lastChild.remove();
  }

  function drawCharts() {
    if (!state.creds) return;
    const now = Date.now() / 1000;
    const draw = window.HyrelayCharts.drawChart;
    draw($("chart-connections"), state.history.map((p) => ({ t: p.t, v: p.connections })),
      { color: "#2f6fde", windowSeconds: HISTORY_SECONDS, now, integer: true, format: (v) => String(v) });
    draw($("chart-throughput"), state.history.map((p) => ({ t: p.t, v: p.rate })),
      { color: "#15a34a", windowSeconds: HISTORY_SECONDS, now, binary: true, format: (v) => formatBytes(v) });
  }

  // -- small helpers --------------------------------------------------------------------------------

  function showError(id, message) {
    const box = $(id);
    box.textContent = message;
    box.hidden = !message;
  }

  function formatBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${i === 0 || Number.isInteger(n) ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
  }

  function formatTime(seconds) {
    return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
  }

  async function copyConnectionString() {
    const input = $("cs-value");
    if (!input.value) return;
    const button = $("cs-copy");
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (_) {
      // No async clipboard (plain http on a LAN address): fall back to selecting and copying.
      input.select();
      document.execCommand("copy");
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }

  // -- start ----------------------------------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", onSignInSubmit);
    $("sign-out").addEventListener("click", () => signOut(""));
    $("create-form").addEventListener("submit", createHc);
    $("details-close").addEventListener("click", closeDetails);
    $("cs-copy").addEventListener("click", copyConnectionString);
    $("cs-rule").addEventListener("change", () => {
      const hc = state.selected && state.hcs.get(state.selected);
      if (hc) loadConnectionString(hc);
    });
    window.addEventListener("resize", drawCharts);
    setInterval(drawCharts, 1000); // the time axis moves even when no stats arrive
    $("where").textContent = location.host;
    const saved = sessionStorage.getItem(STORAGE_KEY);
    if (saved) {
      let creds = null;
      try { creds = JSON.parse(saved); } catch (_) { /* ignore a damaged entry */ }
      if (creds && creds.keyName && creds.key) {
        signIn(creds).catch((err) => signOut(signInMessage(err)));
        return;
      }
      sessionStorage.removeItem(STORAGE_KEY);
    }
  }

  start();
})();
