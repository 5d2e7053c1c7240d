// A worker's life around its process and the broker's: SIGTERM to a worker
// process drains it, and a worker survives a broker restart (draining the
// task it held, then reconnecting to the new broker on the same port), and
// a broker killed outright aborts the running handler.

import { describe, it } from "node:test";
import * as assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as path from "node:path";
import { Client, LeaseLost, TaskState, Worker } from "../src/index";
import { Output, Signal, startBroker, tempDir, uniqueQueue, within } from "./broker";

describe("worker lifecycle", () => {
  it("SIGTERM to a worker process: the running task is acked, not redelivered, and it exits 0", async () => {
    const broker = await startBroker();
    const client = new Client(broker.addr, broker.conn);
    const queue = uniqueQueue("sigterm");
    const script = path.join(__dirname, "fixtures", "sigterm-worker.js");
    const proc = spawn(process.execPath, [script, broker.addr, queue, ...broker.scriptArgs], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    const exited = new Promise<number | null>((resolve) => proc.on("exit", (code) => resolve(code)));
    const out = new Output(proc.stdout, proc.stderr);
    try {
      const t = await client.enqueue("slow", null, { queue, maxAttempts: 5 });
      await out.waitFor(new RegExp(`started ${t.id}`), 15_000);
      proc.kill("SIGTERM");
      await out.waitFor(/sigterm/, 5_000);
      assert.equal((await client.get(t.id)).state, TaskState.LEASED, "still running after SIGTERM");
      proc.stdin.write("go\n");
      assert.equal(await within(exited, 15_000, "the worker process to exit"), 0, out.text);
      assert.match(out.text, /stopped/);
      const done = await client.get(t.id);
      assert.equal(done.state, TaskState.SUCCEEDED);
      assert.equal(done.attempt, 1);
      assert.equal(done.resultText(), "finished after SIGTERM");
    } finally {
      if (proc.exitCode === null) proc.kill("SIGKILL");
      client.close();
      await broker.stop();
    }
  });

  it("reconnects after a broker restart on the same port (embedded store)", async () => {
    const dataDir = tempDir("restart");
    const config = 'shutdown_grace = "5s"\n';
    const first = await startBroker({ storage: "embedded", dataDir, config });
    const client = new Client(first.addr, first.conn);
    const queue = uniqueQueue("restart");
    const started = new Signal<string>();
    const gate = new Signal();
    const ran: string[] = [];
    const worker = new Worker(first.addr, {
      ...first.conn,
      queues: [queue],
      handleSignals: false,
      logger: null,
      reconnect: { initialMs: 100, maxMs: 500 },
    });
    worker.task("job", async (job) => {
      ran.push(job.payload.toString());
      if (job.payload.toString() === "held") {
        started.resolve(job.id);
        await gate.promise;
      }
      return `done ${job.payload.toString()}`;
    });
    let runError: unknown = null;
    const run = worker.run().catch((e) => (runError = e));
    let second: Awaited<ReturnType<typeof startBroker>> | null = null;
    try {
      // A task in hand when the broker is told to stop: it drains, the
      // worker finishes and acks it, and the broker exits.
      const held = await client.enqueue("job", "held", { queue });
      await within(started.promise, 15_000, "the first task to start");
      const stopped = first.stop("SIGTERM");
      gate.resolve();
      assert.equal(await within(stopped, 15_000, "the broker to exit"), 0, first.output());

      second = await startBroker({ storage: "embedded", dataDir, config, listen: first.addr });
      const kept = await client.get(held.id);
      assert.equal(kept.state, TaskState.SUCCEEDED, "the ack made before the restart is durable");
      assert.equal(kept.resultText(), "done held");

      const after = await client.enqueue("job", "after restart", { queue });
      const done = await client.wait(after.id, { timeoutMs: 20_000 });
      assert.equal(done.state, TaskState.SUCCEEDED);
      assert.equal(done.resultText(), "done after restart");
      assert.deepEqual(ran, ["held", "after restart"]);
      assert.equal(runError, null);
    } finally {
      gate.resolve();
      await worker.stop();
      await run;
      client.close();
      await first.stop();
      await second?.stop();
    }
  });

  it("a broker killed mid-task: the handler aborts (disconnected), the task comes back after a restart", async () => {
    const dataDir = tempDir("kill");
    const config = '[queues.default]\nlease_duration = "1s"\n';
    const first = await startBroker({ storage: "embedded", dataDir, config });
    const client = new Client(first.addr, first.conn);
    const queue = uniqueQueue("kill");
    const started = new Signal<string>();
    const aborted = new Signal<unknown>();
    const testOver = new Signal(); // a handler must not outlive a failed test
    const attempts: number[] = [];
    const worker = new Worker(first.addr, {
      ...first.conn,
      queues: [queue],
      handleSignals: false,
      logger: null,
      reconnect: { initialMs: 100, maxMs: 500 },
    });
    worker.task("job", async (job, signal) => {
      attempts.push(job.attempt);
      if (job.attempt > 1) return `done on attempt ${job.attempt}`;
      started.resolve(job.id);
      await Promise.race([
        testOver.promise,
        new Promise<void>((resolve) =>
          signal.addEventListener("abort", () => {
            aborted.resolve(signal.reason);
            resolve();
          }),
        ),
      ]);
      return "ignored: the stream is gone";
    });
    const run = worker.run();
    let second: Awaited<ReturnType<typeof startBroker>> | null = null;
    try {
      const t = await client.enqueue("job", null, { queue, maxAttempts: 5 });
      await within(started.promise, 15_000, "the task to start");
      await first.stop("SIGKILL");
      const reason = await within(aborted.promise, 15_000, "the handler's signal to abort");
      assert.ok(reason instanceof LeaseLost, String(reason));
      assert.equal((reason as LeaseLost).reason, "disconnected");

      second = await startBroker({ storage: "embedded", dataDir, config, listen: first.addr });
      const done = await client.wait(t.id, { timeoutMs: 20_000 });
      assert.equal(done.state, TaskState.SUCCEEDED, done.lastError);
      assert.equal(done.attempt, 2);
      assert.equal(done.resultText(), "done on attempt 2");
      assert.deepEqual(attempts, [1, 2]);
    } finally {
      testOver.resolve();
      await worker.stop();
      await run;
      client.close();
      await second?.stop();
    }
  });
});
