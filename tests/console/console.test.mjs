// The operator console in real headless Chromium, driven by Playwright. Run by
// `tests/it/console.rs`, which starts the service and the Aircall simulator, prepares what the
// steps below look at, and passes it in the environment:
//   CONSOLE_URL          the service's base URL (`http://127.0.0.1:PORT`)
//   ADMIN_TOKEN          the admin token
//   GOOD_API_ID/TOKEN    credentials of a simulated Aircall company nobody connected yet
//   SEEDED_CONNECTION    a connection with an imported call and a call by an unknown agent
//   UNKNOWN_AGENT        that agent's email
//   IMPORTED_CALL        the imported call's id; IMPORTED_BYTES its recording's size
//   DEAD_LETTER_CALL     the call whose job is in the dead-letter queue
//   SCREENSHOTS          where to save a screenshot of each page
//   CHROMIUM             the browser (default /usr/bin/chromium)
// The steps run in order and share one browser page, as an operator's session would.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run this through \`cargo test --test it console\``);
  return value;
};
const base = env("CONSOLE_URL");
const shots = env("SCREENSHOTS");
mkdirSync(shots, { recursive: true });

let browser, page;
const foreignRequests = [];
const pageErrors = [];
const failedAssets = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(15_000);
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(base) && !url.startsWith("blob:") && !url.startsWith("data:")) foreignRequests.push(url);
  });
  // CSP violations and script errors both land here.
  // (The browser also logs each refused request; the steps make some on purpose.)
  page.on("console", (message) => {
    const text = message.text();
    if (message.type() === "error" && !/^Failed to load resource: the server responded with a status of 4\d\d/.test(text)) {
      pageErrors.push(text);
    }
  });
  page.on("pageerror", (error) => {
    pageErrors.push(String(error));
    console.error(`page error: ${error}`);
  });
  // The console's own files must always load (refusals of /api requests are part of the steps).
  page.on("response", (response) => {
    if (!new URL(response.url()).pathname.startsWith("/api/") && response.status() >= 400) {
      failedAssets.push(`${response.status()} ${response.url()}`);
    }
  });
});

after(async () => {
  await browser?.close();
});

const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
const nav = (name) => page.getByRole("navigation", { name: "Sections" }).getByRole("link", { name });

