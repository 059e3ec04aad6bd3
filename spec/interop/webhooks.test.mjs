// Webhook delivery verified by the npm standardwebhooks package, against a
// real local receiver that can fail, hang, answer 410 or 429, or be down.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import * as g from "./gateway.mjs";

const SECRET = "whsec_" + Buffer.from("statusgw-spec-secret-0123456789ab").toString("base64");
const OLD_SECRET = "whsec_" + Buffer.from("an-older-secret-still-accepted!!").toString("base64");

// A receiver: every request is verified; behaviour per path.
async function receiver() {
  const got = {}; // path -> [{id, body, headers, verified, at}]
  const plan = {}; // path -> array of statuses to answer, then 200
  const hanging = [];
  const server = await g.receiver((req, body, res) => {
    const p = req.url;
    const verified = g.signed(SECRET, body, req.headers), verifiedOld = g.signed(OLD_SECRET, body, req.headers);
    (got[p] ||= []).push({ id: req.headers["webhook-id"], body: JSON.parse(body), headers: req.headers, verified, verifiedOld, at: Date.now() });
    if (p === "/hang") { hanging.push(res); return; }
    const next = (plan[p] || []).shift();
    if (next === 429) { res.writeHead(429, { "Retry-After": "1" }); res.end(); return; }
    res.writeHead(next || (p === "/gone" ? 410 : 200));
    res.end("ok");
  });
  return { server, got, plan, hanging };
}

