// Security and limits: API keys, JWT subscriber tokens (made here with
// node:crypto), the admin key, connection and channel limits, Origin.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import { EventSource } from "eventsource";
import WebSocket from "ws";
import { LongPoll } from "phoenix";
import * as g from "./gateway.mjs";

const JWT_SECRET = "spec-jwt-secret-0123456789abcdef0123456789";
const KEY_ALL = "pk_all_0123456789abcdef";
const KEY_CONV = "pk_conv_0123456789abcdef";
const KEY_SLOW = "pk_slow_0123456789abcdef";
const ADMIN = "admin_0123456789abcdef";

const b64u = (x) => Buffer.from(typeof x === "string" ? x : JSON.stringify(x)).toString("base64url");
function jwt(claims, { alg = "HS256", secret = JWT_SECRET } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64u({ alg, typ: "JWT" })}.${b64u({ exp: now + 600, ...claims })}`;
  if (alg === "none") return body + ".";
  const h = alg === "HS512" ? "sha512" : "sha256";
  return `${body}.${crypto.createHmac(h, secret).update(body).digest("base64url")}`;
}

const post = (gw, path, body, headers = {}) => fetch(`${gw.url}${path}`, {
  method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });

function wsOpen(gw, query = "", opts = {}) {
  return g.withTimeout(new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/socket/websocket?vsn=2.0.0${query}`, opts.protocols, { headers: opts.headers });
    ws.on("open", () => resolve({ ws, status: 101 }));
    ws.on("unexpected-response", (_req, res) => resolve({ status: res.statusCode }));
    ws.on("error", () => {});
  }), 5000, "the WebSocket upgrade");
}

function joinRaw(ws, topic, payload = {}) {
  return g.withTimeout(new Promise((resolve) => {
    const ref = String(Math.random());
    const onMsg = (m) => {
      const [, r, , ev, p] = JSON.parse(m);
      if (r === ref && ev === "phx_reply") { ws.off("message", onMsg); resolve(p); }
    };
    ws.on("message", onMsg);
    ws.send(JSON.stringify([ref, ref, topic, "phx_join", payload]));
  }), 5000, "the join reply");
}

