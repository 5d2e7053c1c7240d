// The Worker against a real broker: ack with results, nack with the stack
// tail, Retry and NoRetry, unknown kinds, the concurrency cap, weighted mode,
// bad subscriptions, stop() while a task runs.

import { after, before, describe, it } from "node:test";
import * as assert from "node:assert/strict";
import { Client, InvalidArgument, Job, NoRetry, Retry, TaskState, Worker, WorkerOptions } from "../src/index";
import { Broker, Signal, startBroker, uniqueQueue, within } from "./broker";

let broker: Broker;
let client: Client;

before(async () => {
  broker = await startBroker();
  client = new Client(broker.addr, broker.conn);
});

after(async () => {
  client?.close();
  await broker?.stop();
});

/** Runs a worker for the duration of `body`, then stops it and checks run() resolved. */
async function withWorker(
  opts: Partial<WorkerOptions> & { queues: string[] },
  register: (w: Worker) => void,
  body: (w: Worker) => Promise<void>,
): Promise<void> {
  const worker = new Worker(broker.addr, { ...broker.conn, handleSignals: false, logger: null, ...opts });
  register(worker);
  const run = worker.run();
  try {
    await body(worker);
  } finally {
    await worker.stop();
    await within(run, 15_000, "worker.run() to resolve after stop()");
  }
}

const WAIT_MS = 15_000;

