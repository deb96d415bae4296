// The Switchyard dashboard: a small single-page app over the JSON admin API (/admin/api/…).
// Pages are chosen by the URL's hash (#/overview, #/accounts, #/requests, #/keys, #/audit). Everything is
// built with DOM calls and textContent, never from HTML strings, so nothing the server sends can run.
"use strict";

const state = { session: null, timers: [], page: null, range: "1h", requests: { filter: {}, pages: [] } };

// ---------- helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const svgNS = "http://www.w3.org/2000/svg";
function s(tag, attrs) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

class ApiError extends Error {
  constructor(status, type, message) { super(message); this.status = status; this.type = type; }
}

// Who is logged in, in words: "ops (admin key)", "administrator (password)".
function who(session) {
  if (session.actor.startsWith("key:")) return `${session.actor.slice(4)} (${session.role} key)`;
  if (session.actor.startsWith("password:")) return "administrator (password)";
  if (session.actor === "dashboard-link") return "administrator (login link)";
  return `${session.actor} (${session.role})`;
}

// The session secret: the login answer's (or the login link's fragment), kept in this origin's storage
// and sent with every admin call; the cookie alone opens nothing.
function sessionSecret() {
  const m = location.hash.match(/^#session=([A-Za-z0-9_-]+)$/);
  if (m) {
    localStorage.setItem("sy_session_secret", m[1]);
    history.replaceState(null, "", location.pathname);
  }
  return localStorage.getItem("sy_session_secret") || "";
}

async function api(method, path, body) {
  const headers = { "x-csrf-token": sessionSecret() };
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "network_error", `cannot reach Switchyard (${e.message})`);
  }
  if (response.status === 401 && path !== "/admin/api/login") {
    localStorage.removeItem("sy_session_secret");
    location.href = "/dashboard/login";
    throw new ApiError(401, "authentication_error", "your session ended; log in again");
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!response.ok) {
    const err = data && data.error ? data.error : {};
    throw new ApiError(response.status, err.type || "error", err.message || `HTTP ${response.status}`);
  }
  return data;
}

function toast(message, bad) {
  const el = h("div", { class: bad ? "toast bad" : "toast", role: bad ? "alert" : "status" }, message);
  const box = document.getElementById("toasts");
  box.append(el);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => el.remove(), bad ? 9000 : 4000);
}

