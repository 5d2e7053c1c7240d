// Leases: a handler longer than its lease keeps the task (automatic
// ExtendLease), and a lease lost while the handler runs aborts its signal.
// The broker runs with a 1 s default lease.

import { after, before, describe, it } from "node:test";
import * as assert from "node:assert/strict";
import { Client, LeaseLost, TaskState, Worker } from "../src/index";
import { Broker, Signal, startBroker, uniqueQueue, within } from "./broker";

let broker: Broker;
let client: Client;

before(async () => {
  broker = await startBroker({ config: '[queues.default]\nlease_duration = "1s"\n' });
  client = new Client(broker.addr, broker.conn);
});

after(async () => {
  client?.close();
  await broker?.stop();
});

describe("leases", () => {
  it("extends the lease of a 3 s handler under a 1 s lease: delivered once, acked", async () => {
    const queue = uniqueQueue("extend");
    let calls = 0;
    let aborted = false;
    const expiries: number[] = [];
    const worker = new Worker(broker.addr, { ...broker.conn, queues: [queue], handleSignals: false, logger: null });
    worker.task("long", async (job, signal) => {
      calls++;
      signal.addEventListener("abort", () => (aborted = true));
      expiries.push(job.leaseExpireTime!.getTime());
      // The work itself: 3 s, three times the lease.
      await new Promise((r) => setTimeout(r, 3_000));
      expiries.push(job.leaseExpireTime!.getTime());
      return "survived";
    });
    const run = worker.run();
    try {
      const t = await client.enqueue("long", null, { queue, maxAttempts: 5 });
      const done = await client.wait(t.id, { timeoutMs: 20_000 });
      assert.equal(done.state, TaskState.SUCCEEDED, done.lastError);
      assert.equal(done.attempt, 1, "the lease expired and the task was delivered again");
      assert.equal(done.resultText(), "survived");
      assert.equal(calls, 1);
      assert.equal(aborted, false);
      const [first, last] = expiries;
      // Extended every ~0.5 s: the deadline moves ~2.5 s over the 3 s run.
      assert.ok(last - first >= 1_500, `lease deadline moved ${last - first} ms, want >= 1500 (extended)`);
    } finally {
      await worker.stop();
      await run;
    }
  });

  it("aborts the handler's signal when the task is canceled while it runs (lease_lost)", async () => {
    const queue = uniqueQueue("lost");
    const started = new Signal<string>();
    const abortedWith = new Signal<unknown>();
    const testOver = new Signal(); // a handler must not outlive a failed test
    const worker = new Worker(broker.addr, { ...broker.conn, queues: [queue], handleSignals: false, logger: null });
    worker.task("cancel-me", async (job, signal) => {
      if (job.payload.toString() === "after") return "next task ran";
      started.resolve(job.id);
      await Promise.race([
        testOver.promise,
        new Promise<void>((resolve) =>
          signal.addEventListener("abort", () => {
            abortedWith.resolve(signal.reason);
            resolve();
          }),
        ),
      ]);
      return "ignored: the lease is gone";
    });
    const run = worker.run();
    try {
      const t = await client.enqueue("cancel-me", "first", { queue });
      assert.equal(await within(started.promise, 10_000, "the handler to start"), t.id);
      await client.cancel(t.id);
      const reason = await within(abortedWith.promise, 10_000, "the signal to abort");
      assert.ok(reason instanceof LeaseLost, String(reason));
      assert.equal((reason as LeaseLost).reason, "canceled");
      const got = await client.get(t.id);
      assert.equal(got.state, TaskState.CANCELED);
      assert.equal(got.result.length, 0, "nothing was acked for the canceled task");
      // The lost task's credit came back: the worker (concurrency 1) takes the next one.
      const next = await client.enqueue("cancel-me", "after", { queue });
      const done = await client.wait(next.id, { timeoutMs: 10_000 });
      assert.equal(done.state, TaskState.SUCCEEDED);
      assert.equal(done.resultText(), "next task ran");
    } finally {
      testOver.resolve();
      await worker.stop();
      await run;
    }
  });
});
