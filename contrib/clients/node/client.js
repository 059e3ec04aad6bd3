// The fire-and-forget client: a bounded buffer that a background loop sends
// to /api/v1/status/bulk.
import crypto from "node:crypto";
import { progressMetadata, timingMetadata } from "./metadata.js";

export const CATEGORIES = ["engine", "tool", "workflow", "progress", "error", "info", "planning"];
const RETRY_MAX_MS = 5000; // the longest pause between attempts without a Retry-After

// Clients with updates to send when the process is about to exit: one
// beforeExit listener for all of them (one each would warn past ten).
const open = new Set();
let listening = false;
function atExit(client) {
  open.add(client);
  if (listening) return;
  listening = true;
  process.on("beforeExit", () => { for (const c of open) c.onBeforeExit(); });
}

/**
 * Status updates to a statusgw gateway, fire and forget.
 *
 *   const status = new Client({ url: "http://127.0.0.1:4000", source: "llm-service" });
 *   status.info("conv-123", "Processing complete", { items: 100 });
 *   await status.close(); // at shutdown: sends what is queued, within a deadline
 *
 * Every call returns at once and never throws: the update goes into a
 * bounded buffer (bufferSize) sent in requests of batchSize, or after
 * flushIntervalMs. 429 and 503 are retried after their Retry-After, an
 * unreachable gateway with backoff; each update carries an idempotency key,
 * so a retry is never delivered twice. Updates that find the buffer full
 * are dropped and counted (stats().dropped, a log line, onDrop(total)).
 */
export class Client {
  #buf = [];
  #inflight = 0;
  #closed = false;
  #running = false;
  #timer = null;
  #flushing = 0;
  #abort = false;
  #waiters = new Set();
  #prefix = crypto.randomBytes(8).toString("hex");
  #n = 0;
  #backoff = 0;
  #limit;
  #down = false;
  #lastDropLog = 0;
  #wakePause = null;

  constructor({ url = process.env.STATUSGW_URL || "http://127.0.0.1:4000", apiKey = process.env.STATUSGW_API_KEY,
    source, bufferSize = 10000, batchSize = 100, flushIntervalMs = 100, requestTimeoutMs = 5000,
    onDrop, logger = console } = {}) {
    this.url = url.replace(/\/+$/, "");
    Object.assign(this, { apiKey, source, bufferSize, flushIntervalMs, requestTimeoutMs, onDrop, logger });
    this.batchSize = Math.max(1, Math.min(batchSize, 1000));
    this.#limit = this.batchSize;
    this.counters = { queued: 0, sent: 0, duplicates: 0, filtered: 0, dropped: 0, rejected: 0, retried: 0, unsent: 0 };
    atExit(this); // a process about to exit with updates queued sends them first
  }

