// Following conversations over Server-Sent Events, resuming across
// reconnects from the last event's id.

/** The gateway refused the stream (a 4xx other than 429): retrying would not help. */
export class TailRefused extends Error {}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Each SSE block of a stream of text chunks: { event, data, id }.
async function* sseBlocks(chunks) {
  let pending = "";
  let block = { event: "message", data: [], id: null };
  for await (const chunk of chunks) {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl).replace(/\r$/, "");
      pending = pending.slice(nl + 1);
      if (line === "") {
        if (block.data.length || block.id !== null) yield { ...block, data: block.data.join("\n") };
        block = { event: "message", data: [], id: null };
      } else if (!line.startsWith(":")) {
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        let value = at < 0 ? "" : line.slice(at + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") block.event = value;
        else if (field === "data") block.data.push(value);
        else if (field === "id") block.id = value;
      }
    }
  }
}

/**
 * Every update (and every gap) of the conversations, as { type, data, id }
 * with type "status_update" or "gap", for as long as the caller iterates or
 * until signal aborts. A dropped connection is reopened after reconnectMs
 * with the last event's id, so nothing is missed or seen twice while
 * history holds it; when it does not, a "gap" says what was missed.
 *
 *   for await (const ev of tail("http://127.0.0.1:4000", ["conv-123"])) console.log(ev.data.text);
 */
export async function* tail(url, conversations, { categories, token, lastEventId, reconnectMs = 1000, signal, logger = console } = {}) {
  const q = new URLSearchParams({ conversations: Array.isArray(conversations) ? conversations.join(",") : conversations });
  if (categories) q.set("categories", categories.join(","));
  if (token) q.set("token", token);
  const target = `${url.replace(/\/+$/, "")}/api/v1/events?${q}`;
  let position = lastEventId;
  while (!signal?.aborted) {
    try {
      const headers = { accept: "text/event-stream" };
      if (position) headers["last-event-id"] = position;
      const r = await fetch(target, { headers, signal });
      if (r.status !== 200) {
        const body = await r.text();
        if (r.status >= 400 && r.status < 500 && r.status !== 429) throw new TailRefused(`statusgw tail: ${r.status} ${body}`);
        throw new Error(`gateway answered ${r.status}`);
      }
      for await (const b of sseBlocks(r.body.pipeThrough(new TextDecoderStream()))) {
        if (b.id) position = b.id;
        if (b.event === "status_update" || b.event === "gap") yield { type: b.event, data: JSON.parse(b.data), id: b.id };
      }
    } catch (e) {
      if (signal?.aborted) return;
      if (e instanceof TailRefused) throw e;
      logger.info?.(`statusgw: tail reconnecting: error=${e.cause?.message || e.message}`);
    }
    await sleep(reconnectMs);
  }
}
