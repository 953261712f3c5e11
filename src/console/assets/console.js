// The operator console: a small single-page app over the admin API (`/api`), nothing else.
// The admin token is kept in sessionStorage: it lives as long as the tab, never on disk beyond.
// Every piece of data reaches the page through `el()`/text nodes, never as HTML.

const TOKEN_KEY = "aircall-ingest.admin-token";
const view = document.getElementById("view");

// ------------------------------------------------------------------------------ helpers

/** Builds an element: `el("a", {href: "#"}, "text", child…)`. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const svg = (tag, attrs = {}, ...children) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
};

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

const whenMs = (ms) => (ms ? when(new Date(ms).toISOString()) : "—");

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = String(seconds % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/**
 * A table whose cells carry their column's name, so that on a phone each row reads as a card
 * of "name: value" lines. `columns`: `[name, {num: true}?]`; `rows`: `tr` elements of `td`s.
 */
function dataTable(label, columns, rows) {
  const names = columns.map((c) => (Array.isArray(c) ? c[0] : c));
  const numeric = columns.map((c) => Array.isArray(c) && c[1]?.num);
  for (const row of rows) {
    [...row.children].forEach((cell, i) => {
      cell.dataset.label = names[i] ?? "";
      if (numeric[i]) cell.classList.add("num");
      // One box for the value, beside its label when the row is a card.
      cell.replaceChildren(el("div", {}, ...cell.childNodes));
    });
  }
  return el("div", { class: "table-wrap card" }, el("table", { class: "stack", "aria-label": label },
    el("thead", {}, el("tr", {}, names.map((name, i) => el("th", { scope: "col", class: numeric[i] ? "num" : null }, name)))),
    el("tbody", {}, rows)));
}