test("a wrong admin token is refused, the right one lists the connections", async () => {
  await page.goto(`${base}/console`);
  await page.getByLabel("Admin token").fill("not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("That admin token is wrong.").waitFor();

  await page.getByLabel("Admin token").fill(env("ADMIN_TOKEN"));
  await page.getByRole("button", { name: "Sign in" }).click();
  const table = page.getByRole("table", { name: "Connections" });
  await table.getByRole("link", { name: env("SEEDED_CONNECTION"), exact: true }).waitFor();
  await shot("connections");
});

test("connecting with good credentials lists the connection as active", async () => {
  await nav("Connect Aircall").click();
  await page.getByLabel("Connection id").fill("acme");
  await page.getByLabel("API ID").fill(env("GOOD_API_ID"));
  await page.getByLabel("API Token").fill(env("GOOD_API_TOKEN"));
  await page.getByLabel("Paying users (optional)").fill("ana@acme.example\nbob@acme.example");
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("Connected acme. Its first import has started").waitFor();
  await shot("connect-saved");

  await nav("Connections").click();
  const row = page.getByRole("row").filter({ has: page.getByRole("link", { name: "acme", exact: true }) });
  await row.getByText("active", { exact: true }).waitFor();
});

test("paying users are shown, edited, and invalid emails pointed out", async () => {
  await page.getByRole("link", { name: "acme", exact: true }).click();
  const emails = page.getByLabel(/^Emails/);
  assert.equal(await emails.inputValue(), "ana@acme.example\nbob@acme.example");
  await emails.fill("ana@acme.example\nnot-an-email\nCarla@Acme.example ");
  await page.getByRole("button", { name: "Save paying users" }).click();
  await page.getByRole("alert").getByText("Not an email address: not-an-email").waitFor();
  assert.equal(await emails.getAttribute("aria-invalid"), "true");
  await shot("users-invalid");

  await emails.fill("ana@acme.example\nCarla@Acme.example ");
  await page.getByRole("button", { name: "Save paying users" }).click();
  await page.getByText("Saved 2 paying users.").waitFor();
  assert.equal(await emails.inputValue(), "ana@acme.example\ncarla@acme.example");
});

test("connecting with refused credentials says what to check, and connects nothing", async () => {
  await nav("Connect Aircall").click();
  await page.getByLabel("Connection id").fill("globex");
  await page.getByLabel("API ID").fill(env("GOOD_API_ID"));
  await page.getByLabel("API Token").fill("revoked-or-mistyped-token");
  await page.getByRole("button", { name: "Save" }).click();
  const alert = page.getByRole("alert");
  await alert.getByText("Aircall refused these credentials. Check that:").waitFor();
  const checks = await alert.getByRole("listitem").allTextContents();
  assert.equal(checks.length, 3, checks.join("\n"));
  assert.match(checks[0], /shown only once/);
  assert.match(checks[1], /not revoked/);
  assert.match(checks[2], /Administrator role/);
  await shot("connect-refused");

  await nav("Connections").click();
  await page.getByRole("table", { name: "Connections" }).waitFor();
  assert.equal(await page.getByRole("link", { name: "globex", exact: true }).count(), 0);
});

test("a call skipped for an unknown agent shows that reason, in words", async () => {
  const id = env("SEEDED_CONNECTION");
  await page.getByRole("link", { name: id, exact: true }).click();
  await page.getByRole("heading", { name: "Last sync" }).waitFor();
  // The chart: 14 days, two bars each; today's bars carry today's counts (two imports so far:
  // the imported call and the one whose dead letter is replayed below has not come back yet).
  const chart = page.locator("figure.chart");
  assert.equal(await chart.getAttribute("data-days"), "14");
  assert.equal(await chart.locator("rect").count(), 28);
  const today = new Date().toISOString().slice(0, 10);
  const todays = await chart.locator("rect.imported").last().locator("title").textContent();
  assert.match(todays, new RegExp(`^${today}: [1-9]\\d* imported, [1-9]\\d* skipped$`));
  await shot("connection");

  // Sync now: the page follows the pass and shows its report when it ends.
  await page.getByRole("button", { name: "Sync now" }).click();
  await page.getByText(/^The pass finished: \d+ calls seen/).waitFor({ timeout: 30_000 });
  // The report it shows includes the records that pass removed past the retention (none here).
  await page.getByText("0 (decided before the retention)", { exact: true }).waitFor();

  await page.getByRole("link", { name: "Calls →" }).click();
  await page.getByLabel("Reason").selectOption("user_not_matched");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.locator(`main[data-page="#/connections/${id}/calls?reason=user_not_matched"]`).waitFor();
  const rows = page.getByRole("table", { name: "Calls" }).getByRole("row");
  const skipped = rows.filter({ hasText: env("UNKNOWN_AGENT") });
  await skipped.getByText(`The agent's email ${env("UNKNOWN_AGENT")} does not belong to a paying user.`).waitFor();
  await skipped.getByText("skipped", { exact: true }).waitFor();
  // Filtered: nothing else but that reason.
  assert.equal(await rows.filter({ hasText: "were imported" }).count(), 0);
  await shot("calls-skipped");
});

test("an imported call's recording plays from the console", async () => {
  const id = env("SEEDED_CONNECTION");
  await page.goto(`${base}/console#/connections/${id}/calls?outcome=imported`);
  const row = page.locator(`tr[data-call="${env("IMPORTED_CALL")}"]`);
  const download = page.waitForResponse((r) => r.url().endsWith(`/calls/${env("IMPORTED_CALL")}/recording`));
  await row.getByRole("button", { name: /^Recording/ }).click();
  const response = await download;
  assert.equal(response.status(), 200);
  assert.equal(response.headers()["content-type"], "audio/mpeg");
  await row.locator("audio[src^='blob:']").waitFor();
  // The page holds the whole recording, as stored.
  assert.equal(await row.locator("[data-bytes]").getAttribute("data-bytes"), env("IMPORTED_BYTES"));
  await row.getByRole("link", { name: "Save" }).waitFor();
  await shot("calls");
});

test("replaying a dead letter empties the list", async () => {
  await nav("Dead letters").click();
  await page.getByRole("heading", { name: "Dead letters" }).waitFor();
  await shot("dead-letters");
  const row = page.getByRole("table", { name: "Dead letters" }).getByRole("row").filter({ hasText: env("DEAD_LETTER_CALL") });
  await row.getByText("download failed").waitFor();
  await row.getByRole("button", { name: "Replay" }).click();
  await page.getByText("Queued again: 1 job").waitFor();
  await page.getByText("No dead letter: every job was processed.").waitFor();
  await shot("dead-letters-replayed");
});

test("a page still loading never replaces the one the operator moved on to", async () => {
  const id = env("SEEDED_CONNECTION");
  const slow = (url) => url.pathname.endsWith("/calls");
  await page.route(slow, async (route) => {
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await route.continue();
  });
  const slowAnswered = page.waitForResponse((response) => slow(new URL(response.url())));
  await page.goto(`${base}/console#/connections/${id}/calls`);
  await nav("Dead letters").click();
  await page.getByRole("heading", { name: "Dead letters" }).waitFor();
  // The calls page's answer arrives after the move; the page had its chance to draw it.
  await slowAnswered;
  await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 200))));
  assert.equal(await page.getByRole("heading", { level: 1 }).textContent(), "Dead letters");
  assert.equal(await page.locator("main").getAttribute("data-page"), "#/dead-letters");
  await page.unroute(slow);
});

