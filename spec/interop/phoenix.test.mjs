// statusgw driven by the official phoenix JavaScript client.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import * as g from "./gateway.mjs";

describe("phoenix.js against statusgw", () => {
  let gw;
  before(async () => { gw = await g.start({ flush_interval_ms: 30 }); });
  after(async () => { g.disconnectAll(); assert.equal(await g.stop(gw), 0); });

  it("joins a status topic and receives status_update pushes", async () => {
    const id = g.conv("join");
    const s = g.socket(gw);
    const ch = s.channel(`status:${id}`, { categories: ["*"] });
    const got = [];
    ch.on("status_update", (u) => got.push(u));
    const reply = await g.join(ch);
    assert.equal(reply.conversation_id, id);
    assert.deepEqual(reply.subscribed_categories, ["engine", "tool", "workflow", "progress", "error", "info", "planning", "summary"]);
    assert.equal(reply.available_categories.length, 8);
    assert.equal(reply.last_seq, 0);
    assert.match(reply.epoch, /^[0-9a-f]{16}$/);
    const pub = await g.publish(gw, { conversation_id: id, category: "tool", text: "Executing search_code", metadata: { tool: "search_code" } });
    assert.equal(pub.status, 202);
    await g.waitFor(() => got.length === 1, 5000, "status_update");
    assert.equal(got[0].text, "Executing search_code");
    assert.equal(got[0].seq, 1);
    assert.equal(got[0].metadata.tool, "search_code");
    s.disconnect();
  });

  it("subscribes to no category without categories, and changes categories on request", async () => {
    const id = g.conv("cats");
    const s = g.socket(gw);
    const ch = s.channel(`status:${id}`, {});
    const got = [];
    ch.on("status_update", (u) => got.push(u.category));
    const reply = await g.join(ch);
    assert.deepEqual(reply.subscribed_categories, []);
    await g.publish(gw, { conversation_id: id, category: "tool", text: "unseen" });
    await g.sleep(150); // flushed while subscribed to nothing
    let r = await g.push(ch, "subscribe_categories", { categories: ["error", "tool"] });
    assert.equal(r.status, "ok");
    assert.deepEqual(r.response.subscribed, ["tool", "error"]);
    r = await g.push(ch, "get_subscriptions");
    assert.deepEqual(r.response.subscribed_categories, ["tool", "error"]);
    await g.publish(gw, { conversation_id: id, category: "info", text: "filtered" });
    await g.publish(gw, { conversation_id: id, category: "error", text: "seen" });
    await g.waitFor(() => got.length === 1);
    r = await g.push(ch, "unsubscribe_categories", { categories: ["error"] });
    assert.deepEqual(r.response.subscribed, ["tool"]);
    await g.publish(gw, { conversation_id: id, category: "error", text: "unseen again" });
    await g.publish(gw, { conversation_id: id, category: "tool", text: "seen too" });
    await g.waitFor(() => got.length === 2);
    assert.deepEqual(got, ["error", "tool"]);
    s.disconnect();
  });

  it("lists available categories with the seven original descriptions", async () => {
    const s = g.socket(gw);
    const ch = s.channel(`status:${g.conv("avail")}`, {});
    await g.join(ch);
    const r = await g.push(ch, "get_available_categories");
    assert.equal(r.status, "ok");
    assert.equal(r.response.descriptions.engine, "Engine execution updates");
    assert.equal(r.response.descriptions.tool, "Tool execution status");
    assert.equal(r.response.descriptions.workflow, "Workflow progress updates");
    assert.equal(r.response.descriptions.progress, "General progress indicators");
    assert.equal(r.response.descriptions.error, "Error messages");
    assert.equal(r.response.descriptions.info, "Informational messages");
    assert.equal(r.response.descriptions.planning, "Planning and decision-making updates");
    s.disconnect();
  });

  it("refuses invalid categories all-or-nothing, with the invalid and valid lists", async () => {
    const s = g.socket(gw);
    const ch = s.channel(`status:${g.conv("inv")}`, { categories: ["tool"] });
    await g.join(ch);
    const r = await g.push(ch, "subscribe_categories", { categories: ["error", "bogus", "nope"] });
    assert.equal(r.status, "error");
    assert.equal(r.response.reason, "invalid_categories");
    assert.deepEqual(r.response.invalid, ["bogus", "nope"]);
    assert.ok(r.response.valid.includes("error"));
    const subs = await g.push(ch, "get_subscriptions");
    assert.deepEqual(subs.response.subscribed_categories, ["tool"]);
    const bad = s.channel(`status:${g.conv("badjoin")}`, { categories: ["bogus"] });
    await assert.rejects(g.join(bad), (e) => e.reply.reason === "invalid_categories");
    s.disconnect();
  });

  it("refuses more than 10 categories in one request", async () => {
    const s = g.socket(gw);
    const ch = s.channel(`status:${g.conv("many")}`, {});
    await g.join(ch);
    const r = await g.push(ch, "subscribe_categories", { categories: Array(11).fill("tool") });
    assert.equal(r.status, "error");
    assert.equal(r.response.reason, "too_many_categories");
    s.disconnect();
  });

  it("limits category changes to 30 a minute", async () => {
    const s = g.socket(gw);
    const ch = s.channel(`status:${g.conv("rate")}`, {});
    await g.join(ch);
    for (let i = 0; i < 30; i++) {
      const r = await g.push(ch, i % 2 ? "unsubscribe_categories" : "subscribe_categories", { categories: ["tool"] });
      assert.equal(r.status, "ok", `change ${i + 1}`);
    }
    const r = await g.push(ch, "subscribe_categories", { categories: ["info"] });
    assert.equal(r.status, "error");
    assert.equal(r.response.reason, "rate_limit_exceeded");
    assert.ok(r.response.retry_after_ms > 0);
    const subs = await g.push(ch, "get_subscriptions");
    assert.deepEqual(subs.response.subscribed_categories, []); // the refused change did nothing
    s.disconnect();
  });

  it("answers unmatched topics and unknown events with errors", async () => {
    const s = g.socket(gw);
    await assert.rejects(g.join(s.channel("rooms:lobby", {})), (e) => e.reply.reason === "unmatched topic");
    const ch = s.channel(`status:${g.conv("unk")}`, {});
    await g.join(ch);
    const r = await g.push(ch, "fly_to_moon", {});
    assert.equal(r.status, "error");
    assert.equal(r.response.reason, "unknown_event");
    s.disconnect();
  });

  it("keeps a socket alive with heartbeats", async () => {
    const s = g.socket(gw, { heartbeatIntervalMs: 50 });
    const ch = s.channel(`status:${g.conv("hb")}`, {});
    await g.join(ch);
    const latency = await g.withTimeout(new Promise((resolve) => s.ping(resolve)), 5000, "the ping");
    assert.ok(latency >= 0);
    await g.sleep(300); // several heartbeats answered, or phoenix.js would have closed
    assert.equal(s.isConnected(), true);
    s.disconnect();
  });

  it("pushes one status_batch per flush for batch joins, at most 10 updates each, in order", async () => {
    const id = g.conv("batch");
    const s = g.socket(gw);
    const ch = s.channel(`status:${id}`, { categories: ["*"], batch: true });
    const batches = [];
    ch.on("status_batch", (b) => batches.push(b.updates));
    await g.join(ch);
    const items = Array.from({ length: 25 }, (_, i) => ({ conversation_id: id, category: "progress", text: `step ${i + 1}` }));
    assert.equal((await g.publishMany(gw, items)).status, 202);
    await g.waitFor(() => batches.flat().length === 25, 5000, "25 updates");
    assert.deepEqual(batches.map((b) => b.length), [10, 10, 5]);
    assert.deepEqual(batches.flat().map((u) => u.seq), Array.from({ length: 25 }, (_, i) => i + 1));
    s.disconnect();
  });

  it("replays a missed stretch after a rejoin with last_seq", async () => {
    const id = g.conv("replay");
    const s = g.socket(gw);
    let ch = s.channel(`status:${id}`, { categories: ["*"] });
    const seen = [];
    ch.on("status_update", (u) => seen.push(u.seq));
    const first = await g.join(ch);
    for (let i = 1; i <= 3; i++) await g.publish(gw, { conversation_id: id, category: "info", text: `u${i}` });
    await g.waitFor(() => seen.length === 3);
    await g.withTimeout(new Promise((r) => ch.leave().receive("ok", r)), 5000, "the leave reply");
    for (let i = 4; i <= 6; i++) await g.publish(gw, { conversation_id: id, category: "info", text: `u${i}` });
    await g.sleep(100);
    ch = s.channel(`status:${id}`, { categories: ["*"], epoch: first.epoch, last_seq: 3 });
    ch.on("status_update", (u) => seen.push(u.seq));
    const reply = await g.join(ch);
    assert.equal(reply.recovered, true);
    assert.equal(reply.last_seq, 6);
    await g.waitFor(() => seen.length === 6);
    assert.deepEqual(seen, [1, 2, 3, 4, 5, 6]);
    s.disconnect();
  });

  it("receives every conversation on status:* with that topic, and system updates on status:system", async () => {
    const s = g.socket(gw);
    const all = s.channel("status:*", { categories: ["*"] });
    const sys = s.channel("status:system", { categories: ["info"] });
    const fromAll = [], fromSys = [];
    all.on("status_update", (u) => fromAll.push(u.conversation_id));
    sys.on("status_update", (u) => fromSys.push(u.text));
    const r = await g.join(all);
    assert.equal(r.conversation_id, "*");
    await g.join(sys);
    const a = g.conv("wa"), b = g.conv("wb");
    await g.publish(gw, { conversation_id: a, category: "tool", text: "x" });
    await g.publish(gw, { conversation_id: b, category: "error", text: "y" });
    await g.publish(gw, { category: "info", text: "maintenance" });
    await g.waitFor(() => fromAll.length >= 3 && fromSys.length === 1);
    assert.ok(fromAll.includes(a) && fromAll.includes(b) && fromAll.includes("system"));
    assert.deepEqual(fromSys, ["maintenance"]);
    s.disconnect();
  });

  it("filters pushes with set_filter conditions on metadata and text", async () => {
    const id = g.conv("filter");
    const s = g.socket(gw);
    const ch = s.channel(`status:${id}`, { categories: ["*"] });
    const got = [];
    ch.on("status_update", (u) => got.push(u.text));
    await g.join(ch);
    const r = await g.push(ch, "set_filter", { filter: { metadata: { duration_ms: { gte: 1000 } }, text: { contains: "search" } } });
    assert.equal(r.status, "ok");
    await g.publish(gw, { conversation_id: id, category: "tool", text: "search fast", metadata: { duration_ms: 10 } });
    await g.publish(gw, { conversation_id: id, category: "tool", text: "search slow", metadata: { duration_ms: 1500 } });
    await g.publish(gw, { conversation_id: id, category: "tool", text: "other slow", metadata: { duration_ms: 2500 } });
    await g.waitFor(() => got.length === 1);
    await g.sleep(100);
    assert.deepEqual(got, ["search slow"]);
    const bad = await g.push(ch, "set_filter", { filter: { metadata: { x: { near: 1 } } } });
    assert.equal(bad.status, "error");
    assert.equal(bad.response.reason, "invalid_filter");
    s.disconnect();
  });

  it("answers history requests on the channel", async () => {
    const id = g.conv("hist");
    for (let i = 1; i <= 4; i++) await g.publish(gw, { conversation_id: id, category: "info", text: `h${i}` });
    const s = g.socket(gw);
    const ch = s.channel(`status:${id}`, {});
    await g.join(ch);
    const r = await g.push(ch, "history", { since: 1, limit: 2 });
    assert.equal(r.status, "ok");
    assert.deepEqual(r.response.updates.map((u) => u.text), ["h2", "h3"]);
    s.disconnect();
  });

  it("replaces a channel joined twice on one socket", async () => {
    const id = g.conv("twice");
    const s = g.socket(gw);
    const a = s.channel(`status:${id}`, { categories: ["tool"] });
    await g.join(a);
    const b = s.channel(`status:${id}`, { categories: ["error"] });
    await g.join(b);
    const got = [];
    b.on("status_update", (u) => got.push(u.category));
    await g.publish(gw, { conversation_id: id, category: "tool", text: "old subscription" });
    await g.publish(gw, { conversation_id: id, category: "error", text: "new subscription" });
    await g.waitFor(() => got.length === 1);
    await g.sleep(100);
    assert.deepEqual(got, ["error"]);
    const conv = (await (await fetch(`${gw.url}/api/v1/conversations`)).json()).conversations.find((c) => c.conversation_id === id);
    assert.equal(conv.subscribers, 1);
    s.disconnect();
  });
});

