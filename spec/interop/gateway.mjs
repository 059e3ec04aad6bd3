// Start the real statusgw on a free port with a temporary config, and drive
// it with the real phoenix client (ws as its transport) and real HTTP.
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Socket } from "phoenix";
import { Webhook } from "standardwebhooks";
import WebSocket from "ws";

const BIN = path.resolve(process.env.STATUSGW_BIN || "../../build/statusgw");

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// p, or a failure after ms: no wait in these specs is unbounded.
export function withTimeout(p, ms, what) {
  let t;
  const limit = new Promise((_, reject) => { t = setTimeout(() => reject(new Error("timed out waiting for " + what)), ms); });
  return Promise.race([p, limit]).finally(() => clearTimeout(t));
}

// An EventSource's first open, within 5 s.
export function opened(es, ms = 5000) {
  return withTimeout(new Promise((res) => { es.onopen = res; }), ms, "the event stream to open");
}

function luaValue(v) {
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return "{" + v.map(luaValue).join(", ") + "}";
  if (typeof v === "object") return "{" + Object.entries(v).map(([k, x]) => `[${JSON.stringify(k)}] = ${luaValue(x)}`).join(", ") + "}";
  return String(v);
}

// Start a gateway; resolves once /healthz answers. port: reuse one (restart).
// configFile: start on that file (the shipped config) instead of config.
export async function start(config = {}, port, { host = "127.0.0.1", configFile } = {}) {
  port = port || (await freePort());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-"));
  let cfg = path.join(dir, "statusgw.lua");
  if (configFile) {
    cfg = path.resolve(configFile);
  } else {
    if (config.plugins_dir === undefined) { // no plugins unless a spec asks for them
      fs.mkdirSync(path.join(dir, "plugins"));
      config = { ...config, plugins_dir: path.join(dir, "plugins") };
    }
    // STATUSGW_STORE=sqlite: the durable store, a file of its own (scripts/test)
    if (config.store === undefined && process.env.STATUSGW_STORE === "sqlite")
      config = { ...config, store: "sqlite", store_path: path.join(dir, "statusgw.db") };
    // STATUSGW_REDIS=host:port: the Redis engine on that Redis (scripts/test),
    // each gateway a cluster of its own (a prefix of its own), as each
    // gets a store of its own above
    if (config.engine === undefined && config.store === undefined && process.env.STATUSGW_REDIS)
      config = { ...config, engine: "redis", redis: { addresses: [process.env.STATUSGW_REDIS], prefix: `sg${path.basename(dir)}:` } };
    // STATUSGW_STORE_DELAY_MS: a store that answers late (scripts/test)
    if (config.store_delay_ms === undefined && process.env.STATUSGW_STORE_DELAY_MS)
      config = { ...config, store_delay_ms: Number(process.env.STATUSGW_STORE_DELAY_MS) };
    fs.writeFileSync(cfg, "return {\n" + Object.entries(config).map(([k, v]) => `  ${k} = ${luaValue(v)},`).join("\n") + "\n}\n");
  }
  const log = fs.openSync(path.join(dir, "statusgw.log"), "a");
  const proc = spawn(BIN, ["--config", cfg, "--listen", `${host}:${port}`], { stdio: ["ignore", "ignore", log] });
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve(code ?? signal)));
  const gw = { port, dir, proc, exited, url: `http://127.0.0.1:${port}`, config };
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) // gone already: say why at once
      throw Object.assign(new Error(`statusgw exited with status ${proc.exitCode}: ` + logText(gw)), { status: proc.exitCode });
    try {
      const r = await fetch(`${gw.url}/healthz`);
      if (r.ok) return gw;
    } catch {}
    await sleep(30);
  }
  throw new Error("statusgw did not start: " + logText(gw));
}

export function logText(gw) {
  return fs.readFileSync(path.join(gw.dir, "statusgw.log"), "utf8");
}

// SIGTERM, and the exit code (0 expected).
export async function stop(gw) {
  if (gw.proc.exitCode === null) gw.proc.kill("SIGTERM");
  const code = await Promise.race([gw.exited, sleep(10000).then(() => "timeout")]);
  const log = logText(gw);
  if (/AddressSanitizer|LeakSanitizer|runtime error:/.test(log)) throw new Error("sanitizer report:\n" + log);
  return code;
}

export async function publish(gw, update) {
  const r = await fetch(`${gw.url}/api/v1/status`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(update),
  });
  return { status: r.status, body: await r.json() };
}

export async function publishMany(gw, updates) {
  const r = await fetch(`${gw.url}/api/v1/status/bulk`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(updates),
  });
  return { status: r.status, body: await r.json() };
}

const sockets = [];

// Disconnect every socket a spec opened, so none keeps reconnecting.
export function disconnectAll() {
  while (sockets.length) sockets.pop().disconnect();
}

