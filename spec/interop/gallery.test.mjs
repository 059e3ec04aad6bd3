// The plugin gallery (plugins/contrib) end to end: the real gateway loads
// the gallery from its plugins_dir's contrib folder, the config enables the
// forwarders and filters, and a real local receiver gets each destination's
// format, signed (checked with the standardwebhooks package), with the
// content type each destination expects.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import * as g from "./gateway.mjs";

const SECRET = "whsec_" + Buffer.from("statusgw-gallery-secret-0123456").toString("base64");
const FORMATS = ["slack", "discord", "teams", "pagerduty", "opsgenie", "cloudevents"];

async function receiver() {
  const got = {}; // path -> [{ body, headers, verified }]
  const server = await g.receiver((req, body, res) => {
    (got[req.url] ||= []).push({ body: JSON.parse(body), headers: req.headers, verified: g.signed(SECRET, body, req.headers) });
    res.writeHead(202);
    res.end();
  });
  return { server, got };
}

describe("the plugin gallery, end to end", () => {
  let gw, rx;
  before(async () => {
    rx = await receiver();
    const port = rx.server.address().port;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-gallery-"));
    fs.mkdirSync(path.join(dir, "contrib"));
    for (const f of fs.readdirSync("../../plugins/contrib")) {
      fs.copyFileSync(path.join("../../plugins/contrib", f), path.join(dir, "contrib", f)); // specs too: never loaded
    }
    const ep = (name, extra = {}) => ({ name, forwarder: name, url: `http://127.0.0.1:${port}/${name}`, secrets: [SECRET],
      conversations: "gal-team-*", batch_delay_ms: 100, ...extra });
    gw = await g.start({
      flush_interval_ms: 20,
      plugins_dir: dir,
      plugins: {
        slack: { enabled: true, title: "gallery" }, discord: { enabled: true }, teams: { enabled: true },
        pagerduty: { enabled: true, routing_key: "R0ABCDEF0123456789ABCDEF01234567" },
        opsgenie: { enabled: true, priority: "P2" }, cloudevents: { enabled: true },
        pii: { enabled: true }, route: { enabled: true, routes: [{ conversations: "gal-team-*", categories: ["error"], to: "gal-feed" }] },
      },
      webhooks: {
        retry_schedule_s: [0, 0.2],
        endpoints: [ep("slack"), ep("discord"), ep("teams"), ep("pagerduty", { batch_size: 1 }), ep("opsgenie", { batch_size: 1 }),
          ep("cloudevents")],
      },
    });
  });
  after(async () => {
    assert.equal(await g.stop(gw), 0);
    rx.server.close();
  });

  it("loads the gallery off until enabled, and never a spec", async () => {
    const admin = await (await fetch(`${gw.url}/admin/plugins`)).json();
    const state = Object.fromEntries(admin.plugins.map((p) => [p.name, p.state]));
    for (const name of [...FORMATS, "pii", "route"]) assert.equal(state[name], "active", name);
    for (const name of ["sampling", "dedupe", "tool_timing", "workflow_digest", "subscriber_filters"]) assert.equal(state[name], "off", name);
    assert.equal(admin.failed.length, 0, JSON.stringify(admin.failed));
    assert.ok(!admin.plugins.some((p) => /_spec\.lua$/.test(p.file)));
  });

  it("delivers each destination's format, signed", async () => {
    const r = await g.publishMany(gw, [
      { conversation_id: "gal-team-1", category: "tool", text: "Executing search_code", metadata: { tool: "search_code", duration_human: "1.5s" } },
      { conversation_id: "gal-team-1", category: "error", text: "search_code failed for ana@example.com", metadata: { error_type: "timeout" }, source: "tool-executor" },
      { conversation_id: "gal-team-1", category: "workflow", text: "Workflow deploy complete", metadata: { workflow: "deploy", percentage: 100 } },
    ]);
    assert.equal(r.status, 202);
    await g.waitFor(() => FORMATS.every((f) => rx.got["/" + f]) && (rx.got["/pagerduty"] || []).length >= 2, 10000, "every destination");
    for (const f of FORMATS) for (const m of rx.got["/" + f]) assert.ok(m.verified, f + " signed");

    const slack = rx.got["/slack"].flatMap((m) => m.body.blocks);
    assert.equal(slack[0].type, "header");
    assert.ok(slack.some((b) => b.type === "section" && b.text.text.includes("*error* · `gal-team-1` search_code failed for [email]")),
      "the pii filter ran before the forwarder");
    const embeds = rx.got["/discord"].flatMap((m) => m.body.embeds);
    assert.ok(embeds.some((e) => e.title === "error · gal-team-1" && e.color === 0xE01E5A));
    const card = rx.got["/teams"][0].body.attachments[0];
    assert.equal(card.contentType, "application/vnd.microsoft.card.adaptive");
    assert.equal(card.content.type, "AdaptiveCard");
    const pd = rx.got["/pagerduty"].map((m) => m.body);
    assert.deepEqual(pd.map((e) => [e.event_action, e.dedup_key]), [["trigger", "statusgw-gal-team-1"], ["resolve", "statusgw-gal-team-1"]]);
    assert.equal(pd[0].payload.severity, "error");
    const og = rx.got["/opsgenie"][0].body;
    assert.deepEqual([og.alias, og.priority, og.message], ["statusgw-gal-team-1", "P2", "search_code failed for [email]"]);
    const ce = rx.got["/cloudevents"];
    assert.equal(ce[0].headers["content-type"], "application/cloudevents-batch+json");
    const events = ce.flatMap((m) => m.body);
    assert.deepEqual(events.slice(0, 3).map((e) => [e.specversion, e.id, e.type]),
      [["1.0", "gal-team-1:1", "io.statusgw.status.tool"], ["1.0", "gal-team-1:2", "io.statusgw.status.error"],
        ["1.0", "gal-team-1:3", "io.statusgw.status.workflow"]]);
  });

  it("routes a copy onto the team's feed, through the filters", async () => {
    await g.waitFor(async () => (await fetch(`${gw.url}/api/v1/conversations/gal-feed/history`)).status === 200, 5000, "the feed");
    const h = await (await fetch(`${gw.url}/api/v1/conversations/gal-feed/history`)).json();
    assert.equal(h.updates.length, 1);
    assert.deepEqual([h.updates[0].text, h.updates[0].metadata.routed_from], ["search_code failed for [email]", "gal-team-1"]);
  });
});

