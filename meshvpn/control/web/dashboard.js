// MeshVPN dashboard: reads the node's control API (same origin) and follows /v1/events.
// Every value from the node is put in the page as text (textContent), never as HTML.
"use strict";

const state = { samples: [], circuits: [], relays: [], sort: { key: "flags", dir: "asc" }, logLevel: "info",
  logs: [], settings: [], refreshTimers: {}, status: null };
const LEVELS = ["debug", "info", "warn", "error", "critical"];
const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

async function api(method, path, body) {
  const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const res = await fetch(path, opts);
  const value = await res.json().catch(() => ({}));
  if (res.status === 401) { showLogin(); throw new Error("not logged in"); }
  if (!res.ok) throw new Error(value.error || ("HTTP " + res.status));
  return value;
}

function showLogin() { $("login").classList.remove("hidden"); $("main").classList.add("hidden"); }

// ---- units

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? Math.round(n) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
}
function rate(n) { return n >= 125000 ? (n * 8 / 1e6).toFixed(n >= 1.25e7 ? 0 : 1) + " Mbit/s" : bytes(n) + "/s"; }
function duration(s) {
  s = Math.floor(s || 0);
  if (s < 120) return s + "s";
  if (s < 7200) return Math.floor(s / 60) + "m";
  return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}
function short(id) { return id ? id.slice(0, 8) : "?"; }

// ---- theme

function applyTheme(mode) {
  if (mode === "auto") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.setAttribute("data-theme", mode);
  $("theme").textContent = "Theme: " + mode;
  try { localStorage.setItem("meshvpn-theme", mode); } catch (e) { /* private mode */ }
  drawGraph();
}
function initTheme() {
  let mode = "auto";
  try { mode = localStorage.getItem("meshvpn-theme") || "auto"; } catch (e) { /* ignore */ }
  const q = new URLSearchParams(location.search).get("theme");
  if (q === "light" || q === "dark" || q === "auto") mode = q;
  applyTheme(mode);
  $("theme").addEventListener("click", () => {
    const order = ["auto", "light", "dark"];
    const current = document.documentElement.getAttribute("data-theme") || "auto";
    applyTheme(order[(order.indexOf(current) + 1) % order.length]);
  });
}

// ---- summary: node line, connectivity, VPN

function renderStatus(s) {
  state.status = s;
  const n = s.node || {};
  const where = n.addresses && n.addresses.udp ? " · udp " + n.addresses.udp : "";
  $("node-line").textContent = `${n.role || "node"} ${short(n.node_id)}… · up ${duration(n.uptime_s)}${where}`;
  const nat = s.nat || {};
  const natType = $("nat-type");
  natType.textContent = nat.type || "unknown";
  natType.className = "badge " + ({ "no-nat": "ok", "full-cone": "ok", "address-restricted": "ok",
    "port-restricted": "warn", "symmetric": "bad", "udp-blocked": "bad" }[nat.type] || "");
  $("nat-addr").textContent = nat.mapped_address || "–";
  const l = s.links || {};
  $("links").textContent = `${l.open || 0} open` + (l.handshaking ? `, ${l.handshaking} handshaking` : "");
  const d = s.dht || {};
  $("dht").textContent = `${d.contacts || 0} contacts, ${d.records || 0} records`;
  $("relays-known").textContent = d.relays_known != null ? String(d.relays_known) : "–";
  renderVpn(s.vpn || {});
  renderRelaying(s.relay, s.vpn || {});
  if (!s.circuits) { $("card-circuits").classList.add("hidden"); $("card-relays").classList.add("hidden"); }
  const bw = s.bandwidth || {};
  $("bw-total").textContent = `total ${bytes(bw.bytes_in || 0)} down · ${bytes(bw.bytes_out || 0)} up`;
}

function renderRelaying(r, vpn) {
  // A relay's own work: the cells it passed on along other people's circuits, each way.
  $("card-relaying").classList.toggle("hidden", !r);
  if (!r) return;
  if (!vpn.configured) $("card-vpn").classList.add("hidden");  // a relay has no VPN to switch
  const fwd = r.cells_relayed_forward || 0, back = r.cells_relayed_backward || 0;
  $("relayed").textContent = `${count(fwd)} forward · ${count(back)} back (${bytes((fwd + back) * 514)})`;
  // a circuit through a middle has two ends here (one on each link), one at its last hop
  $("relay-circuits").textContent = `${r.circuit_ends || 0} circuit ends open · ${r.circuits_destroyed || 0} circuits torn down`;
  $("relay-creates").textContent = `${r.circuits_created || 0} accepted, ${r.create_refused || 0} refused`;
  $("relay-refused").textContent = `${r.protocol_errors || 0} protocol errors, ${r.queue_overflows || 0} queue overflows`;
}

function count(n) { return n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e4 ? Math.round(n / 1e3) + "k" : String(n); }