describe("webhooks", () => {
  let gw, rx, port, dir, deadPort;
  before(async () => {
    rx = await receiver();
    port = rx.server.address().port;
    deadPort = await g.freePort(); // nothing listens here
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-wh-"));
    fs.copyFileSync("../../plugins/webhook_formats.lua", path.join(dir, "webhook_formats.lua"));
    const url = (p) => `http://127.0.0.1:${port}${p}`;
    const ep = (name, p, extra = {}) => ({ name, url: url(p), secrets: [SECRET, OLD_SECRET], conversations: `${name}-*`, batch_size: 5, batch_delay_ms: 100, ...extra });
    gw = await g.start({
      flush_interval_ms: 20,
      shutdown_timeout_ms: 1000,
      plugins_dir: dir,
      webhooks: {
        dead_letter_file: path.join(dir, "dead.jsonl"),
        retry_schedule_s: [0, 0.2, 0.2, 0.2],
        endpoints: [
          ep("ok", "/ok", { batch_size: 3, batch_delay_ms: 300, headers: { "X-Team": "ops" } }),
          ep("flaky", "/flaky"),
          ep("gone", "/gone"),
          ep("limited", "/limited", { retry_schedule_s: [0, 30] }),
          ep("dead", "/dead", { retry_schedule_s: [0, 0.1, 0.1] }),
          ep("hang", "/hang", { timeout_ms: 3000 }),
          { name: "down", url: `http://127.0.0.1:${deadPort}/x`, secret: SECRET, conversations: "down-*", batch_delay_ms: 0, retry_schedule_s: [0, 0.1] },
          { name: "errors", url: url("/errors"), secret: SECRET, forwarder: "errors", conversations: "fw-*", batch_delay_ms: 50 },
          { name: "small", url: url("/small"), secret: SECRET, conversations: "small-*", batch_size: 2, max_queue: 3, batch_delay_ms: 60000 },
        ],
      },
    });
  });
  after(async () => {
    // the hanging receiver still holds an attempt: the stop gives it the
    // shutdown deadline, then keeps it: in the durable store's outbox (sent
    // after a restart: restart.test.mjs), or without one in the dead-letter
    // file for redelivery
    assert.equal(await g.stop(gw), 0);
    for (const res of rx.hanging) res.destroy();
    rx.server.close();
    const lines = fs.readFileSync(path.join(dir, "dead.jsonl"), "utf8").trim().split("\n").map(JSON.parse);
    const kept = lines.filter((l) => l.endpoint === "hang");
    if (gw.config.store === "sqlite") {
      assert.equal(kept.length, 0);
      assert.match(g.logText(gw), /event=webhook_outbox_kept endpoint=hang messages=[1-9]/);
      return;
    }
    assert.ok(kept.length >= 1, "the in-flight batch was kept");
    assert.match(kept[0].reason, /gateway stopped before delivery/);
    assert.match(kept[0].body, /hang-1/);
  });

  const admin = async () => (await (await fetch(`${gw.url}/admin/webhooks`)).json()).endpoints.reduce((a, e) => ({ ...a, [e.name]: e }), {});

  it("delivers batches signed per Standard Webhooks, verified with every secret", async () => {
    for (let i = 1; i <= 3; i++) await g.publish(gw, { conversation_id: "ok-1", category: "tool", text: `u${i}` });
    await g.waitFor(() => (rx.got["/ok"] || []).length === 1, 5000, "a batch");
    const r = rx.got["/ok"][0];
    assert.equal(r.verified, true);
    assert.equal(r.verifiedOld, true);
    assert.match(r.id, /^msg_[0-9a-f]+$/);
    assert.equal(r.headers["x-team"], "ops");
    assert.equal(r.body.type, "status.updates");
    assert.deepEqual(r.body.data.updates.map((u) => u.text), ["u1", "u2", "u3"]);
  });

  it("respects the batch delay for a partial batch", async () => {
    const t0 = Date.now();
    await g.publish(gw, { conversation_id: "ok-2", category: "info", text: "lonely" });
    await g.waitFor(() => rx.got["/ok"].length === 2, 5000, "the delayed batch");
    const r = rx.got["/ok"][1];
    assert.ok(r.at - t0 >= 250, `sent after ${r.at - t0} ms, before the 300 ms delay`);
    assert.deepEqual(r.body.data.updates.map((u) => u.text), ["lonely"]);
  });

  it("retries failures with the same webhook-id until it is delivered", async () => {
    rx.plan["/flaky"] = [500, 503];
    await g.publish(gw, { conversation_id: "flaky-1", category: "info", text: "persist" });
    await g.waitFor(() => (rx.got["/flaky"] || []).length === 3, 8000, "three attempts");
    const ids = new Set(rx.got["/flaky"].map((r) => r.id));
    assert.equal(ids.size, 1);
    assert.ok(rx.got["/flaky"].every((r) => r.verified));
    const a = await admin();
    assert.equal(a.flaky.delivered, 1);
    assert.equal(a.flaky.failed, 2);
    assert.equal(a.flaky.retried, 2);
    assert.match(a.flaky.last_error, /HTTP 503/);
  });

  it("honours Retry-After on a 429 in place of the next step", async () => {
    rx.plan["/limited"] = [429];
    await g.publish(gw, { conversation_id: "limited-1", category: "info", text: "x" });
    await g.waitFor(() => (rx.got["/limited"] || []).length === 2, 8000, "the retry after 1 s (not 30 s)");
    const [a, b] = rx.got["/limited"];
    assert.ok(b.at - a.at >= 900, `retried after ${b.at - a.at} ms`);
    assert.equal(a.id, b.id);
  });

  it("disables an endpoint that answers 410 and keeps what it was sent", async () => {
    await g.publish(gw, { conversation_id: "gone-1", category: "info", text: "x" });
    await g.waitFor(() => (rx.got["/gone"] || []).length === 1);
    await g.sleep(100);
    let a = await admin();
    assert.equal(a.gone.state, "disabled");
    await g.publish(gw, { conversation_id: "gone-1", category: "info", text: "after" });
    await g.sleep(300);
    assert.equal(rx.got["/gone"].length, 1); // nothing more was sent
    a = await admin();
    assert.equal(a.gone.dead_lettered, 2);
  });

  it("dead-letters after the last attempt, and redelivers on request", async () => {
    rx.plan["/dead"] = [500, 500, 500];
    await g.publish(gw, { conversation_id: "dead-1", category: "error", text: "lost?" });
    await g.waitFor(() => (rx.got["/dead"] || []).length === 3, 8000, "three attempts");
    await g.sleep(200);
    let a = await admin();
    assert.equal(a.dead.dead_lettered, 1);
    const lines = fs.readFileSync(path.join(dir, "dead.jsonl"), "utf8").trim().split("\n").map(JSON.parse);
    const mine = lines.find((l) => l.endpoint === "dead");
    assert.equal(mine.attempts, 3);
    assert.match(mine.reason, /retries exhausted: HTTP 500/);
    const id = rx.got["/dead"][0].id;
    const r = await fetch(`${gw.url}/admin/webhooks/dead/redeliver`, { method: "POST" });
    assert.equal(r.status, 200);
    assert.equal((await r.json()).requeued, 1);
    await g.waitFor(() => rx.got["/dead"].length === 4, 5000, "the redelivery");
    const last = rx.got["/dead"][3];
    assert.equal(last.id, id);
    assert.equal(last.verified, true);
    assert.equal(last.body.data.updates[0].text, "lost?");
    a = await admin();
    assert.equal(a.dead.delivered, 1);
    assert.equal(fs.readFileSync(path.join(dir, "dead.jsonl"), "utf8").includes('"endpoint":"dead"'), false);
  });

  it("retries a receiver that is down and dead-letters at the end", async () => {
    await g.publish(gw, { conversation_id: "down-1", category: "info", text: "nobody home" });
    await g.sleep(600);
    const a = await admin();
    assert.equal(a.down.failed, 2);
    assert.equal(a.down.dead_lettered, 1);
    assert.match(a.down.last_error, /onnect/);
  });

  it("sends only what a plugin forwarder selects, in its format", async () => {
    await g.publish(gw, { conversation_id: "fw-1", category: "tool", text: "not an error" });
    await g.publish(gw, { conversation_id: "fw-1", category: "error", text: "disk full", metadata: { error_type: "io" } });
    await g.waitFor(() => (rx.got["/errors"] || []).length === 1);
    await g.sleep(200);
    assert.equal(rx.got["/errors"].length, 1);
    const r = rx.got["/errors"][0];
    assert.equal(r.verified, true);
    assert.equal(r.headers["x-statusgw-kind"], "errors");
    assert.deepEqual(r.body.events.map((e) => e.message), ["disk full"]);
    assert.equal(r.body.events[0].error_type, "io");
  });

  it("sends past its queue cap straight to the dead-letter file, counted", async () => {
    // batch_size 2 is sent at once; the cap of 3 queued updates holds the rest
    rx.plan["/small"] = [500, 500, 500, 500, 500, 500, 500, 500];
    for (let i = 0; i < 6; i++) await g.publish(gw, { conversation_id: "small-1", category: "info", text: `s${i}` });
    await g.sleep(300);
    const a = await admin();
    assert.ok(a.small.dead_lettered >= 3, `dead-lettered ${a.small.dead_lettered}`);
    assert.ok(a.small.queue_depth <= 3);
  });

  it("never delays live subscribers while a receiver hangs", async () => {
    const s = g.socket(gw);
    const ch = s.channel("status:hang-1", { categories: ["*"] });
    const lat = [];
    ch.on("status_update", (u) => lat.push(Date.now() - Number(u.text)));
    await g.join(ch);
    for (let i = 0; i < 10; i++) {
      await g.publish(gw, { conversation_id: "hang-1", category: "info", text: String(Date.now()) });
      await g.sleep(30);
    }
    await g.waitFor(() => lat.length === 10, 5000, "10 live updates");
    assert.ok(rx.hanging.length >= 1, "the receiver is hanging");
    const a = await admin();
    assert.ok(a.hang.in_flight >= 1);
    assert.ok(Math.max(...lat) < 20 + 250, `latency ${Math.max(...lat)} ms`); // flush interval + slack
    g.disconnectAll();
  });
});

