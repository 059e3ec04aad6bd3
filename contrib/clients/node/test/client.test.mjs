// The Node client against the real gateway: node --test test/
import assert from "node:assert/strict";
import fs from "node:fs";
import { after, afterEach, describe, it } from "node:test";
import {
  CATEGORIES, Client, buildErrorMetadata, buildLlmMetadata, buildToolMetadata, buildWorkflowMetadata,
  progressMetadata, tail, TailRefused, timingMetadata,
} from "../index.js";
import { Gateway, freePort, lostAnswerProxy, sleep, waitUntil } from "./gateway.mjs";

const TS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const quiet = { warn() {}, error() {}, info() {} };

// contrib/clients/testdata/busy_once.lua: refuses "busy…" texts once, with a retry_after
const BUSY_ONCE = fs.readFileSync(new URL("../../testdata/busy_once.lua", import.meta.url), "utf8");

function withoutTimestamp(md) {
  const { timestamp, ...rest } = md;
  assert.match(timestamp, TS, "built metadata carries a timestamp");
  return rest;
}

const started = [];
const clients = [];
async function gateway(config, plugins, port) {
  const gw = await new Gateway(config, plugins, port).start();
  started.push(gw);
  return gw;
}
function client(opts) {
  const c = new Client({ logger: quiet, ...opts });
  clients.push(c);
  return c;
}
afterEach(async () => {
  while (clients.length) await clients.pop().close(1000);
  while (started.length) await started.pop().stop();
});