const size = (bytes) => (bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1e3))} kB`);

const words = (code) => (code ? code.replaceAll("_", " ") : "");
const badge = (value) => el("span", { class: `badge ${value}` }, words(value));

function alertBox(kind, message, items = []) {
  return el("div", { class: `alert ${kind}`, role: kind === "error" ? "alert" : "status" },
    el("p", {}, message),
    items.length ? el("ul", {}, items.map((item) => el("li", {}, item))) : null);
}

/** Whether the operator moved to another page (the first page of a visit keeps the focus at the top). */
let navigated = false;
/** Counts moves to another page: a page still loading for an earlier one must not draw. */
let navigation = 0;
/** Recordings loaded into the page, released when the operator leaves it. */
let objectUrls = [];

/**
 * A new page: returns its `show(...nodes)`, which puts `nodes` in the view as long as the operator
 * has not moved on since; after a move, focus goes to the new content too (for keyboard and
 * screen-reader users).
 */
function newPage() {
  const mine = ++navigation;
  const hash = location.hash;
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls = [];
  const show = (...nodes) => {
    if (!show.current()) return;
    view.replaceChildren(...nodes.flat().filter((node) => node !== null && node !== undefined && node !== false));
    // Which page is on screen (the hash it was drawn for): what a test waits on.
    view.dataset.page = hash;
    if (navigated) view.focus({ preventScroll: true });
  };
  /** Whether the operator is still on this page. */
  show.current = () => mine === navigation;
  return show;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs an action started by `button`: the button is disabled meanwhile and keeps the focus after;
 * a failure is shown beside it rather than lost, and a refused token leads to signing in again.
 */
async function busy(button, promise) {
  button.disabled = true;
  try {
    await promise;
  } catch (e) {
    if (e instanceof SignedOut) return route();
    button.after(alertBox("error", `That did not work: ${e.message}`));
  } finally {
    button.disabled = false;
    if (button.isConnected && document.activeElement === document.body) button.focus();
  }
}

/** The confirmation dialog; resolves to true when confirmed. */
function confirmAction(title, text, action) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// ------------------------------------------------------------------------------ the API

class SignedOut extends Error {}

const UNREACHABLE = { error: { code: "unreachable", message: "The service cannot be reached. Check your network and try again." } };

/**
 * One admin API request with the token: the `Response`, or `null` when the service cannot be
 * reached. A refused token is forgotten and throws `SignedOut`.
 */
async function request(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) throw new SignedOut();
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    return null;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new SignedOut();
  }
  return response;
}

/** One admin API request: `{status, body}` (status 0 when the service cannot be reached). */
async function api(method, path, body) {
  const response = await request(method, path, body);
  if (!response) return { status: 0, body: UNREACHABLE };
  const text = await response.text();
  let parsed;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { error: { code: "unreadable", message: text } }; }
  return { status: response.status, body: parsed };
}

const errorOf = (answer) => answer.body?.error ?? { code: "unknown", message: `The service answered ${answer.status}.` };

/** An error answer as an alert: the message, and the checks or invalid emails it carries. */
function errorAlert(answer) {
  const error = errorOf(answer);
  const items = error.details?.checks ?? (error.details?.invalid_emails ?? []).map((e) => `Not an email address: ${e}`);
  return alertBox("error", error.message, items);
}

const enc = encodeURIComponent;

// ------------------------------------------------------------------------------ sign in

function signIn(show, problem) {
  // Not offered to the password manager: the token is kept for this tab only.
  const input = el("input", { id: "token", type: "password", autocomplete: "off", required: true });
  const form = el("form", { class: "card", "aria-labelledby": "sign-in-title" },
    el("h1", { id: "sign-in-title" }, "Sign in"),
    el("p", { class: "muted" }, "Enter the service's admin token. It is kept for this browser tab only."),
    problem ? alertBox("error", problem) : null,
    el("label", { for: "token" }, "Admin token"),
    input,
    el("div", { class: "actions" }, el("button", { type: "submit" }, "Sign in")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      const answer = await api("GET", "/api/connections?limit=1");
      if (answer.status !== 200) return show(signIn(show, errorOf(answer).message));
      route();
    } catch (e) {
      if (e instanceof SignedOut) show(signIn(show, "That admin token is wrong."));
      else throw e;
    }
  });
  document.getElementById("sign-out").hidden = true;
  queueMicrotask(() => input.focus());
  return form;
}

// ------------------------------------------------------------------------------ connections

async function connectionsPage(show, params) {
  const cursor = params.get("cursor");
  const answer = await api("GET", `/api/connections?limit=50${cursor ? `&cursor=${enc(cursor)}` : ""}`);
  if (answer.status !== 200) return show(el("h1", {}, "Connections"), errorAlert(answer));
  const rows = answer.body.items.map((c) => el("tr", {},
    el("td", {}, el("a", { href: `#/connections/${enc(c.id)}` }, c.id)),
    el("td", {}, badge(c.status)),
    el("td", {}, c.paying_users),
    el("td", {}, c.calls.imported),
    el("td", {}, c.calls.skipped),
    el("td", {}, c.calls.pending),
    el("td", {}, c.calls.failed),
    el("td", {}, c.sync.running ? "running now" : when(c.sync.last_run_at))));
  show(
    el("div", { class: "head" }, el("h1", {}, "Connections"), el("span", { class: "spacer" }),
      el("a", { href: "#/connect" }, "Connect Aircall")),
    rows.length
      ? dataTable("Connections", ["Connection", "Status", ...["Paying users", "Imported", "Skipped", "Pending", "Failed"]
        .map((name) => [name, { num: true }]), "Last sync"], rows)
      : el("div", { class: "card empty" }, "No connection yet. ", el("a", { href: "#/connect" }, "Connect an Aircall company.")),
    answer.body.next_cursor
      ? el("div", { class: "actions" }, el("a", { href: `#/connections?cursor=${enc(answer.body.next_cursor)}` }, "More connections →"))
      : null);
}