// Run an action from a button: disable it meanwhile, report success or the server's error in the page.
async function act(button, work, done) {
  if (button) button.disabled = true;
  try {
    const result = await work();
    if (done) toast(typeof done === "function" ? done(result) : done);
    return result;
  } catch (e) {
    toast(e.message, true);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

function every(ms, fn) {
  state.timers.push(setInterval(fn, ms));
}

const fmt = {
  int: (n) => (n ?? 0).toLocaleString("en-US"),
  usd: (n) => `$${(n ?? 0).toFixed((n ?? 0) < 10 ? 4 : 2)}`,
  pct: (n) => `${(100 * (n ?? 0)).toFixed(1)} %`,
  time: (ms) => (ms ? new Date(ms).toLocaleString() : "—"),
  clock: (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
  day: (ms) => new Date(ms).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" }),
  ago(ms) {
    if (!ms) return "never";
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < 60) return `${Math.max(s, 0)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  },
  countdown(ms) {
    const s = Math.max(0, Math.round((ms - Date.now()) / 1000));
    const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
    return hh ? `${hh}h ${String(mm).padStart(2, "0")}m` : `${mm}m ${String(ss).padStart(2, "0")}s`;
  },
};

function table(columns, rows, onRow) {
  const body = h("tbody", {}, rows.map((r) => {
    const tr = h("tr", onRow ? { class: "clickable", tabindex: 0 } : {}, columns.map((c) => h("td", { class: c.cls, "data-label": c.title }, c.cell(r))));
    if (onRow) {
      tr.addEventListener("click", (e) => { if (!e.target.closest("button, input, a")) onRow(r); });
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") onRow(r); });
    }
    return tr;
  }));
  return h("div", { class: "table-wrap" },
    h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.cls }, c.title)))), body));
}

function empty(text) { return h("p", { class: "muted" }, text); }

function can(permission) {
  const role = state.session && state.session.role;
  if (role === "admin") return true;
  if (role === "viewer") return permission === "view";
  return false;
}

// ---------- overview ----------

function barChart(title, points, value, opts) {
  const width = 300, height = 110, pad = 18;
  const values = points.map(value);
  const max = Math.max(...values, opts.minMax || 1e-9);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height + pad}`, role: "img", "aria-label": title, preserveAspectRatio: "none" });
  svg.append(s("line", { class: "axis", x1: 0, y1: height, x2: width, y2: height }));
  const span = opts.sinceMs === undefined ? null : (opts.nowMs - opts.sinceMs);
  const slots = span ? Math.max(1, Math.round(span / opts.bucketMs)) : Math.max(points.length, 1);
  const w = width / slots;
  points.forEach((p, i) => {
    const slot = span ? Math.floor((p.at_ms - opts.sinceMs) / opts.bucketMs) : i;
    const v = values[i];
    const bh = max > 0 ? Math.max(v > 0 ? 1 : 0, (v / max) * (height - 4)) : 0;
    const rect = s("rect", { class: opts.err ? "bar err" : "bar", x: slot * w + 0.5, y: height - bh, width: Math.max(w - 1, 0.8), height: bh });
    const tip = s("title", {}); tip.textContent = `${fmt.clock(p.at_ms)}: ${opts.label(v)}`;
    rect.append(tip);
    svg.append(rect);
  });
  const top = s("text", { x: 2, y: 10 }); top.textContent = opts.label(max);
  const from = opts.sinceMs ?? (points[0] || {}).at_ms ?? Date.now();
  const left = s("text", { x: 2, y: height + 13 });
  left.textContent = opts.nowMs - from > 3_600_000 ? fmt.day(from) : fmt.clock(from);
  const right = s("text", { x: width - 2, y: height + 13, "text-anchor": "end" }); right.textContent = "now";
  svg.append(top, left, right);
  const total = opts.total ? opts.total(points) : null;
  return h("div", { class: "panel chart", "data-chart": title },
    h("div", { class: "spread" }, h("h2", {}, title), total === null ? null : h("span", { class: "muted" }, total)),
    svg);
}

async function overview(main) {
  const rangeButtons = ["1h", "24h", "7d"].map((r) =>
    h("button", { class: r === state.range ? "seg on" : "seg", type: "button", "data-range": r, onclick: () => { state.range = r; render(); } }, r));
  const cards = h("div", { class: "cards", id: "overview-cards" });
  const charts = h("div", { class: "charts", id: "overview-charts" });
  const instances = h("div", { id: "overview-instances" });
  main.replaceChildren(h("div", { class: "spread" }, h("h1", {}, "Overview"), h("div", {}, rangeButtons)), cards, charts,
    instances, h("p", { class: "muted", id: "overview-updated" }));

  // The account counts and open streams are cheap and change by the second; a week's series sums every
  // request of the week, so longer ranges are fetched less often.
  const seriesEvery = { "1h": 5000, "24h": 30000, "7d": 60000 }[state.range];
  let series = null, seriesAt = 0, cache = null;
  async function refresh() {
    try {
      const due = !series || Date.now() - seriesAt >= seriesEvery - 500;
      const [ov, fresh, totals] = await Promise.all([api("GET", "/admin/api/overview"),
        due ? api("GET", `/admin/api/series?range=${state.range}`) : null,
        due ? api("GET", `/admin/api/stats?since=${state.range}&by=all`) : null]);
      if (fresh) { series = fresh; seriesAt = Date.now(); }
      if (totals) cache = Object.values(totals)[0] || null;
      const pts = series.points;
      const sum = (f) => pts.reduce((a, p) => a + f(p), 0);
      const requests = sum((p) => p.requests), errors = sum((p) => p.errors);
      const card = (n, l, id) => h("div", { class: "card", id }, h("div", { class: "n" }, n), h("div", { class: "l" }, l));
      cards.replaceChildren(
        card(`${ov.accounts.available} / ${ov.accounts.total}`, "accounts available", "card-available"),
        card(ov.accounts.rate_limited, "rate-limited", "card-limited"),
        card(ov.accounts.paused + ov.accounts.needs_login, "paused or needing login", "card-inactive"),
        card(ov.open_streams, "open streams", "card-streams"),
        card(fmt.int(requests), `requests (${state.range})`, "card-requests"),
        card(fmt.int(sum((p) => p.input_tokens + p.output_tokens)), `tokens (${state.range})`),
        card(fmt.usd(sum((p) => p.cost_usd)), `estimated cost (${state.range})`),
        card(requests ? fmt.pct(errors / requests) : "—", "error rate"),
        card(cache && (cache.cache_read_tokens + cache.cache_creation_tokens) ? fmt.pct(cache.cache_hit_ratio) : "—",
          cache ? `prompt cache hit (${fmt.int(cache.cache_read_tokens)} read, ${fmt.int(cache.cache_creation_tokens)} written)` : "prompt cache hit", "card-cache"));
      const perMin = series.bucket_ms / 60000;
      const opts = { sinceMs: series.since_ms, nowMs: series.now_ms, bucketMs: series.bucket_ms };
      charts.replaceChildren(
        barChart("Requests per minute", pts, (p) => p.requests / perMin, { ...opts, label: (v) => v.toFixed(v < 10 ? 1 : 0), total: () => `${fmt.int(requests)} in all` }),
        barChart("Tokens", pts, (p) => p.input_tokens + p.output_tokens, { ...opts, label: fmt.int, total: (ps) => `${fmt.int(ps.reduce((a, p) => a + p.input_tokens, 0))} in · ${fmt.int(ps.reduce((a, p) => a + p.output_tokens, 0))} out` }),
        barChart("Estimated cost", pts, (p) => p.cost_usd, { ...opts, label: fmt.usd, total: (ps) => fmt.usd(ps.reduce((a, p) => a + p.cost_usd, 0)) }),
        barChart("Error rate", pts, (p) => (p.requests ? p.errors / p.requests : 0), { ...opts, err: true, minMax: 0.01, label: fmt.pct, total: () => `${fmt.int(errors)} errors` }));
      showInstances(instances, await api("GET", "/admin/api/instances"));
      document.getElementById("overview-updated").textContent =
        `Updated ${new Date().toLocaleTimeString()} · accounts and streams every 5 s, charts every ${seriesEvery / 1000} s`;
    } catch (e) {
      document.getElementById("overview-updated").textContent = `Could not update: ${e.message}`;
    }
  }
  await refresh();
  every(5000, refresh);
}

// The gateway's instances (one on SQLite; each one sharing a PostgreSQL database), from their heartbeats.
function showInstances(box, answer) {
  const rows = answer.instances;
  const live = rows.filter((i) => i.live).length;
  const cols = [
    { title: "Instance", cell: (i) => h("span", {}, h("code", {}, i.id), i.this ? h("span", { class: "muted" }, " (this one)") : "") },
    { title: "State", cell: (i) => h("span", { class: `badge ${i.live ? "ok" : "bad"}` }, i.live ? "live" : "gone") },
    { title: "Host", cls: "hide-sm", cell: (i) => i.host },
    { title: "Address", cls: "hide-sm", cell: (i) => i.address },
    { title: "Version", cell: (i) => i.version },
    { title: "Started", cls: "hide-sm", cell: (i) => fmt.time(i.started_at_ms) },
    { title: "Last seen", cell: (i) => fmt.ago(i.last_seen_ms) },
  ];
  box.replaceChildren(h("h2", {}, `Instances (${live} live)`), rows.length ? table(cols, rows) : empty("No heartbeat yet."));
}

// ---------- accounts ----------

function meter(window) {
  if (!window || window.utilization === null || window.utilization === undefined) return h("span", { class: "muted" }, "—");
  // A fraction, which may exceed 1 (an account past its limit): 1.04 is 104 %.
  const u = window.utilization;
  const bar = h("span");
  bar.style.width = `${Math.min(100, Math.max(0, u * 100)).toFixed(0)}%`;
  const title = window.resets_at_ms ? `resets ${fmt.time(window.resets_at_ms)}` : "";
  return h("span", { title }, h("span", { class: u >= 0.95 ? "meter full" : u >= 0.75 ? "meter high" : "meter" }, bar), ` ${(u * 100).toFixed(0)} %`);
}

// Every window beyond 5 h and 7 d (model-scoped weeks, …), extra usage, and why usage is not polled.
function otherLimits(a) {
  const parts = Object.entries(a.windows || {}).filter(([name]) => name !== "5h" && name !== "7d")
    .map(([name, w]) => h("div", { class: "window", "data-window": name }, h("span", { class: "muted" }, `${name} `), meter(w)));
  if (a.spend) {
    const limit = a.spend.limit != null ? ` of ${a.spend.limit.toFixed(2)}` : "";
    parts.push(h("div", { class: "muted", "data-spend": "" }, `extra usage ${a.spend.enabled ? "on" : "off"}: ${a.spend.used.toFixed(2)}${limit} ${a.spend.currency || ""}`));
  }
  for (const [name, value] of Object.entries(a.unified || {})) parts.push(h("div", { class: "muted", "data-unified": name }, `${name}: ${value}`));
  if (a.usage_off) parts.push(h("div", { class: "muted", "data-usage-off": "" }, a.usage_off));
  return parts.length ? h("div", {}, parts) : h("span", { class: "muted" }, "—");
}

function statusBadge(a) {
  const badge = h("span", { class: `badge ${a.status}`, "data-status": a.status }, a.status);
  const left = a.status === "rate-limited" && a.limited_until_ms
    ? h("span", { class: "countdown muted", "data-until": a.limited_until_ms }, ` back in ${fmt.countdown(a.limited_until_ms)}`)
    : null;
  // Limits on one model family (e.g. opus) leave the account serving the others.
  const families = Object.entries(a.model_limits || {}).filter(([, until]) => until > Date.now())
    .map(([family, until]) => h("div", { class: "muted" }, `${family} limited until ${fmt.clock(until)}`));
  return h("span", {}, badge, left, families);
}

async function accounts(main) {
  const list = h("div", { id: "accounts-list" });
  const add = can("manage") ? addAccountPanel() : null;
  main.replaceChildren(h("div", { class: "spread" }, h("h1", {}, "Accounts")), list, add);

  async function refresh() {
    // Someone typing a priority keeps their edit: skip this round.
    if (list.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
    let rows;
    try { rows = await api("GET", "/admin/api/accounts"); } catch (e) { list.replaceChildren(h("p", { class: "error" }, e.message)); return; }
    if (!rows.length) { list.replaceChildren(empty("No accounts yet: add one below, or with `switchyard auth login` / `switchyard accounts add`.")); return; }
    const manage = can("manage");
    const cols = [
      { title: "Account", cell: (a) => h("div", {}, h("strong", {}, a.name), h("div", { class: "muted" }, a.email || a.credential)) },
      { title: "Kind / plan", cls: "hide-sm", cell: (a) => `${a.kind}${a.plan ? ` · ${a.plan}` : ""}` },
      { title: "Status", cell: statusBadge },
      { title: "5 h", cell: (a) => meter(a.five_hour) },
      { title: "7 d", cell: (a) => meter(a.seven_day) },
      { title: "Other limits", cls: "hide-sm", cell: otherLimits },
      { title: "Requests", cls: "hide-sm", cell: (a) => `${fmt.int(a.requests)}${a.failures ? ` (${fmt.int(a.failures)} failed)` : ""}` },
      { title: "Attempts", cls: "hide-sm", cell: (a) => `${fmt.int(a.attempts)}${a.failed_attempts ? ` (${fmt.int(a.failed_attempts)} failed)` : ""}` },
      { title: "Last used", cls: "hide-sm", cell: (a) => fmt.ago(a.last_used_ms) },
      { title: "Priority", cell: (a) => {
        if (!manage) return String(a.priority);
        const input = h("input", { class: "prio", type: "number", value: a.priority, "aria-label": `priority of ${a.name}`, "data-priority": a.name });
        const save = h("button", { class: "ghost small", type: "button", onclick: () => act(save, () => api("POST", `/admin/api/accounts/${encodeURIComponent(a.name)}/set`, { priority: Number(input.value) }), `${a.name}: priority ${input.value}`).then(refresh) }, "Set");
        return h("span", { class: "actions" }, input, save);
      } },
    ];
    if (manage) {
      cols.push({ title: "", cell: (a) => {
        const paused = a.status === "paused";
        const toggle = h("button", { class: "ghost small", type: "button", "data-action": paused ? "resume" : "pause", "data-account": a.name,
          onclick: () => act(toggle, () => api("POST", `/admin/api/accounts/${encodeURIComponent(a.name)}/${paused ? "resume" : "pause"}`), `${a.name} ${paused ? "resumed" : "paused"}`).then(refresh) },
          paused ? "Resume" : "Pause");
        const relogin = a.status === "needs-login"
          ? h("button", { class: "small", type: "button", "data-action": "relogin", "data-account": a.name, onclick: () => {
            document.getElementById("new-account-name").value = a.name;
            document.getElementById("oauth-start").click();
            document.getElementById("add-account").scrollIntoView({ behavior: "smooth" });
          } }, "Log in again")
          : null;
        const remove = h("button", { class: "danger small", type: "button", "data-action": "remove", "data-account": a.name,
          onclick: () => {
            if (!confirm(`Remove account ${a.name}? Its tokens are deleted; logging in again brings it back.`)) return;
            act(remove, () => api("DELETE", `/admin/api/accounts/${encodeURIComponent(a.name)}`), `${a.name} removed`).then(refresh);
          } }, "Remove");
        return h("span", { class: "actions" }, relogin, toggle, remove);
      } });
    }
    list.replaceChildren(table(cols, rows));
  }
  await refresh();
  every(10000, refresh);
  every(1000, () => document.querySelectorAll(".countdown").forEach((el) => {
    el.textContent = ` back in ${fmt.countdown(Number(el.dataset.until))}`;
  }));
  state.refreshAccounts = refresh;
}

function addAccountPanel() {
  const name = h("input", { id: "new-account-name", placeholder: "name (default: the login's e-mail)" });
  const console_ = h("input", { id: "new-account-console", type: "checkbox" });
  const step2 = h("div", { class: "stack", hidden: true, id: "oauth-step2" });
  const start = h("button", { type: "button", id: "oauth-start", onclick: async () => {
    const started = await act(start, () => api("POST", "/admin/api/oauth/start", { account: name.value.trim() || undefined, console: console_.checked }));
    if (!started) return;
    const code = h("input", { id: "oauth-code", placeholder: "CODE#STATE", autocomplete: "off" });
    const finish = h("button", { type: "button", id: "oauth-finish", onclick: async () => {
      const saved = await act(finish, () => api("POST", "/admin/api/oauth/finish", { code: code.value.trim(), account: name.value.trim() || undefined }),
        (r) => `Added account ${r.name}${r.email ? ` (${r.email})` : ""}`);
      if (saved) { step2.hidden = true; name.value = ""; if (state.refreshAccounts) state.refreshAccounts(); }
    } }, "Finish login");
    step2.replaceChildren(
      h("p", {}, "1. Open the sign-in page, log in and approve: ",
        h("a", { href: started.authorize_url, target: "_blank", rel: "noopener noreferrer", id: "oauth-link" }, "open the authorize page ↗")),
      h("p", { class: "muted" }, `2. Paste the code it shows (valid until ${fmt.clock(started.expires_at_ms)}):`),
      h("div", { class: "row" }, code, finish));
    step2.hidden = false;
  } }, "Start login");
  const keyName = h("input", { id: "new-key-account-name", placeholder: "name", autocomplete: "off" });
  const keyValue = h("input", { id: "new-key-account-key", type: "password", placeholder: "sk-ant-…", autocomplete: "off" });
  const addKey = h("button", { type: "button", id: "api-key-add", onclick: async () => {
    const saved = await act(addKey, () => api("POST", "/admin/api/accounts", { name: keyName.value.trim(), api_key: keyValue.value.trim() }),
      (r) => `Added API-key account ${r.name}`);
    if (saved) { keyName.value = ""; keyValue.value = ""; if (state.refreshAccounts) state.refreshAccounts(); }
  } }, "Add API key");
  return h("section", { class: "panel", id: "add-account" },
    h("h2", {}, "Add an account"),
    h("h3", {}, "Claude Pro/Max or Console (OAuth)"),
    h("div", { class: "row" }, h("label", {}, "Name", name),
      h("label", { class: "check" }, console_, "Console login (creates an API key)"), start),
    step2,
    h("h3", {}, "Anthropic API key"),
    h("div", { class: "row" }, h("label", {}, "Name", keyName), h("label", {}, "API key", keyValue), addKey));
}

// ---------- requests ----------

async function requests(main) {
  const f = state.requests.filter;
  const field = (id, label, el) => { el.id = id; el.value = f[id] ?? ""; return h("label", {}, label, el); };
  const since = h("select", {}, ["1h", "24h", "7d", "30d"].map((v) => h("option", { value: v }, v)),
    h("option", { value: "custom" }, "from … to …"));
  since.value = f.since || "24h";
  since.id = "f-since";
  const from = h("input", { type: "datetime-local", id: "f-from" });
  const to = h("input", { type: "datetime-local", id: "f-to" });
  from.value = f.from || "";
  to.value = f.to || "";
  const window_ = h("span", { class: "row", hidden: since.value !== "custom" }, h("label", {}, "From", from), h("label", {}, "To", to));
  since.addEventListener("change", () => { window_.hidden = since.value !== "custom"; });
  const accountSel = h("select", {}, h("option", { value: "" }, "any"));
  const form = h("form", { class: "row panel", id: "request-filters" },
    h("label", {}, "Since", since),
    window_,
    h("label", {}, "Account", accountSel),
    field("model", "Model", h("input", { placeholder: "any", size: 18 })),
    field("status", "Status", h("input", { placeholder: "any", size: 5, inputmode: "numeric" })),
    field("key", "Client key", h("input", { placeholder: "any", size: 12 })),
    h("button", { type: "submit" }, "Filter"));
  accountSel.id = "account";
  try {
    for (const a of await api("GET", "/admin/api/accounts")) accountSel.append(h("option", { value: a.name }, a.name));
  } catch (_) { /* the filter still works by typing; the list is a convenience */ }
  accountSel.value = f.account || "";
  const list = h("div", { id: "requests-list" });
  const pager = h("div", { class: "row", id: "pager" });
  main.replaceChildren(h("h1", {}, "Requests"), form, list, pager);

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    state.requests.filter = { since: since.value, from: from.value, to: to.value, account: accountSel.value, model: form.querySelector("#model").value.trim(),
      status: form.querySelector("#status").value.trim(), key: form.querySelector("#key").value.trim() };
    state.requests.pages = [];
    load();
  });

  async function load() {
    const q = new URLSearchParams({ limit: "50" });
    const { from: fromText, to: toText, ...filter } = { since: "24h", ...state.requests.filter };
    if (filter.since === "custom") {
      // Local times from the pickers, sent as epoch ms; an empty end is "now".
      delete filter.since;
      q.set("from_ms", String(fromText ? new Date(fromText).getTime() : 0));
      if (toText) q.set("to_ms", String(new Date(toText).getTime()));
    }
    for (const [k, v] of Object.entries(filter)) if (v) q.set(k, v);
    const pages = state.requests.pages;
    if (pages.length) q.set("before", pages[pages.length - 1]);
    let rows;
    try { rows = await api("GET", `/admin/api/requests?${q}`); } catch (e) { list.replaceChildren(h("p", { class: "error" }, e.message)); return; }
    const cols = [
      { title: "Time", cell: (r) => fmt.time(r.at_ms) },
      { title: "Status", cell: (r) => h("span", { class: `badge ${r.status >= 400 || r.error_type ? "bad" : "ok"}` }, r.error_type ? `${r.status} ${r.error_type}` : r.status) },
      { title: "Account", cell: (r) => r.account || "—" },
      { title: "Model", cls: "hide-sm", cell: (r) => r.model || "—" },
      { title: "Key", cls: "hide-sm", cell: (r) => r.client_key || "—" },
      { title: "Tokens in/out", cls: "hide-sm", cell: (r) => `${fmt.int(r.input_tokens)} / ${fmt.int(r.output_tokens)}` },
      { title: "Duration", cell: (r) => `${fmt.int(r.duration_ms)} ms` },
      { title: "Cost", cls: "hide-sm", cell: (r) => fmt.usd(r.cost_usd) },
    ];
    list.replaceChildren(rows.length ? table(cols, rows, (r) => showRequest(r.id)) : empty("No requests match."));
    const newer = h("button", { class: "ghost", type: "button", disabled: !pages.length, onclick: () => { pages.pop(); load(); } }, "← Newer");
    const older = h("button", { class: "ghost", type: "button", id: "older", disabled: rows.length < 50, onclick: () => { pages.push(rows[rows.length - 1].id); load(); } }, "Older →");
    pager.replaceChildren(newer, h("span", { class: "muted" }, `page ${pages.length + 1}`), older);
  }
  await load();
}

