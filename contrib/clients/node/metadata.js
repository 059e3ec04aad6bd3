// The metadata builders of the Status API, computed in the producer. They
// give the same metadata as the gateway's `builders` plugin: the caller's
// own keys are merged over the built ones, except the computed timing and
// progress keys, and every built metadata gets a `timestamp` unless the
// caller gave one.

const MAX_PARAM = 100; // bytes of a tool parameter's string value before it is cut
const COMPUTED = new Set(["duration_ms", "duration_human", "percentage", "progress"]);

function merge(built, extra) {
  for (const [k, v] of Object.entries(extra || {})) {
    if (COMPUTED.has(k) && k in built) continue;
    built[k] = v;
  }
  if (!("timestamp" in built)) built.timestamp = new Date().toISOString();
  return built;
}

/** Whole-number percentage of done/total; 0 when total is 0 or less. */
export function percentage(done, total) {
  if (typeof done !== "number" || typeof total !== "number" || total <= 0) return 0;
  return Math.floor((done * 100) / total + 0.5);
}

// x with one decimal as C's "%.1f" writes it (the gateway's builders):
// the double's exact value rounded, ties to even. toFixed rounds ties up,
// so the digits come from its exact expansion (a double under 2^53 has at
// most 52 fractional digits) and are rounded here.
function fixed1(x) {
  const [whole, frac] = x.toFixed(60).split(".");
  let tenths = Number(whole) * 10 + Number(frac[0]);
  const rest = frac.slice(1);
  const above = rest[0] > "5" || (rest[0] === "5" && /[1-9]/.test(rest.slice(1)));
  const tie = rest[0] === "5" && !above;
  if (above || (tie && tenths % 2 === 1)) tenths += 1;
  return `${Math.floor(tenths / 10)}.${tenths % 10}`;
}

/** "850ms" under a second, "1.5s" under a minute, "1.1m" beyond. */
export function durationHuman(ms) {
  if (ms < 1000) return `${Math.floor(ms)}ms`;
  if (ms < 60000) return `${fixed1(ms / 1000)}s`;
  return `${fixed1(ms / 60000)}m`;
}

function cut(s) {
  const b = Buffer.from(s, "utf8");
  if (b.length <= MAX_PARAM) return s;
  let n = MAX_PARAM;
  while (n > 0 && (b[n] & 0xc0) === 0x80) n--;
  return b.subarray(0, n).toString("utf8") + "...";
}

export function buildLlmMetadata(model, provider, extra) {
  return merge({ model, provider }, extra);
}

export function buildToolMetadata(toolName, params, extra) {
  if (params && typeof params === "object" && !Array.isArray(params)) {
    params = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, typeof v === "string" ? cut(v) : v]));
  }
  return merge({ tool: toolName, params: params ?? null }, extra);
}

export function buildWorkflowMetadata(workflowName, completedSteps = 0, totalSteps = 0, extra) {
  return merge({
    workflow: workflowName,
    progress: `${completedSteps}/${totalSteps}`,
    percentage: percentage(completedSteps, totalSteps),
  }, extra);
}

export function buildErrorMetadata(errorType, message, extra) {
  return merge({ error_type: errorType, message }, extra);
}

/** duration_ms and duration_human for a duration in milliseconds. */
export function timingMetadata(durationMs, extra) {
  const ms = Math.max(0, Math.floor(durationMs));
  return merge({ duration_ms: ms, duration_human: durationHuman(ms) }, extra);
}

/** [metadata, text]: current, total, percentage, progress "c/t"; the text gets " (30%)". */
export function progressMetadata(text, current, total, extra) {
  const pct = percentage(current, total);
  return [merge({ current, total, percentage: pct, progress: `${current}/${total}` }, extra),
    `${text ?? ""} (${pct}%)`];
}
