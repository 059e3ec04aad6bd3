// The dashboard in a real browser: Debian's chromium driven by
// puppeteer-core (no browser download). The page loads without console
// errors, shows what is published over HTTP within a second, lists the
// conversation, filters the tail by category, shows a webhook endpoint's
// state, asks for the admin key when one is set, and keeps to loopback
// without one. A screenshot lands in build/dashboard.png.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import puppeteer from "puppeteer-core";
import * as g from "./gateway.mjs";

const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => fs.existsSync(p));
const ADMIN = "admin_dashboard_0123456789";

async function launch() {
  assert.ok(CHROMIUM, "chromium is installed (scripts/install-deps --test)");
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
  });
}

// a page that records console errors and failed requests
async function open(browser, url, viewport = { width: 1280, height: 900 }) {
  const page = await browser.newPage();
  await page.setViewport(viewport);
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url, { waitUntil: "domcontentloaded" });
  return { page, errors };
}

describe("the dashboard in chromium", () => {
  let gw, browser;
  before(async () => {
    gw = await g.start({
      flush_interval_ms: 20,
      webhooks: { endpoints: [{ name: "down-hook", url: "http://127.0.0.1:9/never", secret: "whsec_ZGFzaGJvYXJkLXNwZWMtc2VjcmV0LTAx", batch_delay_ms: 50 }] },
    });
    browser = await launch();
  });
  after(async () => {
    if (browser) await browser.close();
    assert.equal(await g.stop(gw), 0);
  });

  it("loads without console errors, tails what is published within a second, lists the conversation, filters by category and shows webhooks", async () => {
    const { page, errors } = await open(browser, `${gw.url}/dashboard`);
    await page.waitForFunction(() => document.getElementById("state").textContent === "live", { timeout: 5000 });
    const conv = g.conv("dash");
    const t0 = Date.now();
    await g.publish(gw, { conversation_id: conv, category: "tool", text: "Executing search_code", metadata: { tool: "search_code" } });
    await page.waitForFunction((c) => [...document.querySelectorAll("#tail li")].some((li) => li.dataset.conversation === c), { timeout: 1000 }, conv);
    assert.ok(Date.now() - t0 < 1000, "in the tail within a second");
    await g.publish(gw, { conversation_id: conv, category: "error", text: "timeout after 30 s" });
    await page.waitForFunction(() => document.querySelectorAll("#tail li").length >= 2, { timeout: 2000 });
    // the conversation list (polled every 2 s)
    await page.waitForFunction((c) => !!document.querySelector(`#convs tr[data-conversation="${c}"]`), { timeout: 5000 }, conv);
    // filtering by category: unticking error hides the error row only
    await page.click('#cats input[data-cat="error"]');
    const visible = await page.$$eval("#tail li", (lis) => lis.filter((li) => !li.hidden).map((li) => li.dataset.category));
    assert.ok(visible.includes("tool"));
    assert.ok(!visible.includes("error"));
    await page.click('#cats input[data-cat="error"]');
    // an update's JSON on click
    await page.click("#tail li");
    const detail = JSON.parse(await page.$eval("#detail", (d) => d.textContent));
    assert.equal(detail.conversation_id, conv);
    // pause holds what comes, resume shows it
    await page.click("#pause");
    await g.publish(gw, { conversation_id: conv, category: "info", text: "while paused" });
    await page.waitForFunction(() => /Resume \(1 new\)/.test(document.getElementById("pause").textContent), { timeout: 2000 });
    await page.click("#pause");
    await page.waitForFunction(() => [...document.querySelectorAll("#tail li")].some((li) => li.textContent.includes("while paused")), { timeout: 1000 });
    // the webhook endpoint and its state (its receiver is down: failures pile up)
    await page.waitForFunction(() => !!document.querySelector('#webhooks tr[data-endpoint="down-hook"]'), { timeout: 5000 });
    const state = await page.$eval('#webhooks tr[data-endpoint="down-hook"] td:nth-child(2)', (td) => td.textContent);
    assert.equal(state, "active");
    // the traffic chart has points once /metrics was read twice; some
    // traffic over a few polls, for the chart and the screenshot
    const texts = ["Calling gpt-4", "Running search_code", "Workflow 3/7", "Tokens: 1,240 in / 310 out", "error: rate limited, retrying"];
    const cats = ["engine", "tool", "workflow", "progress", "error"];
    for (let i = 0; i < 24; i++) {
      await g.publish(gw, { conversation_id: `conv-${["a1f3", "b7e2", "c9d4"][i % 3]}`, category: cats[i % 5], text: texts[i % 5] });
      await g.sleep(200);
    }
    await page.waitForFunction(() => document.querySelectorAll("#legend span").length >= 3, { timeout: 6000 });
    await page.click("#tail li");
    // (docs/dashboard.png, in the README, is a copy of one)
    fs.mkdirSync(path.resolve("../../build"), { recursive: true });
    await page.screenshot({ path: path.resolve("../../build/dashboard.png"), fullPage: true });
    // readable on a phone: no horizontal scroll
    await page.setViewport({ width: 390, height: 844 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 1, `no horizontal scroll on a phone (${overflow} px)`);
    assert.deepEqual(errors, []);
    await page.close();
  });
});

describe("the dashboard with an admin key", () => {
  it("asks for the key, then shows everything with it", async () => {
    const gw = await g.start({ flush_interval_ms: 20, security: { admin_key: ADMIN } });
    const browser = await launch();
    try {
      const { page, errors } = await open(browser, `${gw.url}/dashboard`);
      await page.waitForSelector("#auth:not([hidden])", { timeout: 5000 });
      await page.type("#auth-key", ADMIN);
      await page.click('#auth-form button[type="submit"]');
      await page.waitForFunction(() => document.getElementById("state").textContent === "live", { timeout: 5000 });
      const conv = g.conv("keyed");
      await g.publish(gw, { conversation_id: conv, category: "info", text: "seen with the key" });
      await page.waitForFunction((c) => [...document.querySelectorAll("#tail li")].some((li) => li.dataset.conversation === c), { timeout: 2000 }, conv);
      // the 401s before the key are the browser's, not the page's
      assert.deepEqual(errors.filter((e) => !/401/.test(e)), []);
      await page.close();
    } finally {
      await browser.close();
      assert.equal(await g.stop(gw), 0);
    }
  });

  it("is served to loopback only without an admin key, and nothing but GET", async () => {
    const gw = await g.start({});
    try {
      const r = await fetch(`${gw.url}/dashboard`);
      assert.equal(r.status, 200);
      assert.match(r.headers.get("content-type"), /text\/html/);
      assert.match(r.headers.get("content-security-policy"), /default-src 'none'/);
      const html = await r.text();
      assert.match(html, /<title>statusgw<\/title>/);
      assert.doesNotMatch(html, /https?:\/\/(?!127)/, "nothing loaded from elsewhere");
      assert.equal((await fetch(`${gw.url}/dashboard`, { method: "POST" })).status, 405);
      // from another address (a trusted proxy says so) the page is refused
      const behind = await g.start({ security: { trusted_proxies: ["127.0.0.1"] } });
      try {
        const far = await fetch(`${behind.url}/dashboard`, { headers: { "x-forwarded-for": "203.0.113.9" } });
        assert.equal(far.status, 403);
        assert.match((await far.json()).error.message, /admin_key/);
      } finally {
        assert.equal(await g.stop(behind), 0);
      }
    } finally {
      assert.equal(await g.stop(gw), 0);
    }
  });
});
