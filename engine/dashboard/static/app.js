// orchestrator dashboard: polls the read-only JSON API once a second and draws the run.
// Every value from the server is hostile data (task ids, descriptions, log lines, diffs):
// it only ever reaches the page through textContent, createTextNode or setAttribute on
// non-URL attributes. No innerHTML anywhere.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const POLL_MS = 1000;
const LOG_MAX = 200000;
const STATUS_ORDER = ["pending", "running", "executed", "verifying", "approved", "merging", "merged",
                      "rejected", "conflicted", "failed", "blocked", "blocked_permission"];

const TERMINAL = ["merged", "failed", "blocked", "blocked_permission"];

const ui = {
  snap: null, selected: null, userSelected: false, tab: "log",
  log: {task: null, next: null, inode: null, busy: false},
  detailSig: null, detailAt: 0, diffSig: null, lastOk: 0,
  // which page of a big run's tasks (the server sends only that page): group "lo-hi", "all", or
  // null (where the run is); status "a,b" or null; the first row
  view: {group: null, status: null, offset: 0},
  asked: 0, shown: 0, rendered: false,
};

// ------------------------------------------------------------------ DOM helpers
function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const kid of kids) add(node, kid);
  return node;
}
function svg(tag, attrs, ...kids) {
  const node = document.createElementNS(SVGNS, tag);
  setAttrs(node, attrs);
  for (const kid of kids) add(node, kid);
  return node;
}
function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (/^on/i.test(k) || k === "href" || k === "src") throw new Error("refusing attribute " + k);
    node.setAttribute(k, String(v));
  }
}
function add(node, kid) {
  if (kid === null || kid === undefined || kid === false) return;
  if (Array.isArray(kid)) { kid.forEach((k) => add(node, k)); return; }
  node.appendChild(typeof kid === "object" ? kid : document.createTextNode(String(kid)));
}
function $(id) { return document.getElementById(id); }
function fill(id, ...kids) { const n = $(id); n.replaceChildren(); add(n, kids); return n; }

// ------------------------------------------------------------------ formatting
function dur(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 10) return s.toFixed(1) + "s";
  if (s < 60) return Math.round(s) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.round(s % 60)).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}
function money(v) { return v === null || v === undefined ? "–" : "$" + (v < 10 ? v.toFixed(3) : v.toFixed(2)); }
function tokens(v) {
  if (v === null || v === undefined) return "–";
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return String(Math.round(v));
}
function clock(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "–"; }
function cut(s, n) { s = s === null || s === undefined ? "" : String(s); return s.length > n ? s.slice(0, n - 1) + "…" : s; }
function stClass(status) { return "st-" + (STATUS_ORDER.includes(status) ? status : "other"); }

// ------------------------------------------------------------------ fetching
async function getJSON(url) {
  const res = await fetch(url, {cache: "no-store"});
  if (!res.ok) throw new Error(url + ": HTTP " + res.status);
  return res.json();
}
function taskURL(id, tail) { return "/api/task/" + encodeURIComponent(id) + (tail || ""); }

function snapshotURL() {
  const q = new URLSearchParams();
  if (ui.view.group) q.set("group", ui.view.group);
  if (ui.view.status) q.set("status", ui.view.status);
  if (ui.view.offset) q.set("offset", String(ui.view.offset));
  if (ui.selected) q.set("task", ui.selected);
  const query = q.toString();
  return "/api/snapshot" + (query ? "?" + query : "");
}

async function fetchSnapshot() {
  const n = ++ui.asked;
  const snap = await getJSON(snapshotURL());
  if (n < ui.shown) return;  // an answer to an older question (the view changed meanwhile)
  ui.shown = n;
  ui.lastOk = Date.now();
  render(snap);
}

async function pollSnapshot() {
  try {
    await fetchSnapshot();
  } catch (err) {
    // keep showing the last state; say so
  }
  renderConn();
  setTimeout(pollSnapshot, POLL_MS);
}

function setView(change) {
  Object.assign(ui.view, change);
  fetchSnapshot().catch(() => {});
}

function paged(snap) { return Boolean(snap && snap.scale && snap.scale.paged); }

function renderConn() {
  const conn = $("conn");
  const fresh = Date.now() - ui.lastOk < 3500;
  conn.className = "conn " + (fresh ? "ok" : "lost");
  conn.textContent = fresh ? "live" : "disconnected: showing the last state";
}