function connectPage(show) {
  const field = (id, label, attrs = {}, hint) => [
    el("label", { for: id }, label, hint ? el("span", { class: "hint", id: `${id}-hint` }, hint) : null),
    el(attrs.rows ? "textarea" : "input", { id, name: id, "aria-describedby": hint ? `${id}-hint` : null, ...attrs }),
  ];
  const result = el("div");
  const save = el("button", { type: "submit" }, "Save");
  const form = el("form", { class: "card", "aria-labelledby": "connect-title" },
    el("h1", { id: "connect-title" }, "Connect Aircall"),
    el("p", { class: "muted" }, "In Aircall: Integrations & API → API Keys → Generate an API key, by a user with the Administrator role. Copy the API ID and the API Token shown (the token is shown only once)."),
    field("connection", "Connection id", { required: true, pattern: "[a-z0-9_\\-]{1,64}", autocomplete: "off", spellcheck: "false" },
      "The customer account's id on the platform: a-z, 0-9, _ and -."),
    field("api_id", "API ID", { required: true, autocomplete: "off", spellcheck: "false" }),
    field("api_token", "API Token", { required: true, type: "password", autocomplete: "off" }),
    field("users", "Paying users (optional)", { rows: 4, spellcheck: "false" },
      "One email per line. Without them the first import waits for the list."),
    el("div", { class: "actions" }, save));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = (name) => form.elements[name].value.trim();
    const users = emailsIn(form.elements.users.value);
    const body = { id: value("connection"), api_id: value("api_id"), api_token: value("api_token") };
    if (users.length) body.users = users;
    busy(save, (async () => {
      result.replaceChildren(alertBox("info", "Checking the credentials with Aircall…"));
      const answer = await api("POST", "/api/connections", body);
      if (answer.status === 201) {
        form.reset();
        const c = answer.body.connection;
        const first = answer.body.first_import === "started"
          ? "Its first import has started: the most recent eligible calls of the last 14 days are on their way."
          : "Its first import waits for the list of paying users.";
        result.replaceChildren(alertBox("ok", `Connected ${c.id}. ${first}`), connectionSummary(c));
      } else if (errorOf(answer).code === "invalid_credentials") {
        result.replaceChildren(alertBox("error", "Aircall refused these credentials. Check that:", errorOf(answer).details?.checks ?? []));
        form.elements.api_token.focus();
      } else {
        result.replaceChildren(errorAlert(answer));
      }
      result.scrollIntoView({ block: "nearest" });
    })());
  });
  show(form, result);
  queueMicrotask(() => form.elements.connection.focus());
}

const emailsIn = (text) => text.split(/[\s,;]+/).map((e) => e.trim()).filter(Boolean);

function connectionSummary(c) {
  return el("div", { class: "card", "data-connection": c.id },
    el("div", { class: "head" },
      el("h2", {}, el("a", { href: `#/connections/${enc(c.id)}` }, c.id)),
      badge(c.status)),
    el("p", {}, c.status_explanation),
    el("dl", { class: "facts" },
      el("dt", {}, "API ID"), el("dd", { class: "mono" }, c.api_id),
      el("dt", {}, "Webhook"), el("dd", { class: "mono" }, c.webhook.url),
      el("dt", {}, "Paying users"), el("dd", {}, c.paying_users),
      el("dt", {}, "First import"), el("dd", {}, c.sync.first_import_at ? when(c.sync.first_import_at) : (c.sync.running ? "running now" : "not run yet"))));
}