function renderVpn(v) {
  const toggle = $("vpn-toggle");
  const on = !!v.running;
  toggle.setAttribute("aria-checked", on ? "true" : "false");
  toggle.disabled = !v.configured;
  $("vpn-state").textContent = v.configured ? (v.state || "stopped").replace(/-/g, " ") : "off";
  $("vpn-state").className = "vpn-state" + (v.state === "up" ? " up" : "");
  $("vpn-detail").textContent = v.detail || "";
  const kill = $("kill");
  kill.textContent = v.kill_switch || "off";
  kill.className = "badge" + (v.kill_switch === "on" ? " ok" : "");
  $("vpn-packets").textContent = v.configured
    ? `${v.to_circuit_packets || 0} out, ${v.from_circuit_packets || 0} in` : "–";
}

// ---- bandwidth graph (canvas, last 10 minutes)

function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

function drawGraph() {
  const canvas = $("graph");
  if (!canvas) return;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w) return;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, h);
  const samples = state.samples.slice(-600);
  const max = Math.max(1024, ...samples.map((s) => Math.max(s.up, s.down))) * 1.15;
  ctx.strokeStyle = cssVar("--line"); ctx.fillStyle = cssVar("--muted"); ctx.lineWidth = 1;
  ctx.font = "11px " + cssVar("--sans");
  for (let i = 1; i <= 3; i++) {
    const y = Math.round(h - (h - 6) * i / 3) + 0.5;
    ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(rate(max * i / 3), 4, y + 12);
  }
  const x = (i) => w - (samples.length - 1 - i) * (w / 599);
  const y = (v) => h - (h - 6) * v / max;
  const series = (key, color, fill) => {
    if (samples.length < 2) return;
    ctx.beginPath();
    samples.forEach((s, i) => (i ? ctx.lineTo(x(i), y(s[key])) : ctx.moveTo(x(i), y(s[key]))));
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.lineJoin = "round"; ctx.stroke();
    if (fill) {
      ctx.lineTo(x(samples.length - 1), h); ctx.lineTo(x(0), h); ctx.closePath();
      ctx.globalAlpha = 0.14; ctx.fillStyle = color; ctx.fill(); ctx.globalAlpha = 1;
    }
  };
  series("down", cssVar("--down"), true);
  series("up", cssVar("--up"), false);
}

function addSample(s) {
  state.samples.push(s);
  if (state.samples.length > 600) state.samples.shift();
  $("bw-down").textContent = rate(s.down);
  $("bw-up").textContent = rate(s.up);
  drawGraph();
}

// ---- circuits

function renderCircuits() {
  const list = $("circuits");
  list.replaceChildren();
  const live = state.circuits.filter((c) => c.state !== "closed");
  $("circuit-count").textContent = String(live.length);
  if (!state.circuits.length) { list.append(el("li", { class: "muted", text: "No circuits yet." })); return; }
  const shown = live.concat(state.circuits.filter((c) => c.state === "closed").slice(-3).reverse());
  for (const c of shown) {
    const path = el("div", { class: "path" });
    c.hops.forEach((hop, i) => {
      if (i) path.append(el("span", { class: "arrow", text: "→", "aria-hidden": "true" }));
      const role = ["guard", "middle", "exit"][i] || "hop";
      path.append(el("span", { class: "hop", title: hop.id },
        el("b", { text: short(hop.id) }), el("small", { text: role + (hop.address ? " · " + hop.address : "") })));
    });
    const badge = { "in-use": "ok", "spare": "", "retired": "warn", "closed": "bad" }[c.state] || "";
    const meta = el("div", { class: "meta" },
      el("span", {}, el("span", { class: "badge " + badge, text: c.state })),
      el("span", {}, "age ", el("b", { text: duration(c.age_s) })),
      el("span", {}, "↓ ", el("b", { text: bytes(c.bytes_received) })),
      el("span", {}, "↑ ", el("b", { text: bytes(c.bytes_sent) })),
      c.reason ? el("span", { text: c.reason }) : null);
    const close = c.state === "closed" ? el("span") : el("button", { class: "small ghost close", type: "button",
      text: "Close", "aria-label": "close circuit " + c.id, onclick: () => act(() => api("POST", `/v1/circuits/${c.id}/close`)) });
    list.append(el("li", { class: "circuit " + c.state, "data-id": String(c.id), "data-state": c.state },
      el("span", { class: "cid", text: "#" + c.id }), path, close, meta));
  }
}

async function loadCircuits() {
  if (state.status && !state.status.circuits) return;
  try { state.circuits = (await api("GET", "/v1/circuits")).circuits; renderCircuits(); } catch (e) { /* shown elsewhere */ }
}

// ---- relays (sortable)