// ------------------------------------------------------------------ rendering
function render(snap) {
  if (!ui.rendered) performance.mark("dashboard-snapshot");  // the first one arrived
  ui.snap = snap;
  const byId = new Map(snap.tasks.map((t) => [t.id, t]));
  if (snap.selected) byId.set(snap.selected.id, snap.selected);
  if (ui.selected && !byId.has(ui.selected)) { ui.selected = null; ui.userSelected = false; }
  if (!ui.userSelected) {
    const pick = snap.tasks.find((t) => t.running) || (snap.attention[0] && byId.get(snap.attention[0].task))
      || snap.tasks.find((t) => t.status === "verifying") || null;
    if (pick && pick.id !== ui.selected) selectTask(pick.id, false);
  }
  renderHeader(snap);
  renderNotices(snap);
  renderAttention(snap);
  renderTotals(snap);
  document.body.classList.toggle("big", paged(snap));
  if (paged(snap)) renderOverview(snap);
  renderDag(snap);
  renderGantt(snap);
  if (paged(snap)) renderTable(snap);
  renderDetailHead();
  refreshDetail(false);
  if (!ui.rendered) {  // the first snapshot on the screen: after its layout and paint
    ui.rendered = true;
    requestAnimationFrame(() => setTimeout(() => {
      performance.mark("dashboard-rendered");
      document.documentElement.setAttribute("data-ready", "1");
    }, 0));
  }
}

function renderHeader(snap) {
  $("project").textContent = snap.project || "orchestrator";
  $("run-id").textContent = snap.run.id || "";
  document.title = (snap.totals.running ? "▶ " : "") + (snap.project || "") + " · orchestrator dashboard";
  const m = snap.machine;
  const done = new Set(m.completed_phases || []);
  fill("pipeline", m.pipeline.map((s) => el("li", {
    class: (s === m.state ? "current" : done.has(s) ? "done" : "") + (s === m.state && snap.run.status === "running" ? " live" : ""),
    title: s === m.state ? "current state" : done.has(s) ? "visited" : "",
  }, s)));
  if (m.state && !m.pipeline.includes(m.state)) add($("pipeline"), el("li", {class: "current bad"}, m.state));
  const r = snap.run;
  const parts = [];
  if (!snap.has_run) parts.push("no run in this project yet (.claude/auto-progress.yaml not found)");
  if (r.status) parts.push(el("span", {class: "pill run-" + cut(r.status, 20)}, r.status));
  if (r.current_group) parts.push("group " + r.current_group + "/" + (r.total_groups || "?"));
  if (r.mode) parts.push(r.mode.toLowerCase());
  if (r.base) parts.push("base " + r.base);
  if (r.plan) parts.push(r.plan);
  fill("run-meta", parts.map((p, i) => [i ? " · " : "", p]));
}

function renderNotices(snap) {
  const items = snap.notices.map((n) => el("div", {class: "notice " + n.level},
    el("strong", {}, n.text), " ", el("span", {}, n.todo)));
  for (const w of snap.warnings) items.push(el("div", {class: "notice warn"}, w));
  fill("notices", items);
}

const ATTENTION_CARDS = 8;  // a big run: the first few cards, the rest in the table

function renderAttention(snap) {
  if (!snap.attention.length) { fill("attention"); return; }
  const big = paged(snap);
  const total = big ? snap.scale.attention_total : snap.attention.length;
  const cards = (big ? snap.attention.slice(0, ATTENTION_CARDS) : snap.attention).map((a) => {
    const card = el("div", {class: "need " + stClass(a.status) + (a.waits_on && a.waits_on.length ? " behind" : ""),
                            "data-task": a.task, role: "button", tabindex: "0"},
      el("div", {class: "need-head"}, el("span", {class: "badge " + stClass(a.status)}, a.status.replace("_", " ")),
        " ", el("strong", {class: "need-task"}, a.task)),
      el("div", {class: "need-reason"}, a.reason),
      el("div", {class: "need-todo"}, "→ ", a.todo));
    card.addEventListener("click", () => selectTask(a.task, true));
    return card;
  });
  let more = null;
  if (total > cards.length) {
    more = el("button", {class: "pg more"}, "all " + total + " in the task table ↓");
    more.addEventListener("click", () => {
      setView({status: "failed,blocked,blocked_permission", group: "all", offset: 0});
      $("table-panel").scrollIntoView({behavior: "smooth"});
    });
  }
  fill("attention", el("h2", {}, "Needs you (" + total + ")", more ? " " : null, more), el("div", {class: "needs"}, cards));
}