/** A connection's page; `notice` (an alert) shows at its top, after an action redrew it. */
async function connectionPage(show, id, notice) {
  const [answer, users, activity] = await Promise.all([
    api("GET", `/api/connections/${enc(id)}`),
    api("GET", `/api/connections/${enc(id)}/users`),
    api("GET", `/api/connections/${enc(id)}/activity?days=14`),
  ]);
  // What the operator just did (`notice`) stays on the page even when it cannot be redrawn.
  if (answer.status !== 200) return show(el("h1", {}, id), notice, errorAlert(answer));
  const c = answer.body;
  const calls = (query) => `#/connections/${enc(id)}/calls${query ? `?${query}` : ""}`;
  const count = (label, value, query) => el("a", { class: "count", href: calls(query) }, el("strong", {}, value), label);
  const reload = (message) => connectionPage(show, id, message);
  const notices = el("div", {}, notice);
  const syncButton = el("button", { type: "button", class: "secondary" }, "Sync now");
  syncButton.addEventListener("click", () => busy(syncButton, (async () => {
    // The pass's report is the first one that is not the report shown now (the server's clock,
    // not this browser's, dates them).
    const before = c.sync.last_report?.started_at_ms;
    const started = await api("POST", `/api/connections/${enc(id)}/sync`);
    if (started.status !== 202) return notices.replaceChildren(errorAlert(started));
    notices.replaceChildren(alertBox("info", "A reconciliation pass is running; its report shows here when it ends."));
    // Until the pass's report is there (or the operator moved on).
    for (let waited = 0; waited < 120_000 && show.current(); waited += 1500) {
      await sleep(1500);
      const now = await api("GET", `/api/connections/${enc(id)}`);
      const report = now.body?.sync?.last_report;
      if (now.status === 200 && !now.body.sync.running && report && report.started_at_ms !== before) {
        return reload(report.error
          ? alertBox("error", `The pass failed: ${report.error}`)
          : alertBox("ok", `The pass finished: ${report.calls_seen} calls seen, ${report.queued} queued.`));
      }
    }
    if (show.current()) {
      notices.replaceChildren(alertBox("info", "The pass is still waiting for a place or running; its report will show on this page later."));
    }
  })()));
  show(
    el("div", { class: "head" },
      el("h1", {}, c.id), badge(c.status), el("span", { class: "spacer" }),
      el("a", { href: calls() }, "Calls →")),
    notices,
    el("div", { class: "grid" },
      el("section", { class: "card", "aria-labelledby": "status-title" },
        el("h2", { id: "status-title" }, "Status"),
        el("p", {}, c.status_explanation),
        el("dl", { class: "facts" },
          el("dt", {}, "API ID"), el("dd", { class: "mono" }, c.api_id),
          el("dt", {}, "Webhook"), el("dd", { class: "mono" }, c.webhook.url),
          el("dt", {}, "Connected"), el("dd", {}, when(c.created_at)),
          el("dt", {}, "First import"), el("dd", {}, c.sync.first_import_at ? when(c.sync.first_import_at) : "not run yet"))),
      el("section", { class: "card", "aria-labelledby": "sync-title" },
        el("h2", { id: "sync-title" }, "Last sync"),
        syncReport(c.sync),
        el("div", { class: "actions" }, syncButton))),
    el("section", { class: "card", "aria-labelledby": "calls-title" },
      el("h2", { id: "calls-title" }, "Calls"),
      el("div", { class: "counts" },
        count("imported", c.calls.imported, "outcome=imported"),
        count("skipped", c.calls.skipped, "outcome=skipped"),
        count("pending", c.calls.pending, "outcome=pending"),
        count("failed", c.calls.failed, "outcome=failed")),
      c.pending.next_recheck_at ? el("p", { class: "muted small" }, `Next re-check of a pending call: ${when(c.pending.next_recheck_at)}`) : null,
      activity.status === 200 ? activityChart(activity.body.days) : errorAlert(activity)),
    el("div", { class: "grid" },
      usersEditor(id, users, reload),
      el("div", {}, rotateForm(id, reload), disconnectCard(show, id))));
}

function syncReport(sync) {
  const report = sync.last_report;
  if (!report) {
    return el("p", { class: "muted" }, sync.running ? "A pass is running now." : "No pass has run yet.");
  }
  const skipped = Object.entries(report.skipped ?? {}).filter(([, n]) => n > 0).map(([reason, n]) => `${n} ${words(reason)}`);
  return el("div", {},
    report.error ? alertBox("error", `The pass failed: ${report.error}`) : null,
    el("dl", { class: "facts" },
      el("dt", {}, "Ran"), el("dd", {}, `${whenMs(report.started_at_ms)} (${words(report.kind)}, ${((report.ended_at_ms - report.started_at_ms) / 1000).toFixed(1)} s)`),
      el("dt", {}, "Calls seen"), el("dd", {}, report.calls_seen),
      el("dt", {}, "Queued"), el("dd", {}, report.queued),
      el("dt", {}, "Skipped"), el("dd", {}, skipped.length ? skipped.join(", ") : "none"),
      el("dt", {}, "Pending"), el("dd", {}, `${report.pending_recorded} found, ${report.pending_rechecked} re-checked`),
      el("dt", {}, "Aircall requests"), el("dd", {}, `${report.aircall_requests} (${report.rate_limited} rate-limited)`),
      el("dt", {}, "Webhook"), el("dd", {}, report.webhook ?? "not checked"),
      el("dt", {}, "Records expired"), el("dd", {}, `${report.outcomes_expired} (decided before the retention)`),
      el("dt", {}, "Next"), el("dd", {}, sync.running ? "running now" : when(sync.next_due_at))));
}

