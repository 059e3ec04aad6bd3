// Several gateways as one, on real redis-server processes: the real
// phoenix.js and EventSource clients spread over the gateways, publishers
// spread over them, and every client gets every update once, in seq
// order, whichever gateway accepted it; history, resume and idempotency
// across gateways; a gateway killed with SIGKILL; Redis going away and
// coming back; two Redis shards; webhooks once per cluster; SO_REUSEPORT.
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { EventSource } from "eventsource";
import * as g from "./gateway.mjs";

const cluster = (r, extra = {}) => ({ engine: "redis", redis: { addresses: Array.isArray(r) ? r.map((x) => x.addr) : [r.addr] }, flush_interval_ms: 20, sse_retry_ms: 100, ...extra });

// A phoenix.js subscriber on gw that records each update as "seq:text",
// rejoining with its epoch and last seq.
async function phoenixWatcher(gw, id) {
  const s = g.socket(gw);
  const w = { seen: [], epoch: null, lastSeq: 0, joins: [] };
  const ch = s.channel(`status:${id}`, () => ({ categories: ["*"], epoch: w.epoch, last_seq: w.lastSeq }));
  ch.on("status_update", (u) => { w.seen.push(`${u.seq}:${u.text}`); w.lastSeq = u.seq; });
  ch.join().receive("ok", (r) => { w.epoch = r.epoch; w.joins.push(r); });
  await g.waitFor(() => w.joins.length === 1, 5000, "join");
  w.socket = s;
  return w;
}

function inOrder(seen, n) {
  return seen.length === n && seen.every((x, i) => Number(x.split(":")[0]) === i + 1);
}

// An SSE stream read with fetch (so a Last-Event-ID of our choosing can be sent).
function rawStream(url, lastEventId) {
  const ctl = new AbortController();
  const events = [];
  const done = (async () => {
    const r = await fetch(url, { headers: lastEventId ? { "last-event-id": lastEventId } : {}, signal: ctl.signal });
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of r.body) {
      buf += dec.decode(chunk, { stream: true });
      let k;
      while ((k = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, k);
        buf = buf.slice(k + 2);
        const ev = {};
        for (const line of block.split("\n")) {
          const c = line.indexOf(":");
          if (c > 0) ev[line.slice(0, c)] = line.slice(c + 1).trim();
        }
        if (ev.event) events.push(ev);
      }
    }
  })().catch(() => {});
  return { events, close: () => ctl.abort(), done };
}

// POST an update on a connection of its own; resolves with the answer's body.
function postNewConnection(port, update) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify(update);
    const req = http.request({ host: "127.0.0.1", port, path: "/api/v1/status", method: "POST", agent: false,
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body), connection: "close" } }, (res) => {
      let t = "";
      res.on("data", (c) => (t += c));
      res.on("end", () => resolve(JSON.parse(t)));
    });
    req.setTimeout(5000, () => req.destroy(new Error("no answer")));
    req.on("error", reject);
    req.end(body);
  });
}

