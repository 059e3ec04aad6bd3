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

const SECRET = "whsec_" + Buffer.from("statusgw-restart-secret-0123456").toString("base64");

// A receiver on a port of our choosing: answers `plan` statuses first, then
// 200; records every attempt, verified by the standardwebhooks package.
async function receiver(port, plan = []) {
  const got = [];
  const server = await g.receiver((req, body, res) => {
    const status = plan.shift() || 200;
    got.push({ id: req.headers["webhook-id"], texts: JSON.parse(body).data.updates.map((u) => u.text), verified: g.signed(SECRET, body, req.headers), status });
    res.writeHead(status);
    res.end();
  }, port);
  return { server, got };
}

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

  it("updates acknowledged but not yet in a webhook batch survive a SIGKILL, and are sent once as the batch they were gathering", async () => {
    const port = await g.freePort(), rport = await g.freePort();
    const wh = {
      dead_letter_file: path.join(dir, "dead-open.jsonl"),
      endpoints: [{ name: "slow", url: `http://127.0.0.1:${rport}/in`, secret: SECRET, batch_size: 100, batch_delay_ms: 60000 }],
    };
    const cfg = { ...config, store_path: path.join(dir, "open.db"), webhooks: wh };
    let gw, rec;
    try {
      gw = await g.start(cfg, port);
      for (const t of ["o1", "o2", "o3"]) await g.publish(gw, { conversation_id: "wh-open", category: "info", text: t });
      const a = (await (await fetch(`${gw.url}/admin/webhooks`)).json()).endpoints[0];
      assert.equal(a.pending_in_batch, 3); // acknowledged, the batch still gathering for a minute
      gw.proc.kill("SIGKILL");
      await gw.exited;
      rec = await receiver(rport);
      gw = await g.start(cfg, port);
      assert.match(g.logText(gw), /event=webhook_outbox_loaded queued=0 gathered=1 dead=0/);
      await g.waitFor(() => rec.got.length === 1, 5000, "the gathered batch");
      await g.sleep(300);
      assert.deepEqual(rec.got.map((r) => r.texts), [["o1", "o2", "o3"]]);
      assert.ok(rec.got[0].verified);
      assert.equal(await g.stop(gw), 0);
      gw = await g.start(cfg, port); // delivered: nothing is sent again
      await g.sleep(300);
      assert.equal(rec.got.length, 1);
      assert.doesNotMatch(g.logText(gw), /webhook_outbox_loaded/);
      assert.equal(await g.stop(gw), 0);
    } finally {
      if (gw && gw.proc.exitCode === null) gw.proc.kill("SIGKILL");
      if (rec) rec.server.close();
    }
  });

  it("webhook batches queued or retrying survive a stop and a SIGKILL, and are delivered once with their webhook-id", async () => {
    const port = await g.freePort(), downPort = await g.freePort(), flakyPort = await g.freePort();
    const wh = {
      dead_letter_file: path.join(dir, "dead.jsonl"),
      retry_schedule_s: [0, 1, 1, 1, 1, 1, 1, 1],
      endpoints: [
        { name: "down", url: `http://127.0.0.1:${downPort}/in`, secret: SECRET, conversations: "wh-down-*", batch_size: 2, batch_delay_ms: 50 },
        { name: "flaky", url: `http://127.0.0.1:${flakyPort}/in`, secret: SECRET, conversations: "wh-flaky-*", batch_size: 2, batch_delay_ms: 50 },
      ],
    };
    const cfg = { ...config, store_path: path.join(dir, "webhooks.db"), webhooks: wh, shutdown_timeout_ms: 1000 };
    const admin = async (gw) => (await (await fetch(`${gw.url}/admin/webhooks`)).json()).endpoints.reduce((a, e) => ({ ...a, [e.name]: e }), {});
    const flaky = await receiver(flakyPort, [500]); // the first attempt fails: its id is the original
    let gw, down, flaky2;
    try {
      gw = await g.start(cfg, port);
      for (const t of ["d1", "d2", "d3"]) await g.publish(gw, { conversation_id: "wh-down-1", category: "info", text: t });
      for (const t of ["f1", "f2"]) await g.publish(gw, { conversation_id: "wh-flaky-1", category: "info", text: t });
      await g.waitFor(async () => { const a = await admin(gw); return a.down.failed >= 2 && a.flaky.failed === 1; }, 5000, "failed first attempts");
      const original = flaky.got[0].id;
      // a crash: nothing is flushed or dead-lettered on the way out
      gw.proc.kill("SIGKILL");
      await gw.exited;
      flaky.server.close();
      gw = await g.start(cfg, port);
      assert.match(g.logText(gw), /event=webhook_outbox_loaded queued=3 gathered=0 dead=0/);
      await g.publish(gw, { conversation_id: "wh-down-1", category: "info", text: "d4" }); // pending at the stop
      assert.equal(await g.stop(gw), 0);
      assert.match(g.logText(gw), /event=webhook_outbox_kept endpoint=down messages=3 updates=4/);
      // both receivers are up now
      down = await receiver(downPort);
      flaky2 = await receiver(flakyPort);
      gw = await g.start(cfg, port);
      await g.waitFor(() => down.got.length === 3 && flaky2.got.length === 1, 8000, "the kept batches");
      await g.sleep(300); // nothing more comes
      assert.deepEqual(down.got.flatMap((r) => r.texts).sort(), ["d1", "d2", "d3", "d4"]);
      assert.equal(new Set(down.got.map((r) => r.id)).size, 3);
      assert.deepEqual(flaky2.got.map((r) => [r.id, r.texts]), [[original, ["f1", "f2"]]]);
      assert.ok([...down.got, ...flaky2.got].every((r) => r.verified));
      const a = await admin(gw);
      assert.equal(a.down.delivered, 4);
      assert.equal(a.flaky.delivered, 2);
      assert.equal(fs.existsSync(wh.dead_letter_file), false, "nothing was dead-lettered");
      assert.equal(await g.stop(gw), 0);
      // delivered: a further restart sends nothing again
      gw = await g.start(cfg, port);
      await g.sleep(300);
      assert.equal(down.got.length + flaky2.got.length, 4);
      assert.doesNotMatch(g.logText(gw), /webhook_outbox_loaded/);
      assert.equal(await g.stop(gw), 0);
    } finally { // a failed assertion leaves nothing listening or running
      if (gw && gw.proc.exitCode === null) gw.proc.kill("SIGKILL");
      for (const r of [flaky, down, flaky2]) if (r) r.server.close();
    }
  });
});