/** Imports and skips per day as bars, with the numbers in each bar's title and a table for screen readers. */
function activityChart(days) {
  const width = 560, height = 170, top = 10, bottom = 22, gap = 6;
  const slot = width / days.length;
  const bar = (slot - gap) / 2;
  const most = Math.max(1, ...days.map((d) => Math.max(d.imported, d.skipped)));
  const scale = (n) => ((height - top - bottom) * n) / most;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "chart-title" },
    svg("title", { id: "chart-title" }, "Calls imported and skipped per day, last 14 days"));
  days.forEach((day, i) => {
    const x = i * slot + gap / 2;
    const label = `${day.date}: ${day.imported} imported, ${day.skipped} skipped`;
    for (const [kind, n, dx] of [["imported", day.imported, 0], ["skipped", day.skipped, bar]]) {
      const h = scale(n);
      chart.append(svg("rect", { class: kind, x: x + dx, y: height - bottom - h, width: bar - 1, height: Math.max(h, n ? 1 : 0) },
        svg("title", {}, label)));
    }
    chart.append(svg("text", { x: x + bar, y: height - 6, "text-anchor": "middle" }, day.date.slice(8)));
  });
  const table = el("table", { class: "visually-hidden", "aria-label": "Calls per day" },
    el("thead", {}, el("tr", {}, el("th", {}, "Day"), el("th", {}, "Imported"), el("th", {}, "Skipped"))),
    el("tbody", {}, days.map((d) => el("tr", {}, el("th", {}, d.date), el("td", {}, d.imported), el("td", {}, d.skipped)))));
  return el("figure", { class: "chart", "data-days": days.length },
    chart,
    el("figcaption", { class: "legend" },
      el("span", {}, el("i", { class: "swatch imported" }), `imported (${days.reduce((s, d) => s + d.imported, 0)})`),
      el("span", {}, el("i", { class: "swatch skipped" }), `skipped (${days.reduce((s, d) => s + d.skipped, 0)})`),
      el("span", {}, "per day of decision, UTC")),
    table);
}

function usersEditor(id, answer, reload) {
  if (answer.status !== 200) {
    // Never an empty editor standing for a list that could not be read: saving it would erase the list.
    const retry = el("button", { type: "button", class: "secondary" }, "Try again");
    retry.addEventListener("click", () => busy(retry, reload()));
    return el("section", { class: "card", "aria-labelledby": "users-title" },
      el("h2", { id: "users-title" }, "Paying users"), errorAlert(answer), retry);
  }
  const area = el("textarea", { id: "paying-users", rows: 8, spellcheck: "false", "aria-describedby": "paying-users-hint" },
    answer.body.emails.join("\n"));
  const result = el("div");
  const save = el("button", { type: "submit" }, "Save paying users");
  const form = el("form", { class: "card", "aria-labelledby": "users-title" },
    el("h2", { id: "users-title" }, "Paying users"),
    el("label", { for: "paying-users" }, `Emails (${answer.body.count})`,
      el("span", { class: "hint", id: "paying-users-hint" }, "One per line. Calls are imported only when the agent's Aircall email is one of these.")),
    area, result, el("div", { class: "actions" }, save));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(save, (async () => {
      const emails = emailsIn(area.value);
      if (!emails.length && !(await confirmAction("Remove every paying user?",
        "No call of this connection is imported until the list has an email again.", "Remove all"))) return;
      const saved = await api("PUT", `/api/connections/${enc(id)}/users`, { emails });
      if (saved.status === 200) {
        area.removeAttribute("aria-invalid");
        area.value = saved.body.emails.join("\n");
        result.replaceChildren(alertBox("ok", `Saved ${saved.body.count} paying users. Calls skipped for their agents are looked at again at the next sync.`));
      } else {
        area.setAttribute("aria-invalid", "true");
        result.replaceChildren(errorAlert(saved));
      }
    })());
  });
  return form;
}

