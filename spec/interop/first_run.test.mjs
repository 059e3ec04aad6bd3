// A first run on the shipped config (etc/statusgw.lua), watched by the
// real phoenix.js client and the real eventsource package: a burst of
// 1,000 single POSTs and a 1,000-item bulk are all delivered, unchanged,
// with nothing extra.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { EventSource } from "eventsource";
import * as g from "./gateway.mjs";

describe("the shipped config, watched by phoenix.js and EventSource", () => {
  let gw;
  let dir;
  before(async () => {
    // the shipped file as it is, in a copy of the checkout's layout: its
    // database (../var/statusgw.db) starts empty
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-first-"));
    fs.mkdirSync(path.join(dir, "etc"));
    fs.copyFileSync(path.resolve("../../etc/statusgw.lua"), path.join(dir, "etc/statusgw.lua"));
    fs.symlinkSync(path.resolve("../../plugins"), path.join(dir, "plugins"));
    gw = await g.start({}, undefined, { configFile: path.join(dir, "etc/statusgw.lua") });
  });
  after(async () => {
    g.disconnectAll();
    assert.equal(await g.stop(gw), 0);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("delivers every acknowledged update of a burst and a bulk to both watchers", async () => {
    const id = g.conv("first-run");
    const s = g.socket(gw);
    const ch = s.channel(`status:${id}`, { categories: ["*"] });
    const viaWs = [];
    ch.on("status_update", (u) => viaWs.push(u));
    await g.join(ch);
    const viaSse = [];
    const es = new EventSource(`${gw.url}/api/v1/conversations/${id}/events`);
    es.addEventListener("status_update", (e) => viaSse.push(JSON.parse(e.data)));
    await g.opened(es);

    const acked = [];
    for (let i = 1; i <= 1000; i += 50) { // 50 at a time, as a busy producer would
      const answers = await Promise.all(Array.from({ length: 50 }, (_, k) =>
        g.publish(gw, { conversation_id: id, category: "progress", text: `item ${i + k}` })));
      for (const a of answers) {
        assert.equal(a.status, 202);
        acked.push(a.body.seq);
      }
    }
    const items = Array.from({ length: 1000 }, (_, k) => ({ conversation_id: id, category: "progress", text: `bulk ${k + 1}` }));
    const r = await fetch(`${gw.url}/api/v1/status/bulk`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(items),
    });
    assert.equal(r.status, 202);
    const b = await r.json();
    assert.equal(b.accepted, 1000);
    for (const x of b.results) acked.push(x.seq);
    assert.equal(new Set(acked).size, 2000);

    await g.waitFor(() => viaWs.length >= 2000 && viaSse.length >= 2000, 20000, "2000 updates on both");
    await g.sleep(300); // and nothing more arrives
    assert.equal(viaWs.length, 2000);
    assert.equal(viaSse.length, 2000);
    assert.deepEqual(viaWs.map((u) => u.seq), Array.from({ length: 2000 }, (_, k) => k + 1));
    assert.deepEqual(viaSse.map((u) => u.seq), Array.from({ length: 2000 }, (_, k) => k + 1));
    assert.ok(viaWs.every((u) => u.category === "progress"));
    assert.equal(viaSse[1999].text, "bulk 1000");
    es.close();
    s.disconnect();
  });
});