describe("Client", () => {
  it("delivers every helper with the builders' metadata", async () => {
    const gw = await gateway();
    const c = client({ url: gw.url, source: "node-test" });
    const conv = "node-helpers";
    for (const cat of CATEGORIES) assert.equal(c[cat](conv, `a ${cat} update`, { k: cat }), true);
    c.update(conv, "info", "llm", buildLlmMetadata("gpt-4", "openai", { priority: "high" }));
    c.update(conv, "tool", "tool", buildToolMetadata("search_code", { q: "x".repeat(150), n: 3 }));
    c.update(conv, "workflow", "wf", buildWorkflowMetadata("deploy", 3, 7));
    c.update(conv, "workflow", "wf0", buildWorkflowMetadata("empty", 0, 0));
    c.update(conv, "error", "err", buildErrorMetadata("timeout", "took too long", { attempt: 2 }));
    c.withTiming(conv, "info", "Import complete", performance.now() - 1500, { records_imported: 1000 });
    c.progressPercentage(conv, "Processing items", 3, 10, { current_item: "i3" });
    assert.equal(c.bulkUpdate(conv, [{ category: "info", text: "b1" }, ["planning", "b2", { x: 1 }]]), 2);
    assert.equal(c.maybeUpdate(conv, false, "info", "never"), false);
    assert.equal(c.maybeUpdate(null, true, "info", "never"), false);
    assert.equal(c.maybeUpdate(conv, true, "info", "maybe"), true);
    assert.equal(await c.flush(10000), true);

    const got = await gw.history(conv);
    assert.deepEqual(got.map((u) => u.seq), got.map((_, i) => i + 1));
    const by = Object.fromEntries(got.map((u) => [u.text, u]));
    assert.equal(by.never, undefined);
    for (const cat of CATEGORIES) {
      const u = by[`a ${cat} update`];
      assert.deepEqual([u.category, u.metadata, u.source], [cat, { k: cat }, "node-test"]);
    }
    assert.deepEqual(withoutTimestamp(by.llm.metadata), { model: "gpt-4", provider: "openai", priority: "high" });
    assert.deepEqual(withoutTimestamp(by.tool.metadata), { tool: "search_code", params: { q: "x".repeat(100) + "...", n: 3 } });
    assert.deepEqual(withoutTimestamp(by.wf.metadata), { workflow: "deploy", progress: "3/7", percentage: 43 });
    assert.deepEqual(withoutTimestamp(by.wf0.metadata), { workflow: "empty", progress: "0/0", percentage: 0 });
    assert.deepEqual(withoutTimestamp(by.err.metadata), { error_type: "timeout", message: "took too long", attempt: 2 });
    const timed = withoutTimestamp(by["Import complete"].metadata);
    assert.ok(timed.duration_ms >= 1500 && timed.duration_ms < 3000, `duration_ms ${timed.duration_ms}`);
    assert.match(timed.duration_human, /^(1\.[5-9]|2\.\d)s$/);
    assert.equal(timed.records_imported, 1000);
    const p = by["Processing items (30%)"];
    assert.deepEqual([p.category, withoutTimestamp(p.metadata)],
      ["progress", { current: 3, total: 10, percentage: 30, progress: "3/10", current_item: "i3" }]);
    assert.deepEqual([by.b2.category, by.b2.metadata], ["planning", { x: 1 }]);
    const s = c.stats();
    assert.deepEqual([s.sent, s.dropped, s.rejected, s.queued], [got.length, 0, 0, 0]);
  });

  it("computes what the gateway's own builders compute", async () => {
    const gw = await gateway({}, ["builders"]);
    const samples = [0, 1, 849.6, 850, 999, 1000, 1049, 1050, 1150, 1250, 1350, 1449, 1450, 1500, 1750, 2250,
      59949, 59950, 59999, 60000, 66000, 75000, 89999, 90000, 3600000];
    const pairs = [[1, 3], [2, 3], [1, 8], [5, 8], [0, 0], [7, 7], [1, 200]];
    for (const ms of samples) {
      const r = await gw.post("/api/v1/status", { conversation_id: "node-cross", category: "info", text: String(ms), builder: "timing", args: { duration_ms: ms } });
      assert.equal(r.status, 202);
    }
    for (const [current, total] of pairs)
      await gw.post("/api/v1/status", { conversation_id: "node-cross", category: "progress", text: "p", builder: "progress", args: { current, total } });
    const got = await gw.history("node-cross");
    const timing = got.filter((u) => u.category === "info").map((u) => [u.metadata.duration_ms, u.metadata.duration_human]);
    assert.deepEqual(samples.map((ms) => { const m = timingMetadata(ms); return [m.duration_ms, m.duration_human]; }), timing);
    got.filter((u) => u.category === "progress").forEach((u, i) => {
      const [md, text] = progressMetadata("p", ...pairs[i]);
      assert.deepEqual([withoutTimestamp(md), text], [withoutTimestamp(u.metadata), u.text]);
    });
  });

  it("returns at once while the gateway is down, and delivers once it is up", async () => {
    const port = await freePort();
    const c = client({ url: `http://127.0.0.1:${port}`, flushIntervalMs: 50 });
    const began = performance.now();
    for (let i = 0; i < 50; i++) assert.equal(c.info("node-down", `u${i}`), true);
    assert.ok(performance.now() - began < 500, "50 calls return at once");
    await sleep(500);
    assert.equal(c.stats().queued, 50);
    const gw = await gateway({}, [], port);
    assert.equal(await c.flush(15000), true);
    assert.deepEqual((await gw.history("node-down")).map((u) => u.text), Array.from({ length: 50 }, (_, i) => `u${i}`));
    assert.equal(c.stats().sent, 50);
  });

  it("never delivers a retry twice when an answer is lost", async () => {
    const gw = await gateway();
    const proxy = await lostAnswerProxy(gw.port, 1);
    try {
      const c = client({ url: proxy.url, flushIntervalMs: 20 });
      for (let i = 0; i < 20; i++) c.tool("node-lost", `t${i}`);
      assert.equal(await c.flush(15000), true);
      assert.ok(proxy.requests >= 2, "the first answer was lost, the batch went again");
      assert.deepEqual((await gw.history("node-lost")).map((u) => u.text), Array.from({ length: 20 }, (_, i) => `t${i}`));
      const s = c.stats();
      assert.equal(s.sent + s.duplicates, 20);
      assert.ok(s.duplicates >= 1);
    } finally {
      proxy.close();
    }
  });

  it("retries refused items after their Retry-After, and counts what is refused for good", async () => {
    const gw = await gateway({}, [["busy_once", BUSY_ONCE]]);
    const c = client({ url: gw.url, flushIntervalMs: 20 });
    for (const t of ["ok1", "busy1", "ok2", "busy2"]) c.info("node-busy", t);
    c.update("node-busy", "no-such-category", "bad");
    const began = performance.now();
    assert.equal(await c.flush(15000), true);
    assert.ok(performance.now() - began >= 900, "waited for Retry-After");
    assert.deepEqual((await gw.history("node-busy")).map((u) => u.text).sort(), ["busy1", "busy2", "ok1", "ok2"]);
    const s = c.stats();
    assert.deepEqual([s.sent, s.retried, s.rejected], [4, 2, 1]);
  });

  it("counts and logs what overflows the buffer", async () => {
    const drops = [];
    const warnings = [];
    const c = client({ url: `http://127.0.0.1:${await freePort()}`, bufferSize: 10, onDrop: (n) => drops.push(n),
      logger: { ...quiet, warn: (m) => warnings.push(m) } });
    const results = Array.from({ length: 25 }, (_, i) => c.info("node-full", `u${i}`));
    assert.deepEqual(results, [...Array(10).fill(true), ...Array(15).fill(false)]);
    assert.equal(c.stats().dropped, 15);
    assert.deepEqual(drops, Array.from({ length: 15 }, (_, i) => i + 1));
    assert.ok(warnings.some((w) => w.includes("dropped=1")), warnings.join("\n"));
  });

  it("sends what is queued on close, and refuses what comes after", async () => {
    const gw = await gateway();
    const c = client({ url: gw.url, flushIntervalMs: 60000, batchSize: 1000 });
    for (let i = 0; i < 30; i++) c.info("node-close", `u${i}`);
    await sleep(100);
    assert.deepEqual(await gw.history("node-close"), [], "nothing sent before the interval");
    assert.equal(await c.close(10000), true);
    assert.equal((await gw.history("node-close")).length, 30);
    assert.equal(c.info("node-close", "after close"), false);
    assert.equal(c.stats().dropped, 1);
  });

  it("counts what a close past its deadline leaves unsent", async () => {
    const c = client({ url: `http://127.0.0.1:${await freePort()}` });
    for (let i = 0; i < 5; i++) c.info("node-gone", `u${i}`);
    const began = performance.now();
    assert.equal(await c.close(500), false);
    assert.ok(performance.now() - began < 5000);
    await waitUntil(() => c.stats().unsent === 5);
  });

  it("never throws into the caller", async () => {
    const gw = await gateway();
    const errors = [];
    const c = client({ url: gw.url, logger: { ...quiet, error: (m) => errors.push(m) } });
    const loop = {};
    loop.self = loop;
    assert.equal(c.info("node-safe", "circular", loop), false);
    assert.equal(c.info("node-safe", "bigint", { n: 1n }), false);
    assert.equal(c.progressPercentage("node-safe", "p", 1, 2, { n: 2n }), false);
    assert.equal(errors.length, 3);
    assert.equal(c.info("node-safe", "fine"), true);
    assert.equal(await c.flush(10000), true);
    assert.deepEqual((await gw.history("node-safe")).map((u) => u.text), ["fine"]);
  });

  it("sends what is queued when the process ends without a close, and warns about nothing with many clients", async () => {
    const gw = await gateway();
    const script = `
      import { Client } from ${JSON.stringify(new URL("../index.js", import.meta.url).href)};
      const clients = Array.from({ length: 20 }, () => new Client({ url: ${JSON.stringify(gw.url)}, flushIntervalMs: 60000 }));
      clients.forEach((c, i) => c.info("node-exit", "u" + i));
      // no close: the process ends, beforeExit sends them`;
    const { spawnSync } = await import("node:child_process");
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", timeout: 20000 });
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /MaxListenersExceeded/);
    assert.equal((await gw.history("node-exit")).length, 20);
  });
});