function card(label, value, sub, cls) {
  return el("div", {class: "card " + (cls || "")}, el("div", {class: "card-label"}, label),
    el("div", {class: "card-value"}, value), sub ? el("div", {class: "card-sub"}, sub) : null);
}

function renderTotals(snap) {
  const t = snap.totals;
  const done = t.tasks > 0 && Object.keys(t.by_status).every((s) => TERMINAL.includes(s));
  const ratio = done && t.makespan && t.lower_bound ? t.makespan / t.lower_bound : null;
  const bar = el("div", {class: "ratio"}, el("div", {class: "ratio-fill"}));
  if (t.makespan && t.lower_bound) bar.firstChild.style.width = Math.min(100, 100 * t.makespan / t.lower_bound).toFixed(1) + "%";
  fill("totals",
    card("merged", t.merged + " / " + t.tasks, t.pending ? t.pending + " pending" : "all started", "c-merged"),
    card("running", String(t.running), "of " + t.agents + " agent slots", "c-running"),
    card("failed / blocked", String(t.failed), t.failed ? "see Needs you" : "none", t.failed ? "c-failed" : ""),
    card("cost", money(t.cost_usd), "tokens " + tokens(t.tokens_in) + " in / " + tokens(t.tokens_out) + " out"),
    el("div", {class: "card wide"}, el("div", {class: "card-label"},
        done ? "makespan vs lower bound" : "makespan so far vs lower bound for the run"),
      el("div", {class: "card-value"}, dur(t.makespan), el("span", {class: "vs"}, " vs "), dur(t.lower_bound),
        ratio ? el("span", {class: "vs"}, "  ×" + ratio.toFixed(2) + " the bound") : null),
      bar,
      el("div", {class: "card-sub"}, "bound = max(critical path " + dur(t.critical_path) + ", work "
        + dur(t.total_work) + " / " + t.agents + " agents)" + (done ? "" : "; unfinished tasks at the mean "
        + dur(t.estimated_task)))));
}

// ------------------------------------------------------------------ DAG
const NODE_W = 178, NODE_H = 62, GAP_X = 56, GAP_Y = 16, PAD = 14;
const SMALL = {w: 150, h: 44, gx: 40, gy: 10, rows: 8};  // a page of a big run