describe("security", () => {
  let gw;
  before(async () => {
    gw = await g.start({
      flush_interval_ms: 20,
      max_channels_per_socket: 3,
      security: {
        api_keys: [{ key: KEY_ALL, name: "all" }, { key: KEY_CONV, name: "conv", conversations: "team-a-*" },
          { key: KEY_SLOW, name: "slow", rate: 1, burst: 2 }],
        jwt_secret: JWT_SECRET,
        admin_key: ADMIN,
        allowed_origins: ["https://app.example.com"],
      },
    });
  });
  after(async () => { assert.equal(await g.stop(gw), 0); });

  const upd = (conv) => ({ conversation_id: conv, category: "info", text: "x" });

  it("refuses publishes without a key or with a wrong one (401)", async () => {
    let r = await post(gw, "/api/v1/status", upd("c1"));
    assert.equal(r.status, 401);
    assert.equal((await r.json()).error.code, "unauthorized");
    r = await post(gw, "/api/v1/status", upd("c1"), { authorization: "Bearer pk_wrong_0123456789abcdef" });
    assert.equal(r.status, 401);
    r = await post(gw, "/api/v1/status", upd("c1"), { authorization: `Bearer ${KEY_ALL}` });
    assert.equal(r.status, 202);
  });

  it("limits a key to its conversation pattern (403), in bulk per item", async () => {
    const auth = { authorization: `Bearer ${KEY_CONV}` };
    assert.equal((await post(gw, "/api/v1/status", upd("team-a-1"), auth)).status, 202);
    const r = await post(gw, "/api/v1/status", upd("team-b-1"), auth);
    assert.equal(r.status, 403);
    assert.equal((await r.json()).error.code, "forbidden");
    const b = await (await post(gw, "/api/v1/status/bulk", [upd("team-a-2"), upd("team-b-2")], auth)).json();
    assert.equal(b.accepted, 1);
    assert.equal(b.results[1].error.code, "forbidden");
  });

  it("limits a key to its publish rate (429 with Retry-After)", async () => {
    const auth = { authorization: `Bearer ${KEY_SLOW}` };
    const res = [];
    for (let i = 0; i < 4; i++) res.push(await post(gw, "/api/v1/status", upd("slow-1"), auth));
    assert.deepEqual(res.slice(0, 2).map((r) => r.status), [202, 202]);
    assert.equal(res[3].status, 429);
    assert.equal(res[3].headers.get("retry-after"), "1");
    assert.equal((await res[3].json()).error.code, "rate_limited");
  });

  it("allows a join inside the token's conversations and refuses one outside", async () => {
    const { ws, status } = await wsOpen(gw, `&token=${jwt({ sub: "u1", conversations: ["team-a-*", "solo"] })}`);
    assert.equal(status, 101);
    assert.equal((await joinRaw(ws, "status:team-a-9")).status, "ok");
    assert.equal((await joinRaw(ws, "status:solo")).status, "ok");
    const no = await joinRaw(ws, "status:team-b-1");
    assert.equal(no.status, "error");
    assert.equal(no.response.reason, "unauthorized");
    assert.equal((await joinRaw(ws, "status:*")).response.reason, "unauthorized");
    assert.equal((await joinRaw(ws, "status:system")).response.reason, "unauthorized");
    ws.close();
  });

  it("lets admin tokens join status:* and status:system", async () => {
    const { ws } = await wsOpen(gw, `&token=${jwt({ sub: "ops", admin: true })}`);
    assert.equal((await joinRaw(ws, "status:*")).status, "ok");
    assert.equal((await joinRaw(ws, "status:system")).status, "ok");
    ws.close();
  });

  it("refuses missing, expired, wrongly signed, alg none and non-HS256 tokens at the upgrade (401)", async () => {
    const now = Math.floor(Date.now() / 1000);
    const bad = {
      missing: "",
      expired: `&token=${jwt({ conversations: ["x"], exp: now - 3600 })}`,
      no_exp: `&token=${jwt({ conversations: ["x"], exp: undefined })}`,
      wrong_secret: `&token=${jwt({ conversations: ["x"] }, { secret: "another-secret-entirely-0123456789" })}`,
      alg_none: `&token=${jwt({ conversations: ["x"] }, { alg: "none" })}`,
      hs512: `&token=${jwt({ conversations: ["x"] }, { alg: "HS512" })}`,
      garbage: "&token=not.a.jwt",
    };
    for (const [name, q] of Object.entries(bad)) {
      const { status } = await wsOpen(gw, q);
      assert.equal(status, 401, name);
    }
  });

  it("accepts the token in phoenix.js's Sec-WebSocket-Protocol form", async () => {
    const t = jwt({ conversations: ["proto-1"] });
    const { ws, status } = await wsOpen(gw, "", { protocols: ["phoenix", `base64url.bearer.phx.${Buffer.from(t).toString("base64url")}`] });
    assert.equal(status, 101);
    assert.equal(ws.protocol, "phoenix");
    assert.equal((await joinRaw(ws, "status:proto-1")).status, "ok");
    ws.close();
  });

  it("takes exp and nbf at the ends of the 64-bit range without overflow", async () => {
    // made by hand: JSON.stringify cannot write these integers exactly
    const tok = (payload) => {
      const body = `${b64u({ alg: "HS256", typ: "JWT" })}.${b64u(payload)}`;
      return `${body}.${crypto.createHmac("sha256", JWT_SECRET).update(body).digest("base64url")}`;
    };
    const far = tok('{"exp":9223372036854775807,"nbf":-9223372036854775807,"conversations":["edge-*"]}');
    const ac = new AbortController();
    const r = await fetch(`${gw.url}/api/v1/conversations/edge-1/events?token=${far}`, { signal: ac.signal });
    assert.equal(r.status, 200);
    ac.abort();
    const past = tok('{"exp":-9223372036854775807,"conversations":["edge-*"]}');
    assert.equal((await fetch(`${gw.url}/api/v1/conversations/edge-1/history?token=${past}`)).status, 401);
    const future = tok(`{"exp":${Math.floor(Date.now() / 1000) + 600},"nbf":9223372036854775807,"conversations":["edge-*"]}`);
    assert.equal((await fetch(`${gw.url}/api/v1/conversations/edge-1/history?token=${future}`)).status, 401);
  });

  it("checks SSE tokens from ?token= or Authorization (401, 403, 200)", async () => {
    let r = await fetch(`${gw.url}/api/v1/conversations/sse-1/events`);
    assert.equal(r.status, 401);
    r = await fetch(`${gw.url}/api/v1/conversations/sse-1/events?token=${jwt({ conversations: ["other"] })}`);
    assert.equal(r.status, 403);
    const es = new EventSource(`${gw.url}/api/v1/conversations/sse-1/events`, {
      fetch: (url, init) => fetch(url, { ...init, headers: { ...init.headers, authorization: `Bearer ${jwt({ conversations: ["sse-*"] })}` } }),
    });
    const got = [];
    es.addEventListener("status_update", (e) => got.push(JSON.parse(e.data).text));
    await g.opened(es);
    await post(gw, "/api/v1/status", { conversation_id: "sse-1", category: "info", text: "hello" }, { authorization: `Bearer ${KEY_ALL}` });
    await g.waitFor(() => got.length === 1);
    es.close();
  });

  it("checks a multi-conversation stream's token against every conversation, and * against admin (401, 403, 200)", async () => {
    const multi = (q) => fetch(`${gw.url}/api/v1/events?${q}`);
    let r = await multi("conversations=sse-a,sse-b");
    assert.equal(r.status, 401);
    r = await multi(`conversations=sse-a,other&token=${jwt({ conversations: ["sse-*"] })}`);
    assert.equal(r.status, 403);
    assert.match((await r.json()).error.message, /other/);
    r = await multi(`conversations=*&token=${jwt({ conversations: ["*"] })}`);
    assert.equal(r.status, 403);
    r = await multi(`conversations=sse-a,sse-b&token=${jwt({ conversations: ["sse-*"] })}`);
    assert.equal(r.status, 200);
    await r.body.cancel();
    const es = new EventSource(`${gw.url}/api/v1/events?conversations=*&token=${jwt({ admin: true })}`);
    const got = [];
    es.addEventListener("status_update", (e) => got.push(JSON.parse(e.data).text));
    await g.opened(es);
    await post(gw, "/api/v1/status", { conversation_id: "anything-1", category: "info", text: "seen" }, { authorization: `Bearer ${KEY_ALL}` });
    await g.waitFor(() => got.length === 1);
    es.close();
  });

  it("checks a long-poll session's token when it opens (403) and each join against it", async () => {
    let r = await (await fetch(`${gw.url}/socket/longpoll?vsn=2.0.0`)).json();
    assert.equal(r.status, 403); // phoenix.js stops there rather than retrying
    assert.equal(r.error.code, "unauthorized");
    r = await (await fetch(`${gw.url}/socket/longpoll?vsn=2.0.0&token=${jwt({ conversations: ["lp-*"] })}`)).json();
    assert.equal(r.status, 410);
    assert.match(r.token, /^lp_/);
    const s = g.socket(gw, { transport: LongPoll, params: { token: jwt({ conversations: ["lp-*"] }) } });
    const ok = await g.join(s.channel("status:lp-mine", { categories: ["*"] }));
    assert.equal(ok.conversation_id, "lp-mine");
    const refused = await g.join(s.channel("status:other", {})).catch((e) => e.reply);
    assert.equal(refused.reason, "unauthorized");
    s.disconnect();
    // the subprotocol form phoenix.js sends as X-Phoenix-AuthToken
    r = await (await fetch(`${gw.url}/socket/longpoll?vsn=2.0.0`, { headers: { "x-phoenix-authtoken": jwt({ admin: true }) } })).json();
    assert.equal(r.status, 410);
  });

  it("lets the gateway's own pages (the dashboard) act with the admin key, and reads every conversation with it", async () => {
    const own = { origin: gw.url, authorization: `Bearer ${ADMIN}` };
    let r = await fetch(`${gw.url}/admin/webhooks/nothing/redeliver`, { method: "POST", headers: own });
    assert.equal(r.status, 404); // past the origin checks: no such endpoint
    r = await fetch(`${gw.url}/admin/webhooks/nothing/redeliver`, { method: "POST", headers: { ...own, origin: "https://evil.example" } });
    assert.equal(r.status, 403);
    r = await fetch(`${gw.url}/api/v1/events?conversations=*&token=${ADMIN}`);
    assert.equal(r.status, 200);
    await r.body.cancel();
  });

  it("guards history by token or key, and admin endpoints by the admin key", async () => {
    await post(gw, "/api/v1/status", upd("hist-1"), { authorization: `Bearer ${KEY_ALL}` });
    assert.equal((await fetch(`${gw.url}/api/v1/conversations/hist-1/history`)).status, 401);
    assert.equal((await fetch(`${gw.url}/api/v1/conversations/hist-1/history?token=${jwt({ conversations: ["nope"] })}`)).status, 403);
    assert.equal((await fetch(`${gw.url}/api/v1/conversations/hist-1/history?token=${jwt({ conversations: ["hist-*"] })}`)).status, 200);
    assert.equal((await fetch(`${gw.url}/api/v1/conversations/hist-1/history`, { headers: { authorization: `Bearer ${KEY_ALL}` } })).status, 200);
    assert.equal((await fetch(`${gw.url}/api/v1/conversations`)).status, 401);
    assert.equal((await fetch(`${gw.url}/admin/plugins`)).status, 401);
    assert.equal((await fetch(`${gw.url}/admin/plugins`, { headers: { authorization: `Bearer ${KEY_ALL}` } })).status, 401);
    assert.equal((await fetch(`${gw.url}/admin/plugins`, { headers: { authorization: `Bearer ${ADMIN}` } })).status, 200);
    assert.equal((await fetch(`${gw.url}/admin/reload`, { method: "POST", headers: { authorization: `Bearer ${ADMIN}` } })).status, 200);
  });

  it("limits channels per socket", async () => {
    const { ws } = await wsOpen(gw, `&token=${jwt({ conversations: ["ch-*"] })}`);
    for (let i = 1; i <= 3; i++) assert.equal((await joinRaw(ws, `status:ch-${i}`)).status, "ok");
    const r = await joinRaw(ws, "status:ch-4");
    assert.equal(r.response.reason, "too_many_channels");
    ws.close();
  });

  it("enforces the Origin allow-list on WebSocket and SSE, and answers CORS for allowed origins", async () => {
    const t = jwt({ conversations: ["o-*"] });
    assert.equal((await wsOpen(gw, `&token=${t}`, { headers: { origin: "https://evil.example" } })).status, 403);
    const ok = await wsOpen(gw, `&token=${t}`, { headers: { origin: "https://app.example.com" } });
    assert.equal(ok.status, 101);
    ok.ws.close();
    const r = await fetch(`${gw.url}/api/v1/conversations/o-1/events?token=${t}`, { headers: { origin: "https://evil.example" } });
    assert.equal(r.status, 403);
    const pre = await fetch(`${gw.url}/api/v1/status`, { method: "OPTIONS", headers: { origin: "https://app.example.com" } });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get("access-control-allow-origin"), "https://app.example.com");
    assert.match(pre.headers.get("access-control-allow-headers"), /Authorization/);
    const p = await post(gw, "/api/v1/status", upd("o-1"), { authorization: `Bearer ${KEY_ALL}`, origin: "https://app.example.com" });
    assert.equal(p.headers.get("access-control-allow-origin"), "https://app.example.com");
    const q = await post(gw, "/api/v1/status", upd("o-1"), { authorization: `Bearer ${KEY_ALL}`, origin: "https://evil.example" });
    assert.equal(q.headers.get("access-control-allow-origin"), null);
  });
});

