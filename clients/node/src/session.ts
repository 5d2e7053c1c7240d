// One worker Stream: subscribe, run each pushed task's handler, settle it
// (ack/nack on the stream), extend leases while handlers run, abort handlers
// whose lease is lost, and drain. The Worker (worker.ts) opens a new
// session after one ends, with backoff.
//
// Protocol (README "Worker streams"): the first message is `subscribe` with
// max_in_flight = concurrency; the broker pushes `task` while fewer than that
// are unsettled; each ack/nack/extend is answered by `settled`, and a settled
// ack/nack frees its credit; `lease_lost` means stop that task; `draining`
// means the broker is going away; `drain` tells it this worker is stopping.
// When the stream ends the broker takes back every task it held.

import * as grpc from "@grpc/grpc-js";
import { LeaseMismatch, TaskCanceled, TaskNotFound, fromRpcStatus, fromServiceError } from "./errors";
import { Job, LeaseLost, NoRetry, Retry } from "./job";
import { duration, toDate } from "./proto";
import { encode } from "./task";

/** A task handler: its return value becomes the Ack's result; a throw becomes a Nack. */
export type Handler = (job: Job, signal: AbortSignal) => unknown;

export interface Logger {
  warn(message: string): void;
  error(message: string): void;
}

/** What a session needs from its Worker. */
export interface SessionConfig {
  call: grpc.ClientDuplexStream<any, any>;
  subscribe: Record<string, unknown>;
  handlers: ReadonlyMap<string, Handler>;
  /** The lease length asked for in subscribe, if any. */
  leaseDurationMs?: number;
  /** Every handler still running, across sessions (the Worker waits for them on stop). */
  handlerRuns: Set<Promise<void>>;
  log: Logger;
}

/** How a session ended. */
export type SessionEnd =
  | { kind: "closed"; connected: boolean }
  | { kind: "broken"; connected: boolean; error: unknown };

/** One delivery this session holds (pushed, not yet settled or lost). */
interface Held {
  job: Job;
  controller: AbortController;
  /** The handler is running (not yet settling). */
  running: boolean;
  leaseMs: number;
  extendTimer?: NodeJS.Timeout;
  /** The settling message, kept to resend after a transient error. */
  settle?: Record<string, unknown>;
  settleTries: number;
}

/** The shortest and longest lease the broker accepts. */
const MIN_LEASE_MS = 1_000;
const MAX_LEASE_MS = 12 * 3600 * 1000;
/** Longest tail of a stack trace sent as a Nack's error. */
const MAX_ERROR_CHARS = 4_000;
/** Tries of an ack/nack that failed for a transient reason (storage down). */
const MAX_SETTLE_TRIES = 5;
/** How long a half-closed stream may take to end before it is cut. */
const CLOSE_GRACE_MS = 5_000;

export class Session {
  private readonly held = new Map<string, Held>();
  /** This session's handlers still running, including ones whose lease is gone. */
  private readonly runs = new Set<Promise<void>>();
  private connected = false;
  /** No new tasks will come: this worker sent drain, or the broker is draining. */
  private draining = false;
  private closing = false;
  private ended = false;
  private resolveEnd!: (end: SessionEnd) => void;
  /** Settles once the stream is over. */
  readonly end: Promise<SessionEnd>;

  constructor(private readonly cfg: SessionConfig) {
    this.end = new Promise((resolve) => (this.resolveEnd = resolve));
    const call = cfg.call;
    call.on("metadata", () => (this.connected = true));
    call.on("data", (m: any) => this.onMessage(m));
    call.on("error", (e: unknown) => this.finish(e));
    call.on("status", (s: grpc.StatusObject) => this.finish(s.code === grpc.status.OK ? null : s));
    this.write({ subscribe: cfg.subscribe });
  }

  /** Stop taking tasks: send drain, let running handlers settle, then close. */
  drain(): void {
    if (this.ended || this.closing) return;
    if (!this.draining) this.write({ drain: {} });
    this.draining = true;
    this.closeIfIdle();
  }