describe("three gateways on one Redis", () => {
  let rd, gws;
  before(async () => {
    rd = await g.startRedis();
    gws = [];
    for (let i = 0; i < 3; i++) gws.push(await g.start(cluster(rd)));
  });
  after(async () => {
    g.disconnectAll();
    for (const gw of gws) if (gw.proc.exitCode === null && gw.proc.signalCode === null) assert.equal(await g.stop(gw), 0);
    await g.stopRedis(rd);
  });

  it("delivers every update once, in seq order, on every gateway, whichever accepted it", async () => {
    const id = g.conv("cluster");
    const watchers = [];
    for (const gw of gws) watchers.push(await phoenixWatcher(gw, id), await phoenixWatcher(gw, id));
    const streams = gws.map((gw) => new EventSource(`${gw.url}/api/v1/conversations/${id}/events`));
    const sse = streams.map(() => []);
    streams.forEach((es, i) => es.addEventListener("status_update", (e) => sse[i].push(`${JSON.parse(e.data).seq}:${JSON.parse(e.data).text}`)));
    await Promise.all(streams.map((es) => g.opened(es)));
    // three publishers at once, one on each gateway, 20 updates each
    const acks = [];
    await Promise.all(gws.map(async (gw, n) => {
      for (let i = 0; i < 20; i++) {
        const r = await g.publish(gw, { conversation_id: id, category: "info", text: `p${n}-${i}` });
        assert.equal(r.status, 202);
        acks.push(r.body);
      }
    }));
    // and a bulk on one of them
    const bulk = await g.publishMany(gws[1], [1, 2, 3].map((i) => ({ conversation_id: id, category: "tool", text: `bulk-${i}` })));
    assert.equal(bulk.status, 202);
    assert.equal(bulk.body.accepted, 3);
    const seqs = acks.map((a) => a.seq).concat(bulk.body.results.map((r) => r.seq)).sort((a, b) => a - b);
    assert.deepEqual(seqs, Array.from({ length: 63 }, (_, i) => i + 1), "seqs are gap-free cluster-wide");
    assert.equal(new Set(acks.map((a) => a.epoch)).size, 1, "one epoch on every gateway");
    await g.waitFor(() => watchers.every((w) => w.seen.length >= 63) && sse.every((s) => s.length >= 63), 10000, "63 updates everywhere");
    await g.sleep(100); // nothing more comes
    const reference = watchers[0].seen;
    for (const w of watchers) {
      assert.ok(inOrder(w.seen, 63), "phoenix: every seq once, in order");
      assert.deepEqual(w.seen, reference);
    }
    for (const s of sse) assert.deepEqual(s, reference, "EventSource: the same");
    for (let n = 0; n < 3; n++) {
      const mine = reference.filter((x) => x.includes(`:p${n}-`)).map((x) => x.split(":")[1]);
      assert.deepEqual(mine, Array.from({ length: 20 }, (_, i) => `p${n}-${i}`), "each publisher's order kept");
    }
    streams.forEach((es) => es.close());
  });

  it("serves history, deduplicates a retry and resumes on any gateway", async () => {
    const id = g.conv("anywhere");
    const first = await g.publish(gws[0], { conversation_id: id, category: "info", text: "one", idempotency_key: "k-1" });
    assert.equal(first.status, 202);
    const retry = await g.publish(gws[2], { conversation_id: id, category: "info", text: "one", idempotency_key: "k-1" });
    assert.equal(retry.status, 202);
    assert.equal(retry.body.duplicate, true);
    assert.equal(retry.body.seq, first.body.seq);
    assert.equal(retry.body.epoch, first.body.epoch);
    await g.publish(gws[1], { conversation_id: id, category: "error", text: "two" });
    const h = await (await fetch(`${gws[2].url}/api/v1/conversations/${id}/history`)).json();
    assert.equal(h.epoch, first.body.epoch);
    assert.equal(h.last_seq, 2);
    assert.deepEqual(h.updates.map((u) => `${u.seq}:${u.text}`), ["1:one", "2:two"]);
    const only = await (await fetch(`${gws[1].url}/api/v1/conversations/${id}/history?since=1&categories=error`)).json();
    assert.deepEqual(only.updates.map((u) => u.text), ["two"]);
    const none = await fetch(`${gws[1].url}/api/v1/conversations/${g.conv("never")}/history`);
    assert.equal(none.status, 404);

    // an EventSource resume on another gateway: Last-Event-ID of seq 1
    const st = rawStream(`${gws[1].url}/api/v1/conversations/${id}/events`, `${first.body.epoch}:1`);
    await g.waitFor(() => st.events.some((e) => e.event === "status_update"), 5000, "the replay");
    await g.publish(gws[0], { conversation_id: id, category: "info", text: "three" });
    await g.waitFor(() => st.events.filter((e) => e.event === "status_update").length === 2, 5000, "the live one");
    assert.deepEqual(st.events.map((e) => `${e.event}:${e.id}`), [`status_update:${first.body.epoch}:2`, `status_update:${first.body.epoch}:3`]);
    st.close();
  });

  it("a client on a gateway killed with SIGKILL resumes on another with recovered: true and loses nothing", async () => {
    const id = g.conv("failover");
    const victim = await g.start(cluster(rd));
    const w = await phoenixWatcher(victim, id);
    for (let i = 1; i <= 3; i++) assert.equal((await g.publish(gws[0], { conversation_id: id, category: "info", text: `a${i}` })).status, 202);
    await g.waitFor(() => w.seen.length === 3, 5000, "3 updates");
    victim.proc.kill("SIGKILL");
    await victim.exited;
    w.socket.disconnect();
    // published while the client has no gateway
    for (let i = 1; i <= 2; i++) await g.publish(gws[2], { conversation_id: id, category: "info", text: `b${i}` });
    const s = g.socket(gws[1]);
    const ch = s.channel(`status:${id}`, { categories: ["*"], epoch: w.epoch, last_seq: w.lastSeq });
    ch.on("status_update", (u) => w.seen.push(`${u.seq}:${u.text}`));
    const r = await g.join(ch);
    assert.equal(r.recovered, true);
    assert.equal(r.epoch, w.epoch);
    await g.publish(gws[0], { conversation_id: id, category: "info", text: "c1" });
    await g.waitFor(() => w.seen.length === 6, 5000, "6 updates");
    assert.deepEqual(w.seen, ["1:a1", "2:a2", "3:a3", "4:b1", "5:b2", "6:c1"]);
  });

  it("status:* on one gateway hears conversations published on the others", async () => {
    const s = g.socket(gws[2]);
    const all = s.channel("status:*", { categories: ["*"] });
    const got = [];
    all.on("status_update", (u) => got.push(`${u.conversation_id}:${u.seq}`));
    await g.join(all);
    const a = g.conv("wild-a"), b = g.conv("wild-b");
    await g.publish(gws[0], { conversation_id: a, category: "info", text: "x" });
    await g.publish(gws[1], { conversation_id: b, category: "info", text: "y" });
    await g.publish(gws[0], { conversation_id: a, category: "info", text: "z" });
    await g.waitFor(() => got.length >= 3, 5000, "3 updates on status:*");
    await g.sleep(100);
    assert.deepEqual(got.sort(), [`${a}:1`, `${a}:2`, `${b}:1`].sort(), "each once");
    s.disconnect();
  });
});

