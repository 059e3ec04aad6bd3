// statusgw's Server-Sent Events driven by the eventsource package, the
// EventSource browsers have, for Node.
import assert from "node:assert/strict";
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
});