  /** Abort every handler and cut the stream now (the broker takes the tasks back). */
  abort(reason: string): void {
    this.loseAll(reason);
    this.cfg.call.cancel();
  }

  private onMessage(m: any): void {
    if (this.ended) return;
    this.connected = true;
    switch (m.msg) {
      case "task":
        return this.start(m.task);
      case "settled":
        return this.onSettled(m.settled);
      case "leaseLost": {
        const h = this.held.get(m.leaseLost.taskId);
        if (h && h.job.leaseId === m.leaseLost.leaseId) this.lose(h, m.leaseLost.reason || "lost");
        return;
      }
      case "draining":
        this.draining = true;
        return this.closeIfIdle();
    }
  }

  private start(leased: any): void {
    const job = new Job(leased);
    const h: Held = {
      job,
      controller: new AbortController(),
      running: true,
      leaseMs: this.leaseMs(leased),
      settleTries: 0,
    };
    this.held.set(job.id, h);
    const handler = this.cfg.handlers.get(job.kind);
    if (!handler) {
      const known = [...this.cfg.handlers.keys()].join(", ");
      h.running = false;
      return this.settle(h, {
        nack: {
          taskId: job.id,
          leaseId: job.leaseId,
          error: `no handler for kind "${job.kind}" on this worker (it handles: ${known})`,
          noRetry: true,
        },
      });
    }
    this.scheduleExtend(h);
    const run = (async () => handler(job, h.controller.signal))()
      .then(
        (result) => this.finishTask(h, { result }),
        (error) => this.finishTask(h, { error }),
      )
      .catch((e) => this.cfg.log.error(`settling task ${job.id} failed: ${(e as Error).message}`));
    this.runs.add(run);
    this.cfg.handlerRuns.add(run);
    void run.finally(() => {
      this.runs.delete(run);
      this.cfg.handlerRuns.delete(run);
      this.closeIfIdle();
    });
  }

  /** The handler returned or threw: ack or nack (unless the lease is gone). */
  private finishTask(h: Held, outcome: { result?: unknown; error?: unknown }): void {
    if (!h.running) return; // lost meanwhile: nothing to settle
    h.running = false;
    clearTimeout(h.extendTimer);
    const ids = { taskId: h.job.id, leaseId: h.job.leaseId };
    if (!("error" in outcome)) {
      try {
        return this.settle(h, { ack: { ...ids, result: encode(outcome.result as any).bytes } });
      } catch (e) {
        outcome = { error: e };
      }
    }
    const err = outcome.error;
    if (err instanceof Retry) {
      const nack: Record<string, unknown> = { ...ids, error: err.message };
      if (err.afterMs !== undefined) nack.retryAfter = duration(err.afterMs);
      return this.settle(h, { nack });
    }
    if (err instanceof NoRetry) return this.settle(h, { nack: { ...ids, error: err.message, noRetry: true } });
    return this.settle(h, { nack: { ...ids, error: describe(err) } });
  }

  private settle(h: Held, msg: Record<string, unknown>): void {
    h.settle = msg;
    h.settleTries += 1;
    this.write(msg);
  }

  private onSettled(s: any): void {
    const h = this.held.get(s.taskId);
    if (!h || h.job.leaseId !== s.leaseId) return;
    const error = s.error ? fromRpcStatus(s.error) : null;
    const gone = error instanceof LeaseMismatch || error instanceof TaskCanceled || error instanceof TaskNotFound;
    if (s.operation === "SETTLE_OPERATION_EXTEND") {
      if (!error) {
        h.job._leaseExpireTime = toDate(s.leaseExpireTime);
        if (h.running) this.scheduleExtend(h);
      } else if (gone) {
        this.lose(h, error instanceof TaskCanceled ? "canceled" : "expired");
      } else if (h.running) {
        this.cfg.log.warn(`extending the lease of task ${h.job.id} failed (${error.message}); trying again`);
        this.scheduleExtend(h, h.leaseMs / 4);
      }
      return;
    }
    if (error && !gone && h.settle && h.settleTries < MAX_SETTLE_TRIES) {
      this.cfg.log.warn(`settling task ${h.job.id} failed (${error.message}); trying again`);
      const msg = h.settle;
      setTimeout(() => this.held.get(h.job.id) === h && this.settle(h, msg), 200 * h.settleTries).unref();
      return;
    }
    if (error) this.cfg.log.warn(`settling task ${h.job.id} failed: ${error.message}`);
    this.held.delete(h.job.id);
    this.closeIfIdle();
  }