describe("a slow Redis", () => {
  it("never blocks the loop: joins, streams and history on a gateway that does not hold the conversation wait for Redis, and the rest goes on", async () => {
    const rd = await g.startRedis({ args: ["--enable-debug-command", "yes"] });
    const a = await g.start(cluster(rd)), b = await g.start(cluster(rd));
    try {
      const id = g.conv("slow");
      let first;
      for (let i = 1; i <= 3; i++) {
        const r = await g.publish(a, { conversation_id: id, category: "info", text: `s${i}` });
        if (i === 1) first = r.body;
      }
      const sleeping = g.redis(rd, "DEBUG", "SLEEP", "0.8"); // Redis answers nobody for 0.8 s
      await g.sleep(50);
      const t0 = Date.now();
      let tJoin = 0;
      const joined = (async () => {
        const s = g.socket(b);
        const ch = s.channel(`status:${id}`, { categories: ["*"] });
        const r = await g.join(ch);
        tJoin = Date.now();
        return r;
      })();
      const hist = fetch(`${b.url}/api/v1/conversations/${id}/history`).then((r) => r.json());
      const missing = fetch(`${b.url}/api/v1/conversations/${g.conv("none")}/history`);
      const st = rawStream(`${b.url}/api/v1/conversations/${id}/events`, `${first.epoch}:1`);
      const health = await fetch(`${b.url}/healthz`);
      assert.equal(health.status, 200);
      const tHealth = Date.now();
      const r = await joined;
      assert.ok(tHealth < tJoin, "the loop answered while the join waited for Redis");
      assert.ok(tJoin - t0 >= 300, `the join waited for Redis (${tJoin - t0} ms)`);
      assert.equal(r.epoch, first.epoch);
      assert.equal(r.last_seq, 3);
      assert.equal(r.recovered, false);
      const h = await hist;
      assert.deepEqual(h.updates.map((u) => u.text), ["s1", "s2", "s3"]);
      assert.equal(h.epoch, first.epoch);
      assert.equal((await missing).status, 404);
      await g.waitFor(() => st.events.length === 2, 5000, "the replay");
      assert.deepEqual(st.events.map((e) => e.id), [`${first.epoch}:2`, `${first.epoch}:3`]);
      st.close();
      await sleeping;
    } finally {
      g.disconnectAll();
      assert.equal(await g.stop(a), 0);
      assert.equal(await g.stop(b), 0);
      await g.stopRedis(rd);
    }
  });
});