describe("connection limits", () => {
  it("refuses connections past max_connections_per_ip (429) and max_connections (503)", async () => {
    const gw = await g.start({ max_connections_per_ip: 3, max_connections: 5 });
    const socks = [];
    const open = () => g.withTimeout(new Promise((resolve) => {
      const s = net.connect(gw.port, "127.0.0.1", () => resolve(s));
      socks.push(s);
    }), 5000, "a connection");
    for (let i = 0; i < 3; i++) await open();
    const fourth = await open();
    const answer = await g.withTimeout(new Promise((resolve) => { let d = ""; fourth.on("data", (c) => (d += c)); fourth.on("close", () => resolve(d)); }), 5000, "the refusal");
    assert.match(answer, /^HTTP\/1\.1 429/);
    assert.match(answer, /too_many_connections_from_address/);
    for (const s of socks) s.destroy();
    await g.sleep(100);
    assert.match(g.logText(gw), /event=connection_refused peer=127\.0\.0\.1 reason=max_connections_per_ip/);
    assert.equal(await g.stop(gw), 0);

    const gw2 = await g.start({ max_connections: 2 });
    const conn = () => g.withTimeout(new Promise((r) => { const s = net.connect(gw2.port, "127.0.0.1", () => r(s)); }), 5000, "a connection");
    const a = await conn();
    const b = await conn();
    const c = net.connect(gw2.port, "127.0.0.1");
    const third = await g.withTimeout(new Promise((resolve) => { let d = ""; c.on("data", (x) => (d += x)); c.on("close", () => resolve(d)); }), 5000, "the refusal");
    assert.match(third, /^HTTP\/1\.1 503/);
    a.destroy(); b.destroy();
    await g.sleep(100);
    assert.equal(await g.stop(gw2), 0);
  });

  it("stays on loopback, and says so, when no keys are configured", async () => {
    const gw = await g.start({}, undefined, { host: "0.0.0.0" });
    const log = g.logText(gw);
    assert.match(log, /event=insecure_listen_refused requested=0\.0\.0\.0:\d+ listen=127\.0\.0\.1/);
    assert.match(log, /event=open_mode auth=none listen=loopback/);
    assert.match(log, /event=started .*listen=127\.0\.0\.1:/);
    assert.equal(await g.stop(gw), 0);
  });
});