export function socket(gw, opts = {}) {
  const s = new Socket(`ws://127.0.0.1:${gw.port}/socket`, {
    transport: WebSocket, reconnectAfterMs: () => 100, rejoinAfterMs: () => 100, ...opts,
  });
  s.connect();
  sockets.push(s);
  return s;
}

// Join; resolves with the ok reply, rejects with the error reply.
export function join(channel, timeout = 5000) {
  return new Promise((resolve, reject) => {
    channel.join(timeout)
      .receive("ok", resolve)
      .receive("error", (e) => reject(Object.assign(new Error("join refused: " + JSON.stringify(e)), { reply: e })))
      .receive("timeout", () => reject(new Error("join timed out")));
  });
}

// Push an event; resolves with {status, response}.
export function push(channel, event, payload = {}, timeout = 5000) {
  return new Promise((resolve, reject) => {
    channel.push(event, payload, timeout)
      .receive("ok", (response) => resolve({ status: "ok", response }))
      .receive("error", (response) => resolve({ status: "error", response }))
      .receive("timeout", () => reject(new Error(event + " timed out")));
  });
}

// Resolves once predicate() is true; rejects after timeout ms.
export async function waitFor(predicate, timeout = 5000, what = "condition") {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (await predicate()) return;
    await sleep(10);
  }
  throw new Error("timed out waiting for " + what);
}

export function conv(name) {
  return `${name}-${Math.floor(Math.random() * 1e9)}`;
}

// A real redis-server on a free port (no persistence unless asked), with
// its own directory; resolves once it answers PING.
export async function startRedis({ port, dir, persist = false, args: extra = [] } = {}) {
  port = port || (await freePort());
  dir = dir || fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-redis-"));
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--dir", dir,
    "--appendonly", persist ? "yes" : "no", "--appendfsync", "always", "--logfile", path.join(dir, "redis.log"), ...extra];
  const proc = spawn("redis-server", args, { stdio: "ignore" });
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve(code ?? signal)));
  const r = { port, dir, proc, exited, addr: `127.0.0.1:${port}` };
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    try {
      if ((await redis(r, "PING")) === "PONG") return r;
    } catch {}
    await sleep(30);
  }
  proc.kill("SIGKILL");
  throw new Error("redis-server did not start on port " + port);
}

export async function stopRedis(r) {
  if (r.proc.exitCode !== null || r.proc.signalCode !== null) return;
  r.proc.kill("SIGTERM");
  const code = await Promise.race([r.exited, sleep(5000).then(() => "timeout")]);
  if (code === "timeout") {
    r.proc.kill("SIGKILL");
    await r.exited;
  }
}

// One command over RESP; resolves with the reply (arrays as arrays, errors rejected).
export function redis(r, ...args) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(r.port, "127.0.0.1");
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => { sock.destroy(); reject(new Error("redis: no answer to " + args[0])); }, 3000);
    sock.on("error", (e) => { clearTimeout(timer); reject(e); });
    sock.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      const v = parseResp(buf, 0);
      if (!v) return;
      clearTimeout(timer);
      sock.end();
      if (v.value instanceof Error) reject(v.value); else resolve(v.value);
    });
    sock.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join(""));
  });
}

function parseResp(b, i) {
  const nl = b.indexOf("\r\n", i);
  if (nl < 0) return null;
  const t = String.fromCharCode(b[i]), line = b.toString("utf8", i + 1, nl);
  if (t === "+") return { value: line, next: nl + 2 };
  if (t === "-") return { value: new Error(line), next: nl + 2 };
  if (t === ":") return { value: Number(line), next: nl + 2 };
  if (t === "$") {
    const n = Number(line);
    if (n < 0) return { value: null, next: nl + 2 };
    if (b.length < nl + 2 + n + 2) return null;
    return { value: b.toString("utf8", nl + 2, nl + 2 + n), next: nl + 2 + n + 2 };
  }
  if (t === "*") {
    const n = Number(line), out = [];
    let j = nl + 2;
    for (let k = 0; k < n; k++) {
      const v = parseResp(b, j);
      if (!v) return null;
      out.push(v.value);
      j = v.next;
    }
    return { value: n < 0 ? null : out, next: j };
  }
  return { value: new Error("bad RESP"), next: b.length };
}

// A webhook receiver on 127.0.0.1 (port 0: any free one), listening once
// it resolves: each request's body is read whole and handed to
// onRequest(req, body, res), which answers (or keeps res, to hang).
export function receiver(onRequest, port = 0) {
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => onRequest(req, body, res));
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

// Whether body carries a valid Standard Webhooks signature for secret
// (checked by the standardwebhooks package).
export function signed(secret, body, headers) {
  try {
    new Webhook(secret).verify(body, headers);
    return true;
  } catch {
    return false;
  }
}