describe("status:* joining while Redis is slow", () => {
  it("answers the join once Redis has the pattern subscription, so the next update on another gateway is heard", async () => {
    const rd = await g.startRedis({ args: ["--enable-debug-command", "yes"] });
    const a = await g.start(cluster(rd)), b = await g.start(cluster(rd));
    try {
      // Redis answers nobody for 0.6 s: the PSUBSCRIBE the join sends waits
      // behind the sleep, and the join's answer with it
      const sleeping = g.redis(rd, "DEBUG", "SLEEP", "0.6");
      await g.sleep(50);
      const s = g.socket(b);
      const all = s.channel("status:*", { categories: ["*"] });
      const got = [];
      all.on("status_update", (u) => got.push(`${u.conversation_id}:${u.seq}`));
      const t0 = Date.now();
      await g.join(all);
      const waited = Date.now() - t0;
      assert.ok(waited >= 300, `the join was answered before Redis had the subscription (${waited} ms)`);
      await sleeping;
      const id = g.conv("wild-slow");
      assert.equal((await g.publish(a, { conversation_id: id, category: "info", text: "first" })).status, 202);
      await g.waitFor(() => got.length === 1, 5000, "the update on status:*");
      assert.deepEqual(got, [`${id}:1`]);
      s.disconnect();
    } finally {
      g.disconnectAll();
      assert.equal(await g.stop(a), 0);
      assert.equal(await g.stop(b), 0);
      await g.stopRedis(rd);
    }
  });
});