describe("tail", () => {
  it("follows conversations and resumes across a gateway restart", async () => {
    const gw = await gateway({ store: "sqlite", store_path: "tail.db" });
    const ac = new AbortController();
    const events = [];
    const following = (async () => {
      for await (const ev of tail(gw.url, ["node-tail-a", "node-tail-b"], { reconnectMs: 100, signal: ac.signal, logger: quiet })) events.push(ev);
    })();
    await sleep(300);
    const c = client({ url: gw.url, flushIntervalMs: 10 });
    for (let i = 0; i < 5; i++) c.info(i % 2 ? "node-tail-a" : "node-tail-b", `u${i}`);
    assert.equal(await c.flush(10000), true);
    await waitUntil(() => events.length >= 5);
    await gw.stop();
    for (let i = 5; i < 8; i++) c.info("node-tail-a", `u${i}`); // queued while it is down
    await gw.start();
    assert.equal(await c.flush(15000), true);
    await waitUntil(() => events.length >= 8);
    await sleep(200);
    ac.abort();
    await following;
    const texts = (conv) => events.filter((e) => e.data.conversation_id === conv).map((e) => e.data.text);
    assert.deepEqual(texts("node-tail-a"), ["u1", "u3", "u5", "u6", "u7"]);
    assert.deepEqual(texts("node-tail-b"), ["u0", "u2", "u4"]);
    assert.deepEqual(new Set(events.map((e) => e.type)), new Set(["status_update"]));
  });

  it("gives up on a stream the gateway refuses", async () => {
    const gw = await gateway();
    await assert.rejects(async () => { for await (const _ of tail(gw.url, ["bad id!"], { logger: quiet })); }, TailRefused);
  });
});