describe("the gallery's filters, aggregators and subscriber filters in the gateway", () => {
  let gw;
  before(async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "statusgw-gallery-f-"));
    fs.mkdirSync(path.join(dir, "contrib"));
    for (const f of ["sampling.lua", "dedupe.lua", "tool_timing.lua", "subscriber_filters.lua"])
      fs.copyFileSync(path.join("../../plugins/contrib", f), path.join(dir, "contrib", f));
    gw = await g.start({
      flush_interval_ms: 20,
      plugins_dir: dir,
      plugins: {
        sampling: { enabled: true, every: 3, categories: ["progress"] },
        dedupe: { enabled: true, window_ms: 60000, categories: ["info"] },
        tool_timing: { enabled: true, interval_ms: 300 },
        subscriber_filters: { enabled: true },
      },
    });
  });
  after(async () => {
    g.disconnectAll();
    assert.equal(await g.stop(gw), 0);
  });

  it("samples, deduplicates, summarizes tool timings, and filters per subscriber", async () => {
    const s = g.socket(gw);
    const slow = [];
    const ch = s.channel("status:gal-f-1", { categories: ["*"], filter: { name: "min_duration", args: { ms: 1000 } } });
    ch.on("status_update", (u) => slow.push(u.text));
    await g.join(ch);
    const bad = s.channel("status:gal-f-2", { categories: ["*"], filter: { name: "text_matches", args: { pattern: "" } } });
    await assert.rejects(g.join(bad), /invalid_filter/);

    const r = await g.publishMany(gw, [
      ...[1, 2, 3, 4, 5, 6].map((i) => ({ conversation_id: "gal-f-1", category: "progress", text: `p${i}` })),
      { conversation_id: "gal-f-1", category: "info", text: "Heartbeat" },
      { conversation_id: "gal-f-1", category: "info", text: "Heartbeat" },
      { conversation_id: "gal-f-1", category: "tool", text: "fast", metadata: { tool: "search_code", duration_ms: 40 } },
      { conversation_id: "gal-f-1", category: "tool", text: "slow", metadata: { tool: "search_code", duration_ms: 2500 } },
    ]);
    assert.equal(r.status, 202);
    assert.deepEqual(r.body.results.map((x) => x.dropped_by || "kept"),
      ["kept", "sampling", "sampling", "kept", "sampling", "sampling", "kept", "dedupe", "kept", "kept"]);

    await g.waitFor(async () => {
      const h = await (await fetch(`${gw.url}/api/v1/conversations/gal-f-1/history`)).json();
      return h.updates.some((u) => u.category === "summary");
    }, 5000, "the tool_timing summary");
    const h = await (await fetch(`${gw.url}/api/v1/conversations/gal-f-1/history`)).json();
    const summary = h.updates.find((u) => u.category === "summary");
    assert.equal(summary.text, "1 tool: search_code 2 runs p50 40ms p95 2.5s");
    assert.equal(summary.source, "tool_timing");
    assert.deepEqual(h.updates.filter((u) => u.category !== "summary").map((u) => u.text), ["p1", "p4", "Heartbeat", "fast", "slow"]);
    await g.waitFor(() => slow.length >= 1, 5000, "the slow update");
    await g.sleep(100);
    assert.deepEqual(slow, ["slow"]);
  });
});
