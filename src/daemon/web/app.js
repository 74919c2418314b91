// The dashboard: reads the token from the URL fragment (never sent to the server),
// then polls /api/status and renders it. No external assets, no framework.
"use strict";

const params = new URLSearchParams(location.hash.slice(1));
if (params.get("token")) {
  sessionStorage.setItem("peer-token", params.get("token"));
}
const token = sessionStorage.getItem("peer-token") || "";
const $ = (id) => document.getElementById(id);
let browsing = null; // { snapshot, path }

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({ error: r.statusText }));
  if (r.status === 401) {
    refuse();
    throw new Error("refused");
  }
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function refuse() {
  $("app").hidden = true;
  $("refused").hidden = false;
  $("refused").textContent =
    "Access refused: this page needs its token. Open the URL that 'peer dashboard' prints.";
  $("verdict").textContent = "no access";
  $("verdict").className = "verdict bad";
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c;
    tr.appendChild(td);
  }
  return tr;
}
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function when(secs) {
  return secs ? new Date(secs * 1000).toLocaleString() : "—";
}
function short(id) { return (id || "").slice(0, 16); }
function fill(id, rows) {
  const t = $(id);
  t.replaceChildren(...rows);
}

function render(s) {
  $("peer-id").textContent = s.peer_id;
  $("reachability").textContent = s.reachability + (s.relays.length ? " (relayed)" : "");
  $("connected").textContent = s.connected.length;
  $("offered").textContent = bytes(s.offered);
  $("granted").textContent = bytes(s.granted);
  $("used").textContent = bytes(s.used_by_others);
  $("held").textContent = bytes(s.held_at_others);
  $("claims").textContent = bytes(s.claims_held) + " / " + bytes(s.claims_placed);
  $("head").textContent = s.head_error ? "NOT PUBLISHED: " + s.head_error : (s.head ? "#" + s.head + " published" : "none yet");
  $("head").className = s.head_error ? "bad" : "";

  const tr = s.test_restore;
  $("test-restore").textContent = !tr ? "none yet"
    : tr.error ? when(tr.time) + ": FAILED: " + tr.error
    : when(tr.time) + ": ok, " + tr.sample.length + " files (" + bytes(tr.bytes) + ") came back as the snapshot says";
  $("test-restore").className = tr && tr.error ? "bad" : "";

  // At a glance: is my data safe?
  const zero = s.snapshots.some((h) => h.zero > 0);
  const reduced = s.snapshots.some((h) => h.reduced > 0);
  const failing = s.schedules.some((x) => x.last && x.last.failures > 0);
  const v = $("verdict");
  if (!s.snapshots.length) { v.textContent = "no backups yet"; v.className = "verdict warn"; }
  else if (zero || s.head_error || (tr && tr.error)) { v.textContent = "data at risk"; v.className = "verdict bad"; }
  else if (reduced || failing) { v.textContent = "degraded"; v.className = "verdict warn"; }
  else { v.textContent = "all copies held"; v.className = "verdict good"; }

  const a = s.activity;
  $("activity-box").hidden = !a;
  if (a) {
    $("activity").textContent = a.phase + (a.total ? ": " + bytes(a.done) + " of " + bytes(a.total) : "");
    $("activity-bar").style.width = a.total ? Math.min(100, (100 * a.done) / a.total) + "%" : "100%";
  }

  fill("schedules", s.schedules.map((x) => {
    const last = !x.last ? "never"
      : x.last.snapshot ? when(x.last.started) + ": ok " + short(x.last.snapshot) + (x.last.error ? " (" + x.last.error + ")" : "")
      : when(x.last.started) + ": FAILED (" + x.last.failures + " in a row): " + x.last.error;
    const b = el("button", x.running ? "running…" : "Run now", "run-schedule");
    b.dataset.name = x.name;
    b.disabled = x.running;
    b.onclick = () => runSchedule(x.name);
    const lastCell = el("span", last, x.last && !x.last.snapshot ? "bad" : "");
    return row([x.name, x.every ? "every " + x.every : "cron " + x.cron, x.paths.join(" "), lastCell,
      x.running ? "running" : when(x.next), b]);
  }));
  $("schedule-note").textContent = s.schedules.length ? "" : "No schedules: add one with 'peer schedule add NAME PATH... --every 1h'.";

  const health = Object.fromEntries(s.snapshots.map((h) => [h.id, h]));
  renderSnapshots(health);

  fill("durability", s.durability.map((d) =>
    el("li", d.scheme + ": " + d.packs + " packs, " + d.overhead.toFixed(2) + "× stored, P(pack lost) " +
      d.monthly_loss.toExponential(1) + " per month without repair")));

  const defaulters = s.defaulters || [];
  $("defaulters-box").hidden = defaulters.length === 0;
  fill("defaulters", defaulters.map((d) =>
    row([d.peer, when(d.since), d.evidence.slice(0, 32) + "… (" + d.evidence.length / 2 + " bytes)"])));

  const standing = Object.fromEntries(s.audits.map((x) => [x.peer, x]));
  fill("contracts", s.contracts.map((c) => {
    const au = standing[c.peer];
    const st = au ? el("span", au.standing + " (" + au.passes + " passed, " + au.failures + " failed)",
      au.standing === "good" ? "good" : "bad") : "—";
    const state = c.ended ? el("span", "ended: " + c.end_reason, "bad") : el("span", "live", "good");
    return row([short(c.id), c.role, short(c.peer), bytes(c.used) + " / " + bytes(c.bytes), when(c.expires), state, st]);
  }).map((tr) => { tr.className = "contract"; return tr; }));
}

