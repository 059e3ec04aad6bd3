// statusgw's long-poll transport driven by phoenix.js's own LongPoll: the
// same channels as over the WebSocket, a session that a restart drops and
// the client rebuilds, abandoned sessions that expire, and phoenix.js
// falling back to it by itself when the WebSocket upgrade is refused.
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { LongPoll } from "phoenix";
import * as g from "./gateway.mjs";

const lp = (gw, opts = {}) => g.socket(gw, { transport: LongPoll, ...opts });

describe("phoenix.js LongPoll against statusgw", () => {
  let gw;
  before(async () => { gw = await g.start({ flush_interval_ms: 20 }); });
  after(async () => { g.disconnectAll(); assert.equal(await g.stop(gw), 0); });

  it("joins, receives its categories, batches and filtered pushes, and answers history", async () => {
    const id = g.conv("lp-join");
    const s = lp(gw);
    const ch = s.channel(`status:${id}`, { categories: ["tool", "error"] });
    const got = [];
    ch.on("status_update", (u) => got.push(u.text));
    const reply = await g.join(ch);
    assert.deepEqual(reply.subscribed_categories, ["tool", "error"]);
    await g.publish(gw, { conversation_id: id, category: "info", text: "not asked for" });
    await g.publish(gw, { conversation_id: id, category: "tool", text: "search \"quoted\"\nnewline" });
    await g.publish(gw, { conversation_id: id, category: "error", text: "timeout" });
    await g.waitFor(() => got.length === 2, 5000, "two pushes");
    assert.deepEqual(got, ["search \"quoted\"\nnewline", "timeout"]);
    const f = await g.push(ch, "set_filter", { filter: { text: { contains: "slow" } } });
    assert.equal(f.status, "ok");
    await g.publish(gw, { conversation_id: id, category: "tool", text: "fast" });
    await g.publish(gw, { conversation_id: id, category: "tool", text: "slow" });
    await g.waitFor(() => got.length === 3);
    await g.sleep(100);
    assert.equal(got[2], "slow");
    const h = await g.push(ch, "history", { since: 0, limit: 2 });
    assert.deepEqual(h.response.updates.map((u) => u.text), ["not asked for", "search \"quoted\"\nnewline"]);

    const bid = g.conv("lp-batch");
    const b = s.channel(`status:${bid}`, { categories: ["*"], batch: true });
    const batches = [];
    b.on("status_batch", (x) => batches.push(x.updates.map((u) => u.seq)));
    await g.join(b);
    const items = Array.from({ length: 12 }, (_, i) => ({ conversation_id: bid, category: "progress", text: `step ${i + 1}` }));
    assert.equal((await g.publishMany(gw, items)).status, 202);
    await g.waitFor(() => batches.flat().length === 12);
    assert.deepEqual(batches.flat(), Array.from({ length: 12 }, (_, i) => i + 1));
    const stats = await (await fetch(`${gw.url}/api/v1/stats`)).json();
    assert.equal(stats.connections.longpoll, 1);
    s.disconnect();
  });

  it("holds a session to the socket's limits: max_channels_per_socket", async () => {
    const small = await g.start({ flush_interval_ms: 20, max_channels_per_socket: 2 });
    try {
      const s = lp(small);
      await g.join(s.channel(`status:${g.conv("lim")}`, {}));
      await g.join(s.channel(`status:${g.conv("lim")}`, {}));
      const third = await g.join(s.channel(`status:${g.conv("lim")}`, {})).catch((e) => e.reply);
      assert.equal(third.reason, "too_many_channels");
      assert.equal(third.max, 2);
      s.disconnect();
    } finally {
      g.disconnectAll();
      assert.equal(await g.stop(small), 0);
    }
  });

  it("answers a session it does not know 410, and a request that is neither GET nor POST 405", async () => {
    let r = await (await fetch(`${gw.url}/socket/longpoll?vsn=2.0.0&token=lp_00000000000000000000000000000000`)).json();
    assert.equal(r.status, 410);
    r = await (await fetch(`${gw.url}/socket/longpoll?vsn=2.0.0&token=lp_00000000000000000000000000000000`, {
      method: "POST", body: "[null,\"1\",\"phoenix\",\"heartbeat\",{}]" })).json();
    assert.equal(r.status, 410);
    const del = await fetch(`${gw.url}/socket/longpoll`, { method: "DELETE" });
    assert.equal(del.status, 405);
    const open = await (await fetch(`${gw.url}/socket/longpoll?vsn=1.0.0`)).json();
    assert.equal(open.status, 400);
    assert.equal(open.error.code, "unsupported_vsn");
  });
});