async function showRequest(id) {
  const dialog = document.getElementById("details");
  const body = document.getElementById("details-body");
  body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  if (!dialog.open) dialog.showModal();
  let r;
  try { r = await api("GET", `/admin/api/requests/${encodeURIComponent(id)}`); } catch (e) { body.replaceChildren(h("p", { class: "error" }, e.message)); return; }
  const kv = (pairs) => h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
  const pretty = (text) => { try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; } };
  body.replaceChildren(
    h("h2", {}, `Request ${r.id}`),
    kv([
      ["Time", fmt.time(r.at_ms)], ["Endpoint", `${r.method} ${r.path}`], ["Status", `${r.status}${r.error_type ? ` (${r.error_type})` : ""}`],
      ["Account", r.account], ["Attempts", String(r.attempts)], ["Accounts tried", r.accounts_tried || "—"],
      ["Client key", r.client_key], ["Model", r.model], ["Streamed", r.stream ? "yes" : "no"],
      ["Tokens", `${fmt.int(r.input_tokens)} in · ${fmt.int(r.output_tokens)} out · ${fmt.int(r.cache_read_tokens)} cache read · ${fmt.int(r.cache_creation_tokens)} cache write`],
      ["Time to first byte", r.ttfb_ms === null ? "—" : `${r.ttfb_ms} ms`], ["Duration", `${r.duration_ms} ms`],
      ["Rate-limit status", r.ratelimit_status], ["Estimated cost", fmt.usd(r.cost_usd)],
    ]),
    h("h2", {}, "Payload"),
    r.payload
      ? h("div", {}, h("h3", { class: "muted" }, "Request (redacted)"), h("pre", { id: "payload-request" }, r.payload.request ? pretty(r.payload.request) : "—"),
        h("h3", { class: "muted" }, "Response (redacted)"), h("pre", { id: "payload-response" }, r.payload.response ? pretty(r.payload.response) : "—"))
      : empty("Not kept (SWITCHYARD_PAYLOADS is off, or errors only and this one succeeded)."));
}