function rotateForm(id, reload) {
  const result = el("div");
  const save = el("button", { type: "submit" }, "Replace credentials");
  const form = el("form", { class: "card", "aria-labelledby": "rotate-title" },
    el("h2", { id: "rotate-title" }, "Rotate credentials"),
    el("p", { class: "muted small" }, "After regenerating the API key in Aircall. The new pair is checked before it replaces the old one."),
    el("label", { for: "rotate-api-id" }, "API ID"), el("input", { id: "rotate-api-id", required: true, autocomplete: "off" }),
    el("label", { for: "rotate-api-token" }, "API Token"), el("input", { id: "rotate-api-token", type: "password", required: true, autocomplete: "off" }),
    result, el("div", { class: "actions" }, save));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(save, (async () => {
      const answer = await api("PUT", `/api/connections/${enc(id)}/credentials`, {
        api_id: form.querySelector("#rotate-api-id").value.trim(),
        api_token: form.querySelector("#rotate-api-token").value.trim(),
      });
      if (answer.status === 200) {
        const extra = answer.body.dead_letters_replayed ? ` ${answer.body.dead_letters_replayed} parked jobs were queued again.` : "";
        await reload(alertBox("ok", `The new credentials are in use.${extra}`));
      } else if (errorOf(answer).code === "invalid_credentials") {
        result.replaceChildren(alertBox("error", "Aircall refused the new credentials; the old ones stay. Check that:", errorOf(answer).details?.checks ?? []));
      } else {
        result.replaceChildren(errorAlert(answer));
      }
    })());
  });
  return form;
}

function disconnectCard(show, id) {
  const result = el("div");
  const button = el("button", { type: "button", class: "danger" }, "Disconnect");
  const disconnect = async (trigger, force) => {
    const sure = await confirmAction(`Disconnect ${id}?`, force
      ? "Aircall cannot be reached to remove the webhook: the connection is erased anyway, and the webhook stays on Aircall until someone removes it there."
      : "The Aircall webhook is removed and the credentials erased. Imported calls and their recordings stay.", "Disconnect");
    if (!sure) return trigger.focus();
    await busy(trigger, (async () => {
      const answer = await api("DELETE", `/api/connections/${enc(id)}${force ? "?force=true" : ""}`);
      if (answer.status === 200) {
        const left = ["credentials_refused", "unreachable", "credentials_unreadable"].includes(answer.body.webhook)
          ? " Its webhook may still be registered on Aircall: remove it in the Aircall dashboard (Integrations & API → Webhooks)." : "";
        show(alertBox("ok", `Disconnected ${id}.${left}`), el("a", { href: "#/connections" }, "← Connections"));
      } else if (errorOf(answer).code === "aircall_unavailable") {
        const anyway = el("button", { type: "button", class: "danger" }, "Disconnect anyway");
        anyway.addEventListener("click", () => disconnect(anyway, true));
        result.replaceChildren(errorAlert(answer), anyway);
      } else {
        result.replaceChildren(errorAlert(answer));
      }
    })());
  };
  button.addEventListener("click", () => disconnect(button, false));
  return el("section", { class: "card", "aria-labelledby": "disconnect-title" },
    el("h2", { id: "disconnect-title" }, "Disconnect"),
    el("p", { class: "muted small" }, "Stops importing this company's calls."),
    result, button);
}

// ------------------------------------------------------------------------------ calls