describe("Redis going away and coming back", () => {
  it("refuses publishes with 503 engine_unavailable while Redis is down, keeps subscribers, and catches them up after", async () => {
    let rd = await g.startRedis({ persist: true });
    const a = await g.start(cluster(rd)), b = await g.start(cluster(rd));
    try {
      const id = g.conv("outage");
      const w = await phoenixWatcher(b, id);
      for (let i = 1; i <= 2; i++) assert.equal((await g.publish(a, { conversation_id: id, category: "info", text: `before ${i}` })).status, 202);
      await g.waitFor(() => w.seen.length === 2, 5000, "2 updates");
      await g.stopRedis(rd);
      await g.waitFor(async () => (await fetch(`${a.url}/readyz`)).status === 503, 5000, "readyz 503");
      const refused = await fetch(`${a.url}/api/v1/status`, {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ conversation_id: id, category: "info", text: "lost?" }),
      });
      assert.equal(refused.status, 503);
      assert.equal((await refused.json()).error.code, "engine_unavailable");
      assert.ok(Number(refused.headers.get("retry-after")) >= 1);
      const m = await (await fetch(`${a.url}/metrics`)).text();
      assert.match(m, /statusgw_redis_up\{shard="127\.0\.0\.1:\d+"\} 0/);
      rd = await g.startRedis({ port: rd.port, dir: rd.dir, persist: true });
      await g.waitFor(async () => (await fetch(`${a.url}/readyz`)).status === 200 && (await fetch(`${b.url}/readyz`)).status === 200, 10000, "readyz 200 again");
      const after1 = await g.publish(a, { conversation_id: id, category: "info", text: "after 1" });
      assert.equal(after1.status, 202);
      assert.equal(after1.body.seq, 3, "seq continues");
      assert.equal(after1.body.epoch, w.epoch, "epoch kept");
      await g.waitFor(() => w.seen.length === 3, 5000, "the update after");
      assert.deepEqual(w.seen, ["1:before 1", "2:before 2", "3:after 1"]);
      assert.equal(w.joins.length, 1, "the subscriber stayed connected");
      const stats = await (await fetch(`${b.url}/api/v1/stats`)).json();
      assert.ok(stats.engine.reconnects >= 1);
    } finally {
      g.disconnectAll();
      assert.equal(await g.stop(a), 0);
      assert.equal(await g.stop(b), 0);
      await g.stopRedis(rd);
    }
  });

  it("a gateway whose Pub/Sub connection drops reads what it missed from the stream", async () => {
    const rd = await g.startRedis();
    const a = await g.start(cluster(rd)), b = await g.start(cluster(rd));
    try {
      const id = g.conv("blip");
      const w = await phoenixWatcher(b, id);
      await g.publish(a, { conversation_id: id, category: "info", text: "1" });
      await g.waitFor(() => w.seen.length === 1, 5000, "first");
      // drop every Pub/Sub connection (both gateways'), then publish at once
      await g.redis(rd, "CLIENT", "KILL", "TYPE", "pubsub");
      const sent = [];
      for (let i = 2; i <= 6; i++) {
        const r = await g.publish(a, { conversation_id: id, category: "info", text: String(i) });
        if (r.status === 202) sent.push(`${r.body.seq}:${i}`);
        else assert.equal(r.status, 503);
      }
      await g.waitFor(async () => (await fetch(`${a.url}/readyz`)).status === 200, 10000, "a back");
      const last = await g.publish(a, { conversation_id: id, category: "info", text: "7" });
      assert.equal(last.status, 202);
      sent.push(`${last.body.seq}:7`);
      await g.waitFor(() => w.seen.length === sent.length + 1, 10000, "every acknowledged update");
      assert.deepEqual(w.seen, ["1:1", ...sent]);
      assert.ok(inOrder(w.seen, sent.length + 1));
      assert.match(g.logText(b), /event=redis_down shard=0 .*\n.*event=redis_up shard=0/s);
    } finally {
      g.disconnectAll();
      assert.equal(await g.stop(a), 0);
      assert.equal(await g.stop(b), 0);
      await g.stopRedis(rd);
    }
  });

  it("cuts subscribers off when what they missed is gone from history, and they rejoin with recovered: false", async () => {
    const rd = await g.startRedis();
    const a = await g.start(cluster(rd, { history_size: 5 })), b = await g.start(cluster(rd, { history_size: 5 }));
    try {
      const id = g.conv("trimmed");
      const w = await phoenixWatcher(b, id);
      await g.publish(a, { conversation_id: id, category: "info", text: "1" });
      await g.waitFor(() => w.seen.length === 1, 5000, "first");
      // only b's Pub/Sub connection drops; a publishes more than history holds meanwhile
      const clients = await g.redis(rd, "CLIENT", "LIST", "TYPE", "pubsub");
      const mine = clients.split("\n").find((l) => l.includes(`name=statusgw:`) && l.includes(`:${b.port}:sub`));
      assert.ok(mine, "b's Pub/Sub connection is named: " + clients);
      await g.redis(rd, "CLIENT", "KILL", "ID", mine.match(/id=(\d+)/)[1]);
      // one request, in Redis well before b reconnects (100 ms)
      const bulk = await g.publishMany(a, Array.from({ length: 11 }, (_, i) => ({ conversation_id: id, category: "info", text: String(i + 2) })));
      assert.equal(bulk.body.accepted, 11);
      await g.waitFor(() => w.joins.length === 2, 10000, "the channel rejoined");
      assert.equal(w.joins[1].recovered, false, "told of the gap");
      assert.equal(w.joins[1].last_seq, 12);
      await g.waitFor(() => w.seen.length >= 6, 5000, "what history holds");
      assert.deepEqual(w.seen, ["1:1", "8:8", "9:9", "10:10", "11:11", "12:12"]);
      assert.match(g.logText(b), /event=subscribers_cut conversation=\S+ subscribers=1 reason=history_trimmed/);
    } finally {
      g.disconnectAll();
      assert.equal(await g.stop(a), 0);
      assert.equal(await g.stop(b), 0);
      await g.stopRedis(rd);
    }
  });

  it("exits 2 with the address when Redis is unreachable at start", async () => {
    const port = await g.freePort();
    const err = await g.start(cluster({ addr: `127.0.0.1:${port}` })).catch((e) => e);
    assert.ok(err instanceof Error);
    assert.equal(err.status, 2);
    assert.match(err.message, new RegExp(`event=engine_failed engine=redis reason="cannot connect to redis at 127\\.0\\.0\\.1:${port}`));
  });
});

