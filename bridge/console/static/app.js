// nt8bridge operator console: one page, no build step, no third-party code (desks may be offline).
//
// Live state comes from the WebSocket /api/v1/stream (first the full state, then snapshots, rows,
// ticks); history from the JSON API. Each view is rendered as HTML text and written only when it
// differs, so a message "changed the DOM" exactly when some container's text changed. For every such
// message the page records, in window.__paintLog, the event's ts_ns (sidecar wall clock) next to
// performance.timeOrigin + performance.now() taken just after the frame that shows it was painted.
//
// The page often runs on the sidecar's own machine, so it must cost that machine as little CPU as the
// picture allows: a message only folds into S (cheap); the DOM is touched by render() alone, in one
// requestAnimationFrame callback that opens at the earliest PAINT_GATE_MS after the previous one ended.
// Whatever arrived meanwhile is shown by that one frame, so a browser touches the DOM at most about
// ten times a second however fast the sidecar publishes, and not at all while nothing changes.
"use strict";

(() => {
  const API = "/api/v1";
  const PAINT_MAX = 2000;           // entries kept in window.__paintLog (oldest dropped)
  const ROWS_MAX = 500;             // live rows kept per table
  const REFRESH_MS = 5000;          // stored data of the open view is read again this often
  const PAINT_GATE_MS = 100;        // at least this long between the end of one render and the next
  const VIEWS = ["sessions", "positions", "blotter", "risk", "latency", "models", "audit"];
  const STORED = {                  // what each view reads from storage
    sessions: ["sessions"], positions: ["positions", "pnl", "equity", "orders"], blotter: ["blotter"],
    risk: ["risk"], latency: [], models: ["models"], audit: ["audit"],
  };
  window.__paintLog = [];

  const S = {
    status: null, up: false, wsUp: false, endpoint: "", snapshot: null,
    rows: {}, ticks: {}, stored: {}, errors: {}, view: "positions", decision: null, decisionError: null,
    user: null, needLogin: false, queued: [], frame: false, backoff: 500,
  };
  const html = {};                  // container id -> the HTML last written

  // ------------------------------------------------------------------ helpers

  const $ = (id) => document.getElementById(id);
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const num = (v, d = 2) => (v === null || v === undefined || Number.isNaN(Number(v))) ? "—"
    : Number(v).toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
  const int = (v) => num(v, 0);
  const time = (ns) => (ns === null || ns === undefined) ? "—" : new Date(Number(ns) / 1e6).toISOString().replace("T", " ").slice(0, 19);
  const us = (v) => (v === null || v === undefined) ? "—" : (v >= 1000 ? `${num(v / 1000, 2)} ms` : `${num(v, 0)} µs`);
  const cls = (v) => (v > 0 ? "pos" : v < 0 ? "neg" : "");
  const attr = (name, v) => `${name}="${esc(v ?? "")}"`;

  function cookie(name) {
    for (const part of document.cookie.split(";")) {
      const [k, ...v] = part.trim().split("=");
      if (k === name) return decodeURIComponent(v.join("="));
    }
    return "";
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = { "X-Console-Page": "1" };  // the server then asks no Basic login of the browser
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      headers["X-CSRF-Token"] = cookie("nt8bridge_csrf");
    }
    const r = await fetch(API + path, { method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (!r.ok) {
      const e = new Error((data && data.error) || `${r.status} ${r.statusText}`);
      e.status = r.status;
      throw e;
    }
    return data;
  }

  // Writes only what differs: an unchanged frame then costs the browser no style, layout or paint.
  function setText(id, text) {
    const el = $(id);
    if (el.textContent === text) return false;
    el.textContent = text;
    return true;
  }

  function setHidden(el, hidden) {
    if (el.hidden !== hidden) el.hidden = hidden;
  }

  function setHTML(id, text) {
    if (html[id] === text) return false;
    html[id] = text;
    $(id).innerHTML = text;
    return true;
  }

  // Tables and cards are updated in place: a row or card keeps its element while its key stays (only
  // its attributes and cells change), so a test holding an element does not find it gone on the next
  // snapshot, and nothing is rewritten that did not change.
  const KEYED = "\u0000keyed";

  function reconcile(parent, tag, items) {
    let changed = false;
    const existing = new Map();
    for (const child of Array.from(parent.children)) existing.set(child.dataset.key, child);
    const seen = new Set();
    items.forEach((it, i) => {
      let key = String(it.key);
      for (let n = 2; seen.has(key); n += 1) key = `${it.key}#${n}`;
      seen.add(key);
      let node = existing.get(key);
      if (!node) {
        node = document.createElement(tag);
        node.dataset.key = key;
        changed = true;
      }
      const attrs = it.attrs || {};
      for (const [k, v] of Object.entries(attrs)) {
        const text = v === null || v === undefined ? "" : String(v);
        if (node.getAttribute(k) !== text) { node.setAttribute(k, text); changed = true; }
      }
      for (const a of Array.from(node.attributes)) {
        if (a.name !== "data-key" && !(a.name in attrs)) { node.removeAttribute(a.name); changed = true; }
      }
      if (node._html !== it.html) { node.innerHTML = it.html; node._html = it.html; changed = true; }
      if (parent.children[i] !== node) { parent.insertBefore(node, parent.children[i] || null); changed = true; }
    });
    for (const [key, node] of existing) if (!seen.has(key)) { node.remove(); changed = true; }
    return changed;
  }

  function keyedTable(id, headers, items, empty = "nothing yet") {
    if (!items.length) return setHTML(id, `<p class="muted">${esc(empty)}</p>`);
    const box = $(id);
    const marker = `${KEYED}table:${headers.join("|")}`;
    let changed = false;
    if (html[id] !== marker) {
      box.innerHTML = `<table><thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody></tbody></table>`;
      html[id] = marker;
      changed = true;
    }
    return reconcile(box.querySelector("tbody"), "tr", items) || changed;
  }

  function keyedCards(id, items) {
    let changed = false;
    if (html[id] !== KEYED) { $(id).innerHTML = ""; html[id] = KEYED; changed = true; }
    return reconcile($(id), "div", items) || changed;
  }

  function row(key, attrs, cells) {
    return { key, attrs, html: cells.map((c) => (String(c).startsWith("<td") ? c : `<td>${c}</td>`)).join("") };
  }
  const td = (v, klass = "num") => `<td class="${klass}">${v}</td>`;

  function card(key, label, value, attrs = {}) {
    return { key, attrs: { class: "card", ...attrs }, html: `<div class="label">${esc(label)}</div><div class="value">${value}</div>` };
  }

  // a static table (the decision panel, written once per click)
  function table(headers, rows, empty = "nothing yet") {
    if (!rows.length) return `<p class="muted">${esc(empty)}</p>`;
    return `<table><thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
  }

  function staticCard(label, value, extra = "") {
    return `<div class="card" ${extra}><div class="label">${esc(label)}</div><div class="value">${value}</div></div>`;
  }

  function notice(text, isError = false) {
    const n = $("notice");
    n.textContent = text;
    n.classList.toggle("error", isError);
    n.hidden = !text;
  }

  // ------------------------------------------------------------------ live state

  function pushRow(table, row) {
    const rows = S.rows[table] || (S.rows[table] = []);
    rows.push(row);
    if (rows.length > ROWS_MAX) rows.splice(0, rows.length - ROWS_MAX);
  }

  let storedSoon = null;
  function refreshSoon() {        // a stored row the views show changed: read storage again, once per second at most
    if (storedSoon) return;
    storedSoon = setTimeout(() => { storedSoon = null; refreshStored(); }, 1000);
  }

  function apply(msg) {
    switch (msg.type) {
      case "state":
        S.snapshot = msg.snapshot;
        S.rows = msg.rows || {};
        S.ticks = {};
        for (const t of msg.ticks || []) S.ticks[`${t.session_id}|${t.instrument}`] = t;
        setStatus(msg.status);
        break;
      case "snapshot":
        S.snapshot = msg.state;
        S.up = true;
        break;
      case "ticks":
        for (const t of msg.ticks || []) S.ticks[`${t.session_id}|${t.instrument}`] = t;
        break;
      case "row":
        pushRow(msg.table, msg.row);
        if (["executions", "orders", "positions", "decisions", "account_values", "sessions"].includes(msg.table)) refreshSoon();
        break;
      case "update":
        for (const r of S.rows[msg.table] || []) {
          if (r.session_id === msg.key || r.client_order_id === msg.key) Object.assign(r, msg.values);
        }
        refreshSoon();
        break;
      case "status":
        setStatus(msg.status);
        break;
      case "dropped":
        refreshStored();
        break;
      default:
        break;
    }
  }

  function setStatus(st) {
    if (!st) return;
    S.up = !!st.sidecar_up;
    if (st.events_endpoint) S.endpoint = st.events_endpoint;
  }

  // Every message waits for the next gated frame, which renders once for all of them. Only what the
  // paint log needs is kept of a waiting message (a hidden tab runs no frame: the queue stays bounded).
  let lastFrameEnd = -Infinity;     // performance.now() when the last render ended

  function queue(msg) {
    S.queued.push({ ts_ns: msg.ts_ns, type: msg.type, seq: msg.seq ?? null });
    if (S.queued.length > PAINT_MAX) S.queued.splice(0, S.queued.length - PAINT_MAX);
    schedule();
  }

  function schedule() {
    if (S.frame) return;
    S.frame = true;
    const gate = Math.max(0, lastFrameEnd + PAINT_GATE_MS - performance.now());
    setTimeout(() => requestAnimationFrame(frame), gate);
  }

  function frame() {
    const msgs = S.queued;
    S.queued = [];
    let changed = false;
    try {
      changed = render();
    } finally {
      lastFrameEnd = performance.now();
      S.frame = false;              // what arrives from now on waits for the next gate
    }
    if (changed && msgs.length) {
      // a task queued from the frame callback runs after that frame is painted: each message's own ts_ns
      // against the paint that showed it
      setTimeout(() => {
        const painted = performance.timeOrigin + performance.now();
        const log = window.__paintLog;
        for (const m of msgs) log.push({ ts_ns: m.ts_ns, type: m.type, seq: m.seq, painted_ms: painted });
        if (log.length > PAINT_MAX) log.splice(0, log.length - PAINT_MAX);
      }, 0);
    }
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(`${proto}//${location.host}${API}/stream`);
    } catch (_) {
      setTimeout(connect, S.backoff);
      return;
    }
    ws.onopen = () => { S.wsUp = true; S.backoff = 500; schedule(); };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      apply(msg);
      queue(msg);
    };
    ws.onclose = () => {
      S.wsUp = false;
      schedule();
      S.backoff = Math.min(S.backoff * 2, 10000);
      setTimeout(connect, S.backoff);
    };
  }

  // ------------------------------------------------------------------ stored data

  async function load(name) {
    try {
      S.stored[name] = await api(`/${name}`);
      S.errors[name] = null;
    } catch (e) {
      if (e.status === 401) return login();
      S.errors[name] = e.message;
    }
  }

  async function refreshStored() {
    if (S.needLogin) return;
    await Promise.all((STORED[S.view] || []).map(load));
    schedule();
  }

  async function refreshStatus() {
    try {
      S.status = await api("/status");
      setStatus({ sidecar_up: S.status.sidecar_up, events_endpoint: S.status.events_endpoint });
      S.user = S.status.user;
      const hideLogout = !S.status.login_required || S.status.auth === "bearer";
      setHidden($("logout-button"), hideLogout);
      for (const input of document.querySelectorAll(".operator-input")) {
        if (S.user && (input.value !== S.user || !input.readOnly)) { input.value = S.user; input.readOnly = true; }
      }
    } catch (e) {
      if (e.status === 401) return login();
      S.status = null;
    }
    schedule();
  }

  // ------------------------------------------------------------------ rendering

  function render() {
    let changed = renderHeader();
    for (const v of VIEWS) setHidden($(`view-${v}`), v !== S.view);
    for (const a of document.querySelectorAll("#tabs a")) {
      const active = a.dataset.view === S.view;
      if (a.classList.contains("active") !== active) a.classList.toggle("active", active);
    }
    const view = { sessions: renderSessions, positions: renderPositions, blotter: renderBlotter, risk: renderRisk,
      latency: renderLatency, models: renderModels, audit: renderAudit }[S.view];
    changed = view() || changed;
    return changed;
  }

  function sidecar() { return (S.up && S.snapshot && S.snapshot.sidecar) || null; }

  function renderHeader() {
    let changed = false;
    const clock = `${new Date().toISOString().slice(11, 19)} UTC`;
    setText("clock", clock);  // not a change any message made
    const sc = sidecar();
    const state = (S.up && S.snapshot && S.snapshot.risk && S.snapshot.risk.trading_state) || (sc && sc.trading_state) || "";
    const ts = $("trading-state");
    const stateText = state ? (state === "HALTED" ? `HALTED${sc && sc.halted_by ? ` by ${sc.halted_by}` : ""}` : state) : "state unknown";
    if (ts.textContent !== stateText || ts.dataset.state !== state) {
      ts.textContent = stateText;
      ts.dataset.state = state;
      ts.className = `pill ${state === "HALTED" ? "bad" : state === "ACTIVE" ? "good" : ""}`;
      changed = true;
    }
    const sst = $("sidecar-state");
    const upText = !S.wsUp ? "console disconnected" : S.up ? `sidecar up${sc ? ` (pid ${sc.pid}, ${sc.role || "single"})` : ""}` : "sidecar down";
    if (sst.textContent !== upText) {
      sst.textContent = upText;
      sst.dataset.up = String(S.up && S.wsUp);
      sst.className = `pill ${S.up && S.wsUp ? "good" : "bad"}`;
      changed = true;
    }
    const who = S.user ? `operator ${S.user}` : "";
    changed = setText("who", who) || changed;
    const banner = $("banner");
    let text = "";
    if (!S.wsUp) text = "Console connection lost — reconnecting";
    else if (!S.up) text = `Sidecar not reachable at ${S.endpoint || "its event stream"} — showing stored history; reconnecting`;
    if (banner.textContent !== text) {
      banner.textContent = text;
      banner.hidden = !text;
      banner.dataset.up = String(!text);
      changed = true;
    }
    return changed;
  }

  function lastPrice(sessionId, instrument, fallback) {
    const t = S.ticks[`${sessionId}|${instrument}`];
    return t ? t.price : fallback;
  }

  function renderSessions() {
    let changed = false;
    if (S.up) {
      const live = (S.snapshot && S.snapshot.sessions) || [];
      changed = keyedTable("sessions-live", ["session", "account", "instance", "peer", "mode", "started (UTC)", "clock offset ms", "ticks", "refused", "orders", "instruments (last, age)"],
        live.map((s) => {
          const inst = (s.instruments || []).map((i) => `<span class="feed ${esc(i.feed)}" data-testid="session-instrument" ${attr("data-instrument", i.instrument)} ${attr("data-feed", i.feed)}>${esc(i.instrument)} ${num(lastPrice(s.session_id, i.instrument, i.last_price))}${i.last_tick_age_s !== null && i.last_tick_age_s !== undefined ? ` (${num(i.last_tick_age_s, 1)} s)` : ""}</span>`).join(" ");
          return row(`live-${s.session_id}`, { "data-testid": "session-row", "data-source": "live", "data-session-id": s.session_id },
            [esc(s.session_id), esc(s.account), esc(s.instance_id), esc(s.peer), s.lockstep ? "lockstep" : "live", time(s.started_ns),
              td(num(s.clock_offset_ms, 1)), td(int(s.ticks_accepted)), td(int(s.ticks_rejected)), td(int(s.orders_sent)), inst]);
        }), "no NT8 session is connected") || changed;
    } else {
      changed = setHTML("sessions-live", `<p class="muted">the sidecar is not reachable: no live sessions to show</p>`) || changed;
    }
    if (S.errors.sessions) return setHTML("sessions-stored", errorText("sessions")) || changed;
    const stored = (S.stored.sessions && S.stored.sessions.sessions) || [];
    changed = keyedTable("sessions-stored", ["session", "account", "instance", "peer", "started (UTC)", "ended", "end", "decisions", "orders", "fills"],
      stored.map((s) => row(`stored-${s.session_id}`, { "data-testid": "session-row", "data-source": "stored", "data-session-id": s.session_id },
        [esc(s.session_id), esc(s.account), esc(s.instance_id), esc(s.peer), time(s.started_ns), s.ended_ns ? time(s.ended_ns) : "open",
          esc(s.end_reason), td(int(s.decisions)), td(int(s.orders)), td(int(s.executions))])),
      "no stored sessions in the history window") || changed;
    return changed;
  }

  function errorText(name) {
    return `<p class="error" data-testid="error-${esc(name)}">${esc(S.errors[name])}</p>`;
  }

  const money = (v) => `<span class="${cls(v)}">${num(v)}</span>`;

  function renderPositions() {
    let changed = false;
    const liveMode = S.up && S.snapshot;
    if (liveMode) {
      changed = keyedTable("positions", ["instrument", "strategy", "account", "session", "quantity", "avg price", "last", "unrealized", "realized", "P&L"],
        (S.snapshot.positions || []).map((p) => {
          const pnl = (p.realized || 0) + (p.unrealized || 0);
          const last = lastPrice(p.session_id, p.instrument, p.last_price);
          return row(`live|${p.session_id}|${p.instrument}|${p.strategy}`,
            { "data-testid": "position-row", "data-source": "live", "data-instrument": p.instrument, "data-quantity": p.quantity,
              "data-pnl": pnl.toFixed(2), "data-session-id": p.session_id, "data-strategy": p.strategy ?? "" },
            [esc(p.instrument), esc(p.strategy ?? "(not ours)"), esc(p.account), esc(p.session_id), td(int(p.quantity), `num ${cls(p.quantity)}`),
              td(num(p.avg_price)), td(num(last)), td(money(p.unrealized)), td(money(p.realized)), td(money(pnl))]);
        }), "flat: no open position") || changed;
      const pnl = S.snapshot.pnl || [];
      const sum = (k) => pnl.reduce((a, r) => a + (r[k] || 0), 0);
      changed = keyedCards("pnl-summary", [
        card("realized", "realized", money(sum("realized")), { "data-testid": "pnl-realized", "data-value": sum("realized").toFixed(2) }),
        card("unrealized", "unrealized", money(sum("unrealized")), { "data-testid": "pnl-unrealized", "data-value": sum("unrealized").toFixed(2) }),
        card("equity", "equity", num(sum("equity")), { "data-testid": "pnl-equity", "data-value": sum("equity").toFixed(2) }),
        card("source", "source", "live", { "data-testid": "pnl-source", "data-source": "live" })]) || changed;
    } else {
      const stored = (S.stored.positions && S.stored.positions.positions) || [];
      changed = (S.errors.positions ? setHTML("positions", errorText("positions"))
        : keyedTable("positions", ["instrument", "account", "session", "NT8 position", "quantity", "avg price", "realized", "commission", "reported (event time)"],
          stored.map((p) => row(`stored|${p.session_id}|${p.instrument}`,
            { "data-testid": "position-row", "data-source": "stored", "data-instrument": p.instrument, "data-quantity": p.quantity_signed,
              "data-pnl": Number(p.realized || 0).toFixed(2), "data-session-id": p.session_id },
            [esc(p.instrument), esc(p.account), esc(p.session_id), esc(p.market_position), td(int(p.quantity_signed), `num ${cls(p.quantity_signed)}`),
              td(num(p.avg_price)), td(money(p.realized)), td(num(p.commission)), time(p.ts_event_ns)])),
          "no stored position in the history window")) || changed;
      const total = (S.stored.pnl && S.stored.pnl.total) || {};
      changed = keyedCards("pnl-summary", [
        card("realized", "realized", money(total.realized), { "data-testid": "pnl-realized", "data-value": total.realized ?? "" }),
        card("commission", "commission", num(total.commission), { "data-testid": "pnl-commission", "data-value": total.commission ?? "" }),
        card("net", "net", money(total.net), { "data-testid": "pnl-net", "data-value": total.net ?? "" }),
        card("source", "source", "stored", { "data-testid": "pnl-source", "data-source": "stored" })]) || changed;
    }
    changed = setText("positions-source", liveMode ? "(live)" : "(stored)") || changed;
    changed = setHTML("equity", S.errors.equity ? errorText("equity") : equityChart(S.stored.equity)) || changed;
    changed = setText("equity-source", S.stored.equity ? `(${S.stored.equity.source})` : "") || changed;
    if (liveMode) {
      changed = keyedTable("orders", ["order", "instrument", "strategy", "side", "qty", "entry", "entry price", "stop", "target", "state", "filled"],
        (S.snapshot.orders || []).map((o) => row(`live|${o.client_order_id}`,
          { "data-testid": "order-row", "data-source": "live", "data-client-order-id": o.client_order_id, "data-state": o.state },
          [esc(o.client_order_id), esc(o.instrument), esc(o.strategy), esc(o.side), td(int(o.quantity)), esc(o.entry_type), td(num(o.entry_price)),
            td(num(o.stop_price)), td(num(o.target_price)), esc(o.state), td(int(o.filled))])), "no working order") || changed;
    } else if (S.errors.orders) {
      changed = setHTML("orders", errorText("orders")) || changed;
    } else {
      const stored = ((S.stored.orders && S.stored.orders.orders) || []).slice(0, 100);
      changed = keyedTable("orders", ["order", "instrument", "strategy", "side", "qty", "entry", "entry price", "stop", "target", "entry state", "stop/target", "sent (UTC)"],
        stored.map((o) => row(`stored|${o.client_order_id}`,
          { "data-testid": "order-row", "data-source": "stored", "data-client-order-id": o.client_order_id, "data-state": o.state ?? "" },
          [esc(o.client_order_id), esc(o.instrument), esc(o.algorithm_id), esc(o.side), td(int(o.quantity)), esc(o.entry_type), td(num(o.entry_price)),
            td(num(o.stop_price)), td(num(o.target_price)), esc(o.state), `${esc(o.stop_state)}/${esc(o.target_state)}`, time(o.ts_created_ns)])),
        "no stored order in the history window") || changed;
    }
    changed = setText("orders-source", liveMode ? "(working, live)" : "(latest 100, stored)") || changed;
    return changed;
  }

  // the curve is drawn again only when storage was read again (thousands of points: not at every frame)
  let equityDrawn = { eq: undefined, html: "" };

  function equityChart(eq) {
    if (equityDrawn.eq !== eq) equityDrawn = { eq, html: drawEquity(eq) };
    return equityDrawn.html;
  }

  function drawEquity(eq) {
    const series = (eq && eq.series) || {};
    const names = Object.keys(series).filter((k) => series[k].length);
    if (!names.length) return `<p class="muted">no fills or account values in the history window</p>`;
    const W = 800, H = 220, L = 70, R = 10, T = 10, B = 30;
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const n of names) for (const [x, y] of series[n]) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= 1; y1 += 1; }
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const colours = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280"];
    let points = 0;
    const lines = names.map((n, i) => {
      points += series[n].length;
      const pts = series[n].map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
      return `<polyline class="line" fill="none" stroke="${colours[i % colours.length]}" stroke-width="1.5" points="${pts}"><title>${esc(n)}</title></polyline>`;
    }).join("");
    const zero = y0 < 0 && y1 > 0 ? `<line x1="${L}" x2="${W - R}" y1="${sy(0).toFixed(1)}" y2="${sy(0).toFixed(1)}" stroke="#999" stroke-dasharray="4 3"/>` : "";
    const labels = `<text x="${L - 6}" y="${T + 10}" text-anchor="end">${esc(num(y1))}</text><text x="${L - 6}" y="${H - B}" text-anchor="end">${esc(num(y0))}</text>`
      + `<text x="${L}" y="${H - 8}">${esc(time(x0))}</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${esc(time(x1))}</text>`;
    const legend = names.map((n, i) => `<span class="legend" data-testid="equity-legend"><span class="swatch s${i % colours.length}"></span>${esc(n)}</span>`).join(" ");
    const last = names.map((n) => series[n][series[n].length - 1][1]).reduce((a, b) => a + b, 0);
    return `<svg class="equity" data-testid="equity-chart" ${attr("data-points", points)} ${attr("data-source", eq.source)} ${attr("data-last", last.toFixed(2))} viewBox="0 0 ${W} ${H}" role="img" aria-label="equity curve">`
      + `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#ccc"/>${zero}${lines}${labels}</svg><div>${legend}</div>`;
  }

  function renderBlotter() {
    let changed = false;
    if (S.errors.blotter) {
      changed = setHTML("blotter", errorText("blotter"));
    } else {
      const stored = (S.stored.blotter && S.stored.blotter.blotter) || [];
      const known = new Set(stored.map((f) => `${f.session_id}|${f.execution_id}`));
      const orderDecision = {};
      for (const o of S.rows.orders || []) orderDecision[o.client_order_id] = o.decision_id;
      // fills that arrived on the stream since storage was last read go on top, with what is known of them
      const fresh = (S.rows.executions || []).filter((f) => !known.has(`${f.session_id}|${f.execution_id}`)).reverse()
        .map((f) => ({ ...f, decision_id: orderDecision[f.client_order_id] || null, live: true }));
      changed = keyedTable("blotter", ["time (event)", "instrument", "side", "qty", "price", "role", "strategy", "realized", "commission", "order", "decision"],
        [...fresh, ...stored].map((f) => row(`${f.session_id}|${f.execution_id}`,
          { "data-testid": "blotter-row", class: f.decision_id ? "link" : "", "data-execution-id": f.execution_id, "data-decision-id": f.decision_id ?? "",
            "data-session-id": f.session_id, "data-source": f.live ? "live" : "stored" },
          [time(f.ts_event_ns), esc(f.instrument), esc(f.side), td(int(f.quantity)), td(num(f.price)), esc(f.role), esc(f.strategy),
            td(f.live ? "…" : money(f.realized)), td(num(f.commission)), esc(f.client_order_id), esc(f.decision_id)])),
        "no fill in the history window") || changed;
    }
    changed = renderDecision() || changed;
    return changed;
  }

  function kv(obj) {
    const keys = Object.keys(obj || {});
    if (!keys.length) return `<p class="muted">none</p>`;
    return `<table class="kv">${keys.map((k) => `<tr><th>${esc(k)}</th><td>${typeof obj[k] === "number" ? num(obj[k], 4) : esc(typeof obj[k] === "object" ? JSON.stringify(obj[k]) : obj[k])}</td></tr>`).join("")}</table>`;
  }

  function renderDecision() {
    const panel = $("decision-panel");
    const d = S.decision;
    if (!d && !S.decisionError) { setHidden(panel, true); return false; }
    setHidden(panel, false);
    if (S.decisionError) return setHTML("decision-panel", `<p class="error" data-testid="decision-error">${esc(S.decisionError)}</p>`);
    const value = (v) => (typeof v === "number" ? num(v, 4) : esc(v));
    const checks = (d.risk_checks || []).map((c) => `<tr data-testid="risk-check" ${attr("data-check", c.check)} data-passed="${c.passed ? "true" : "false"}"><td>${esc(c.check)}</td><td>${c.passed ? "pass" : "<strong class=\"neg\">FAIL</strong>"}</td><td class="num">${value(c.value)}</td><td class="num">${value(c.limit)}</td><td>${esc(c.scope)}</td></tr>`);
    const fills = (d.executions || []).map((e) => `<tr><td>${time(e.ts_event_ns)}</td><td>${esc(e.role)}</td><td>${esc(e.side)}</td><td class="num">${int(e.quantity)}</td><td class="num">${num(e.price)}</td></tr>`);
    const audit = d.audit ? `audit record ${esc(d.audit.seq)}; stored inputs ${d.audit.inputs_match ? "match" : "<strong class=\"neg\">DO NOT MATCH</strong>"} its SHA-256` : "no audit record";
    return setHTML("decision-panel", `<h2 data-testid="decision-id" ${attr("data-decision-id", d.decision_id)}>Decision ${esc(d.decision_id)}</h2>
      <p><strong data-testid="decision-outcome" ${attr("data-outcome", d.outcome)}>${esc(d.outcome)}</strong> · ${esc(d.strategy)} · ${esc(d.instrument)} · session ${esc(d.session_id)}</p>
      <p>${esc(d.rationale)}</p>
      <div class="cards">${staticCard("win probability", num(d.probability, 3), `data-testid="decision-probability" ${attr("data-value", d.probability)}`)}${staticCard("Kelly f*", num(d.kelly && d.kelly.kelly_f, 4), `data-testid="decision-kelly" ${attr("data-value", d.kelly && d.kelly.kelly_f)}`)}${staticCard("applied f", num(d.kelly && d.kelly.applied_f, 4))}${staticCard("equity", num(d.equity))}</div>
      <p class="muted" data-testid="decision-audit" data-inputs-match="${d.audit ? String(d.audit.inputs_match) : ""}">${audit}</p>
      <h3>Signal</h3>${kv(d.signal)}
      <h3>Sizing</h3>${kv(d.sizing)}
      <h3>Risk checks and limits</h3>${table(["check", "result", "value", "limit", "scope"], checks, "no risk checks recorded (an exit or a no-trade)")}
      <h3>Features</h3>${kv(d.features)}
      <h3>Fills</h3>${table(["time (event)", "role", "side", "qty", "price"], fills, "no fill")}`);
  }

  async function showDecision(id) {
    S.decisionError = null;
    try {
      S.decision = await api(`/decisions/${encodeURIComponent(id)}`);
    } catch (e) {
      S.decision = null;
      S.decisionError = e.message;
    }
    schedule();
  }

  function renderRisk() {
    let changed = false;
    const live = S.up && S.snapshot ? S.snapshot.risk : null;
    const stored = (S.stored.risk && S.stored.risk.stored) || {};
    const sc = sidecar() || {};
    const state = (live && live.trading_state) || sc.trading_state || "unknown";
    const holds = (live && live.holds) || [];
    const cards = [card("trading", "trading", `<span class="${state === "HALTED" ? "neg" : "pos"}">${esc(state)}</span>`, { "data-testid": "risk-trading-state", "data-state": state })];
    if (sc.halted_by) cards.push(card("halted-by", "halted by", `${esc(sc.halted_by)}: ${esc(sc.halted_reason)}`, { "data-testid": "risk-halted-by", "data-operator": sc.halted_by }));
    cards.push(card("holds", "holds", holds.length ? holds.map(esc).join("<br>") : "none", { "data-testid": "risk-holds", "data-count": holds.length }));
    changed = keyedCards("risk-state", cards) || changed;
    if (S.up) {
      changed = keyedTable("limits", ["scope", "limit", "value", "use", "utilization"], ((live && live.limits) || []).map((l) => {
        const u = l.utilization;
        const meter = u === null || u === undefined ? `<span class="muted">per order</span>`
          : `<meter min="0" max="1" low="0.7" high="0.9" optimum="0" value="${Math.max(0, Math.min(1, u))}"></meter> ${num(u * 100, 0)}%`;
        return row(`${l.scope}|${l.limit}`, { "data-testid": "limit-row", "data-scope": l.scope, "data-limit": l.limit, "data-value": l.value ?? "",
          "data-use": l.use ?? "", "data-utilization": u ?? "" },
        [esc(l.scope), esc(l.limit), td(esc(l.value)), td(l.use === null || l.use === undefined ? "—" : esc(l.use)), meter]);
      }), "no limit set") || changed;
      changed = keyedTable("denials-live", ["reason", "count"], Object.entries((live && live.denials) || {}).map(([r, n]) =>
        row(r, { "data-testid": "denial-row", "data-source": "live", "data-reason": r, "data-count": n }, [esc(r), td(int(n))])), "none") || changed;
      changed = keyedTable("overrides", ["scope", "limit", "value", "asked by", "approved by", "why"], ((live && live.overrides) || []).map((o, i) =>
        row(`${o.scope}|${o.field || o.limit}|${i}`, { "data-testid": "override-row", "data-scope": o.scope, "data-limit": o.field || o.limit },
          [esc(o.scope), esc(o.field || o.limit), td(esc(o.value)), esc(o.who || o.operator), esc(o.approved_by), esc(o.why || o.reason)])), "none") || changed;
    } else {
      changed = setHTML("limits", `<p class="muted">limits in force are known live only: the sidecar is not reachable</p>`) || changed;
      changed = setHTML("denials-live", `<p class="muted">the sidecar is not reachable</p>`) || changed;
      changed = setHTML("overrides", `<p class="muted">the sidecar is not reachable</p>`) || changed;
    }
    if (S.errors.risk || stored.error) {
      return setHTML("denials-stored", `<p class="error" data-testid="error-risk">${esc(S.errors.risk || stored.error)}</p>`) || changed;
    }
    changed = keyedTable("denials-stored", ["reason", "count"], Object.entries(stored.denials_by_reason || {}).map(([r, n]) =>
      row(r, { "data-testid": "denial-row", "data-source": "stored", "data-reason": r, "data-count": n }, [esc(r), td(int(n))])), "none in the history window") || changed;
    changed = keyedTable("denials-recent", ["time (UTC)", "instrument", "strategy", "outcome"], (stored.recent_denials || []).slice(0, 20).map((d) =>
      row(d.decision_id, { "data-testid": "denied-decision", class: "link", "data-decision-id": d.decision_id },
        [time(d.ts_sidecar_ns), esc(d.instrument), esc(d.strategy), esc(d.outcome)])), "none") || changed;
    changed = keyedTable("risk-actions", ["time (UTC)", "what", "operator", "why", "detail"], (stored.actions || []).slice(0, 50).map((a) => {
      const p = a.payload || {};
      const who = p.operator || p.who || a.subject_id;
      return row(`${a.seq}|${a.ts_ns}|${a.kind}`, { "data-testid": "risk-action", "data-kind": a.kind, "data-operator": who, "data-seq": a.seq ?? "" },
        [time(a.ts_ns), esc(a.kind), esc(who), esc(p.reason || p.why || p.cause || ""), esc(p.scope ? `${p.scope} ${p.field} = ${JSON.stringify(p.value)}` : p.state || "")]);
    }), "none in the history window") || changed;
    return changed;
  }

  function renderLatency() {
    let changed = false;
    const lat = S.up && S.snapshot ? S.snapshot.latency : null;
    if (!lat) {
      changed = setHTML("tick-to-bracket", `<p class="muted">latency is known live only: the sidecar is not reachable</p>`) || changed;
      return setHTML("latency", "") || changed;
    }
    const t = lat.tick_to_bracket || {};
    changed = keyedCards("tick-to-bracket", [
      card("p50", "p50", us(t.p50_us), { "data-testid": "t2b-p50", "data-us": t.p50_us ?? "" }),
      card("p99", "p99", us(t.p99_us), { "data-testid": "t2b-p99", "data-us": t.p99_us ?? "" }),
      card("count", "count", int(t.count), { "data-testid": "t2b-count", "data-count": t.count ?? "" })]) || changed;
    changed = keyedTable("latency", ["stage", "p50", "p99", "count"], Object.entries(lat.stages || {}).map(([stage, v]) =>
      row(stage, { "data-testid": "latency-row", "data-stage": stage, "data-p50": v.p50_us ?? "", "data-p99": v.p99_us ?? "", "data-count": v.count ?? "" },
        [esc(stage), td(us(v.p50_us)), td(us(v.p99_us)), td(int(v.count))])), "no message handled yet") || changed;
    return changed;
  }

  function renderModels() {
    let changed = false;
    const m = S.stored.models || {};
    if (S.errors.models) return setHTML("models", errorText("models"));
    const metric = (x, k) => (x && typeof x[k] === "number" ? num(x[k], 4) : "—");
    changed = setText("champion", m.champion || "none") || changed;
    if ($("champion").dataset.modelId !== (m.champion || "")) $("champion").dataset.modelId = m.champion || "";
    changed = keyedTable("models", ["model", "status", "created (UTC)", "features", "trained on", "log-loss", "Brier", "expires"], (m.models || []).map((x) =>
      row(x.model_id, { "data-testid": "model-row", "data-model-id": x.model_id, "data-status": x.status },
        [esc(x.model_id), `<td class="${x.status === "champion" ? "pos" : ""}">${esc(x.status)}</td>`, time(x.created_ns), esc(x.feature_set_version),
          `${time(x.train_start_ns)} – ${time(x.train_end_ns)}`, td(metric(x.metrics, "log_loss")), td(metric(x.metrics, "brier")), x.expires_ns ? time(x.expires_ns) : "never"])),
      "no model registered") || changed;
    changed = keyedTable("drift", ["time (UTC)", "model", "feature", "metric", "value", "threshold", "rows"], (m.drift_alerts || []).map((d) =>
      row(d.id ?? `${d.model_id}|${d.feature}|${d.ts_ns}`, { "data-testid": "drift-row", "data-model-id": d.model_id, "data-feature": d.feature, "data-metric": d.metric },
        [time(d.ts_ns), esc(d.model_id), esc(d.feature), esc(d.metric), td(num(d.value, 4)), td(num(d.threshold, 4)), td(int(d.n_rows))])),
      "no drift alert in the history window") || changed;
    return changed;
  }

  function renderAudit() {
    let changed = false;
    const a = S.stored.audit;
    if (S.errors.audit) return setHTML("audit-state", errorText("audit"));
    if (!a) return setHTML("audit-state", `<p class="muted">reading…</p>`);
    const v = a.verification;
    const verdict = v ? (v.ok ? "intact" : "BROKEN") : (a.verifying ? "verifying…" : "not verified yet");
    const cp = a.last_checkpoint;
    const cards = [
      card("verdict", "chain", `<span class="${v && !v.ok ? "neg" : v ? "pos" : ""}">${esc(verdict)}</span>`, { "data-testid": "audit-verdict", "data-ok": v ? String(v.ok) : "" }),
      card("verified", "verified up to", v ? `record ${int(v.up_to_seq)}` : "—", { "data-testid": "audit-verified-seq", "data-seq": v ? v.up_to_seq : "" }),
      card("verified-at", "verified at", v ? time(v.verified_at_ns) : "—", { "data-testid": "audit-verified-at", "data-ns": v ? v.verified_at_ns : "" }),
      card("head", "stored head", a.head ? `record ${int(a.head.seq)}` : "empty", { "data-testid": "audit-head", "data-seq": a.head ? a.head.seq : 0 }),
      card("checkpoint", "last signed checkpoint", cp && cp.seq ? `record ${int(cp.seq)} at ${time(cp.ts_us * 1000)}` : "none",
        { "data-testid": "audit-checkpoint", "data-seq": (cp && cp.seq) ?? "" }),
    ];
    if (v && !v.ok) cards.push(card("bad", "first bad record", `${esc(v.first_bad_seq)}: ${esc(v.reason)}`, { "data-testid": "audit-first-bad", "data-seq": v.first_bad_seq ?? "" }));
    if (a.error) cards.push(card("problem", "problem", esc(a.error), { "data-testid": "audit-problem" }));
    changed = keyedCards("audit-state", cards) || changed;
    changed = keyedTable("audit-recent", ["seq", "time (UTC)", "kind", "subject", "session", "hash"], (a.recent || []).map((r) =>
      row(r.seq, { "data-testid": "audit-row", "data-seq": r.seq, "data-kind": r.kind },
        [td(esc(r.seq)), time(r.ts_us * 1000), esc(r.kind), esc(r.subject_id), esc(r.session_id), `<td class="hash">${esc((r.hash || "").slice(0, 16))}…</td>`])),
      "the chain is empty") || changed;
    return changed;
  }

  // ------------------------------------------------------------------ actions

  let pending = null;               // "kill" | "enable" while the dialog is open

  function openConfirm(action) {
    pending = action;
    const word = action === "kill" ? "KILL" : "ENABLE";
    $("confirm-title").textContent = action === "kill" ? "KILL SWITCH" : "Enable trading";
    $("confirm-text").textContent = action === "kill"
      ? "Every connected NT8 session flattens every instrument, and new orders are refused until a named operator enables trading. Recorded in the audit trail under your name."
      : "New orders are allowed again. Recorded in the audit trail under your name.";
    $("confirm-expected").textContent = word;
    $("confirm-submit").textContent = word;
    $("confirm-submit").className = action === "kill" ? "danger" : "";
    $("confirm-error").textContent = "";
    $("confirm-word").value = "";
    $("confirm-reason").value = "";
    if (!S.user) $("confirm-operator").value = localStorage.getItem("nt8bridge.operator") || "";
    $("confirm-dialog").showModal();
    (S.user || $("confirm-operator").value ? $("confirm-reason") : $("confirm-operator")).focus();
  }

  async function submitConfirm(ev) {
    ev.preventDefault();
    if (!pending) return;
    const body = { operator: $("confirm-operator").value, reason: $("confirm-reason").value, confirm: $("confirm-word").value };
    $("confirm-submit").disabled = true;
    try {
      const r = await api(`/${pending}`, { method: "POST", body });
      if (!S.user) localStorage.setItem("nt8bridge.operator", body.operator);
      $("confirm-dialog").close();
      notice(pending === "kill" ? `KILLED by ${r.operator}: ${r.sessions_flattened ?? 0} NT8 sessions told to flatten; new orders refused until enabled`
        : `trading enabled by ${r.operator}`);
      pending = null;
      refreshStatus();
      refreshStored();
    } catch (e) {
      $("confirm-error").textContent = e.message;
    } finally {
      $("confirm-submit").disabled = false;
    }
  }

  function limitValue(text) {
    const t = text.trim();
    const low = t.toLowerCase();
    if (low === "none" || low === "null") return null;
    if (low === "true" || low === "false") return low === "true";
    if (t !== "" && !Number.isNaN(Number(t))) return Number(t);
    return t;
  }

  async function submitLimit(ev) {
    ev.preventDefault();
    const f = ev.target;
    const body = { scope: f.scope.value, limit: f.limit.value, value: limitValue(f.value.value), operator: f.operator.value, reason: f.reason.value };
    try {
      const r = await api("/limits", { method: "POST", body });
      notice(`${r.scope} ${r.limit} = ${JSON.stringify(r.value)} by ${r.operator} (${r.applied} sessions; recorded in the audit trail)`);
      refreshStored();
    } catch (e) {
      notice(e.message, true);
    }
  }

  function login() {
    S.needLogin = true;
    const d = $("login-dialog");
    if (!d.open) d.showModal();
  }

  async function submitLogin(ev) {
    ev.preventDefault();
    try {
      await api("/login", { method: "POST", body: { user: $("login-user").value, password: $("login-password").value } });
      location.reload();
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  }

  function route() {
    const v = location.hash.replace("#", "");
    S.view = VIEWS.includes(v) ? v : "positions";
    refreshStored();
    schedule();
  }

  function start() {
    for (const b of document.querySelectorAll("button[data-action]")) b.addEventListener("click", () => openConfirm(b.dataset.action));
    $("confirm-form").addEventListener("submit", submitConfirm);
    $("confirm-cancel").addEventListener("click", () => { pending = null; $("confirm-dialog").close(); });
    $("limit-form").addEventListener("submit", submitLimit);
    $("login-form").addEventListener("submit", submitLogin);
    $("logout-button").addEventListener("click", async () => { try { await api("/logout", { method: "POST" }); } finally { location.reload(); } });
    $("blotter").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-decision-id]");
      if (tr && tr.dataset.decisionId) showDecision(tr.dataset.decisionId);
    });
    $("denials-recent").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-decision-id]");
      if (tr && tr.dataset.decisionId) { location.hash = "#blotter"; showDecision(tr.dataset.decisionId); }
    });
    window.addEventListener("hashchange", route);
    setInterval(schedule, 1000);    // the clock in the header, drawn by the gated render like the rest
    setInterval(refreshStored, REFRESH_MS);
    setInterval(() => { if (!S.needLogin) refreshStatus(); }, REFRESH_MS);
    // the stream and the stored views once the console has said who may see them
    refreshStatus().then(() => {
      if (S.needLogin) return;
      route();
      connect();
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