function markOf(r) { return r.excluded ? "excluded" : (r.pinned && r.pinned.length ? "pinned " + r.pinned.join(",") : ""); }

function renderRelays() {
  const body = $("relays");
  body.replaceChildren();
  const { key, dir } = state.sort;
  const numeric = { measured: "bandwidth", share: "share", uptime: "uptime_s" };
  const value = (r) => key === "flags" ? r.flags.join(",") : key === "mark" ? markOf(r) : (r[key] || "");
  const compare = numeric[key]
    ? (a, b) => ((a.measured ? a.measured[numeric[key]] : -1) - (b.measured ? b.measured[numeric[key]] : -1))
    : (a, b) => value(a).localeCompare(value(b));
  const rows = state.relays.slice().sort((a, b) => compare(a, b) * (dir === "asc" ? 1 : -1));
  for (const r of rows) {
    const actions = el("td");
    const steer = (action, body) => () => act(() => api("POST", `/v1/relays/${r.id}/${action}`, body));
    if (markOf(r)) actions.append(el("button", { class: "link", type: "button", text: "clear", onclick: steer("clear") }));
    else {
      actions.append(el("button", { class: "link", type: "button", text: "pin", onclick: steer("pin", {}) }));
      actions.append(el("button", { class: "link", type: "button", text: "exclude", onclick: steer("exclude") }));
    }
    body.append(el("tr", {}, el("td", { class: "mono", title: r.id, text: r.id.slice(0, 16) }),
      el("td", { text: r.flags.join(", ") }), el("td", { class: "mono", text: r.address || "–" }),
      ...measuredCells(r.measured),
      el("td", {}, markOf(r) ? el("span", { class: "badge " + (r.excluded ? "bad" : "ok"), text: markOf(r) }) : "–"),
      actions));
  }
  $("relay-count").textContent = String(state.relays.length);
  const roles = {};
  state.relays.forEach((r) => r.flags.forEach((f) => { roles[f] = (roles[f] || 0) + 1; }));
  $("relay-roles").replaceChildren(...Object.entries(roles).sort().map(([f, n]) => el("span", { class: "badge", text: `${n} ${f}` })));
  document.querySelectorAll(".relays th[data-sort]").forEach((th) => {
    th.removeAttribute("data-dir");
    if (th.dataset.sort === key) th.setAttribute("data-dir", dir);
  });
}

// what the traffic reports measure of a relay: bandwidth, weight share, uptime (title: flags, partners, last report)
function measuredCells(m) {
  if (!m) return [el("td", { class: "muted", text: "–" }), el("td", { text: "–" }), el("td", { text: "–" })];
  const earned = m.flags.filter((f) => f !== "measured");
  const report = m.report ? `last report: epoch ${m.report.epoch}, ${m.report.neighbours} neighbours, ${bytes(m.report.bytes)}` : "no report";
  const title = `${m.partners} partners confirm it; ${earned.length ? earned.join(", ") : "no earned flags"}; ${report}`;
  return [el("td", { class: "mono", title, text: rate(m.bandwidth) }),
    el("td", { class: "mono", text: (100 * m.share).toFixed(1) + "%" }),
    el("td", { class: "mono", text: duration(m.uptime_s),
      title: m.seen_epochs == null ? "" : `seen in ${m.seen_epochs} epochs of the agreed chain` })];
}

async function loadRelays() {
  if (state.status && !state.status.circuits) return;
  try { state.relays = (await api("GET", "/v1/relays")).relays; renderRelays(); } catch (e) { /* ignore */ }
}

// ---- settings form

function renderSettings() {
  const form = $("settings");
  form.replaceChildren();
  if (!state.settings.length) { form.append(el("p", { class: "muted", text: "No setting of this node changes at run time." })); return; }
  for (const s of state.settings) {
    const id = "set-" + s.key;
    const input = el("input", { type: "text", id, name: s.key, value: String(s.value), autocomplete: "off", spellcheck: "false" });
    const error = el("div", { class: "error hidden", role: "alert" });
    const saved = el("div", { class: "saved hidden", text: "Saved." });
    const save = el("button", { type: "submit", class: "small", text: "Save" });
    const field = el("form", { class: "field", "data-key": s.key },
      el("label", { for: id, text: s.key }), el("div", { class: "row" }, input, save),
      el("div", { class: "help", text: s.help }), error, saved);
    field.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.classList.add("hidden"); saved.classList.add("hidden"); input.removeAttribute("aria-invalid");
      try {
        const r = await api("POST", "/v1/settings", { key: s.key, value: input.value });
        input.value = String(r.value);
        saved.classList.remove("hidden");
      } catch (e) {
        error.textContent = e.message; error.classList.remove("hidden"); input.setAttribute("aria-invalid", "true");
      }
    });
    form.append(field);
  }
}

async function loadSettings() {
  try { state.settings = (await api("GET", "/v1/settings")).settings; renderSettings(); } catch (e) { /* ignore */ }
}