async function callsPage(show, id, params) {
  const outcome = params.get("outcome") ?? "";
  const reason = params.get("reason") ?? "";
  const cursor = params.get("cursor") ?? "";
  const query = new URLSearchParams({ limit: "50" });
  if (outcome) query.set("outcome", outcome);
  if (reason) query.set("reason", reason);
  if (cursor) query.set("cursor", cursor);
  const [page, connection] = await Promise.all([
    api("GET", `/api/connections/${enc(id)}/calls?${query}`),
    api("GET", `/api/connections/${enc(id)}`),
  ]);
  const back = el("a", { href: `#/connections/${enc(id)}` }, `← ${id}`);
  if (page.status !== 200) return show(back, el("h1", {}, "Calls"), errorAlert(page));
  const reasons = Object.keys(connection.body?.reasons ?? {});
  if (reason && !reasons.includes(reason)) reasons.push(reason);
  const filters = el("form", { class: "filters card", role: "search", "aria-label": "Filter calls" },
    el("div", {}, el("label", { for: "outcome" }, "Outcome"),
      el("select", { id: "outcome", name: "outcome" },
        el("option", { value: "" }, "any"),
        ["imported", "skipped", "pending", "failed"].map((o) => el("option", { value: o, selected: o === outcome }, o)))),
    el("div", {}, el("label", { for: "reason" }, "Reason"),
      el("select", { id: "reason", name: "reason" },
        el("option", { value: "" }, "any"),
        reasons.sort().map((r) => el("option", { value: r, selected: r === reason }, words(r))))),
    el("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of ["outcome", "reason"]) if (filters.elements[name].value) next.set(name, filters.elements[name].value);
    location.hash = `#/connections/${enc(id)}/calls${String(next) ? `?${next}` : ""}`;
  });
  const rows = page.body.items.map((call) => el("tr", { "data-call": call.call_id },
    el("td", { class: "when" }, when(call.started_at ?? call.decided_at)),
    el("td", {}, call.agent_name ?? call.agent_email ?? "—",
      call.agent_name && call.agent_email && call.agent_name !== call.agent_email
        ? el("span", { class: "reason-code" }, call.agent_email) : null),
    el("td", {}, call.direction ?? "—"),
    el("td", {}, duration(call.duration_s)),
    el("td", {}, badge(call.outcome)),
    el("td", { class: "reason" }, call.explanation,
      call.reason ? el("span", { class: "reason-code" }, call.reason) : null,
      call.error ? el("span", { class: "reason-code" }, call.error) : null),
    el("td", {}, call.recording ? recordingButton(id, call) : el("span", { class: "muted" }, `#${call.call_id}`))));
  const base = new URLSearchParams();
  if (outcome) base.set("outcome", outcome);
  if (reason) base.set("reason", reason);
  const link = (extra) => {
    const q = new URLSearchParams(base);
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return `#/connections/${enc(id)}/calls${String(q) ? `?${q}` : ""}`;
  };
  show(
    back,
    el("div", { class: "head" }, el("h1", {}, `Calls of ${id}`)),
    filters,
    rows.length
      ? dataTable("Calls", ["Started", "Agent", "Direction", ["Duration", { num: true }], "Outcome", "Reason", "Recording"], rows)
      : el("div", { class: "card empty" }, "No call matches."),
    el("div", { class: "actions" },
      cursor ? el("a", { href: link({}) }, "← Newest") : null,
      page.body.next_cursor ? el("a", { href: link({ cursor: page.body.next_cursor }) }, "Older →") : null));
}

/**
 * Loads an imported call's recording (with the admin token) and offers to play or save it. The
 * page holds it until the operator leaves the page.
 */
function recordingButton(id, call) {
  const cell = el("div");
  const button = el("button", { type: "button", class: "secondary", "aria-label": `Recording of call ${call.call_id}, ${size(call.recording.bytes)}` },
    `Play · ${size(call.recording.bytes)}`);
  button.addEventListener("click", () => busy(button, (async () => {
    const response = await request("GET", `/api/connections/${enc(id)}/calls/${call.call_id}/recording`);
    if (!response || !response.ok) {
      const body = response ? await response.json().catch(() => null) : UNREACHABLE;
      return button.after(errorAlert({ status: response?.status ?? 0, body }));
    }
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    objectUrls.push(url);
    cell.dataset.bytes = blob.size;
    const audio = el("audio", { controls: true, src: url, "aria-label": `Recording of call ${call.call_id}` });
    cell.replaceChildren(audio, el("a", { href: url, download: `${call.call_id}.mp3` }, "Save"));
    audio.focus();
  })()));
  cell.append(button);
  return cell;
}

