// Dashboard end-to-end checks in headless Chromium, run by tests/dashboard.rs against a running gateway
// (SY_URL) with accounts alpha and beta (round-robin), delta (rate-limited for an hour) and zeta (OAuth,
// needs a new login), an admin key, a user key and a viewer key, payloads kept.
// Every step asserts what a person would see; any failure exits non-zero with the step named.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import http from "node:http";

const base = process.env.SY_URL;
const adminKey = process.env.SY_ADMIN_KEY;
const userKey = process.env.SY_USER_KEY;
const viewerKey = process.env.SY_VIEWER_KEY;
const shots = process.env.SY_SHOTS;

const browser = await chromium.launch({
  executablePath: process.env.SY_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
const page = await context.newPage();
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(e.message));
page.on("dialog", (d) => d.accept());
page.setDefaultTimeout(10000);

let step = "start";
function begin(name) { step = name; console.log(`- ${name}`); }
async function shot(name) { await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true }); }
async function ready(name) { await page.waitForSelector(`main[data-ready="${name}"]`); }
async function toast(text) { await page.locator(".toast", { hasText: text }).first().waitFor(); }
async function message(key) {
  const r = await fetch(`${base}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01" },
    body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 16, messages: [{ role: "user", content: "hi" }] }),
  });
  await r.arrayBuffer();
  return r.status;
}
// The admin API as the dashboard calls it: the browser's cookie plus the session secret from the page's
// own storage (the cookie alone opens nothing).
async function adminGet(path) {
  const secret = await page.evaluate(() => localStorage.getItem("sy_session_secret"));
  const r = await page.request.get(`${base}${path}`, { headers: { "x-csrf-token": secret || "" } });
  assert.equal(r.status(), 200, `${path}: ${r.status()}`);
  return r.json();
}
// The user's part of an OAuth login: open the authorize link the dashboard shows (the fake signs in and
// redirects to the page showing CODE#STATE), copy the code, paste it into the dashboard.
async function pasteCodeFromAuthorizePage() {
  const [tab] = await Promise.all([context.waitForEvent("page"), page.click("#oauth-link")]);
  await tab.waitForLoadState();
  const code = (await tab.textContent("#code")).trim();
  await tab.close();
  await page.fill("#oauth-code", code);
  return code;
}
// Send `n` requests with the user key; which accounts served them, from the request log (written in the
// background within ~50 ms).
async function sendAndSee(n) {
  const from = Date.now();
  for (let i = 0; i < n; i++) assert.equal(await message(userKey), 200);
  for (let i = 0; i < 40; i++) {
    const rows = (await adminGet("/admin/api/requests?since=1h&limit=50")).filter((r) => r.at_ms >= from);
    if (rows.length >= n) return rows.map((r) => r.account);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("request log did not catch up");
}

try {
  begin("unauthenticated visits go to the login page");
  await page.goto(`${base}/dashboard#/accounts`);
  await page.waitForURL(/\/dashboard\/login(#.*)?$/);
  await page.locator("#key").waitFor();
  await shot("login");

  begin("a wrong key is refused in the page");
  await page.fill("#key", "sy-not-a-real-key");
  await page.click("#key-form button");
  await page.locator("#login-error:not([hidden])").waitFor();
  assert.match(await page.textContent("#login-error"), /invalid|revoked|expired/);

  begin("log in with the admin key");
  await page.fill("#key", adminKey);
  await page.click("#key-form button");
  await page.waitForURL(/\/dashboard$/);
  await ready("overview");
  assert.match(await page.textContent("#who"), /root \(admin key\)/);

  begin("another port on this host receives the cookie, and it opens nothing");
  const seen = [];
  const evil = http.createServer((req, res) => { seen.push(req.headers.cookie || ""); res.end("<p>hello</p>"); });
  await new Promise((r) => evil.listen(0, "127.0.0.1", r));
  const evilPage = await context.newPage();
  await evilPage.goto(`http://127.0.0.1:${evil.address().port}/`);
  await evilPage.close();
  const stolen = seen.find((c) => c.includes("sy_session="));
  assert.ok(stolen, `the browser sent the cookie to the other port (${seen})`);
  for (const path of ["/admin/api/session", "/admin/api/keys"]) {
    const r = await fetch(`${base}${path}`, { headers: { cookie: stolen } });
    assert.equal(r.status, 401, `${path} with a stolen cookie`);
  }
  const mint = await fetch(`${base}/admin/api/keys`, {
    method: "POST", headers: { cookie: stolen, "content-type": "application/json" },
    body: JSON.stringify({ name: "stolen", role: "admin" }),
  });
  assert.equal(mint.status, 401, "no admin key for a stolen cookie");
  evil.close();

  begin("overview shows accounts, requests and charts");
  await page.locator("#card-available .n", { hasText: "2 / 4" }).waitFor();
  assert.equal((await page.textContent("#card-limited .n")).trim(), "1");
  assert.equal((await page.textContent("#card-inactive .n")).trim(), "1");
  const requests = Number((await page.textContent("#card-requests .n")).replace(/,/g, ""));
  assert.ok(requests >= 4, `requests card: ${requests}`);
  assert.equal(await page.locator(".chart svg").count(), 4);
  assert.ok(await page.locator(".chart rect.bar").count() >= 1, "the requests chart has a bar");
  await page.click('button[data-range="24h"]');
  await page.locator("#card-requests .l", { hasText: "24h" }).waitFor();
  await page.click('button[data-range="1h"]');
  await page.locator("#card-requests .l", { hasText: "1h" }).waitFor();
  begin("overview shows the prompt cache");
  await page.locator("#card-cache .l", { hasText: "prompt cache hit" }).waitFor();
  begin("overview lists the gateway's instances");
  await page.locator("#overview-instances h2", { hasText: "Instances (1 live)" }).waitFor();
  assert.equal(await page.locator("#overview-instances tbody tr").count(), 1);
  const instance = await page.textContent("#overview-instances tbody tr");
  assert.ok(instance.includes("(this one)") && instance.includes("live"), instance);
  begin("overview updates live without reload");
  const before = Number((await page.textContent("#card-requests .n")).replace(/,/g, ""));
  assert.equal(await message(userKey), 200);
  await page.waitForFunction((n) => Number(document.querySelector("#card-requests .n").textContent.replace(/,/g, "")) > n, before, { timeout: 12000 });
  await shot("overview");
  await page.emulateMedia({ colorScheme: "dark" });
  const dark = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(dark, "rgb(247, 247, 245)", "dark theme follows the system");
  await shot("overview-dark");
  await page.emulateMedia({ colorScheme: "light" });

  begin("accounts list both accounts");
  await page.click('#nav a[href="#/accounts"]');
  await ready("accounts");
  await page.locator('[data-action="pause"][data-account="alpha"]').waitFor();
  await page.locator('[data-action="pause"][data-account="beta"]').waitFor();

  begin("every usage window is shown, past 100 % too");
  const alphaRow = page.locator('tr:has([data-account="alpha"])');
  await alphaRow.locator('[data-window="7d_oi"]').waitFor();
  assert.match(await alphaRow.locator('[data-window="7d_oi"]').textContent(), /104 %/);
  assert.match(await alphaRow.locator('[data-unified="fallback-percentage"]').textContent(), /0\.5/);

  begin("a rate-limited account shows a live countdown to its reset");
  const limited = page.locator('tr:has([data-account="delta"])');
  assert.equal(await limited.locator("[data-status]").textContent(), "rate-limited");
  const first = await limited.locator(".countdown").textContent();
  assert.match(first, /back in (59m|1h 00m)/);
  await page.waitForFunction((before) => document.querySelector('tr:has([data-account="delta"]) .countdown').textContent !== before, first, { timeout: 3000 });

  begin("pause alpha: the router sends everything to beta");
  await page.click('[data-action="pause"][data-account="alpha"]');
  await toast("alpha paused");
  await page.locator('[data-action="resume"][data-account="alpha"]').waitFor();
  assert.equal(await page.locator('tr:has([data-account="alpha"]) [data-status]').textContent(), "paused");
  assert.deepEqual(await sendAndSee(4), ["beta", "beta", "beta", "beta"]);

  begin("resume alpha: it serves again");
  await page.click('[data-action="resume"][data-account="alpha"]');
  await toast("alpha resumed");
  await page.locator('[data-action="pause"][data-account="alpha"]').waitFor();
  assert.ok((await sendAndSee(4)).includes("alpha"), "alpha is back in rotation");

  begin("set a priority");
  await page.fill('[data-priority="beta"]', "3");
  await page.click('tr:has([data-priority="beta"]) button:has-text("Set")');
  await toast("beta: priority 3");
  const accounts = await adminGet("/admin/api/accounts");
  assert.equal(accounts.find((a) => a.name === "beta").priority, 3);
  await shot("accounts");

  begin("a logged-out account is logged in again from its row");
  const zeta = page.locator('tr:has([data-account="zeta"])');
  assert.equal(await zeta.locator("[data-status]").textContent(), "needs-login");
  await page.click('[data-action="relogin"][data-account="zeta"]');
  await page.locator("#oauth-step2:not([hidden]) #oauth-link").waitFor();
  assert.equal(await page.inputValue("#new-account-name"), "zeta");
  await pasteCodeFromAuthorizePage();
  await page.click("#oauth-finish");
  await toast("Added account zeta");
  await page.locator('tr:has([data-account="zeta"]) [data-status="active"]').waitFor();

  begin("add an account through the OAuth flow from the browser");
  await page.fill("#new-account-name", "gamma");
  await page.click("#oauth-start");
  await page.locator("#oauth-step2:not([hidden]) #oauth-link").waitFor();
  const pasted = await pasteCodeFromAuthorizePage();
  assert.match(pasted, /^code-\d+#.+/);
  await page.click("#oauth-finish");
  await toast("Added account gamma");
  await page.locator("#oauth-step2").waitFor({ state: "hidden" });
  await page.locator('[data-action="pause"][data-account="gamma"]').waitFor();
  assert.equal((await adminGet("/admin/api/accounts")).find((a) => a.name === "gamma").kind, "oauth");

  begin("a Console login through the browser saves an API-key account");
  await page.fill("#new-account-name", "epsilon");
  await page.check("#new-account-console");
  await page.click("#oauth-start");
  await page.locator("#oauth-step2:not([hidden]) #oauth-link").waitFor();
  assert.match(await page.getAttribute("#oauth-link", "href"), /\/console\/oauth\/authorize\?/);
  await pasteCodeFromAuthorizePage();
  await page.click("#oauth-finish");
  await toast("Added account epsilon");
  await page.uncheck("#new-account-console");
  assert.equal((await adminGet("/admin/api/accounts")).find((a) => a.name === "epsilon").kind, "api_key");

  begin("a used code is refused with a message in the page");
  await page.click("#oauth-start");
  await page.locator("#oauth-code").waitFor();
  await page.fill("#oauth-code", pasted);
  await page.click("#oauth-finish");
  await page.locator(".toast.bad", { hasText: "no pending login" }).waitFor();

  begin("remove gamma (confirmed)");
  await page.click('[data-action="remove"][data-account="gamma"]');
  await toast("gamma removed");
  await page.locator('[data-account="gamma"]').first().waitFor({ state: "detached" });
  await page.click('[data-action="remove"][data-account="epsilon"]');
  await toast("epsilon removed");

  begin("add an API-key account from the page (a mistyped key is refused)");
  await page.fill("#new-key-account-name", "kappa");
  await page.fill("#new-key-account-key", "hello");
  await page.click("#api-key-add");
  await page.locator(".toast.bad", { hasText: "does not look like an Anthropic API key" }).waitFor();
  await page.fill("#new-key-account-key", "sk-ant-api03-kappa-from-the-page-4321");
  await page.click("#api-key-add");
  await toast("Added API-key account kappa");
  await page.locator('[data-action="pause"][data-account="kappa"]').waitFor();
  const kappa = (await adminGet("/admin/api/accounts")).find((a) => a.name === "kappa");
  assert.equal(kappa.kind, "api_key");
  assert.equal(kappa.credential, "…4321");
  assert.equal(await page.inputValue("#new-key-account-key"), "", "the key leaves the form once saved");
  await page.click('[data-action="remove"][data-account="kappa"]');
  await toast("kappa removed");
  assert.ok(await page.locator("#toasts .toast").count() > 0);

  begin("requests: filter by account and open the details");
  await page.click('#nav a[href="#/requests"]');
  await ready("requests");
  assert.equal(await page.locator("#toasts .toast").count(), 0, "the accounts page's messages left with it");
  await page.locator("#requests-list tbody tr").first().waitFor();
  await page.selectOption("#account", "beta");
  await page.click('#request-filters button[type="submit"]');
  await page.waitForFunction(() => {
    const cells = [...document.querySelectorAll("#requests-list tbody tr td:nth-child(3)")].map((td) => td.textContent);
    return cells.length > 0 && cells.every((c) => c === "beta");
  });
  await shot("requests");
  begin("requests: a time window that ended before them is empty");
  await page.selectOption("#f-since", "custom");
  await page.fill("#f-from", "2020-01-01T00:00");
  await page.fill("#f-to", "2020-01-02T00:00");
  await page.click('#request-filters button[type="submit"]');
  await page.locator("#requests-list", { hasText: "No requests match." }).waitFor();
  await page.fill("#f-to", "");
  await page.click('#request-filters button[type="submit"]');
  await page.locator("#requests-list tbody tr").first().waitFor();
  await page.selectOption("#f-since", "24h");
  await page.click('#request-filters button[type="submit"]');
  await page.locator("#requests-list tbody tr").first().waitFor();
  await page.locator("#requests-list tbody tr").first().click();
  await page.locator("#details[open] #payload-request").waitFor();
  const details = await page.textContent("#details-body");
  assert.match(details, /Accounts tried\s*beta/);
  assert.match(details, /Time to first byte/);
  assert.match(await page.textContent("#payload-request"), /"messages"/);
  assert.ok(!details.includes("sk-ant-"), "no credential in the details");
  await shot("request-details");
  await page.click("#details .close");

  begin("keys: create (shown once), use, revoke");
  await page.click('#nav a[href="#/keys"]');
  await ready("keys");
  await page.fill("#key-name", "ci-bot");
  await page.fill("#key-budget", "5");
  await page.click("#key-create");
  await toast("Created key ci-bot");
  await page.locator("#keys-list tr", { hasText: "ci-bot" }).filter({ hasText: "budget $5" }).waitFor();
  const newKey = (await page.textContent("#new-key")).trim();
  assert.match(newKey, /^sy-/);
  await page.click("#copy-key");
  assert.equal(await message(newKey), 200);
  await page.fill("#key-name", "ci-bot");
  await page.click("#key-create");
  await page.locator(".toast.bad", { hasText: "exists" }).waitFor();
  await page.click('[data-revoke="ci-bot"]');
  await toast("Revoked ci-bot");
  await page.locator('[data-key-state="ci-bot"]', { hasText: "revoked" }).waitFor();
  let refused = 0;
  for (let i = 0; i < 30 && refused !== 401; i++) {
    refused = await message(newKey);
    if (refused !== 401) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(refused, 401, "a revoked key is refused");
  await shot("keys");

  begin("audit lists what was done");
  await page.click('#nav a[href="#/audit"]');
  await ready("audit");
  const audit = await page.textContent("#audit-list");
  for (const action of ["admin.login", "accounts.pause", "accounts.resume", "accounts.set", "auth.login", "accounts.remove", "keys.create", "keys.revoke"]) {
    assert.ok(audit.includes(action), `audit shows ${action}`);
  }
  await shot("audit");

  begin("readable on a phone");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('#nav a[href="#/accounts"]');
  await ready("accounts");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `page is ${overflow}px wider than the phone`);
  await shot("phone");

  begin("log out");
  await page.click("#logout");
  await page.waitForURL(/\/dashboard\/login(#.*)?$/);
  await page.goto(`${base}/dashboard`);
  await page.waitForURL(/\/dashboard\/login(#.*)?$/);

  begin("a viewer sees the overview and accounts, and nothing to change");
  await page.setViewportSize({ width: 1280, height: 860 });
  await page.fill("#key", viewerKey);
  await page.click("#key-form button");
  await page.waitForURL(/\/dashboard(#.*)?$/);
  await ready("overview");
  assert.match(await page.textContent("#who"), /eyes \(viewer key\)/);
  for (const hidden of ["#/keys", "#/requests", "#/audit"]) {
    assert.equal(await page.locator(`#nav a[href="${hidden}"]`).isVisible(), false, `${hidden} hidden from a viewer`);
  }
  await page.click('#nav a[href="#/accounts"]');
  await ready("accounts");
  await page.locator('[data-status]').first().waitFor();
  assert.equal(await page.locator("[data-action]").count(), 0, "no account actions for a viewer");
  assert.equal(await page.locator("#add-account").count(), 0);
  await page.goto(`${base}/dashboard#/keys`);
  await ready("keys");
  await page.locator("#keys-list .error", { hasText: "may not" }).waitFor();

  assert.deepEqual(pageErrors, [], "no script errors in the page");
  console.log("dashboard e2e: all checks passed");
  await browser.close();
} catch (e) {
  console.error(`dashboard e2e failed at "${step}": ${e.stack || e}`);
  if (pageErrors.length) console.error(`page errors: ${pageErrors.join("; ")}`);
  try { await shot(`failed-${step.replace(/[^a-z0-9]+/gi, "-")}`); } catch (_) { /* best effort */ }
  await browser.close();
  process.exit(1);
}