  /** The lease is gone (expired, canceled, stream ended): abort the handler, settle nothing. */
  private lose(h: Held, reason: string): void {
    h.running = false;
    clearTimeout(h.extendTimer);
    this.held.delete(h.job.id);
    h.controller.abort(new LeaseLost(h.job.id, reason));
    this.closeIfIdle();
  }

  private loseAll(reason: string): void {
    for (const h of [...this.held.values()]) this.lose(h, reason);
  }

  /**
   * Extends the lease halfway through it, again after each extension, while
   * the handler runs. Halfway by the lease's length, or sooner if the local
   * clock says the deadline is nearer (clocks may differ; sooner is harmless).
   */
  private scheduleExtend(h: Held, afterMs?: number): void {
    if (afterMs === undefined) {
      afterMs = h.leaseMs / 2;
      const expire = h.job.leaseExpireTime;
      if (expire) afterMs = Math.min(afterMs, Math.max(200, (expire.getTime() - Date.now()) / 2));
    }
    clearTimeout(h.extendTimer);
    h.extendTimer = setTimeout(() => {
      if (!h.running || this.ended) return;
      this.write({ extend: { taskId: h.job.id, leaseId: h.job.leaseId, extendBy: duration(h.leaseMs) } });
    }, afterMs);
    h.extendTimer.unref();
  }

  /** The delivery's lease length: as subscribed, else from the broker's own timestamps. */
  private leaseMs(leased: any): number {
    let ms = this.cfg.leaseDurationMs;
    if (ms === undefined) {
      const expire = leased.leaseExpireTime;
      const leasedAt = leased.task?.updateTime;
      const toMs = (t: any) => Number(t.seconds) * 1000 + Math.floor((t.nanos ?? 0) / 1e6);
      if (expire && leasedAt) ms = toMs(expire) - toMs(leasedAt);
      if (!ms || ms <= 0) ms = expire ? toMs(expire) - Date.now() : MIN_LEASE_MS;
    }
    return Math.min(MAX_LEASE_MS, Math.max(MIN_LEASE_MS, Math.round(ms)));
  }

  /** Draining and nothing held or running: half-close, and cut the stream if it lingers. */
  private closeIfIdle(): void {
    if (!this.draining || this.closing || this.ended || this.held.size > 0 || this.runs.size > 0) {
      return;
    }
    this.closing = true;
    this.cfg.call.end();
    setTimeout(() => this.cfg.call.cancel(), CLOSE_GRACE_MS).unref();
  }

  private write(msg: Record<string, unknown>): void {
    if (this.ended || this.closing) return;
    this.cfg.call.write(msg);
  }

  /** The stream is over: whatever is still held went back to the broker. */
  private finish(error: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.loseAll("disconnected");
    if (this.closing && (error === null || (error as grpc.StatusObject).code === grpc.status.CANCELLED)) {
      this.resolveEnd({ kind: "closed", connected: this.connected });
    } else if (error === null) {
      this.resolveEnd({ kind: "broken", connected: this.connected, error: new Error("the broker ended the stream") });
    } else {
      this.resolveEnd({ kind: "broken", connected: this.connected, error: fromServiceError(error) });
    }
  }
}

/** A Nack error for a thrown value: its name, message and the tail of its stack. */
function describe(err: unknown): string {
  let text: string;
  if (err instanceof Error) {
    const stack = err.stack ?? "";
    text = stack.includes(err.message) ? stack : `${err.name}: ${err.message}\n${stack}`;
  } else {
    text = `thrown: ${typeof err === "string" ? err : safeJson(err)}`;
  }
  return text.length > MAX_ERROR_CHARS ? "…" + text.slice(text.length - MAX_ERROR_CHARS + 1) : text;
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}