let snapshotList = [];
function renderSnapshots(health) {
  fill("snapshots", snapshotList.slice().reverse().map((x) => {
    const h = health[x.id];
    const copies = h ? el("span", h.full + " / " + h.reduced + " / " + h.zero + (h.note ? " " + h.note : ""),
      h.zero ? "bad" : h.reduced ? "warn" : "good") : "—";
    const b = el("button", "Browse", "browse");
    b.onclick = () => browse(x.id, "");
    const tr = row([short(x.id), when(x.time), x.paths.join(" "), x.files, bytes(x.bytes), copies, b]);
    tr.className = "snapshot";
    tr.dataset.id = x.id;
    return tr;
  }));
}

async function refresh() {
  try {
    snapshotList = await api("GET", "/api/snapshots");
    const s = await api("GET", "/api/status");
    $("app").hidden = false;
    render(s);
  } catch (e) {
    if (e.message !== "refused") $("verdict").textContent = "daemon unreachable: " + e.message;
  }
}

async function runSchedule(name) {
  try {
    await api("POST", "/api/schedules/" + encodeURIComponent(name) + "/run");
  } catch (e) {
    alert("cannot start " + name + ": " + e.message);
  }
  refresh();
}

async function browse(snapshot, path) {
  browsing = { snapshot, path };
  $("browser").hidden = false;
  $("restore-form").hidden = true;
  $("restore-result").textContent = "";
  $("browse-snapshot").textContent = short(snapshot);
  let r;
  try {
    r = await api("GET", "/api/ls?snapshot=" + encodeURIComponent(snapshot) + "&path=" + encodeURIComponent(path));
  } catch (e) {
    fill("entries", [row(["cannot list: " + e.message])]);
    return;
  }
  const crumbs = [el("a", "/")];
  crumbs[0].onclick = () => browse(snapshot, "");
  if (path) {
    const up = el("a", "..");
    up.onclick = () => browse(snapshot, path.split("/").slice(0, -1).join("/"));
    crumbs.push(up, el("span", path, "mono"));
  }
  $("crumbs").replaceChildren(...crumbs);
  fill("entries", r.entries.map((e) => {
    const name = e.kind === "dir" ? el("a", e.name + "/", "dir") : el("span", e.name);
    if (e.kind === "dir") name.onclick = () => browse(snapshot, e.path);
    const b = el("button", "Restore…", "restore");
    b.onclick = () => askRestore(e.path);
    const tr = row([name, e.kind, e.kind === "file" ? bytes(e.size) : "", when(e.mtime), b]);
    tr.className = "entry";
    tr.dataset.name = e.name;
    return tr;
  }));
}

function askRestore(path) {
  $("restore-path").textContent = path;
  $("restore-form").hidden = false;
  $("restore-result").textContent = "";
  $("restore-target").focus();
}

$("restore-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const path = $("restore-path").textContent;
  const target = $("restore-target").value;
  $("restore-result").textContent = "restoring…";
  try {
    const r = await api("POST", "/api/restore", { snapshot: browsing.snapshot, path, target });
    $("restore-result").textContent = "restored " + r.files + " files (" + bytes(r.bytes) + ") under " + target +
      (r.failed_count ? "; " + r.failed_count + " failed: " + r.failed.join(", ") : "");
    $("restore-result").className = r.failed_count ? "bad" : "good";
  } catch (e) {
    $("restore-result").textContent = "restore failed: " + e.message;
    $("restore-result").className = "bad";
  }
};

// A URL with a token pasted into a tab already open on the page changes only the fragment.
window.addEventListener("hashchange", () => {
  const t = new URLSearchParams(location.hash.slice(1)).get("token");
  if (t) {
    sessionStorage.setItem("peer-token", t);
    location.reload();
  }
});

if (!token) refuse(); else { refresh(); setInterval(refresh, 2000); }