// ------------------------------------------------------------------------------ dead letters

async function deadLettersPage(show, notice) {
  const answer = await api("GET", "/api/dead-letters?limit=200");
  if (answer.status !== 200) return show(el("h1", {}, "Dead letters"), notice, errorAlert(answer));
  const replay = async (button, body, what) => {
    await busy(button, (async () => {
      const done = await api("POST", "/api/dead-letters/replay", body);
      const message = done.status === 200
        ? alertBox("ok", `Queued again: ${done.body.replayed} ${done.body.replayed === 1 ? "job" : "jobs"} (${what}).`)
        : errorAlert(done);
      await deadLettersPage(show, message);
    })());
  };
  const items = answer.body.items;
  const rows = items.map((d) => {
    const button = el("button", { type: "button", class: "secondary", disabled: !d.replayable || !d.job_id }, "Replay");
    button.addEventListener("click", () => replay(button, { job_id: d.job_id }, `call ${d.call_id ?? "?"}`));
    return el("tr", { "data-job": d.job_id ?? "" },
      el("td", {}, d.connection_id ? el("a", { href: `#/connections/${enc(d.connection_id)}` }, d.connection_id) : "—"),
      el("td", { class: "mono" }, d.call_id ?? "—"),
      el("td", {}, whenMs(d.failure.at_ms)),
      el("td", {}, d.attempts),
      el("td", {}, el("strong", {}, words(d.failure.code)), el("span", { class: "reason-code" }, d.failure.message)),
      el("td", {}, d.replayable ? button : el("span", { class: "muted" }, "unreadable by this version")));
  });
  const all = el("button", { type: "button" }, "Replay all");
  all.addEventListener("click", async () => {
    if (await confirmAction("Replay every dead letter?", `${answer.body.total} jobs go back to the import queue.`, "Replay all")) {
      await replay(all, { all: true }, "all");
    }
  });
  show(
    el("div", { class: "head" }, el("h1", {}, "Dead letters"), el("span", { class: "spacer" }),
      items.length ? all : null),
    notice ?? null,
    el("p", { class: "muted" }, "Jobs that used up their attempts, with their last error. Replaying queues them again as fresh jobs."),
    items.length
      ? [dataTable("Dead letters", ["Connection", "Call", "Failed", ["Attempts", { num: true }], "Error", "Replay"], rows),
        answer.body.total > items.length ? el("p", { class: "muted small" }, `Showing ${items.length} of ${answer.body.total}.`) : null]
      : el("div", { class: "card empty", id: "no-dead-letters" }, "No dead letter: every job was processed."));
}

// ------------------------------------------------------------------------------ routing

async function route() {
  const show = newPage();
  try {
    const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
    const params = new URLSearchParams(search);
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    const section = parts[0] ?? "connections";
    for (const link of document.querySelectorAll("nav a")) {
      if (link.dataset.section === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (!sessionStorage.getItem(TOKEN_KEY)) return show(signIn(show));
    document.getElementById("sign-out").hidden = false;
    if (section === "connect" && parts.length === 1) return connectPage(show);
    if (section === "dead-letters" && parts.length === 1) return await deadLettersPage(show);
    if (section === "connections" && parts.length === 3 && parts[2] === "calls") return await callsPage(show, parts[1], params);
    if (section === "connections" && parts.length === 2) return await connectionPage(show, parts[1]);
    if (section === "connections" && parts.length <= 1) return await connectionsPage(show, params);
    show(el("h1", {}, "Not found"), el("p", {}, "No page here. ", el("a", { href: "#/connections" }, "Connections")));
  } catch (e) {
    if (e instanceof SignedOut) return show(signIn(show, "The admin token was refused: sign in again."));
    show(alertBox("error", `Something went wrong: ${e.message}`));
  }
}

// The skip link moves the focus; it is not a page of its own.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  view.focus();
});

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/connections";
  route();
});
window.addEventListener("hashchange", () => {
  navigated = true;
  route();
});
route();
