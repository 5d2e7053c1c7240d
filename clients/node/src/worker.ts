// The worker side: register handlers with worker.task(kind, fn), then
// `await worker.run()`. One Stream at a time (session.ts) carries every task
// of this worker with max_in_flight = concurrency; when it breaks, the worker
// opens a new one with backoff. stop() or SIGTERM sends drain, lets running
// handlers settle, closes the stream and resolves run().

import * as os from "node:os";
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { BackoffOptions, Connection, ConnectionOptions, backoffDelay, connect, sleep } from "./connection";
import { ServiceClient, duration, loadApi } from "./proto";
import { Handler, Logger, Session } from "./session";

export type { Handler, Logger } from "./session";

export interface WorkerOptions extends ConnectionOptions {
  /** Queues to take tasks from: in preference order (strict), or the weighted set. */
  queues: string[];
  /** Handlers running at once = the stream's max_in_flight (default 1). */
  concurrency?: number;
  /** "strict" (default): always the first queue with work; "weighted": shares by `weights`. */
  mode?: "strict" | "weighted";
  /** Weighted mode: weight per queue (missing: 1). */
  weights?: Record<string, number>;
  /** Lease length to ask for (1 s-12 h); default: each queue's lease_duration. */
  leaseDurationMs?: number;
  /** A name for the broker's logs; default host:pid:random. */
  workerId?: string;
  /** Stop gracefully on SIGTERM and SIGINT while running (default true); a second signal aborts. */
  handleSignals?: boolean;
  /** Backoff between reconnects (default 100 ms doubling to 5 s). */
  reconnect?: BackoffOptions;
  /** Where warnings go (default: console.error); null silences them. */
  logger?: Logger | null;
}

/** Codes after which reconnecting cannot help: run() rejects with the error. */
const FATAL_CODES: ReadonlySet<number> = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
  grpc.status.UNIMPLEMENTED,
]);

const CONSOLE_LOGGER: Logger = {
  warn: (m) => console.error(`taskbroker worker: ${m}`),
  error: (m) => console.error(`taskbroker worker: ${m}`),
};
const SILENT_LOGGER: Logger = { warn: () => {}, error: () => {} };

/** `new Worker("127.0.0.1:50051", { queues: ["emails"], concurrency: 8 })`. */
export class Worker {
  private readonly handlers = new Map<string, Handler>();
  private readonly conn: Connection;
  private readonly stub: ServiceClient;
  private readonly opts: WorkerOptions;
  private readonly log: Logger;
  private readonly handlerRuns = new Set<Promise<void>>();
  private session: Session | null = null;
  private stopping = false;
  private forced = false;
  private readonly stopController = new AbortController();
  private runPromise: Promise<void> | null = null;

  constructor(target: string, options: WorkerOptions) {
    if (!options || !Array.isArray(options.queues) || options.queues.length === 0) {
      throw new TypeError("Worker needs options.queues: at least one queue name");
    }
    const concurrency = options.concurrency ?? 1;
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError("concurrency must be an integer >= 1");
    if (options.mode !== undefined && options.mode !== "strict" && options.mode !== "weighted") {
      throw new TypeError(`mode must be "strict" or "weighted", not ${JSON.stringify(options.mode)}`);
    }
    this.opts = { ...options, concurrency };
    this.log = options.logger === null ? SILENT_LOGGER : (options.logger ?? CONSOLE_LOGGER);
    const api = loadApi(options.protoDir);
    this.conn = connect(target, options);
    this.stub = new api.WorkerService(this.conn.address, this.conn.credentials, this.conn.channelOptions);
  }

  /** Registers the handler of a task kind. Returns the worker, so calls chain. */
  task(kind: string, handler: Handler): this {
    if (typeof handler !== "function") throw new TypeError(`handler for "${kind}" must be a function`);
    if (this.handlers.has(kind)) throw new Error(`a handler for "${kind}" is already registered`);
    this.handlers.set(kind, handler);
    return this;
  }

  /**
   * Takes tasks until stop() or SIGTERM/SIGINT, then resolves once running
   * tasks are settled. Rejects on an error reconnecting cannot fix (a bad
   * subscription, refused credentials).
   */
  run(): Promise<void> {
    if (this.runPromise) return Promise.reject(new Error("this worker is already running (or has run)"));
    if (this.handlers.size === 0) {
      return Promise.reject(new Error("register handlers with worker.task(kind, fn) before run()"));
    }
    this.runPromise = this.loop();
    return this.runPromise;
  }

  /**
   * Stops gracefully: no new tasks (drain), running handlers finish and are
   * settled, then run() resolves. Resolves when run() does.
   */
  stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = true;
      this.stopController.abort();
      this.session?.drain();
    }
    return this.runPromise ? this.runPromise.then(() => undefined, () => undefined) : Promise.resolve();
  }

  /** How many handlers are running now. */
  get running(): number {
    return this.handlerRuns.size;
  }

  private async loop(): Promise<void> {
    const onSignal = (sig: NodeJS.Signals) => {
      if (!this.stopping) {
        this.log.warn(`${sig}: finishing running tasks (again to abort them)`);
        void this.stop();
      } else {
        this.forced = true;
        this.session?.abort("worker stopped");
      }
    };
    const signals: NodeJS.Signals[] = this.opts.handleSignals === false ? [] : ["SIGTERM", "SIGINT"];
    for (const s of signals) process.on(s, onSignal);
    try {
      for (let failures = 0; !this.stopping; ) {
        const session = new Session({
          call: this.stub.Stream(this.conn.metadata()),
          subscribe: this.subscribeMessage(),
          handlers: this.handlers,
          leaseDurationMs: this.opts.leaseDurationMs,
          handlerRuns: this.handlerRuns,
          log: this.log,
        });
        this.session = session;
        if (this.stopping) session.drain();
        const end = await session.end;
        this.session = null;
        if (end.kind === "broken") {
          const code = (end.error as { code?: number }).code;
          if (code !== undefined && FATAL_CODES.has(code)) throw end.error;
          if (!this.stopping) {
            this.log.warn(`stream to the broker ended (${(end.error as Error).message}); reconnecting`);
          }
        }
        if (end.connected) failures = 0;
        if (this.stopping) break;
        await sleep(backoffDelay(failures++, this.opts.reconnect), this.stopController.signal);
      }
      if (!this.forced) await Promise.allSettled([...this.handlerRuns]);
    } finally {
      for (const s of signals) process.removeListener(s, onSignal);
      this.stub.close();
    }
  }

  private subscribeMessage(): Record<string, unknown> {
    const o = this.opts;
    const sub: Record<string, unknown> = {
      queues: o.queues,
      mode: o.mode === "weighted" ? "SUBSCRIBE_MODE_WEIGHTED" : "SUBSCRIBE_MODE_STRICT",
      weights: o.weights ?? {},
      maxInFlight: o.concurrency,
      workerId: o.workerId ?? `${os.hostname()}:${process.pid}:${randomBytes(3).toString("hex")}`,
    };
    if (o.leaseDurationMs !== undefined) sub.leaseDuration = duration(o.leaseDurationMs);
    return sub;
  }
}