describe("long-poll sessions", () => {
  it("rebuild after a gateway restart drops them: phoenix.js rejoins and replays what it missed", async () => {
    const port = await g.freePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-lp-"));
    const cfg = { store: "sqlite", store_path: path.join(dir, "s.db"), flush_interval_ms: 20 };
    let gw = await g.start(cfg, port);
    try {
      const id = g.conv("lp-restart");
      const s = lp(gw);
      let epoch = null, lastSeq = 0;
      const seen = [], joins = [];
      const ch = s.channel(`status:${id}`, () => ({ categories: ["*"], epoch, last_seq: lastSeq }));
      ch.on("status_update", (u) => { seen.push(u.text); lastSeq = u.seq; });
      ch.join().receive("ok", (r) => { epoch = r.epoch; joins.push(r); });
      await g.waitFor(() => joins.length === 1);
      for (const t of ["a", "b"]) await g.publish(gw, { conversation_id: id, category: "info", text: t });
      await g.waitFor(() => seen.length === 2);
      assert.equal(await g.stop(gw), 0);
      gw = await g.start(cfg, port);
      for (const t of ["c", "d"]) await g.publish(gw, { conversation_id: id, category: "info", text: t });
      await g.waitFor(() => joins.length === 2, 10000, "the rejoin on a new session");
      assert.equal(joins[1].recovered, true);
      assert.equal(joins[1].epoch, joins[0].epoch);
      await g.waitFor(() => seen.length === 4, 5000, "the replay");
      await g.sleep(100);
      assert.deepEqual(seen, ["a", "b", "c", "d"]);
      g.disconnectAll();
      assert.equal(await g.stop(gw), 0);
    } finally {
      g.disconnectAll();
      if (gw.proc.exitCode === null) gw.proc.kill("SIGKILL");
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("expire when abandoned, leaving their channels", async () => {
    const gw = await g.start({ flush_interval_ms: 20, longpoll_timeout_s: 1, longpoll_window_ms: 300 });
    try {
      const id = g.conv("lp-gone");
      const base = `${gw.url}/socket/longpoll?vsn=2.0.0`;
      const open = await (await fetch(base)).json();
      assert.equal(open.status, 410);
      assert.match(open.token, /^lp_[0-9a-f]{32}$/);
      const join = await (await fetch(`${base}&token=${open.token}`, {
        method: "POST", headers: { "content-type": "application/x-ndjson" },
        body: JSON.stringify(["1", "1", `status:${id}`, "phx_join", { categories: ["*"] }]) })).json();
      assert.equal(join.status, 200);
      // a poll with nothing to say ends after the window with 204
      const poll = await (await fetch(`${base}&token=${open.token}`)).json();
      assert.equal(poll.status, 200); // the join reply was waiting
      assert.match(poll.messages[0], /"phx_reply"/);
      const t0 = Date.now();
      const empty = await (await fetch(`${base}&token=${open.token}`)).json();
      assert.equal(empty.status, 204);
      assert.ok(Date.now() - t0 >= 250, "the poll waited its window");
      const subscribers = async () => (await (await fetch(`${gw.url}/api/v1/conversations`)).json()).conversations.find((c) => c.conversation_id === id)?.subscribers ?? 0;
      assert.equal(await subscribers(), 1);
      // nobody polls any more
      await g.waitFor(async () => (await subscribers()) === 0, 5000, "the abandoned session to go");
      const stats = await (await fetch(`${gw.url}/api/v1/stats`)).json();
      assert.equal(stats.connections.longpoll, 0);
      const gone = await (await fetch(`${base}&token=${open.token}`)).json();
      assert.equal(gone.status, 410);
    } finally {
      assert.equal(await g.stop(gw), 0);
    }
  });

  it("carry phoenix.js's fallback when the WebSocket upgrade is refused on the way", async () => {
    const gw = await g.start({ flush_interval_ms: 20 });
    // a proxy that passes plain HTTP through and refuses every upgrade
    const proxy = http.createServer((req, res) => {
      const up = http.request({ host: "127.0.0.1", port: gw.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      });
      up.on("error", () => { res.writeHead(502); res.end(); });
      req.pipe(up);
    });
    proxy.on("upgrade", (req, sock) => { sock.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"); });
    await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
    try {
      const store = new Map();
      const sessionStorage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v), removeItem: (k) => store.delete(k) };
      const fake = { port: proxy.address().port };
      const s = g.socket(fake, { longPollFallbackMs: 300, sessionStorage });
      const id = g.conv("lp-fallback");
      const ch = s.channel(`status:${id}`, { categories: ["*"] });
      const got = [];
      ch.on("status_update", (u) => got.push(u.text));
      await g.join(ch, 10000);
      assert.equal(s.transport, LongPoll);
      await g.publish(gw, { conversation_id: id, category: "info", text: "through the fallback" });
      await g.waitFor(() => got.length === 1);
      assert.equal(store.get("phx:fallback:LongPoll"), "true");
      s.disconnect();
    } finally {
      g.disconnectAll();
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
      assert.equal(await g.stop(gw), 0);
    }
  });
});
