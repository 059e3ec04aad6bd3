// statusgw: fire-and-forget status updates for a statusgw gateway, with the
// Status API of the system statusgw grew from, and a tail over SSE.
export { Client, CATEGORIES } from "./client.js";
export { tail, TailRefused } from "./tail.js";
export {
  buildErrorMetadata, buildLlmMetadata, buildToolMetadata, buildWorkflowMetadata,
  durationHuman, percentage, progressMetadata, timingMetadata,
} from "./metadata.js";