describe("phoenix.js across a gateway restart", () => {
  it("reconnects, rejoins by itself and resumes without loss", async () => {
    const port = await g.freePort();
    let gw = await g.start({ flush_interval_ms: 20 }, port);
    const id = g.conv("restart");
    const s = g.socket(gw);
    let epoch = null, lastSeq = 0;
    const seen = [];
    const ch = s.channel(`status:${id}`, () => ({ categories: ["*"], epoch, last_seq: lastSeq }));
    ch.on("status_update", (u) => { seen.push(`${epoch}:${u.seq}:${u.text}`); lastSeq = u.seq; });
    const joins = [];
    ch.join().receive("ok", (r) => {
      if (r.epoch !== epoch) lastSeq = r.recovered ? lastSeq : 0;
      epoch = r.epoch; joins.push(r);
    });
    await g.waitFor(() => joins.length === 1);
    for (let i = 1; i <= 3; i++) await g.publish(gw, { conversation_id: id, category: "info", text: `before ${i}` });
    await g.waitFor(() => seen.length === 3);
    const closed = new Promise((r) => s.onClose((e) => r(e.code)));
    assert.equal(await g.stop(gw), 0);
    assert.equal(await closed, 1001); // going away: phoenix.js reconnects
    gw = await g.start({ flush_interval_ms: 20 }, port);
    // published before the client is back: history must carry them over
    for (let i = 1; i <= 2; i++) await g.publish(gw, { conversation_id: id, category: "info", text: `after ${i}` });
    await g.waitFor(() => joins.length === 2, 10000, "rejoin");
    assert.equal(joins[1].recovered, false); // a new epoch: the old seqs mean nothing
    await g.publish(gw, { conversation_id: id, category: "info", text: "after 3" });
    await g.waitFor(() => seen.length === 6, 5000, "6 updates");
    assert.deepEqual(seen.map((x) => x.split(":").slice(2).join(":")), ["before 1", "before 2", "before 3", "after 1", "after 2", "after 3"]);
    g.disconnectAll();
    assert.equal(await g.stop(gw), 0);
  });
});
