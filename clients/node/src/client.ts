// The producer side: Client.enqueue / enqueueMany / get / cancel / wait.
//
// Every call retries on UNAVAILABLE with exponential backoff. That is safe:
// an enqueue carries a request_id (generated unless given), so the broker
// returns the first task for a repeated request; get and cancel are
// idempotent.

import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { BackoffOptions, Connection, ConnectionOptions, backoffDelay, connect, sleep } from "./connection";
import {
  DeadlineExceeded,
  TaskbrokerError,
  Unavailable,
  fromRpcStatus,
  fromServiceError,
} from "./errors";
import { Api, ServiceClient, duration, loadApi, timestamp } from "./proto";
import { Payload, Task, encode, isFinal } from "./task";

/** How calls retry after UNAVAILABLE. */
export interface RetryOptions extends BackoffOptions {
  /** Tries per call, the first included (default 8; 1 turns retries off). */
  maxAttempts?: number;
  /** Called before each retry (for logging). */
  onRetry?: (error: TaskbrokerError, attempt: number, delayMs: number) => void;
}

export interface ClientOptions extends ConnectionOptions {
  /** Deadline of each call, in ms (default 30 s). */
  deadlineMs?: number;
  retry?: RetryOptions;
}

/** Everything about a task besides its kind and payload. */
export interface EnqueueOptions {
  /** Target queue; default: the broker's routing rules, else "default". */
  queue?: string;
  /** 0-9, higher first; default: the route's, else the queue's default. */
  priority?: number;
  /** Run after this many milliseconds. */
  delayMs?: number;
  /** Run at this time (a Date or epoch ms). At most one of delayMs and runAt. */
  runAt?: Date | number;
  headers?: Record<string, string>;
  /** An unfinished task of the same queue with this key is returned instead. */
  dedupKey?: string;
  /** Deliveries allowed; default: the queue's. */
  maxAttempts?: number;
  /** Default: "application/json" for objects, "text/plain" for strings, none for bytes. */
  contentType?: string;
  /** Idempotency key; default: a fresh UUID per call (kept across its retries). */
  requestId?: string;
  /**
   * Groups the task for its queue's per_key_max_in_flight and fair turns
   * (a tenant, a customer). Throws with a broker API whose EnqueueRequest has
   * no concurrency_key field.
   */
  concurrencyKey?: string;
  /**
   * Shared semaphores (the broker's [semaphores]) the task needs a permit of
   * while leased; an unknown name is INVALID_ARGUMENT on `semaphores`.
   */
  semaphores?: string[];
  /**
   * Task ids (of any queue) this task runs after: it is WAITING until every
   * one has SUCCEEDED. Unknown ids are FAILED_PRECONDITION (DEPENDENCY_NOT_FOUND).
   */
  dependsOn?: string[];
  /** What a DEAD or CANCELED dependency does: "cancel" (the default) or "run". */
  onDependencyFailure?: "cancel" | "run";
  /** Deadline in ms from now: not delivered by then, the task is CANCELED as "expired". */
  ttlMs?: number;
}

/** One task of enqueueMany. */
export interface EnqueueItem extends EnqueueOptions {
  kind: string;
  payload?: Payload;
}

export interface WaitOptions {
  /** Give up after this many ms with DeadlineExceeded (default: wait as long as it takes). */
  timeoutMs?: number;
}

/** Some items of an enqueueMany failed; `results` has a Task or the error for each item, in order. */
export class EnqueueManyError extends Error {
  constructor(
    readonly results: (Task | TaskbrokerError)[],
    readonly errors: TaskbrokerError[],
  ) {
    super(`${errors.length} of ${results.length} tasks were not enqueued; first error: ${errors[0]?.message}`);
    this.name = "EnqueueManyError";
  }
}

/** The broker's limit on one EnqueueBatch. */
const MAX_BATCH = 1000;

/** Producer client: `new Client("127.0.0.1:50051", { token, tls })`. */
export class Client {
  private readonly api: Api;
  private readonly conn: Connection;
  private readonly stub: ServiceClient;
  private readonly deadlineMs: number;
  private readonly retry: RetryOptions;

