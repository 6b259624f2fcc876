// Browser tests of the web app against the real stack, in headless Debian
// chromium driven by playwright-core. Run by scripts/test-web.sh, which
// starts the stack and passes APP, ADMIN_KEY, USER_KEY, USER_ID.
// Screenshots of every screen go to tests/web/artifacts/.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { readFile } from "node:fs/promises";

const { APP, ADMIN_KEY, USER_KEY, USER_ID } = process.env;
const ART = new URL("./artifacts/", import.meta.url).pathname;
mkdirSync(ART, { recursive: true });

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const results = [];
async function test(name, fn) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const started = Date.now();
  try {
    await fn(page, context);
    assert.deepEqual(errors, [], "no script errors in the page");
    results.push({ name, ok: true, ms: Date.now() - started });
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    await page.screenshot({ path: `${ART}FAILED-${name.replace(/\W+/g, "-")}.png`, fullPage: true }).catch(() => {});
    results.push({ name, ok: false, error: e });
    console.log(`FAIL ${name}\n${e.stack || e}`);
  } finally {
    await context.close();
  }
}

async function signIn(page, key) {
  await page.goto(APP);
  await page.fill("#api-key", key);
  await page.click("#sign-in");
  await page.waitForSelector("#sign-out");
}

async function api(method, path, key, body) {
  const r = await fetch(APP + path, { method, headers: { authorization: `Bearer ${key}`, "content-type": "application/json" }, body: body ? JSON.stringify(body) : undefined });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

await test("sign in shows the demo keys, a wrong key is refused in words", async (page) => {
  await page.goto(APP);
  await page.waitForSelector(".demo-key");
  await page.screenshot({ path: `${ART}sign-in.png` });
  await page.fill("#api-key", "lcb_not_a_key");
  await page.click("#sign-in");
  await page.waitForSelector(".signin .error");
  assert.match(await page.textContent(".signin .error"), /not valid|revoked/);
  await page.click(".demo-key");
  await page.click("#sign-in");
  await page.waitForSelector("#sign-out");
});

await test("chat: create a thread, the token counter moves while typing, send, see the answer with tokens and cost", async (page) => {
  await signIn(page, USER_KEY);
  await page.click("#new-thread");
  await page.waitForSelector("#message-input");
  assert.equal((await page.textContent("#token-count")).trim(), "0 tokens");
  await page.type("#message-input", "How are prompt-cache reads priced for a long conversation?", { delay: 5 });
  await page.waitForFunction(() => /^[1-9]\d* tokens · about \$/.test(document.querySelector("#token-count").textContent.trim()));
  const first = await page.textContent("#token-count");
  await page.type("#message-input", " Please answer in detail, with examples and numbers.", { delay: 5 });
  await page.waitForFunction((before) => document.querySelector("#token-count").textContent !== before, first);
  const second = await page.textContent("#token-count");
  assert.ok(parseInt(second) > parseInt(first), `the count grew: ${first} → ${second}`);
  // Shift+Enter is a newline, Enter sends.
  await page.keyboard.down("Shift");
  await page.keyboard.press("Enter");
  await page.keyboard.up("Shift");
  assert.match(await page.inputValue("#message-input"), /\n$/);
  await page.keyboard.press("Enter");
  await page.waitForSelector(".message.assistant .cost", { timeout: 30000 });
  const meta = await page.textContent(".message.assistant .meta");
  assert.match(meta, /\$0\.\d{6}/);
  assert.match(meta, /in \d+ · out \d+/);
  await page.screenshot({ path: `${ART}chat.png` });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${ART}chat-390px.png`, fullPage: true });
});

await test("chat streams: typing, then the answer growing as the model writes, then its cost", async (page) => {
  // llm-sim writes the provider's events 200 ms apart, so the answer takes seconds to arrive.
  await page.route("**/api/threads/*/messages", (route) =>
    route.request().method() === "POST"
      ? route.continue({ headers: { ...route.request().headers(), "x-sim-stream-delay-ms": "200" } })
      : route.continue());
  await signIn(page, USER_KEY);
  await page.click("#new-thread");
  await page.waitForSelector("#message-input");
  await page.fill("#message-input", "Walk me through how a streamed answer is billed, step by step.");
  await page.click("#send");
  await page.waitForSelector("#typing");
  await page.waitForSelector("#streaming-answer");
  const early = await page.textContent("#streaming-answer .content");
  assert.ok(early.length > 0);
  assert.equal(await page.$(".message.assistant .cost"), null, "no cost while the answer is arriving");
  await page.waitForFunction((n) => {
    const el = document.querySelector("#streaming-answer .content");
    return el && el.textContent.length > n;
  }, early.length);
  await page.screenshot({ path: `${ART}chat-streaming.png` });
  await page.waitForSelector(".message.assistant .cost", { timeout: 30000 });
  assert.equal(await page.$("#streaming-answer"), null, "the stored turn replaced the streamed text");
  const answer = await page.textContent(".message.assistant .content");
  assert.ok(answer.startsWith(early), `the stored answer is the streamed one: ${early} / ${answer}`);
  assert.ok(answer.length > early.length);
  assert.match(await page.textContent(".message.assistant .meta"), /\$0\.\d{6}/);
});

await test("dashboard: an event posted to the collector appears within 2 seconds without a reload", async (page) => {
  await signIn(page, ADMIN_KEY);
  await page.click("#tab-dashboard");
  await page.waitForSelector("#dash-cost .big");
  // A notice sent before the page's live stream is connected reaches only the 15 s refresh.
  await page.waitForSelector('#live[data-state="open"]', { timeout: 30000 });
  const before = await page.textContent("#dash-cost .big");
  const requests = [];
  page.on("request", (r) => { if (r.url().includes("/api/")) requests.push(r.url()); });
  const postEvent = async () => {
    const id = `browser-${Date.now()}`;
    const r = await fetch(APP + "/api/events", {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_KEY}`, "content-type": "application/cloudevents+json" },
      body: JSON.stringify({ specversion: "1.0", id, source: "/browser-test", type: "llm-billing.inference", time: new Date().toISOString(),
        data: { user_id: Number(USER_ID), model: "claude-sonnet-4-5-20250929", request_id: id, status: "succeeded", latency_ms: 250, compute_ms: 200, usage: { input_tokens: 100000, output_tokens: 20000 } } }),
    });
    assert.equal(r.status, 202);
  };
  const posted = Date.now();
  await postEvent();
  await page.waitForFunction((b) => document.querySelector("#dash-cost .big").textContent !== b, before, { timeout: 2000 });
  console.log(`     the dashboard changed ${Date.now() - posted} ms after the POST`);
  await page.waitForSelector("#live");
  assert.match(await page.textContent("#live"), /billed/);
  // A refresh is a fixed number of requests.
  assert.ok(requests.length <= 4, `one refresh made ${requests.length} requests: ${requests.join(", ")}`);
  await page.screenshot({ path: `${ART}dashboard.png`, fullPage: true });

  // Leaving the dashboard closes its live stream; coming back opens one that works.
  const streams = { opened: 0, closed: 0 };
  page.on("request", (r) => { if (r.url().includes("/events/stream")) streams.opened += 1; });
  page.on("requestfailed", (r) => { if (r.url().includes("/events/stream")) streams.closed += 1; });
  await page.click("#tab-chat");
  await page.waitForFunction(() => !document.querySelector("#live"));
  await page.click("#tab-dashboard");
  await page.waitForSelector('#live[data-state="open"]', { timeout: 30000 });
  await page.waitForSelector("#dash-cost .big");
  assert.deepEqual(streams, { opened: 1, closed: 1 }, "the old stream closed, one new one");
  const again = await page.textContent("#dash-cost .big");
  await postEvent();
  await page.waitForFunction((b) => document.querySelector("#dash-cost .big").textContent !== b, again, { timeout: 5000 });
});