// ---------- keys ----------

async function keys(main) {
  const list = h("div", { id: "keys-list" });
  const name = h("input", { id: "key-name", placeholder: "name", required: true });
  const role = h("select", { id: "key-role" }, ["user", "viewer", "admin"].map((r) => h("option", { value: r }, r)));
  const rpm = h("input", { id: "key-rpm", type: "number", min: 1, placeholder: "no limit", size: 8 });
  const expires = h("input", { id: "key-expires", placeholder: "never (e.g. 30d)", size: 12 });
  const budget = h("input", { id: "key-budget", type: "number", min: 0, step: "0.01", placeholder: "none", size: 8 });
  const shown = h("div", { id: "key-shown" });
  const create = h("button", { type: "submit", id: "key-create" }, "Create key");
  const form = h("form", { class: "panel stack", id: "key-form" }, h("h2", {}, "New key"),
    h("div", { class: "row" }, h("label", {}, "Name", name), h("label", {}, "Role", role), h("label", {}, "Requests / min", rpm),
      h("label", {}, "Expires", expires), h("label", {}, "Budget USD / day", budget), create), shown);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { name: name.value.trim(), role: role.value };
    if (rpm.value) body.rpm = Number(rpm.value);
    if (expires.value.trim()) body.expires = expires.value.trim();
    if (budget.value) body.budget_usd_day = Number(budget.value);
    const made = await act(create, () => api("POST", "/admin/api/keys", body), (k) => `Created key ${k.name}`);
    if (!made) return;
    const code = h("code", { id: "new-key" }, made.key);
    const copy = h("button", { type: "button", class: "ghost small", id: "copy-key", onclick: async () => {
      try { await navigator.clipboard.writeText(made.key); toast("Copied"); }
      catch (_) { const r = document.createRange(); r.selectNodeContents(code); getSelection().removeAllRanges(); getSelection().addRange(r); toast("Selected: press Ctrl+C to copy"); }
    } }, "Copy");
    shown.replaceChildren(h("div", { class: "secret" }, h("strong", {}, "Shown once:"), code, copy));
    name.value = "";
    refresh();
  });
  main.replaceChildren(h("h1", {}, "Keys"), can("manage") ? form : null, list);

  async function refresh() {
    let rows;
    try { rows = await api("GET", "/admin/api/keys"); } catch (e) { list.replaceChildren(h("p", { class: "error" }, e.message)); return; }
    const cols = [
      { title: "Name", cell: (k) => h("strong", {}, k.name) },
      { title: "Role", cell: (k) => k.role },
      { title: "Fingerprint", cls: "hide-sm", cell: (k) => h("code", {}, k.fingerprint) },
      { title: "Limits", cls: "hide-sm", cell: (k) => [k.rpm && `${k.rpm} rpm`, k.tpm && `${k.tpm} tpm`, k.concurrency && `${k.concurrency} at once`].filter(Boolean).join(" · ") || "—" },
      { title: "Accounts", cls: "hide-sm", cell: (k) => (k.accounts && k.accounts.length ? k.accounts.join(", ") : "all") },
      { title: "Spend today / month", cell: (k) => {
        const budget = [k.budget_usd_day && `${fmt.usd(k.budget_usd_day)}/day`, k.budget_usd_month && `${fmt.usd(k.budget_usd_month)}/month`, k.budget_tokens_day && `${fmt.int(k.budget_tokens_day)} tokens/day`].filter(Boolean).join(" · ");
        return h("span", { title: budget ? `budget: ${budget}` : "no budget" }, `${fmt.usd(k.spend_usd_today)} / ${fmt.usd(k.spend_usd_month)}`, budget ? h("div", { class: "muted" }, `budget ${budget}`) : null);
      } },
      { title: "Expires", cls: "hide-sm", cell: (k) => fmt.time(k.expires_at_ms) },
      { title: "State", cell: (k) => h("span", { class: `badge ${k.status === "active" ? "ok" : "bad"}`, "data-key-state": k.name }, k.status) },
      { title: "", cell: (k) => {
        if (k.revoked || !can("manage")) return "";
        const b = h("button", { class: "danger small", type: "button", "data-revoke": k.name, onclick: () => {
          if (!confirm(`Revoke key ${k.name}? Clients using it are refused at once.`)) return;
          act(b, () => api("POST", `/admin/api/keys/${encodeURIComponent(k.name)}/revoke`), `Revoked ${k.name}`).then(refresh);
        } }, "Revoke");
        return b;
      } },
    ];
    list.replaceChildren(rows.length ? table(cols, rows) : empty("No client keys: the gateway is open to loopback clients only (or to everyone with --allow-unauthenticated)."));
  }
  await refresh();
}

