// The Task as this package hands it out, and how payloads and results
// become bytes.

import { toDate } from "./proto";

/** taskbroker.v1.TaskState names, as the broker's API spells them. */
export const TaskState = {
  UNSPECIFIED: "TASK_STATE_UNSPECIFIED",
  SCHEDULED: "TASK_STATE_SCHEDULED",
  READY: "TASK_STATE_READY",
  LEASED: "TASK_STATE_LEASED",
  SUCCEEDED: "TASK_STATE_SUCCEEDED",
  DEAD: "TASK_STATE_DEAD",
  CANCELED: "TASK_STATE_CANCELED",
  WAITING: "TASK_STATE_WAITING",
} as const;
export type TaskStateName = (typeof TaskState)[keyof typeof TaskState];

const FINAL: ReadonlySet<string> = new Set([TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELED]);

/** True for SUCCEEDED, DEAD and CANCELED: the task will not change again. */
export function isFinal(state: string): boolean {
  return FINAL.has(state);
}

/** A taskbroker.v1.Task, with camelCase fields and Dates for timestamps. */
export class Task {
  /** Server-assigned ULID. */
  readonly id: string;
  readonly queue: string;
  readonly kind: string;
  readonly payload: Buffer;
  readonly contentType: string;
  /** 0-9, higher first. */
  readonly priority: number;
  readonly headers: Record<string, string>;
  readonly state: TaskStateName;
  /** Deliveries so far. */
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly dedupKey: string;
  /** The group of the queue's per-key caps and fair turns ("" for none). */
  readonly concurrencyKey: string;
  /** Shared semaphores the task needs a permit of while leased. */
  readonly semaphores: string[];
  readonly createTime: Date | null;
  readonly updateTime: Date | null;
  /** When the task becomes (or became) ready to run. */
  readonly scheduledTime: Date | null;
  /** What the worker acked with. */
  readonly result: Buffer;
  /** The last Nack's error, or why the task went DEAD. */
  readonly lastError: string;
  /** The tasks (of any queue) this one runs after. */
  readonly dependsOn: string[];
  /** How many of dependsOn have not ended yet (the task is WAITING while above 0). */
  readonly pendingDependencies: number;
  /** Not delivered by then, the task is CANCELED as "expired" (null: no deadline). */
  readonly expireTime: Date | null;

  /** @internal From the message proto-loader decoded. */
  constructor(m: any) {
    this.id = m.id;
    this.queue = m.queue;
    this.kind = m.kind;
    this.payload = Buffer.from(m.payload ?? []);
    this.contentType = m.contentType ?? "";
    this.priority = m.priority ?? 0;
    this.headers = { ...(m.headers ?? {}) };
    this.state = m.state;
    this.attempt = m.attempt ?? 0;
    this.maxAttempts = m.maxAttempts ?? 0;
    this.dedupKey = m.dedupKey ?? "";
    this.concurrencyKey = m.concurrencyKey ?? "";
    this.semaphores = [...(m.semaphores ?? [])];
    this.createTime = toDate(m.createTime);
    this.updateTime = toDate(m.updateTime);
    this.scheduledTime = toDate(m.scheduledTime);
    this.result = Buffer.from(m.result ?? []);
    this.lastError = m.lastError ?? "";
    this.dependsOn = [...(m.dependsOn ?? [])];
    this.pendingDependencies = m.pendingDependencies ?? 0;
    this.expireTime = toDate(m.expireTime);
  }

  /** SUCCEEDED, DEAD or CANCELED. */
  get finished(): boolean {
    return isFinal(this.state);
  }

  /** The result as UTF-8 text. */
  resultText(): string {
    return this.result.toString("utf8");
  }

  /** The result parsed as JSON (undefined when the result is empty). */
  resultJson<T = unknown>(): T {
    return (this.result.length === 0 ? undefined : JSON.parse(this.result.toString("utf8"))) as T;
  }

  /** The payload parsed as JSON (undefined when the payload is empty). */
  payloadJson<T = unknown>(): T {
    return (this.payload.length === 0 ? undefined : JSON.parse(this.payload.toString("utf8"))) as T;
  }
}

/** What `enqueue` accepts as a payload, and a handler may return as a result. */
export type Payload = Buffer | Uint8Array | string | object | number | boolean | null | undefined;

/**
 * The bytes and content type of a payload or result: bytes as they are,
 * strings as UTF-8 ("text/plain"), null/undefined as nothing, anything else
 * as JSON ("application/json").
 */
export function encode(value: Payload): { bytes: Buffer; contentType: string } {
  if (value === undefined || value === null) return { bytes: Buffer.alloc(0), contentType: "" };
  if (Buffer.isBuffer(value)) return { bytes: value, contentType: "" };
  if (value instanceof Uint8Array) {
    return { bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength), contentType: "" };
  }
  if (typeof value === "string") return { bytes: Buffer.from(value, "utf8"), contentType: "text/plain" };
  const json = JSON.stringify(value);
  if (json === undefined) throw new TypeError(`cannot encode a ${typeof value} as a payload`);
  return { bytes: Buffer.from(json, "utf8"), contentType: "application/json" };
}