await test("admin adds a price version and a new quote uses it; a bad version is refused in words", async (page) => {
  await signIn(page, ADMIN_KEY);
  await page.click("#tab-settings");
  await page.waitForSelector("#price-table");
  await page.selectOption("#price-model", "claude-haiku-4-5-20251001");
  await page.fill("#price-from", "2099-01-01T00:00:00Z");
  for (const [c, v] of [["input", "-5"], ["output", "2000000"], ["cache_write_5m", "1250000"], ["cache_write_1h", "2000000"], ["cache_read", "100000"]]) await page.fill(`#price-${c}`, v);
  await page.click("#add-price");
  await page.waitForSelector("#price-result.error");
  assert.match(await page.textContent("#price-result"), /input/);
  await page.fill("#price-input", "1500000");
  await page.click("#add-price");
  await page.waitForSelector("#price-result.ok");
  await page.selectOption("#quote-model", "claude-haiku-4-5-20251001");
  await page.fill("#quote-input", "1000000");
  await page.fill("#quote-output", "0");
  await page.fill("#quote-cache-read", "0");
  await page.fill("#quote-at", "2099-06-01T00:00:00Z");
  await page.click("#get-quote");
  await page.waitForSelector("#quote-total");
  // 1,000,000 input tokens at the new $1.50 per million.
  assert.equal(await page.textContent("#quote-total"), "$1.50");
  await page.screenshot({ path: `${ART}settings.png`, fullPage: true });
});