describe("two Redis shards", () => {
  it("spreads conversations over both, and every gateway serves each", async () => {
    const r1 = await g.startRedis(), r2 = await g.startRedis();
    const a = await g.start(cluster([r1, r2])), b = await g.start(cluster([r1, r2]));
    try {
      const ids = Array.from({ length: 16 }, (_, i) => g.conv(`shard${i}`));
      const watchers = await Promise.all(ids.map((id) => phoenixWatcher(b, id)));
      for (const id of ids) for (let i = 1; i <= 3; i++) assert.equal((await g.publish(a, { conversation_id: id, category: "info", text: `${i}` })).status, 202);
      await g.waitFor(() => watchers.every((w) => w.seen.length === 3), 10000, "3 updates each");
      for (const w of watchers) assert.deepEqual(w.seen, ["1:1", "2:2", "3:3"]);
      const on1 = await g.redis(r1, "KEYS", "statusgw:h:*"), on2 = await g.redis(r2, "KEYS", "statusgw:h:*");
      assert.equal(on1.length + on2.length, 16, "each conversation's stream on one shard");
      assert.ok(on1.length > 0 && on2.length > 0, `both shards used (${on1.length}, ${on2.length})`);
      for (const k of on1) assert.ok(!on2.includes(k));
      const stats = await (await fetch(`${a.url}/api/v1/stats`)).json();
      assert.equal(stats.engine.shards.length, 2);
    } finally {
      g.disconnectAll();
      assert.equal(await g.stop(a), 0);
      assert.equal(await g.stop(b), 0);
      await g.stopRedis(r1);
      await g.stopRedis(r2);
    }
  });
});