// ---------- audit ----------

async function audit(main) {
  const since = h("select", { id: "audit-since" }, ["1d", "7d", "30d"].map((v) => h("option", { value: v }, v)));
  const list = h("div", { id: "audit-list" });
  since.addEventListener("change", load);
  main.replaceChildren(h("div", { class: "spread" }, h("h1", {}, "Audit log"), h("label", {}, "Since", since)), list);
  async function load() {
    let rows;
    try { rows = await api("GET", `/admin/api/audit?since=${since.value}`); } catch (e) { list.replaceChildren(h("p", { class: "error" }, e.message)); return; }
    rows.sort((a, b) => b.at_ms - a.at_ms);
    const cols = [
      { title: "Time", cell: (e) => fmt.time(e.at_ms) },
      { title: "Who", cell: (e) => e.actor },
      { title: "From", cls: "hide-sm", cell: (e) => e.source },
      { title: "Action", cell: (e) => h("code", {}, e.action) },
      { title: "Target", cell: (e) => e.target },
      { title: "Outcome", cell: (e) => h("span", { class: `badge ${e.outcome === "ok" ? "ok" : "bad"}` }, e.outcome) },
      { title: "Detail", cls: "hide-sm", cell: (e) => e.detail || "" },
    ];
    list.replaceChildren(rows.length ? table(cols, rows) : empty("Nothing recorded in this period."));
  }
  await load();
}