describe("Worker", () => {
  it("acks with the handler's return value; the job carries the task", async () => {
    const queue = uniqueQueue("ack");
    const jobs: Job[] = [];
    await withWorker(
      { queues: [queue], concurrency: 4 },
      (w) =>
        w
          .task("obj", (job) => {
            jobs.push(job);
            return { got: job.json().n };
          })
          .task("str", () => "text result")
          .task("buf", () => Buffer.from([1, 2, 3]))
          .task("none", async () => undefined),
      async () => {
        const obj = await client.enqueue("obj", { n: 42 }, { queue, headers: { h: "v" }, priority: 5 });
        const str = await client.enqueue("str", null, { queue });
        const buf = await client.enqueue("buf", null, { queue });
        const none = await client.enqueue("none", null, { queue });
        const [o, s, b, n] = await Promise.all(
          [obj, str, buf, none].map((t) => client.wait(t.id, { timeoutMs: WAIT_MS })),
        );
        for (const t of [o, s, b, n]) assert.equal(t.state, TaskState.SUCCEEDED, `${t.kind}: ${t.lastError}`);
        assert.deepEqual(o.resultJson(), { got: 42 });
        assert.equal(s.resultText(), "text result");
        assert.deepEqual([...b.result], [1, 2, 3]);
        assert.equal(n.result.length, 0);
        const job = jobs[0];
        assert.equal(job.id, obj.id);
        assert.equal(job.kind, "obj");
        assert.equal(job.queue, queue);
        assert.ok(Buffer.isBuffer(job.payload));
        assert.deepEqual(job.json(), { n: 42 });
        assert.deepEqual(job.headers, { h: "v" });
        assert.equal(job.attempt, 1);
        assert.equal(job.priority, 5);
        assert.ok(job.leaseId.length > 0);
      },
    );
  });

  it("nacks a thrown error with its message and stack tail", async () => {
    const queue = uniqueQueue("nack");
    await withWorker(
      { queues: [queue] },
      (w) =>
        w.task("fails", function failingHandler() {
          throw new Error("boom: the mail server said no");
        }),
      async () => {
        const t = await client.enqueue("fails", null, { queue, maxAttempts: 1 });
        const done = await client.wait(t.id, { timeoutMs: WAIT_MS });
        assert.equal(done.state, TaskState.DEAD);
        assert.match(done.lastError, /Error: boom: the mail server said no/);
        assert.match(done.lastError, /at failingHandler/);
      },
    );
  });

  it("throw new Retry({ afterMs }) retries after that delay", async () => {
    const queue = uniqueQueue("retry");
    const calls: { attempt: number; at: number }[] = [];
    await withWorker(
      { queues: [queue] },
      (w) =>
        w.task("flaky", (job) => {
          calls.push({ attempt: job.attempt, at: Date.now() });
          if (job.attempt === 1) throw new Retry({ afterMs: 400 });
          return "second time lucky";
        }),
      async () => {
        const t = await client.enqueue("flaky", null, { queue, maxAttempts: 3 });
        const done = await client.wait(t.id, { timeoutMs: WAIT_MS });
        assert.equal(done.state, TaskState.SUCCEEDED);
        assert.equal(done.attempt, 2);
        assert.equal(done.resultText(), "second time lucky");
        assert.deepEqual(
          calls.map((c) => c.attempt),
          [1, 2],
        );
        const gap = calls[1].at - calls[0].at;
        assert.ok(gap >= 380, `retried after ${gap} ms, want >= 400`);
      },
    );
  });

  it("throw new NoRetry(msg) makes the task DEAD at once", async () => {
    const queue = uniqueQueue("noretry");
    let calls = 0;
    await withWorker(
      { queues: [queue] },
      (w) =>
        w.task("bad", () => {
          calls++;
          throw new NoRetry("payload is not an email address");
        }),
      async () => {
        const t = await client.enqueue("bad", null, { queue, maxAttempts: 5 });
        const done = await client.wait(t.id, { timeoutMs: WAIT_MS });
        assert.equal(done.state, TaskState.DEAD);
        assert.equal(done.attempt, 1);
        assert.equal(done.lastError, "payload is not an email address");
        assert.equal(calls, 1);
      },
    );
  });

  it("nacks an unknown kind without retry, with a clear error", async () => {
    const queue = uniqueQueue("unknown");
    await withWorker(
      { queues: [queue] },
      (w) => w.task("known", () => "ok"),
      async () => {
        const t = await client.enqueue("mystery", null, { queue, maxAttempts: 5 });
        const done = await client.wait(t.id, { timeoutMs: WAIT_MS });
        assert.equal(done.state, TaskState.DEAD);
        assert.equal(done.attempt, 1);
        assert.match(done.lastError, /no handler for kind "mystery" on this worker \(it handles: known\)/);
      },
    );
  });

  it("runs at most `concurrency` handlers at once", async () => {
    const queue = uniqueQueue("cap");
    const concurrency = 3;
    let active = 0;
    let maxActive = 0;
    let started = 0;
    const full = new Signal();
    const gate = new Signal();
    const check = async (w: Worker) => {
      const tasks = await client.enqueueMany(Array.from({ length: 9 }, () => ({ kind: "hold", queue })));
      await within(full.promise, WAIT_MS, `${concurrency} handlers running`);
      // Nothing signals "no more tasks came": give the broker a bounded
      // window to (wrongly) push a fourth, then look.
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(started, concurrency);
      assert.equal(w.running, concurrency);
      const states = await Promise.all(tasks.map(async (t) => (await client.get(t.id)).state));
      assert.equal(states.filter((s) => s === TaskState.LEASED).length, concurrency);
      assert.equal(states.filter((s) => s === TaskState.READY).length, 9 - concurrency);
      gate.resolve();
      const done = await Promise.all(tasks.map((t) => client.wait(t.id, { timeoutMs: WAIT_MS })));
      assert.ok(done.every((t) => t.state === TaskState.SUCCEEDED));
      assert.equal(started, 9);
      assert.equal(maxActive, concurrency);
    };
    await withWorker(
      { queues: [queue], concurrency },
      (w) =>
        w.task("hold", async () => {
          started++;
          active++;
          maxActive = Math.max(maxActive, active);
          if (active === concurrency) full.resolve();
          await gate.promise;
          active--;
        }),
      async (w) => {
        try {
          await check(w);
        } finally {
          gate.resolve(); // never leave handlers blocked: stopping the worker would wait for them
        }
      },
    );
  });

  it("takes from several queues in weighted mode", async () => {
    const a = uniqueQueue("wa");
    const b = uniqueQueue("wb");
    const seen = new Set<string>();
    await withWorker(
      { queues: [a, b], mode: "weighted", weights: { [a]: 3, [b]: 1 }, concurrency: 2 },
      (w) => w.task("k", (job) => void seen.add(job.queue)),
      async () => {
        const tasks = await client.enqueueMany([
          ...Array.from({ length: 4 }, () => ({ kind: "k", queue: a })),
          ...Array.from({ length: 4 }, () => ({ kind: "k", queue: b })),
        ]);
        const done = await Promise.all(tasks.map((t) => client.wait(t.id, { timeoutMs: WAIT_MS })));
        assert.ok(done.every((t) => t.state === TaskState.SUCCEEDED));
        assert.deepEqual([...seen].sort(), [a, b].sort());
      },
    );
  });

  it("stop() lets a running handler finish and acks it before run() resolves", async () => {
    const queue = uniqueQueue("stop");
    const started = new Signal<string>();
    const gate = new Signal();
    const worker = new Worker(broker.addr, { ...broker.conn, queues: [queue], handleSignals: false, logger: null });
    worker.task("slow", async (job) => {
      started.resolve(job.id);
      await gate.promise;
      return "done";
    });
    let resolved = false;
    const run = worker.run().then(() => (resolved = true));
    try {
      const t = await client.enqueue("slow", null, { queue });
      await within(started.promise, WAIT_MS, "the handler to start");
      const stopped = worker.stop();
      // run() must not resolve while the handler still runs.
      await new Promise((r) => setImmediate(r));
      assert.equal(resolved, false);
      assert.equal((await client.get(t.id)).state, TaskState.LEASED);
      gate.resolve();
      await within(stopped, WAIT_MS, "stop() to resolve");
      const done = await client.get(t.id);
      assert.equal(done.state, TaskState.SUCCEEDED);
      assert.equal(done.attempt, 1);
      assert.equal(done.resultText(), "done");
    } finally {
      gate.resolve();
      await worker.stop();
      await run;
    }
  });

  it("run() rejects on a subscription the broker refuses", async () => {
    const worker = new Worker(broker.addr, {
      ...broker.conn,
      queues: ["not a valid queue!"],
      handleSignals: false,
      logger: null,
    });
    worker.task("k", () => "ok");
    await assert.rejects(within(worker.run(), WAIT_MS, "run() to reject"), (e: unknown) => {
      assert.ok(e instanceof InvalidArgument, String(e));
      assert.ok(e.fieldViolations.length > 0);
      return true;
    });
  });
});
