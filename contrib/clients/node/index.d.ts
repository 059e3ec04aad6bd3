export type Category = "engine" | "tool" | "workflow" | "progress" | "error" | "info" | "planning" | (string & {});
export type Metadata = Record<string, unknown>;

export interface ClientOptions {
  /** Default: $STATUSGW_URL, else http://127.0.0.1:4000 */
  url?: string;
  /** Sent as Authorization: Bearer. Default: $STATUSGW_API_KEY */
  apiKey?: string;
  /** The producer's name, set on every update. */
  source?: string;
  /** Updates held at most; more are dropped and counted. Default 10000. */
  bufferSize?: number;
  /** Updates a bulk request carries (at most 1000). Default 100. */
  batchSize?: number;
  /** How long a partial batch waits. Default 100. */
  flushIntervalMs?: number;
  /** Default 5000. */
  requestTimeoutMs?: number;
  /** Called with the total dropped so far, on each drop. */
  onDrop?: (dropped: number) => void;
  /** Default console. */
  logger?: Pick<Console, "warn" | "error"> & Partial<Pick<Console, "info">>;
}

export interface ClientStats {
  /** Updates held now (buffered or in a request). */
  queued: number;
  sent: number;
  /** Retries the gateway had already taken (not delivered again). */
  duplicates: number;
  /** Dropped on purpose by a gateway filter plugin. */
  filtered: number;
  /** Dropped here: the buffer was full or the client closed. */
  dropped: number;
  /** Refused by the gateway for good (a 4xx naming the problem). */
  rejected: number;
  retried: number;
  /** Left when close() ran out of time. */
  unsent: number;
}

export type BulkItem = { category: Category; text: string; metadata?: Metadata } | [Category, string, Metadata?];

export declare const CATEGORIES: readonly Category[];

export declare class Client {
  constructor(options?: ClientOptions);
  readonly url: string;
  update(conversationId: string | null, category: Category, text: string, metadata?: Metadata): boolean;
  engine(conversationId: string | null, text: string, metadata?: Metadata): boolean;
  tool(conversationId: string | null, text: string, metadata?: Metadata): boolean;
  workflow(conversationId: string | null, text: string, metadata?: Metadata): boolean;
  progress(conversationId: string | null, text: string, metadata?: Metadata): boolean;
  error(conversationId: string | null, text: string, metadata?: Metadata): boolean;
  info(conversationId: string | null, text: string, metadata?: Metadata): boolean;
  planning(conversationId: string | null, text: string, metadata?: Metadata): boolean;
  /** start: a performance.now() reading taken when the work began. */
  withTiming(conversationId: string | null, category: Category, text: string, start: number, metadata?: Metadata): boolean;
  progressPercentage(conversationId: string | null, text: string, current: number, total: number, metadata?: Metadata): boolean;
  bulkUpdate(conversationId: string | null, updates: Iterable<BulkItem>): number;
  maybeUpdate(conversationId: string | null | undefined, condition: unknown, category: Category, text: string, metadata?: Metadata): boolean;
  stats(): ClientStats;
  flush(timeoutMs?: number): Promise<boolean>;
  close(timeoutMs?: number): Promise<boolean>;
}

export interface TailEvent {
  type: "status_update" | "gap";
  data: { conversation_id: string; seq?: number; category?: string; text?: string; metadata?: Metadata; [k: string]: unknown };
  id: string | null;
}

export interface TailOptions {
  categories?: string[];
  token?: string;
  lastEventId?: string;
  reconnectMs?: number;
  signal?: AbortSignal;
  logger?: Partial<Pick<Console, "info">>;
}

export declare class TailRefused extends Error {}
export declare function tail(url: string, conversations: string[] | string, options?: TailOptions): AsyncGenerator<TailEvent, void, void>;

export declare function buildLlmMetadata(model: string, provider: string, extra?: Metadata): Metadata;
export declare function buildToolMetadata(toolName: string, params?: Metadata | null, extra?: Metadata): Metadata;
export declare function buildWorkflowMetadata(workflowName: string, completedSteps?: number, totalSteps?: number, extra?: Metadata): Metadata;
export declare function buildErrorMetadata(errorType: string, message: string, extra?: Metadata): Metadata;
export declare function timingMetadata(durationMs: number, extra?: Metadata): Metadata;
export declare function progressMetadata(text: string, current: number, total: number, extra?: Metadata): [Metadata, string];
export declare function durationHuman(ms: number): string;
export declare function percentage(done: number, total: number): number;