function renderDag(snap) {
  const host = $("dag");
  const big = paged(snap);
  $("dag-hint").textContent = big ? "this page's tasks by dependency layer · " : "by dependency layer · ";
  if (!snap.tasks.length) {
    fill("dag", el("p", {class: "empty"}, big ? "No task matches (see the filters below)." : "No tasks yet."));
    fill("legend");
    return;
  }
  const W = big ? SMALL.w : NODE_W, H = big ? SMALL.h : NODE_H, GX = big ? SMALL.gx : GAP_X, GY = big ? SMALL.gy : GAP_Y;
  const columns = [];  // a layer, or a part of a tall one
  for (const layer of snap.layers) {
    const rows = big ? SMALL.rows : layer.length;
    for (let i = 0; i < layer.length; i += rows) columns.push(layer.slice(i, i + rows));
  }
  const tallest = Math.max(...columns.map((l) => l.length));
  const height = PAD * 2 + tallest * H + (tallest - 1) * GY;
  const width = PAD * 2 + columns.length * W + (columns.length - 1) * GX;
  const pos = new Map();
  columns.forEach((layer, li) => {
    const colH = layer.length * H + (layer.length - 1) * GY;
    const top = big ? PAD : (height - colH) / 2;
    layer.forEach((id, i) => pos.set(id, {x: PAD + li * (W + GX), y: top + i * (H + GY)}));
  });
  const cp = snap.critical_path;
  const cpEdges = new Set((snap.critical_edges || cp.slice(1).map((id, i) => [cp[i], id])).map(([a, b]) => a + "\u0000" + b));
  const root = svg("svg", {id: "dag-svg", viewBox: `0 0 ${width} ${height}`, width: big ? width : "100%",
                           height: big ? height : null, role: "img", "aria-label": "task dependency graph"});
  root.style.maxWidth = width + "px";  // (a page of a big run at its own size: the panel scrolls)
  root.appendChild(svg("defs", {}, svg("marker", {id: "arrow", viewBox: "0 0 8 8", refX: 7, refY: 4, markerWidth: 8,
    markerHeight: 8, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse"}, svg("path", {d: "M0,0 L8,4 L0,8 z", class: "arrowhead"})),
    svg("marker", {id: "arrow-cp", viewBox: "0 0 8 8", refX: 7, refY: 4, markerWidth: 9, markerHeight: 9,
      markerUnits: "userSpaceOnUse", orient: "auto-start-reverse"}, svg("path", {d: "M0,0 L8,4 L0,8 z", class: "arrowhead cp"}))));
  const edges = svg("g", {class: "edges"});
  for (const t of snap.tasks) {
    for (const d of t.depends_on) {
      const a = pos.get(d), b = pos.get(t.id);
      if (!a || !b) continue;
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2;
      const mid = (x1 + x2) / 2;
      const critical = cpEdges.has(d + "\u0000" + t.id);
      const order = (t.file_order || []).includes(d);  // shared file: order only, no failure chained
      edges.appendChild(svg("path", {d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
        class: "edge" + (critical ? " cp" : "") + (order ? " file-order" : ""),
        "marker-end": critical ? "url(#arrow-cp)" : "url(#arrow)"}));
    }
  }
  root.appendChild(edges);
  for (const t of snap.tasks) {
    const p = pos.get(t.id);
    if (!p) continue;
    const line2 = [t.status.replace("_", " "), t.slot, t.attempt ? "#" + t.attempt : null].filter(Boolean).join(" · ");
    const line3 = [dur(t.elapsed), t.cost_usd !== null ? money(t.cost_usd) : null,
                   t.tokens_in !== null || t.tokens_out !== null ? tokens((t.tokens_in || 0) + (t.tokens_out || 0)) + " tok" : null]
      .filter(Boolean).join(" · ");
    const g = svg("g", {class: "node " + stClass(t.status) + (t.critical ? " critical" : "") + (t.running ? " running" : "")
                         + (t.id === ui.selected ? " selected" : ""),
                        transform: `translate(${p.x},${p.y})`, "data-task": t.id, tabindex: "0"},
      svg("title", {}, t.id + (t.name ? ": " + t.name : "") + "\n" + line2 + "\n" + line3
        + (big && t.depends_on.length ? "\nafter " + t.depends_on.join(", ") : "")),
      svg("rect", {class: "box", width: W, height: H, rx: big ? 6 : 8}),
      svg("rect", {class: "stripe", width: 5, height: H, rx: 2}),
      svg("text", {class: "t-id", x: 14, y: big ? 17 : 19}, cut(t.id, big ? 16 : 20)),
      svg("text", {class: "t-st", x: 14, y: big ? 34 : 36}, cut(line2, big ? 23 : 28)),
      big ? null : svg("text", {class: "t-meta", x: 14, y: 52}, cut(line3, 30)));
    if (t.critical) g.appendChild(svg("text", {class: "t-cp", x: W - 10, y: big ? 17 : 19, "text-anchor": "end"}, "★"));
    g.addEventListener("click", () => selectTask(t.id, true));
    root.appendChild(g);
  }
  host.replaceChildren(root);
  const present = STATUS_ORDER.filter((s) => snap.tasks.some((t) => t.status === s));
  fill("legend", present.map((s) => el("span", {class: "key"}, el("i", {class: "dot " + stClass(s)}), s.replace("_", " "))));
}

// ------------------------------------------------------------------ Gantt
function niceStep(span, ticks) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400];
  return steps.find((s) => span / s <= ticks) || 86400;
}