await test("admin keeps the catalogue: the price table shows tiers and modifiers; an alias added and removed; a model retired and restored", async (page) => {
  await signIn(page, ADMIN_KEY);
  await page.click("#tab-settings");
  await page.waitForSelector("#catalogue-table tr[data-model='claude-sonnet-4-5-20250929']");
  const sonnet = await page.textContent("#price-table tbody tr:has-text('claude-sonnet-4-5-20250929') .rules");
  assert.match(sonnet, /above 200000 prompt tokens: \$6\.00 in \/ \$22\.50 out/);
  assert.match(sonnet, /service_tier=batch ×0\.5/);
  await page.fill("#alias-name", "sonnet-from-the-browser");
  await page.selectOption("#alias-model", "claude-sonnet-4-5-20250929");
  await page.click("#add-alias");
  await page.waitForSelector("#catalogue-result.ok");
  await page.waitForSelector("button[data-alias='sonnet-from-the-browser']");
  const listed = await api("GET", "/api/models/aliases", ADMIN_KEY);
  assert.ok(listed.body.items.some((a) => a.alias === "sonnet-from-the-browser" && a.model === "claude-sonnet-4-5-20250929"));
  await page.click("#add-alias");
  await page.waitForSelector("#catalogue-result.error");
  assert.match(await page.textContent("#catalogue-result"), /alias/);
  await page.click("button[data-alias='sonnet-from-the-browser']");
  await page.waitForFunction(() => !document.querySelector("button[data-alias='sonnet-from-the-browser']"));
  const row = "#catalogue-table tr[data-model='claude-3-opus-20240229']";
  // Opus 3 is retired in the seed: restored, then retired again.
  assert.match(await page.textContent(row), /retired/);
  await page.click(`${row} .retire`);
  await page.waitForFunction((r) => document.querySelector(r)?.textContent.includes("active"), row);
  await page.click(`${row} .retire`);
  await page.waitForFunction((r) => document.querySelector(r)?.textContent.includes("retired"), row);
  await page.screenshot({ path: `${ART}catalogue.png`, fullPage: true });
});

await test("billing: an invoice generated, finalized and downloaded as CSV", async (page) => {
  await signIn(page, ADMIN_KEY);
  await page.click("#tab-billing");
  await page.waitForSelector("#cost-today");
  await page.fill("#invoice-user", String(USER_ID));
  await page.fill("#invoice-start", "2020-01-01T00:00:00Z");
  // A period that has ended: a running one cannot be finalized.
  await page.fill("#invoice-end", new Date().toISOString());
  await page.click("#generate");
  await page.waitForSelector("#invoice-view #finalize");
  assert.equal(await page.textContent("#invoice-status"), "draft");
  await page.click("#finalize");
  await page.waitForFunction(() => document.querySelector("#invoice-status")?.textContent === "final" || document.querySelector("#invoice-status")?.textContent === "finalized");
  assert.match(await page.textContent("#invoice-total"), /^\$\d+\.\d\d$/);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download-csv")]);
  const csv = await readFile(await download.path(), "utf8");
  assert.match(csv.split("\n")[0], /,/);
  assert.ok(csv.split("\n").length > 2, "the CSV has lines");
  await page.screenshot({ path: `${ART}billing.png`, fullPage: true });
});

await browser.close();
const failed = results.filter((r) => !r.ok);
console.log(`${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