  constructor(target: string, options: ClientOptions = {}) {
    this.api = loadApi(options.protoDir);
    this.conn = connect(target, options);
    this.stub = new this.api.ProducerService(this.conn.address, this.conn.credentials, this.conn.channelOptions);
    this.deadlineMs = options.deadlineMs ?? 30_000;
    this.retry = options.retry ?? {};
  }

  /** Enqueues one task and returns it (or the existing one for a repeated dedupKey/requestId). */
  async enqueue(kind: string, payload?: Payload, options: EnqueueOptions = {}): Promise<Task> {
    const resp = await this.call("Enqueue", this.enqueueRequest(kind, payload, options));
    return new Task(resp.task);
  }

  /**
   * Enqueues many tasks, 1000 per EnqueueBatch call, each committed or
   * refused alone. Resolves with the tasks in order; if any item was refused,
   * rejects with an EnqueueManyError that holds every item's outcome.
   */
  async enqueueMany(items: EnqueueItem[]): Promise<Task[]> {
    const requests = items.map(({ kind, payload, ...opts }) => this.enqueueRequest(kind, payload, opts));
    const results: (Task | TaskbrokerError)[] = [];
    for (let i = 0; i < requests.length; i += MAX_BATCH) {
      const resp = await this.call("EnqueueBatch", { tasks: requests.slice(i, i + MAX_BATCH) });
      for (const r of resp.results) results.push(r.result === "task" ? new Task(r.task) : fromRpcStatus(r.error));
    }
    const errors = results.filter((r): r is TaskbrokerError => r instanceof TaskbrokerError);
    if (errors.length > 0) throw new EnqueueManyError(results, errors);
    return results as Task[];
  }

  /** The task with this id (TaskNotFound when unknown or purged). */
  async get(taskId: string): Promise<Task> {
    return new Task((await this.call("GetTask", { taskId })).task);
  }

  /** The tasks `taskId` depends on, with their results, in dependsOn order (one GetTask call). */
  async getDependencies(taskId: string): Promise<Task[]> {
    const resp = await this.call("GetTask", { taskId, includeDependencies: true });
    return (resp.dependencies ?? []).map((d: unknown) => new Task(d));
  }

  /** Cancels a scheduled, ready or leased task and returns it (TaskFinished if it already ended). */
  async cancel(taskId: string): Promise<Task> {
    return new Task((await this.call("CancelTask", { taskId })).task);
  }

  /**
   * Follows the task (WatchTask) until it is SUCCEEDED, DEAD or CANCELED and
   * returns it then. Reconnects if the broker goes away meanwhile.
   */
  async wait(taskId: string, options: WaitOptions = {}): Promise<Task> {
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    let last: Task | null = null;
    for (let attempt = 0; ; attempt++) {
      try {
        const done = await this.watchOnce(taskId, deadline, (t) => (last = t));
        if (done) return done;
      } catch (e) {
        if (!(e instanceof Unavailable) || Date.now() >= deadline) throw e;
      }
      if (Date.now() >= deadline) {
        const state = last ? ` (state ${(last as Task).state})` : "";
        throw new DeadlineExceeded(
          grpc.status.DEADLINE_EXCEEDED,
          `task ${taskId} not finished after ${options.timeoutMs} ms${state}`,
        );
      }
      // The broker went away (or the watch ended early): watch again.
      await sleep(Math.min(backoffDelay(attempt, this.retry), deadline - Date.now()));
    }
  }

  /** Closes the connection. */
  close(): void {
    this.stub.close();
  }