describe("once per cluster", () => {
  it("forwards each update to a webhook once, whichever gateway accepted it", async () => {
    const got = [];
    const server = await g.receiver((req, body, res) => {
      for (const u of JSON.parse(body).data.updates) got.push(`${u.seq}:${u.text}`);
      res.end();
    });
    const rd = await g.startRedis();
    const hooks = { endpoints: [{ name: "rx", url: `http://127.0.0.1:${server.address().port}/hook`, secret: "whsec_" + Buffer.from("cluster-secret-0123456789abcdef").toString("base64"), batch_delay_ms: 50 }] };
    const a = await g.start(cluster(rd, { webhooks: hooks })), b = await g.start(cluster(rd, { webhooks: hooks }));
    try {
      const id = g.conv("hooked");
      for (let i = 1; i <= 10; i++) assert.equal((await g.publish(i % 2 ? a : b, { conversation_id: id, category: "info", text: `${i}` })).status, 202);
      await g.waitFor(() => got.length >= 10, 5000, "10 forwarded");
      await g.sleep(300);
      assert.deepEqual(got.sort((x, y) => parseInt(x) - parseInt(y)), Array.from({ length: 10 }, (_, i) => `${i + 1}:${i + 1}`));
    } finally {
      assert.equal(await g.stop(a), 0);
      assert.equal(await g.stop(b), 0);
      await g.stopRedis(rd);
      server.close();
    }
  });

  it("keeps webhook batches in Redis: a gateway killed with SIGKILL sends them once back, with their webhook-ids", async () => {
    let refuse = true;
    const got = [];
    const server = await g.receiver((req, body, res) => {
      got.push({ id: req.headers["webhook-id"], texts: JSON.parse(body).data.updates.map((u) => u.text), refused: refuse });
      res.writeHead(refuse ? 503 : 200);
      res.end();
    });
    const rd = await g.startRedis();
    const hooks = { retry_schedule_s: [0, 1.5, 1.5], endpoints: [{ name: "rx", url: `http://127.0.0.1:${server.address().port}/hook`, secret: "whsec_" + Buffer.from("cluster-secret-0123456789abcdef").toString("base64"), batch_delay_ms: 50 }] };
    const port = await g.freePort();
    let a = await g.start(cluster(rd, { webhooks: hooks }), port);
    try {
      const id = g.conv("kept");
      for (let i = 1; i <= 4; i++) assert.equal((await g.publish(a, { conversation_id: id, category: "info", text: `k${i}` })).status, 202);
      await g.waitFor(() => got.length >= 1, 5000, "a first, refused attempt");
      const firstIds = [...new Set(got.map((x) => x.id))];
      // the batch is kept whole, and the parts it was gathered from are gone with it
      const key = `statusgw:outbox:${os.hostname()}:${port}`;
      await g.waitFor(async () => (await g.redis(rd, "HKEYS", key)).includes(firstIds[0]), 5000, "the batch kept in Redis");
      const parts = await g.redis(rd, "HKEYS", `${key}:parts`);
      assert.deepEqual(parts.filter((k) => k.startsWith(firstIds[0] + ".")), [], "no part left of a kept batch");
      a.proc.kill("SIGKILL");
      await a.exited;
      refuse = false;
      a = await g.start(cluster(rd, { webhooks: hooks }), port);
      await g.waitFor(() => got.filter((x) => !x.refused).flatMap((x) => x.texts).length >= 4, 10000, "the kept updates delivered");
      await g.sleep(300);
      const delivered = got.filter((x) => !x.refused);
      assert.deepEqual(delivered.flatMap((x) => x.texts).sort(), ["k1", "k2", "k3", "k4"], "each once");
      for (const d of delivered) if (got.some((x) => x.refused && x.texts.join() === d.texts.join())) assert.ok(firstIds.includes(d.id), "a retried batch keeps its webhook-id");
      assert.match(g.logText(a), /event=webhook_outbox_loaded queued=[1-9]/);
    } finally {
      assert.equal(await g.stop(a), 0);
      await g.stopRedis(rd);
      server.close();
    }
  });

  it("runs an aggregator once per cluster over every gateway's updates, and lists the gateways", async () => {
    const rd = await g.startRedis();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-agg-"));
    fs.copyFileSync("../../plugins/summary.lua", path.join(dir, "summary.lua"));
    const cfg = cluster(rd, { plugins_dir: dir, plugins: { summary: { enabled: true, interval_ms: 300 } } });
    const a = await g.start(cfg), b = await g.start(cfg);
    try {
      // one of the two takes the aggregators' lease within a heartbeat
      let nodes;
      await g.waitFor(async () => {
        nodes = (await (await fetch(`${a.url}/admin/nodes`)).json()).nodes;
        return nodes.length === 2 && nodes.filter((n) => n.aggregators).length === 1;
      }, 5000, "two nodes, one holding the lease");
      assert.deepEqual(nodes.map((n) => n.port).sort(), [a.port, b.port].sort());
      assert.equal(nodes.filter((n) => n.self).length, 1);
      const id = g.conv("agg");
      const w = await phoenixWatcher(b, id);
      for (let i = 1; i <= 6; i++) assert.equal((await g.publish(i % 2 ? a : b, { conversation_id: id, category: i === 6 ? "error" : "tool", text: `u${i}` })).status, 202);
      await g.waitFor(() => w.seen.some((x) => /updates:/.test(x)), 5000, "a summary");
      await g.sleep(900); // another interval or two: nothing more (no new activity), and no second copy
      const summaries = w.seen.filter((x) => /updates:/.test(x));
      assert.equal(summaries.length, 1, `one summary for the cluster: ${summaries}`);
      assert.match(summaries[0], /^7:6 updates: /, "covers the six updates of both gateways");
    } finally {
      g.disconnectAll();
      assert.equal(await g.stop(a), 0);
      assert.equal(await g.stop(b), 0);
      await g.stopRedis(rd);
    }
  });

  it("lets several gateways share one port with reuse_port = true", async () => {
    const rd = await g.startRedis();
    const port = await g.freePort();
    const a = await g.start(cluster(rd, { reuse_port: true }), port);
    const b = await g.start(cluster(rd, { reuse_port: true }), port);
    try {
      // /healthz may have been a's answer: wait for b's own listener
      await g.waitFor(() => /event=started/.test(g.logText(b)), 10000, "the second process to listen");
      assert.equal(a.proc.exitCode, null);
      assert.equal(b.proc.exitCode, null);
      const id = g.conv("shared-port");
      // each publish on a new connection: the kernel spreads them over both
      // processes, and the seqs stay one sequence
      const seqs = [];
      for (let i = 0; i < 24; i++) seqs.push((await postNewConnection(port, { conversation_id: id, category: "info", text: `${i}` })).seq);
      assert.deepEqual(seqs, Array.from({ length: 24 }, (_, i) => i + 1));
      assert.equal(await g.stop(a), 0);
      assert.equal(await g.stop(b), 0);
      const served = [a, b].map((gw) => Number(g.logText(gw).match(/event=stopped requests=(\d+)/)[1]));
      assert.ok(served[0] > 0 && served[1] > 0, `both processes served requests (${served})`);
    } finally {
      await g.stopRedis(rd);
    }
  });
});
