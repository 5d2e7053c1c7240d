// What a handler sees (Job) and what it may throw to steer retries
// (Retry, NoRetry).

import { toDate } from "./proto";
import { Task } from "./task";

/** One delivery of a task to a handler. */
export class Job {
  readonly id: string;
  readonly kind: string;
  readonly queue: string;
  readonly payload: Buffer;
  readonly contentType: string;
  readonly headers: Record<string, string>;
  /** Which delivery this is: 1 the first time. */
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly priority: number;
  /** The fencing token of this delivery. */
  readonly leaseId: string;
  /** The whole task as delivered. */
  readonly task: Task;

  /** @internal From a LeasedTask that proto-loader decoded. */
  constructor(leased: any) {
    const task = new Task(leased.task);
    this.task = task;
    this.id = task.id;
    this.kind = task.kind;
    this.queue = task.queue;
    this.payload = task.payload;
    this.contentType = task.contentType;
    this.headers = task.headers;
    this.attempt = task.attempt;
    this.maxAttempts = task.maxAttempts;
    this.priority = task.priority;
    this.leaseId = leased.leaseId;
    this._leaseExpireTime = toDate(leased.leaseExpireTime);
  }

  /** @internal */
  _leaseExpireTime: Date | null;

  /** When the lease runs out unless extended (the worker extends it while the handler runs). */
  get leaseExpireTime(): Date | null {
    return this._leaseExpireTime;
  }

  /** The payload as UTF-8 text. */
  text(): string {
    return this.payload.toString("utf8");
  }

  /** The payload parsed as JSON (undefined when the payload is empty). */
  json<T = any>(): T {
    return (this.payload.length === 0 ? undefined : JSON.parse(this.payload.toString("utf8"))) as T;
  }
}

/**
 * Throw from a handler to have the task retried: after `afterMs`, or after
 * the queue's backoff when not given. The delivery still counts as an
 * attempt, so a task out of attempts goes DEAD.
 */
export class Retry extends Error {
  readonly afterMs?: number;

  constructor(options: { afterMs?: number; message?: string } | string = {}) {
    const o = typeof options === "string" ? { message: options } : options;
    super(o.message ?? (o.afterMs === undefined ? "retry requested" : `retry requested after ${o.afterMs} ms`));
    this.name = "Retry";
    if (o.afterMs !== undefined) {
      if (!Number.isFinite(o.afterMs) || o.afterMs < 0) throw new RangeError("Retry afterMs must be >= 0");
      this.afterMs = o.afterMs;
    }
  }
}

/** Throw from a handler to fail the task for good (DEAD, no more attempts). */
export class NoRetry extends Error {
  constructor(message = "failed without retry") {
    super(message);
    this.name = "NoRetry";
  }
}

/** Why a handler's signal aborted. */
export class LeaseLost extends Error {
  /** "expired", "canceled", or "disconnected" (the stream to the broker ended). */
  readonly reason: string;

  constructor(taskId: string, reason: string) {
    super(`lease on task ${taskId} lost (${reason})`);
    this.name = "LeaseLost";
    this.reason = reason;
  }
}