  /** One WatchTask stream: the final task, or null when it ended before one. */
  private watchOnce(taskId: string, deadline: number, seen: (t: Task) => void): Promise<Task | null> {
    return new Promise((resolve, reject) => {
      const callOpts: grpc.CallOptions = Number.isFinite(deadline) ? { deadline } : {};
      const call: grpc.ClientReadableStream<any> = this.stub.WatchTask({ taskId }, this.conn.metadata(), callOpts);
      let settled = false;
      call.on("data", (m: any) => {
        const t = new Task(m.task);
        seen(t);
        if (isFinal(t.state) && !settled) {
          settled = true;
          resolve(t);
          call.cancel();
        }
      });
      call.on("error", (e: grpc.ServiceError) => {
        if (settled) return;
        settled = true;
        if (e.code === grpc.status.DEADLINE_EXCEEDED) resolve(null);
        else reject(fromServiceError(e));
      });
      call.on("end", () => {
        if (!settled) {
          settled = true;
          resolve(null);
        }
      });
    });
  }

  private enqueueRequest(kind: string, payload: Payload, o: EnqueueOptions): Record<string, unknown> {
    const { bytes, contentType } = encode(payload);
    const req: Record<string, unknown> = {
      kind,
      queue: o.queue ?? "",
      payload: bytes,
      contentType: o.contentType ?? contentType,
      headers: o.headers ?? {},
      dedupKey: o.dedupKey ?? "",
      requestId: o.requestId ?? randomUUID(),
    };
    if (o.priority !== undefined) req.priority = o.priority;
    if (o.maxAttempts !== undefined) req.maxAttempts = o.maxAttempts;
    if (o.delayMs !== undefined) req.delay = duration(o.delayMs);
    if (o.runAt !== undefined) req.scheduledTime = timestamp(o.runAt);
    if (o.concurrencyKey !== undefined) {
      if (!this.api.enqueueFields.has("concurrencyKey")) {
        throw new TypeError(
          "concurrencyKey: this broker API (EnqueueRequest in " +
            `${this.api.protoDir}) has no concurrency_key field; per-key concurrency caps are not available`,
        );
      }
      req.concurrencyKey = o.concurrencyKey;
    }
    if (o.semaphores !== undefined && o.semaphores.length > 0) {
      if (!this.api.enqueueFields.has("semaphores")) {
        throw new TypeError(
          `semaphores: this broker API (EnqueueRequest in ${this.api.protoDir}) has no semaphores field`,
        );
      }
      req.semaphores = o.semaphores;
    }
    const workflow = (o.dependsOn?.length ?? 0) > 0 || o.onDependencyFailure !== undefined || o.ttlMs !== undefined;
    if (workflow && !this.api.enqueueFields.has("dependsOn")) {
      throw new TypeError(
        `dependsOn, onDependencyFailure, ttlMs: this broker API (EnqueueRequest in ${this.api.protoDir}) has no such fields`,
      );
    }
    if (o.dependsOn !== undefined) req.dependsOn = o.dependsOn;
    if (o.onDependencyFailure !== undefined) {
      const policies = { cancel: "DEPENDENCY_FAILURE_POLICY_CANCEL", run: "DEPENDENCY_FAILURE_POLICY_RUN" };
      if (!(o.onDependencyFailure in policies)) {
        throw new TypeError(`onDependencyFailure must be "cancel" or "run", not ${JSON.stringify(o.onDependencyFailure)}`);
      }
      req.onDependencyFailure = policies[o.onDependencyFailure];
    }
    if (o.ttlMs !== undefined) req.ttl = duration(o.ttlMs);
    return req;
  }

  /** A unary call with the deadline, the token, and retries on UNAVAILABLE. */
  private async call(method: string, req: unknown): Promise<any> {
    const maxAttempts = Math.max(1, this.retry.maxAttempts ?? 8);
    for (let attempt = 1; ; attempt++) {
      try {
        return await new Promise((resolve, reject) => {
          this.stub[method](
            req,
            this.conn.metadata(),
            { deadline: Date.now() + this.deadlineMs },
            (err: grpc.ServiceError | null, resp: unknown) => (err ? reject(fromServiceError(err)) : resolve(resp)),
          );
        });
      } catch (e) {
        if (!(e instanceof Unavailable) || attempt >= maxAttempts) throw e;
        const delay = Math.max(backoffDelay(attempt - 1, this.retry), Math.min(e.retryDelayMs ?? 0, 5_000));
        this.retry.onRetry?.(e, attempt, delay);
        await sleep(delay);
      }
    }
  }
}