function renderGantt(snap) {
  const g = snap.gantt;
  $("gantt-hint").textContent = g.total_bars > g.bars.length
    ? "the latest " + g.bars.length + " of " + g.total_bars + " attempts and checks, per slot" : "attempts per slot";
  if (!g.bars.length) { fill("gantt", el("p", {class: "empty"}, "No attempts yet.")); return; }
  const t0 = g.start, t1 = Math.max(g.end, ...g.bars.map((b) => b.end || snap.now)) || snap.now;
  const span = Math.max(1, t1 - t0);
  const LABEL = 74, ROW = 30, W = Math.max(520, $("gantt").clientWidth - 4 || 560), AXIS = 22;
  const plotW = W - LABEL - 12;
  const H = AXIS + g.slots.length * ROW + 6;
  const x = (t) => LABEL + ((t - t0) / span) * plotW;
  const root = svg("svg", {id: "gantt-svg", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                           "aria-label": "timeline of attempts per slot"});
  const step = niceStep(span, 8);
  for (let s = 0; s <= span + 0.001; s += step) {
    root.appendChild(svg("line", {class: "tick", x1: x(t0 + s), x2: x(t0 + s), y1: AXIS - 4, y2: H}));
    root.appendChild(svg("text", {class: "tick-label", x: x(t0 + s), y: 12, "text-anchor": "middle"}, dur(s)));
  }
  g.slots.forEach((slot, i) => {
    const y = AXIS + i * ROW;
    root.appendChild(svg("rect", {class: "lane" + (i % 2 ? " odd" : ""), x: 0, y, width: W, height: ROW}));
    root.appendChild(svg("text", {class: "lane-label", x: 8, y: y + ROW / 2 + 4}, cut(slot, 11)));
  });
  const lastAttempt = new Map();
  for (const b of g.bars) if (b.kind === "agent" || b.kind === "rebase") lastAttempt.set(b.task, Math.max(lastAttempt.get(b.task) || 0, b.n || 0));
  for (const b of g.bars) {
    const row = g.slots.indexOf(b.slot);
    const phase = b.kind === "qa" || b.kind === "merge";
    const y = AXIS + row * ROW + (phase ? 9 : 5);
    const h = ROW - (phase ? 18 : 10);
    const end = b.end === null ? snap.now : b.end;
    const bx = x(b.start), bw = Math.max(3, x(end) - x(b.start));
    const superseded = !phase && (b.n || 0) < (lastAttempt.get(b.task) || 0);
    const status = phase ? (b.kind === "qa" ? "verifying" : "merging") : superseded ? "rejected"
      : b.end === null ? "running" : b.status;
    const label = phase ? b.kind + " " + b.task : b.task + (b.n > 1 || superseded ? " #" + b.n : "");
    const what = phase ? (b.kind === "qa" ? "QA of " : "merge of ") + b.task : `${b.task} attempt ${b.n || "?"} (${b.kind})`;
    const bar = svg("g", {class: "bar " + stClass(status) + (phase ? " phase" : "") + (b.critical && !phase ? " critical" : "")
                           + (b.end === null ? " running" : "") + (b.task === ui.selected ? " selected" : ""),
                          "data-task": b.task},
      svg("title", {}, `${what} on ${b.slot}: ${clock(b.start)} – `
        + `${b.end === null ? "running" : clock(b.end)} (${dur(end - b.start)})${b.outcome ? ", " + b.outcome : ""}`),
      svg("rect", {x: bx, y, width: bw, height: h, rx: phase ? 2 : 4}));
    if (bw > 34 && !phase) bar.appendChild(svg("text", {class: "bar-label", x: bx + 5, y: y + h / 2 + 1}, cut(label, Math.floor(bw / 7))));
    bar.addEventListener("click", () => selectTask(b.task, true));
    root.appendChild(bar);
  }
  if (snap.run.status === "running") {
    root.appendChild(svg("line", {class: "now", x1: x(snap.now), x2: x(snap.now), y1: AXIS - 6, y2: H}));
  }
  $("gantt").replaceChildren(root);
}

// ------------------------------------------------------------------ task detail
function selectTask(id, byUser) {
  if (byUser) ui.userSelected = true;
  if (ui.selected === id) return;
  ui.selected = id;
  ui.detailSig = null;
  ui.diffSig = null;
  ui.log = {task: id, next: null, inode: null, busy: false};
  $("log").textContent = "";
  fill("qa"); fill("attempts"); $("diff").textContent = ""; $("diff-source").textContent = "";
  try { history.replaceState(null, "", "#task=" + encodeURIComponent(id) + (ui.tab !== "log" ? "&tab=" + ui.tab : "")); }
  catch (e) { /* file: or sandboxed */ }
  if (ui.snap) {
    renderDag(ui.snap); renderGantt(ui.snap); renderDetailHead();
    if (paged(ui.snap)) { renderTable(ui.snap); if (!currentTask()) fetchSnapshot().catch(() => {}); }
  }
  refreshDetail(true);
  pollLog();
}

// ------------------------------------------------------------------ a big run: aggregates, a page of rows
function groupKey(b) { return b.lo + "-" + b.hi; }
function groupName(unit, lo, hi) {
  return (lo === hi ? unit + " " + lo : unit + "s " + lo + "–" + hi);
}

