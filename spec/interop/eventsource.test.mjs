// statusgw's Server-Sent Events driven by the eventsource package, the
// EventSource browsers have, for Node.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { EventSource } from "eventsource";
import * as g from "./gateway.mjs";

describe("EventSource against statusgw", () => {
  it("receives updates with epoch:seq ids and resumes after a dropped connection without loss", async () => {
    const port = await g.freePort();
    let gw = await g.start({ flush_interval_ms: 20, sse_retry_ms: 100, max_conversations: 100 }, port);
    const id = g.conv("es");
    const es = new EventSource(`${gw.url}/api/v1/conversations/${id}/events?categories=info,error`);
    const got = [];
    const gaps = [];
    es.addEventListener("status_update", (e) => got.push({ id: e.lastEventId, u: JSON.parse(e.data) }));
    es.addEventListener("gap", (e) => gaps.push(JSON.parse(e.data)));
    await g.withTimeout(new Promise((resolve, reject) => { es.onopen = resolve; es.onerror = reject; }), 5000, "the event stream to open");
    es.onerror = null;
    const first = await g.publish(gw, { conversation_id: id, category: "info", text: "one" });
    await g.publish(gw, { conversation_id: id, category: "tool", text: "not asked for" });
    await g.publish(gw, { conversation_id: id, category: "error", text: "two" });
    await g.waitFor(() => got.length === 2);
    assert.equal(got[0].id, `${first.body.epoch}:1`);
    assert.deepEqual(got.map((x) => x.u.text), ["one", "two"]);

    // restart: the stream drops, EventSource reconnects with Last-Event-ID
    assert.equal(await g.stop(gw), 0);
    gw = await g.start({ flush_interval_ms: 20, sse_retry_ms: 100 }, port);
    await g.publish(gw, { conversation_id: id, category: "info", text: "three" });
    await g.waitFor(() => got.length === 3, 10000, "the update published while reconnecting");
    assert.equal(got[2].u.text, "three");
    assert.equal(gaps.length, 1);
    assert.equal(gaps[0].reason, "epoch_changed");
    es.close();
    assert.equal(await g.stop(gw), 0);
  });

  it("follows several conversations on one stream and resumes each across a gateway restart, without a gap or a duplicate", async () => {
    const port = await g.freePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-multi-"));
    const cfg = { store: "sqlite", store_path: path.join(dir, "s.db"), flush_interval_ms: 20, sse_retry_ms: 100 };
    let gw = await g.start(cfg, port);
    const a = g.conv("multi-a"), b = g.conv("multi-b");
    await g.publish(gw, { conversation_id: a, category: "info", text: "before the stream" });
    await g.sleep(200); // flushed before the stream opens
    const es = new EventSource(`${gw.url}/api/v1/events?conversations=${a},${b}`);
    const got = [];
    const gaps = [];
    es.addEventListener("status_update", (e) => got.push({ id: e.lastEventId, u: JSON.parse(e.data) }));
    es.addEventListener("gap", (e) => gaps.push(JSON.parse(e.data)));
    try {
      await g.opened(es);
      await g.publish(gw, { conversation_id: b, category: "info", text: "b1" });
      const a2 = await g.publish(gw, { conversation_id: a, category: "info", text: "a2" });
      await g.waitFor(() => got.length === 2);
      // every event's id gives both conversations' positions (the two
      // conversations flush apart: in either order)
      const ida2 = got.find((x) => x.u.text === "a2").id;
      assert.match(ida2, new RegExp(`(^|,)${a}=${a2.body.epoch}:2(,|$)`));
      assert.match(got[1].id, new RegExp(`(^|,)${a}=${a2.body.epoch}:2(,|$)`));
      assert.match(got[1].id, new RegExp(`(^|,)${b}=[0-9a-f]{16}:1(,|$)`));
      // a restart: the stream drops; what is published meanwhile comes on the resumed stream
      assert.equal(await g.stop(gw), 0);
      gw = await g.start(cfg, port);
      await g.publish(gw, { conversation_id: a, category: "info", text: "a3" });
      await g.publish(gw, { conversation_id: b, category: "info", text: "b2" });
      await g.waitFor(() => got.length === 4, 10000, "the updates published across the restart");
      await g.sleep(200);
      const texts = got.map((x) => x.u.text);
      assert.deepEqual(texts.slice(0, 2).sort(), ["a2", "b1"]);
      assert.deepEqual(texts.slice(2).sort(), ["a3", "b2"]);
      assert.deepEqual(gaps, []);
      es.close();
      assert.equal(await g.stop(gw), 0);
    } finally {
      es.close();
      if (gw.proc.exitCode === null) gw.proc.kill("SIGKILL");
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("resumes a multi-conversation stream that saw no event from where it began, and streams every conversation to an admin", async () => {
    const port = await g.freePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-multi-"));
    const cfg = { store: "sqlite", store_path: path.join(dir, "s.db"), flush_interval_ms: 20, sse_retry_ms: 100 };
    let gw = await g.start(cfg, port);
    const a = g.conv("quiet-a"), b = g.conv("quiet-b");
    await g.publish(gw, { conversation_id: a, category: "info", text: "old" });
    await g.sleep(200); // flushed before the streams open
    const es = new EventSource(`${gw.url}/api/v1/events?conversations=${a},${b}`);
    const all = new EventSource(`${gw.url}/api/v1/events?conversations=*`);
    const got = [], everything = [];
    es.addEventListener("status_update", (e) => got.push(JSON.parse(e.data).text));
    all.addEventListener("status_update", (e) => everything.push({ id: e.lastEventId, u: JSON.parse(e.data) }));
    try {
      await g.opened(es);
      await g.opened(all);
      const other = await g.publish(gw, { conversation_id: g.conv("elsewhere"), category: "info", text: "anywhere" });
      await g.waitFor(() => everything.length === 1);
      assert.equal(everything[0].id, `${other.body.conversation_id}=${other.body.epoch}:1`);
      all.close();
      // dropped before any event: the stream's opening id is where it resumes
      assert.equal(await g.stop(gw), 0);
      gw = await g.start(cfg, port);
      await g.publish(gw, { conversation_id: a, category: "info", text: "missed" });
      await g.waitFor(() => got.length === 1, 10000, "the update published while the stream was down");
      await g.sleep(200);
      assert.deepEqual(got, ["missed"]);
      es.close();
      assert.equal(await g.stop(gw), 0);
    } finally {
      es.close();
      all.close();
      if (gw.proc.exitCode === null) gw.proc.kill("SIGKILL");
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