// ---- log tail

function renderLogLine(line) {
  const t = new Date(line.time * 1000).toLocaleTimeString([], { hour12: false });
  return el("li", { "data-level": line.level }, el("time", { text: t }),
    el("span", { class: "lvl " + line.level, text: line.level }), el("span", { class: "msg", text: line.text }));
}
function renderLogs() {
  const list = $("log");
  const floor = LEVELS.indexOf(state.logLevel);
  list.replaceChildren(...state.logs.filter((l) => LEVELS.indexOf(l.level) >= floor).slice(-200).map(renderLogLine));
  list.scrollTop = list.scrollHeight;
}
async function loadLogs() {
  try { state.logs = (await api("GET", "/v1/logs?level=debug&limit=500")).lines; renderLogs(); } catch (e) { /* ignore */ }
}

// ---- actions and live updates

async function act(fn) {
  try { await fn(); } catch (e) { alert(e.message); }
  refreshSoon("circuits", loadCircuits); refreshSoon("relays", loadRelays);
}

function refreshSoon(name, fn, delay = 150) {
  clearTimeout(state.refreshTimers[name]);
  state.refreshTimers[name] = setTimeout(fn, delay);
}

async function loadStatus() {
  try {
    const s = await api("GET", "/v1/status");
    renderStatus(s);
    // the directory grows and shrinks without an event: follow its count
    if (s.dht && s.dht.relays_known != null && s.dht.relays_known !== state.relays.length) refreshSoon("relays", loadRelays);
  } catch (e) { /* ignore */ }
}

let ticks = 0;
function follow() {
  const source = new EventSource("/v1/events");
  const live = $("live");
  source.onopen = () => { live.classList.add("on"); $("live-text").textContent = "live"; };
  source.onerror = () => { live.classList.remove("on"); $("live-text").textContent = "reconnecting"; };
  source.addEventListener("bandwidth", (e) => {
    addSample(JSON.parse(e.data));
    if (++ticks % 3 === 0) loadStatus();
    if (ticks % 5 === 2) refreshSoon("circuits", loadCircuits, 0);  // ages and bytes move
  });
  const circuitChanged = () => refreshSoon("circuits", loadCircuits);
  source.addEventListener("circuit.built", circuitChanged);
  source.addEventListener("circuit.closed", circuitChanged);
  source.addEventListener("newnym", circuitChanged);
  source.addEventListener("vpn", (e) => renderVpn(JSON.parse(e.data)));
  source.addEventListener("nat", () => refreshSoon("status", loadStatus));
  source.addEventListener("relay.steering", () => refreshSoon("relays", loadRelays));
  source.addEventListener("settings.changed", (e) => {
    const change = JSON.parse(e.data);
    const input = $("set-" + change.key);  // update the value in place: a re-render would drop "Saved."
    if (input && document.activeElement !== input) input.value = String(change.value);
    else if (!input) refreshSoon("settings", loadSettings);
  });
  source.addEventListener("log", (e) => {
    state.logs.push(JSON.parse(e.data));
    if (state.logs.length > 500) state.logs.shift();
    refreshSoon("logs", renderLogs, 100);
  });
}

async function start() {
  initTheme();
  $("log-level").addEventListener("change", (e) => { state.logLevel = e.target.value; renderLogs(); });
  $("newnym").addEventListener("click", () => act(() => api("POST", "/v1/newnym")));
  $("nat-check").addEventListener("click", () => act(async () => renderStatus(await (async () => { await api("POST", "/v1/nat/check"); return api("GET", "/v1/status"); })())));
  $("vpn-toggle").addEventListener("click", async () => {
    const up = $("vpn-toggle").getAttribute("aria-checked") !== "true";
    $("vpn-error").classList.add("hidden");
    try { renderVpn(await api("POST", "/v1/vpn", { up })); } catch (e) {
      $("vpn-error").textContent = e.message; $("vpn-error").classList.remove("hidden");
    }
  });
  document.querySelectorAll(".relays th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    const key = th.dataset.sort;
    state.sort = { key, dir: state.sort.key === key && state.sort.dir === "asc" ? "desc" : "asc" };
    renderRelays();
  }));
  window.addEventListener("resize", () => refreshSoon("graph", drawGraph, 50));
  try {
    renderStatus(await api("GET", "/v1/status"));
  } catch (e) { return; }
  const bw = await api("GET", "/v1/bandwidth?seconds=600").catch(() => ({ samples: [] }));
  state.samples = bw.samples;
  if (bw.samples.length) addSample(bw.samples.pop());
  await Promise.all([loadCircuits(), loadRelays(), loadSettings(), loadLogs()]);
  follow();
  document.body.setAttribute("data-ready", "true");
}

document.addEventListener("DOMContentLoaded", start);