function statusBar(byStatus, total, cls) {
  const bar = el("div", {class: "sbar " + (cls || "")});
  for (const s of STATUS_ORDER.concat(Object.keys(byStatus).filter((x) => !STATUS_ORDER.includes(x)))) {
    const n = byStatus[s];
    if (!n) continue;
    const seg = el("i", {class: stClass(s), title: n + " " + s.replace("_", " ")});
    seg.style.width = (100 * n / Math.max(1, total)).toFixed(2) + "%";
    bar.appendChild(seg);
  }
  return bar;
}

function renderOverview(snap) {
  const sc = snap.scale, unit = sc.unit, t = snap.totals;
  const current = sc.group ? sc.group[0] + "-" + sc.group[1] : null;
  $("overview-hint").textContent = t.tasks + " tasks in " + snap.aggregates.length + " blocks of consecutive "
    + unit + "s (the numbers on each) · blue: under way · red: need you · click a block for its tasks";
  const statuses = STATUS_ORDER.concat(Object.keys(t.by_status).filter((x) => !STATUS_ORDER.includes(x)))
    .filter((s) => t.by_status[s]);
  const chosen = new Set((ui.view.status || "").split(",").filter(Boolean));
  const keys = statuses.map((s) => {
    const key = el("button", {class: "key" + (chosen.has(s) ? " on" : ""), "data-status": s,
                              title: "show only " + s.replace("_", " ") + " tasks (again: all)"},
      el("i", {class: "dot " + stClass(s)}), s.replace("_", " ") + " " + t.by_status[s]);
    key.addEventListener("click", () => {
      const next = chosen.has(s) ? null : s;
      setView({status: next, offset: 0, group: next ? "all" : ui.view.group});  // (the counts are the run's)
    });
    return key;
  });
  const scope = el("button", {class: "key scope" + (ui.view.group === "all" ? " on" : "")}, "all " + unit + "s");
  scope.addEventListener("click", () => setView({group: "all", offset: 0}));
  const follow = el("button", {class: "key scope" + (ui.view.group === null ? " on" : ""),
                               title: "the block where the run is now"}, "follow the run");
  follow.addEventListener("click", () => setView({group: null, status: null, offset: 0}));
  fill("overview-keys", keys, el("span", {class: "spacer"}), follow, scope);
  fill("overview-bar", statusBar(t.by_status, t.tasks, "big"));
  const tiles = snap.aggregates.map((b) => {
    const key = groupKey(b);
    const merged = b.by_status.merged || 0;
    const tile = el("div", {class: "tile" + (key === current ? " selected" : "") + (b.under_way ? " live" : "")
                              + (b.needs_you ? " bad" : "") + (merged === b.tasks ? " done" : ""),
                            "data-group": key, role: "button", tabindex: "0",
                            title: groupName(unit, b.lo, b.hi) + ": " + b.tasks + " tasks, "
                              + Object.entries(b.by_status).map(([s, n]) => n + " " + s.replace("_", " ")).join(", ")},
      el("div", {class: "tile-head"}, el("span", {}, b.lo === b.hi ? String(b.lo) : b.lo + "–" + b.hi),
        el("span", {},
          b.critical ? el("span", {class: "t-cp", title: "on the critical path"}, "★") : null,
          b.under_way ? el("span", {class: "n live-n", title: b.under_way + " under way"}, String(b.under_way)) : null,
          b.needs_you ? el("span", {class: "n bad-n", title: b.needs_you + " need you"}, String(b.needs_you)) : null)),
      statusBar(b.by_status, b.tasks),
      el("div", {class: "tile-sub"}, merged + "/" + b.tasks + " merged"));
    tile.addEventListener("click", () => setView({group: key, offset: 0}));
    return tile;
  });
  fill("overview", tiles);
}

