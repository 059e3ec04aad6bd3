// Compiled by types.test.mjs against index.d.ts: how a TypeScript service uses the client.
import { Client, buildToolMetadata, tail, type ClientStats, type TailEvent } from "statusgw";

const status = new Client({ url: "http://127.0.0.1:4000", source: "tools", onDrop: (n: number) => void n });
const started = performance.now();
const queued: boolean = status.tool("conv-1", "Executing search_code", buildToolMetadata("search_code", { q: "foo" }));
status.withTiming("conv-1", "tool", "search_code done", started, { output_bytes: 120 });
status.progressPercentage("conv-1", "Indexing", 3, 10);
const n: number = status.bulkUpdate("conv-1", [{ category: "info", text: "a" }, ["planning", "b", { step: 2 }]]);
status.maybeUpdate(undefined, true, "info", "skipped");
const stats: ClientStats = status.stats();
export async function follow(): Promise<number> {
  let seen = 0;
  for await (const ev of tail("http://127.0.0.1:4000", ["conv-1"], { categories: ["tool"] })) {
    const e: TailEvent = ev;
    if (e.type === "status_update") seen += e.data.seq ?? 0;
  }
  await status.flush(1000);
  return seen + n + stats.sent + (queued ? 1 : 0) + ((await status.close()) ? 1 : 0);
}
// @ts-expect-error: the conversation comes first, then the text
status.info("Processing", 3);
