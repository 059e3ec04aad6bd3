// The real statusgw on a free port, for the client's tests.
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
const BIN = path.resolve(process.env.STATUSGW_BIN || path.join(root, "build/statusgw"));

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer().on("error", reject).listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export async function waitUntil(cond, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error("timed out");
    await sleep(20);
  }
}

const lua = (v) => typeof v === "string" ? JSON.stringify(v)
  : typeof v === "object" ? "{" + Object.entries(v).map(([k, x]) => `[${JSON.stringify(k)}] = ${lua(x)}`).join(", ") + "}"
  : String(v);

// new Gateway(config, plugins).start(): plugins are names of the
// repository's plugins (copied) or [name, source] pairs.
export class Gateway {
  constructor(config = {}, plugins = [], port = 0) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-node-"));
    this.port = port;
    const plugdir = path.join(this.dir, "plugins");
    fs.mkdirSync(plugdir);
    for (const p of plugins) {
      if (Array.isArray(p)) fs.writeFileSync(path.join(plugdir, `${p[0]}.lua`), p[1]);
      else fs.copyFileSync(path.join(root, "plugins", `${p}.lua`), path.join(plugdir, `${p}.lua`));
    }
    this.config = path.join(this.dir, "statusgw.lua");
    const cfg = { plugins_dir: plugdir, ...config };
    fs.writeFileSync(this.config, "return {\n" + Object.entries(cfg).map(([k, v]) => `  ${k} = ${lua(v)},\n`).join("") + "}\n");
  }

  get url() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    this.port ||= await freePort();
    const log = fs.openSync(path.join(this.dir, "statusgw.log"), "a");
    this.proc = spawn(BIN, ["--config", this.config, "--listen", `127.0.0.1:${this.port}`], { stdio: ["ignore", "ignore", log] });
    fs.closeSync(log);
    this.exited = new Promise((resolve) => this.proc.on("exit", resolve));
    try {
      await waitUntil(async () => (await fetch(`${this.url}/healthz`).catch(() => null))?.ok);
    } catch {
      this.proc.kill("SIGKILL");
      throw new Error("statusgw did not start: " + this.log());
    }
    return this;
  }

  log() { return fs.readFileSync(path.join(this.dir, "statusgw.log"), "utf8"); }

  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill("SIGTERM");
      const t = setTimeout(() => this.proc.kill("SIGKILL"), 10000);
      await this.exited;
      clearTimeout(t);
    }
    if (/AddressSanitizer|LeakSanitizer|runtime error:/.test(this.log())) throw new Error("sanitizer report:\n" + this.log());
  }

  async post(p, body) {
    const r = await fetch(this.url + p, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    return { status: r.status, body: await r.json() };
  }

  async history(conv) {
    const r = await fetch(`${this.url}/api/v1/conversations/${conv}/history`);
    return r.status === 200 ? (await r.json()).updates : [];
  }
}

// Forwards to the gateway, but for the first `lose` requests closes the
// client's connection once the gateway has answered instead of passing the
// answer on: the updates are taken, the client cannot know it.
export async function lostAnswerProxy(target, lose = 1) {
  const proxy = { requests: 0 };
  const open = new Set();
  const server = net.createServer((c) => {
    open.add(c);
    c.on("close", () => open.delete(c));
    const up = net.connect(target, "127.0.0.1");
    c.pipe(up);
    up.on("data", (answer) => {
      if (++proxy.requests <= lose) { c.destroy(); up.destroy(); } else c.write(answer);
    });
    c.on("error", () => up.destroy());
    up.on("error", () => c.destroy());
    c.on("close", () => up.destroy());
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  proxy.url = `http://127.0.0.1:${server.address().port}`;
  proxy.close = () => { server.close(); for (const c of open) c.destroy(); };
  return proxy;
}