function renderTable(snap) {
  const sc = snap.scale;
  const first = sc.matched ? sc.offset + 1 : 0, last = sc.offset + snap.tasks.length;
  const what = [sc.group ? groupName(sc.unit, sc.group[0], sc.group[1]) : "all " + sc.unit + "s",
                sc.status ? sc.status.map((s) => s.replace("_", " ")).join(", ") : null,
                sc.auto ? "where the run is" : null].filter(Boolean).join(" · ");
  $("table-hint").textContent = what;
  const prev = el("button", {class: "pg", disabled: sc.offset <= 0}, "‹ previous");
  const next = el("button", {class: "pg", disabled: last >= sc.matched}, "next ›");
  prev.addEventListener("click", () => setView({offset: Math.max(0, sc.offset - sc.limit), group: ui.view.group || (sc.group && sc.group.join("-"))}));
  next.addEventListener("click", () => setView({offset: sc.offset + sc.limit, group: ui.view.group || (sc.group && sc.group.join("-"))}));
  fill("pager", prev, el("span", {class: "muted"}, " " + first + "–" + last + " of " + sc.matched + " "), next);
  const rows = snap.tasks.map((t) => {
    const row = el("tr", {class: (t.id === ui.selected ? "selected " : "") + (t.running ? "running" : ""), "data-task": t.id},
      el("td", {class: "task-id"}, t.id),
      el("td", {}, el("span", {class: "badge " + stClass(t.status)}, t.status.replace("_", " "))),
      el("td", {}, t.group === null ? "" : String(t.group)),
      el("td", {}, t.slot || ""), el("td", {}, t.attempt ? "#" + t.attempt : ""),
      el("td", {class: "num"}, dur(t.elapsed)), el("td", {class: "num"}, t.cost_usd !== null ? money(t.cost_usd) : ""),
      el("td", {class: "deps"}, cut(t.depends_on.join(", "), 40)),
      el("td", {class: "name"}, cut(t.failure || t.name || "", 90)));
    row.addEventListener("click", () => selectTask(t.id, true));
    return row;
  });
  const body = $("task-rows");
  body.replaceChildren(...rows);
  if (!rows.length) body.appendChild(el("tr", {}, el("td", {colspan: 9, class: "empty"}, "No task matches.")));
}

function currentTask() {
  if (!ui.snap || !ui.selected) return null;
  const s = ui.snap.selected;
  return ui.snap.tasks.find((t) => t.id === ui.selected) || (s && s.id === ui.selected ? s : null);
}

function renderDetailHead() {
  const t = currentTask();
  if (!t) { $("detail-title").textContent = "Select a task"; fill("detail-meta"); return; }
  fill("detail-title", el("span", {class: "badge " + stClass(t.status)}, t.status.replace("_", " ")), " ",
    el("span", {class: "task-id"}, t.id), t.name ? el("span", {class: "task-name"}, " — " + t.name) : null);
  const bits = [t.slot ? "slot " + t.slot : null, t.node ? "node " + t.node : null,
    t.attempt ? "attempt " + t.attempt : null, "elapsed " + dur(t.elapsed),
    t.cost_usd !== null ? "cost " + money(t.cost_usd) : null,
    t.tokens_in !== null ? "tokens " + tokens(t.tokens_in) + " in / " + tokens(t.tokens_out) + " out" : null,
    t.turns !== null ? t.turns + " turns" : null, t.branch ? "branch " + t.branch : null,
    t.depends_on.length ? "after " + t.depends_on.join(", ") : null, t.critical ? "on the critical path" : null];
  fill("detail-meta", bits.filter(Boolean).join(" · "));
  if (t.failure) add($("detail-meta"), el("div", {class: "failure"}, t.failure));
}

async function refreshDetail(force) {
  const t = currentTask();
  if (!t) return;
  const sig = [t.id, t.status, t.attempt, t.running].join("|");
  const stale = Date.now() - ui.detailAt > 5000 && t.running;
  if (!force && sig === ui.detailSig && !stale) return;
  ui.detailSig = sig;
  ui.detailAt = Date.now();
  try {
    const d = await getJSON(taskURL(t.id));
    if (d.id !== ui.selected) return;
    renderQA(d);
    renderAttempts(d);
  } catch (err) { /* next poll */ }
  if (ui.tab === "diff") loadDiff(force);
}

function renderQA(d) {
  if (!d.qa.length) {
    fill("qa", el("p", {class: "empty"}, d.test_result ? "Test result: " + d.test_result : "No QA output yet."));
    return;
  }
  fill("qa", d.test_result ? el("p", {class: "muted"}, "Test result: " + d.test_result) : null,
    d.qa.map((q) => el("div", {class: "qa"}, el("h3", {}, "Attempt " + (q.n === null || q.n === undefined ? "?" : q.n)
      + (q.source === "qa_feedback" ? " (QA feedback)" : "") + (q.truncated ? " (last 32 KiB)" : "")),
      el("pre", {class: "log"}, q.text))));
}