  /** @internal the process is about to exit: send what is queued. */
  onBeforeExit() {
    if (this.#buf.length && !this.#closed) this.close();
  }

  /** Queue one update; false when it was dropped (buffer full, closed). */
  update(conversationId, category, text, metadata) {
    try {
      const u = { conversation_id: conversationId, category, text, idempotency_key: `${this.#prefix}-${++this.#n}` };
      if (metadata && Object.keys(metadata).length) u.metadata = metadata;
      if (this.source) u.source = this.source;
      return this.#put(JSON.stringify(u));
    } catch (e) { // a status call never throws into its caller
      this.logger.error(`statusgw: update not queued: ${e.message}`);
      return false;
    }
  }

  engine(c, text, md) { return this.update(c, "engine", text, md); }
  tool(c, text, md) { return this.update(c, "tool", text, md); }
  workflow(c, text, md) { return this.update(c, "workflow", text, md); }
  progress(c, text, md) { return this.update(c, "progress", text, md); }
  error(c, text, md) { return this.update(c, "error", text, md); }
  info(c, text, md) { return this.update(c, "info", text, md); }
  planning(c, text, md) { return this.update(c, "planning", text, md); }

  /** An update with duration_ms and duration_human since start, a performance.now() reading. */
  withTiming(conversationId, category, text, start, metadata) {
    try {
      return this.update(conversationId, category, text, timingMetadata(performance.now() - start, metadata));
    } catch (e) {
      this.logger.error(`statusgw: withTiming not queued: ${e.message}`);
      return false;
    }
  }

  /** A progress update: current, total, percentage, progress "c/t", the text with " (30%)". */
  progressPercentage(conversationId, text, current, total, metadata) {
    try {
      const [md, t] = progressMetadata(text, current, total, metadata);
      return this.update(conversationId, "progress", t, md);
    } catch (e) {
      this.logger.error(`statusgw: progressPercentage not queued: ${e.message}`);
      return false;
    }
  }

  /** Queue several updates ({category, text, metadata} or [category, text, metadata]); the number queued. */
  bulkUpdate(conversationId, updates) {
    let n = 0;
    for (const u of updates) {
      const ok = Array.isArray(u) ? this.update(conversationId, ...u) : this.update(conversationId, u.category, u.text, u.metadata);
      if (ok) n++;
    }
    return n;
  }

  /** update() when condition holds and there is a conversation. */
  maybeUpdate(conversationId, condition, category, text, metadata) {
    if (!condition || conversationId == null) return false;
    return this.update(conversationId, category, text, metadata);
  }

  /** The counters, and what is queued now. */
  stats() {
    return { ...this.counters, queued: this.#buf.length + this.#inflight };
  }

  /** Resolves true once everything queued so far is answered, false after timeoutMs. */
  async flush(timeoutMs = 5000) {
    if (this.#idle()) return true;
    this.#flushing++;
    this.#schedule();
    let waiter, timer;
    // the deadline's timer holds the process open while a flush waits
    const ok = await new Promise((resolve) => {
      waiter = () => resolve(true);
      this.#waiters.add(waiter);
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    clearTimeout(timer);
    this.#waiters.delete(waiter);
    this.#flushing--;
    return ok;
  }

  /** Stop taking updates and send what is queued within timeoutMs; true when nothing was left unsent. */
  async close(timeoutMs = 5000) {
    this.#closed = true;
    open.delete(this);
    const drained = await this.flush(timeoutMs);
    if (!drained) {
      this.#abort = true;
      this.#wakePause?.();
      this.#giveUp();
    }
    return drained;
  }

  // A wait before the next attempt, cut short by a close that gives up;
  // it holds the process open only while a flush waits.
  #pause(ms) {
    return new Promise((resolve) => {
      const t = setTimeout(() => { this.#wakePause = null; resolve(); }, ms);
      if (!this.#flushing) t.unref();
      this.#wakePause = () => { clearTimeout(t); this.#wakePause = null; resolve(); };
    });
  }

  #idle() { return this.#buf.length === 0 && this.#inflight === 0; }

  #put(item) {
    if (this.#closed || this.#buf.length + this.#inflight >= this.bufferSize) {
      this.#dropped();
      return false;
    }
    this.#buf.push(item);
    this.counters.queued++;
    this.#schedule();
    return true;
  }

  #dropped() {
    const total = ++this.counters.dropped;
    if (Date.now() - this.#lastDropLog >= 5000) {
      this.#lastDropLog = Date.now();
      this.logger.warn(`statusgw: buffer full or client closed: dropped=${total} (capacity=${this.bufferSize})`);
    }
    try { this.onDrop?.(total); } catch (e) { this.logger.error(`statusgw: onDrop threw: ${e.message}`); }
  }

  // Send now when a batch is full (or a flush waits), else after the interval.
  #schedule() {
    if (this.#running || this.#buf.length === 0) return;
    if (this.#buf.length >= this.#limit || this.#flushing || this.#closed) {
      clearTimeout(this.#timer);
      this.#timer = null;
      this.#run();
    } else if (!this.#timer) {
      this.#timer = setTimeout(() => { this.#timer = null; this.#run(); }, this.flushIntervalMs);
      this.#timer.unref();
    }
  }

  async #run() {
    this.#running = true;
    while (this.#buf.length && !this.#abort) {
      const batch = this.#buf.splice(0, this.#limit);
      this.#inflight += batch.length;
      const answer = await this.#send(batch);
      const { retry, delayMs } = this.#settle(batch, answer);
      this.#buf.unshift(...retry);
      if (this.#idle()) break;
      if (retry.length && delayMs > 0) await this.#pause(delayMs);
      if (!this.#flushing && !this.#closed && this.#buf.length < this.#limit) break; // the interval decides
    }
    this.#running = false;
    if (this.#abort) this.#giveUp();
    if (this.#idle()) for (const w of this.#waiters) w();
    else if (!this.#abort) this.#schedule();
  }

  async #send(batch) {
    const headers = { "content-type": "application/json", "user-agent": "statusgw-node" };
    if (this.apiKey) headers.authorization = `Bearer ${this.apiKey}`;
    try {
      const r = await fetch(`${this.url}/api/v1/status/bulk`, {
        method: "POST", headers, body: `[${batch.join(",")}]`, signal: AbortSignal.timeout(this.requestTimeoutMs),
      });
      return { status: r.status, retryAfter: r.headers.get("retry-after"), body: await r.text() };
    } catch (e) {
      return { status: null, body: String(e.cause?.message || e.message) };
    }
  }

  // What an answer means for each update of the batch: { retry, delayMs }.
  // No answer (refused, lost) sends every update again: their idempotency
  // keys make a second delivery impossible.
  #settle(batch, { status, retryAfter, body }) {
    this.#inflight -= batch.length;
    if ((status === null) !== this.#down) {
      this.#down = status === null;
      if (this.#down) this.logger.warn(`statusgw: gateway unreachable, updates kept and retried: url=${this.url} error=${body}`);
      else this.logger.info?.(`statusgw: gateway reachable again: url=${this.url}`);
    }
    if (status === 202) {
      this.#backoff = 0;
      return this.#results(batch, body);
    }
    if (status === null || status >= 500 || status === 408 || status === 429) {
      let delayMs = retryAfterMs(retryAfter, body);
      if (delayMs === null) {
        this.#backoff = Math.min(RETRY_MAX_MS, Math.max(100, this.#backoff * 2));
        delayMs = this.#backoff * (0.5 + Math.random() / 2);
      }
      this.counters.retried += batch.length;
      return { retry: batch, delayMs };
    }
    if (status === 413 && batch.length > 1) { // too large together: smaller requests from now on
      this.#limit = Math.max(1, batch.length >> 1);
      return { retry: batch, delayMs: 0 };
    }
    this.counters.rejected += batch.length;
    this.logger.warn(`statusgw: gateway refused ${batch.length} updates: status=${status} ${errorText(body)}`);
    return { retry: [], delayMs: 0 };
  }

  #results(batch, body) {
    let results;
    try { results = JSON.parse(body).results; } catch { results = null; }
    if (!Array.isArray(results)) {
      this.counters.sent += batch.length;
      return { retry: [], delayMs: 0 };
    }
    const retry = [];
    let delayMs = 0;
    batch.forEach((item, i) => {
      const r = results[i] || {};
      if (!r.error) {
        this.counters[r.dropped ? "filtered" : r.duplicate ? "duplicates" : "sent"]++;
      } else if (r.error.retry_after != null) {
        retry.push(item);
        delayMs = Math.max(delayMs, Number(r.error.retry_after) * 1000);
      } else {
        this.counters.rejected++;
        this.logger.warn(`statusgw: update refused: ${r.error.code}: ${r.error.message}`);
      }
    });
    this.counters.retried += retry.length;
    return { retry, delayMs };
  }

  #giveUp() {
    const n = this.#buf.length;
    this.#buf.length = 0;
    if (n) {
      this.counters.unsent += n;
      this.logger.warn(`statusgw: closed with updates unsent: unsent=${n}`);
    }
  }
}

function retryAfterMs(header, body) {
  if (header != null && !Number.isNaN(Number(header))) return Math.max(0, Number(header) * 1000);
  try {
    const s = JSON.parse(body).error.retry_after;
    return s == null ? null : Number(s) * 1000;
  } catch { return null; }
}

function errorText(body) {
  try {
    const e = JSON.parse(body).error;
    return `${e.code}: ${e.message}`;
  } catch { return String(body).slice(0, 200); }
}