describe("webhook secrets and dead letters", () => {
  let gw, rx, port, dir, deadPort;
  before(async () => {
    rx = await receiver();
    port = rx.server.address().port;
    deadPort = await g.freePort();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-wh2-"));
    fs.writeFileSync(path.join(dir, "inject.lua"), `
      local P = {}
      P.webhooks = { inject = {
        match = function(u) return true end,
        format = function(updates)
          return statusgw.json.encode({ n = #updates }), { ["X-Fine"] = "yes", ["X-Bad"] = "a\\r\\nX-Injected: yes" }
        end } }
      return P`);
    gw = await g.start({
      flush_interval_ms: 20,
      plugins_dir: dir,
      webhooks: {
        dead_letter_file: path.join(dir, "dead.jsonl"),
        endpoints: [
          { name: "slack", url: `http://127.0.0.1:${port}/services/T000/B000/SECRETTOKEN`, secret: SECRET, forwarder: "inject", conversations: "inj-*", batch_delay_ms: 0 },
          { name: "down", url: `http://user:pw@127.0.0.1:${deadPort}/hook?token=SECRETQUERY`, secret: SECRET, conversations: "down-*", batch_delay_ms: 0, retry_schedule_s: [0] },
        ],
      },
    });
  });
  after(async () => {
    assert.equal(await g.stop(gw), 0);
    rx.server.close();
  });

  it("never sends a header a forwarder split with CR/LF", async () => {
    await g.publish(gw, { conversation_id: "inj-1", category: "info", text: "x" });
    await g.waitFor(() => (rx.got["/services/T000/B000/SECRETTOKEN"] || []).length === 1, 5000, "delivery");
    const h = rx.got["/services/T000/B000/SECRETTOKEN"][0].headers;
    assert.equal(h["x-fine"], "yes");
    assert.equal(h["x-injected"], undefined);
    assert.equal(h["x-bad"], undefined);
    assert.match(g.logText(gw), /event=webhook_header_refused endpoint=slack header="X-Bad"/);
  });

  it("shows and logs a webhook URL as its origin only", async () => {
    const a = await (await fetch(`${gw.url}/admin/webhooks`)).json();
    const byName = Object.fromEntries(a.endpoints.map((e) => [e.name, e]));
    assert.equal(byName.slack.url, `http://127.0.0.1:${port}/\u2026`);
    assert.equal(byName.down.url, `http://127.0.0.1:${deadPort}/\u2026`);
    const log = g.logText(gw);
    assert.doesNotMatch(log, /SECRETTOKEN|SECRETQUERY|user:pw/);
  });

  it("writes the dead-letter file for its owner only, and counts a failed write as lost, not dead-lettered", async () => {
    await g.publish(gw, { conversation_id: "down-1", category: "info", text: "x" });
    const file = path.join(dir, "dead.jsonl");
    await g.waitFor(() => fs.existsSync(file) && fs.readFileSync(file, "utf8").includes("down"), 10000, "dead letter");
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    // the file's place becomes a directory: the next dead letter cannot be written
    fs.renameSync(file, file + ".old");
    fs.mkdirSync(file);
    await g.publish(gw, { conversation_id: "down-2", category: "info", text: "y" });
    let down;
    await g.waitFor(async () => {
      down = (await (await fetch(`${gw.url}/admin/webhooks`)).json()).endpoints.find((e) => e.name === "down");
      return down.dead_letter_failed === 1;
    }, 10000, "dead_letter_failed");
    assert.equal(down.dead_lettered, 1);
    assert.match(g.logText(gw), /event=dead_letter_write_failed endpoint=down/);
  });
});