test("the console is usable by keyboard", async () => {
  await page.goto(`${base}/console#/dead-letters`);
  await page.reload();
  await page.getByRole("heading", { name: "Dead letters" }).waitFor();
  // The skip link takes the focus to the content and leaves the page as it is.
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "view");
  assert.equal(await page.evaluate(() => location.hash), "#/dead-letters");
  await page.goto(`${base}/console#/connections`);
  await page.reload();
  await page.getByRole("table", { name: "Connections" }).waitFor();
  // From the top of the page: the skip link, the brand, then the sections.
  const focused = () => page.evaluate(() => document.activeElement?.textContent?.trim());
  for (const expected of ["Skip to content", "aircall-ingest console", "Connections", "Connect Aircall"]) {
    await page.keyboard.press("Tab");
    assert.equal(await focused(), expected);
  }
  await page.keyboard.press("Enter");
  // The form takes the focus; fields follow one another, Enter submits.
  await page.waitForFunction(() => document.activeElement?.id === "connection");
  await page.keyboard.type("initech");
  await page.keyboard.press("Tab");
  await page.keyboard.type(env("GOOD_API_ID"));
  await page.keyboard.press("Tab");
  await page.keyboard.type("wrong-token");
  await page.keyboard.press("Enter");
  await page.getByRole("alert").getByText("Aircall refused these credentials").waitFor();
});

test("on a phone-sized screen every page fits its width", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  const id = env("SEEDED_CONNECTION");
  for (const [name, hash, ready] of [
    ["phone-connections", "#/connections", page.getByRole("table", { name: "Connections" })],
    ["phone-connection", `#/connections/${id}`, page.getByRole("heading", { name: "Last sync" })],
    ["phone-calls", `#/connections/${id}/calls`, page.getByRole("table", { name: "Calls" })],
    ["phone-connect", "#/connect", page.getByRole("button", { name: "Save" })],
  ]) {
    await page.goto(`${base}/console${hash}`);
    await ready.waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${hash} is ${overflow}px wider than the screen`);
    // Tables read as cards: nothing in them needs a sideways scroll either.
    const hidden = await page.evaluate(() => [...document.querySelectorAll(".table-wrap")].map((t) => t.scrollWidth - t.clientWidth));
    assert.ok(hidden.every((px) => px <= 0), `${hash}: a table is wider than its card by ${hidden}px`);
    await shot(name);
  }
});

test("nothing was fetched from another origin and nothing failed in the page", () => {
  assert.deepEqual(foreignRequests, []);
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(failedAssets, []);
});