function renderAttempts(d) {
  const rows = d.attempts.map((a) => el("tr", {class: a.running ? "running" : ""},
    el("td", {}, a.n === null ? "?" : String(a.n)), el("td", {}, a.kind || ""), el("td", {}, [a.node, a.slot].filter(Boolean).join("/")),
    el("td", {}, clock(a.start)), el("td", {}, a.running ? "running" : clock(a.end)), el("td", {}, dur(a.duration)),
    el("td", {}, a.outcome || (a.exit_code !== null && a.exit_code !== undefined ? "exit " + a.exit_code : "")),
    el("td", {}, a.cost_usd !== null && a.cost_usd !== undefined ? money(a.cost_usd) : ""),
    el("td", {}, a.tokens_in !== null && a.tokens_in !== undefined ? tokens(a.tokens_in) + " / " + tokens(a.tokens_out) : ""),
    el("td", {}, a.result_subtype || "")));
  const table = el("table", {class: "attempts"}, el("thead", {}, el("tr", {},
    ["#", "kind", "slot", "started", "ended", "took", "outcome", "cost", "tokens in/out", "result"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
  const hist = d.history.length ? el("div", {class: "history"}, el("h3", {}, "Status changes"),
    el("ol", {}, d.history.map((h) => el("li", {}, clock(h.ts) + "  " + (h.src || "?") + " → " + (h.dst || "?")
      + (h.trigger ? "  (" + h.trigger + ")" : ""))))) : null;
  fill("attempts", d.attempts.length ? table : el("p", {class: "empty"}, "No attempts yet."), hist);
}

async function loadDiff(force) {
  const t = currentTask();
  if (!t) return;
  const sig = [t.id, t.status, t.attempt].join("|");
  if (!force && sig === ui.diffSig) return;
  ui.diffSig = sig;
  try {
    const d = await getJSON(taskURL(t.id, "/diff"));
    if (t.id !== ui.selected) return;
    $("diff-source").textContent = (d.source ? "from " + d.source : "") + (d.message ? (d.source ? ": " : "") + d.message : "")
      + (d.truncated ? " (cut at 512 KiB)" : "");
    renderDiff(d.text);
  } catch (err) { ui.diffSig = null; }
}

function renderDiff(text) {
  const pre = $("diff");
  pre.replaceChildren();
  const frag = document.createDocumentFragment();
  for (const line of text.split("\n")) {
    const cls = line.startsWith("+++") || line.startsWith("---") ? "d-file" : line.startsWith("+") ? "d-add"
      : line.startsWith("-") ? "d-del" : line.startsWith("@@") ? "d-hunk" : line.startsWith("diff ") ? "d-head" : null;
    frag.appendChild(cls ? el("span", {class: cls}, line) : document.createTextNode(line));
    frag.appendChild(document.createTextNode("\n"));
  }
  pre.appendChild(frag);
}

// ------------------------------------------------------------------ the log, streamed
async function pollLog() {
  const state = ui.log;
  if (!state.task || state.busy) return;
  state.busy = true;
  try {
    const q = state.next === null ? "" : "?offset=" + state.next + (state.inode !== null ? "&inode=" + state.inode : "");
    const d = await getJSON(taskURL(state.task, "/log") + q);
    if (ui.log !== state) return;
    const pre = $("log");
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    if (!d.exists) {
      pre.textContent = "";
      pre.setAttribute("data-empty", "no log yet");
    } else {
      pre.removeAttribute("data-empty");
      if (d.reset) pre.textContent = d.text;
      else if (d.text) pre.appendChild(document.createTextNode(d.text));
      if (pre.textContent.length > LOG_MAX) pre.textContent = pre.textContent.slice(-LOG_MAX);
    }
    state.next = d.next;
    state.inode = d.inode;
    if (atBottom || d.reset) pre.scrollTop = pre.scrollHeight;
  } catch (err) { /* next poll */ } finally {
    state.busy = false;
  }
}

function logLoop() {
  pollLog().finally(() => setTimeout(logLoop, POLL_MS));
}

// ------------------------------------------------------------------ wiring
function showTab(name) {
  ui.tab = name;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".tab")) p.classList.toggle("active", p.id === "tab-" + name);
  if (name === "diff") loadDiff(false);
}

function start() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  const cpKey = document.querySelector(".cp-key");
  if (cpKey) cpKey.textContent = "★";
  const hash = location.hash;
  const t = /[#&]tab=(log|qa|diff|attempts)/.exec(hash);
  if (t) showTab(t[1]);
  const m = /[#&]task=([^&]+)/.exec(hash);
  if (m) { try { selectTask(decodeURIComponent(m[1]), true); } catch (e) { /* bad hash */ } }
  pollSnapshot();
  logLoop();
}

document.addEventListener("DOMContentLoaded", start);
