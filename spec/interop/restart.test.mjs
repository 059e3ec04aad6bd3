// A gateway restart that clients do not notice: the durable store keeps
// epochs, seqs and history, so the real phoenix.js client rejoins with
// recovered: true and the real EventSource resumes with Last-Event-ID and
// no gap, each getting every update once, in order.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { EventSource } from "eventsource";
import * as g from "./gateway.mjs";

describe("clients across a restart on the sqlite store", () => {
  let dir, config;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-restart-"));
    config = { store: "sqlite", store_path: path.join(dir, "statusgw.db"), flush_interval_ms: 20, sse_retry_ms: 100 };
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("phoenix.js rejoins by itself with recovered: true and misses nothing", async () => {
    const port = await g.freePort();
    let gw = await g.start(config, port);
    const id = g.conv("durable-phx");
    const s = g.socket(gw);
    let epoch = null, lastSeq = 0;
    const seen = [];
    const ch = s.channel(`status:${id}`, () => ({ categories: ["*"], epoch, last_seq: lastSeq }));
    ch.on("status_update", (u) => { seen.push(`${u.seq}:${u.text}`); lastSeq = u.seq; });
    const joins = [];
    ch.join().receive("ok", (r) => { epoch = r.epoch; joins.push(r); });
    await g.waitFor(() => joins.length === 1);
    for (let i = 1; i <= 3; i++) await g.publish(gw, { conversation_id: id, category: "info", text: `before ${i}` });
    await g.waitFor(() => seen.length === 3);
    const firstEpoch = epoch;
    assert.equal(await g.stop(gw), 0);
    gw = await g.start(config, port);
    // published before the client is back: the rejoin replays them
    for (let i = 1; i <= 2; i++) await g.publish(gw, { conversation_id: id, category: "info", text: `after ${i}` });
    await g.waitFor(() => joins.length === 2, 10000, "rejoin");
    assert.equal(joins[1].recovered, true);
    assert.equal(joins[1].epoch, firstEpoch);
    await g.publish(gw, { conversation_id: id, category: "info", text: "after 3" });
    await g.waitFor(() => seen.length === 6, 5000, "6 updates");
    assert.deepEqual(seen, ["1:before 1", "2:before 2", "3:before 3", "4:after 1", "5:after 2", "6:after 3"]);
    g.disconnectAll();
    assert.equal(await g.stop(gw), 0);
  });

  it("EventSource reconnects with Last-Event-ID and gets what it missed, with no gap", async () => {
    const port = await g.freePort();
    let gw = await g.start(config, port);
    const id = g.conv("durable-es");
    const es = new EventSource(`${gw.url}/api/v1/conversations/${id}/events`);
    const got = [];
    const gaps = [];
    es.addEventListener("status_update", (e) => got.push({ id: e.lastEventId, u: JSON.parse(e.data) }));
    es.addEventListener("gap", (e) => gaps.push(JSON.parse(e.data)));
    await g.opened(es);
    const first = await g.publish(gw, { conversation_id: id, category: "info", text: "one" });
    await g.publish(gw, { conversation_id: id, category: "info", text: "two" });
    await g.waitFor(() => got.length === 2);
    assert.equal(await g.stop(gw), 0);
    gw = await g.start(config, port);
    await g.publish(gw, { conversation_id: id, category: "info", text: "three" });
    await g.publish(gw, { conversation_id: id, category: "info", text: "four" });
    await g.waitFor(() => got.length === 4, 10000, "the updates published while reconnecting");
    assert.deepEqual(got.map((x) => x.u.text), ["one", "two", "three", "four"]);
    assert.deepEqual(got.map((x) => x.id), [1, 2, 3, 4].map((n) => `${first.body.epoch}:${n}`));
    assert.equal(gaps.length, 0);
    es.close();
    assert.equal(await g.stop(gw), 0);
  });
});