// ---------- shell ----------

const pages = { overview, accounts, requests, keys, audit };

async function render() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  state.refreshAccounts = null;
  const name = (location.hash.replace(/^#\/?/, "") || "overview").split("?")[0];
  const page = pages[name] || overview;
  // Messages belong to the page they were raised on.
  if (state.page !== name) document.getElementById("toasts").replaceChildren();
  state.page = name;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === `#/${name}`);
  document.title = `Switchyard · ${name[0].toUpperCase()}${name.slice(1)}`;
  const main = document.getElementById("main");
  main.dataset.page = name;
  try {
    await page(main);
  } catch (e) {
    main.replaceChildren(h("p", { class: "error", role: "alert" }, e.message));
  }
  main.dataset.ready = name;
}

async function start() {
  try {
    state.session = await api("GET", "/admin/api/session");
  } catch (e) {
    document.getElementById("main").replaceChildren(h("p", { class: "error" }, e.message));
    return;
  }
  document.getElementById("who").textContent = who(state.session);
  if (!can("logs")) for (const a of document.querySelectorAll('#nav a[href="#/requests"], #nav a[href="#/audit"]')) a.hidden = true;
  if (!can("manage")) document.querySelector('#nav a[href="#/keys"]').hidden = true;
  document.getElementById("logout").addEventListener("click", async (e) => {
    await act(e.target, () => api("POST", "/admin/api/logout"));
    localStorage.removeItem("sy_session_secret");
    location.href = "/dashboard/login";
  });
  window.addEventListener("hashchange", render);
  render();
}

start();
