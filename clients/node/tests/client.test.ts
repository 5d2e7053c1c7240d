// The producer Client against a real broker: enqueue options, payloads,
// dedup and idempotency, wait, get/cancel, enqueueMany, error mapping,
// retries on UNAVAILABLE.

import { after, before, describe, it } from "node:test";
import * as assert from "node:assert/strict";
import * as net from "node:net";
import {
  Client,
  DeadlineExceeded,
  EnqueueManyError,
  InvalidArgument,
  QueueNotFound,
  Task,
  TaskFinished,
  TaskNotFound,
  TaskState,
  Unavailable,
  Worker,
} from "../src/index";
import { loadApi } from "../src/proto";
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

/** A port nothing listens on (for now). */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

describe("Client", () => {
  it("enqueue returns the Task with every option applied", async () => {
    const queue = uniqueQueue("opts");
    const t = await client.enqueue(
      "email.send",
      { to: "a@b.c" },
      { queue, priority: 7, headers: { tenant: "acme" }, maxAttempts: 3, dedupKey: "d-1" },
    );
    assert.ok(t instanceof Task);
    assert.match(t.id, /^[0-9A-HJKMNP-TV-Z]{26}$/);
    assert.equal(t.queue, queue);
    assert.equal(t.kind, "email.send");
    assert.equal(t.state, TaskState.READY);
    assert.equal(t.priority, 7);
    assert.deepEqual(t.headers, { tenant: "acme" });
    assert.equal(t.maxAttempts, 3);
    assert.equal(t.dedupKey, "d-1");
    assert.equal(t.contentType, "application/json");
    // Enqueue answers without the payload (GetTask returns it).
    assert.equal(t.payload.length, 0);
    assert.deepEqual((await client.get(t.id)).payloadJson(), { to: "a@b.c" });
    assert.ok(t.createTime instanceof Date && Math.abs(t.createTime.getTime() - Date.now()) < 60_000);
  });

  it("encodes strings as text, bytes as they are, and honours contentType", async () => {
    const queue = uniqueQueue("payload");
    const s = await client.enqueue("k", "héllo", { queue });
    assert.equal((await client.get(s.id)).payload.toString("utf8"), "héllo");
    assert.equal(s.contentType, "text/plain");
    const raw = Buffer.from([0, 1, 2, 255]);
    const b = await client.enqueue("k", raw, { queue, contentType: "application/x-raw" });
    assert.deepEqual((await client.get(b.id)).payload, raw);
    assert.equal(b.contentType, "application/x-raw");
    const empty = await client.enqueue("k", undefined, { queue });
    assert.equal((await client.get(empty.id)).payload.length, 0);
  });

  it("delayMs and runAt schedule the task", async () => {
    const queue = uniqueQueue("delay");
    const before = Date.now();
    const d = await client.enqueue("k", null, { queue, delayMs: 60_000 });
    assert.equal(d.state, TaskState.SCHEDULED);
    const due = d.scheduledTime!.getTime() - before;
    assert.ok(due >= 59_000 && due <= 65_000, `scheduled ${due} ms ahead, want ~60000`);
    const at = new Date(Date.now() + 3_600_000);
    const r = await client.enqueue("k", null, { queue, runAt: at });
    assert.equal(r.state, TaskState.SCHEDULED);
    assert.ok(Math.abs(r.scheduledTime!.getTime() - at.getTime()) < 1_000, `${r.scheduledTime} vs ${at}`);
  });

  it("a repeated dedupKey or requestId returns the first task", async () => {
    const queue = uniqueQueue("dedup");
    const a = await client.enqueue("k", "1", { queue, dedupKey: "same" });
    const b = await client.enqueue("k", "2", { queue, dedupKey: "same" });
    assert.equal(b.id, a.id);
    const c = await client.enqueue("k", "3", { queue, requestId: "req-1" });
    const d = await client.enqueue("k", "4", { queue, requestId: "req-1" });
    assert.equal(d.id, c.id);
    const e = await client.enqueue("k", "3", { queue });
    const f = await client.enqueue("k", "3", { queue });
    assert.notEqual(e.id, f.id, "without a key each enqueue is a new task (a fresh requestId each)");
  });

  it("wait follows the task over WatchTask and returns it finished, with the result", async () => {
    const queue = uniqueQueue("wait");
    const t = await client.enqueue("sum", { a: 2, b: 3 }, { queue });
    const waiting = client.wait(t.id, { timeoutMs: 15_000 });
    const worker = new Worker(broker.addr, { ...broker.conn, queues: [queue], handleSignals: false, logger: null });
    worker.task("sum", (job) => {
      const { a, b } = job.json();
      return { sum: a + b };
    });
    const run = worker.run();
    const done = await waiting;
    await worker.stop();
    await run;
    assert.equal(done.id, t.id);
    assert.equal(done.state, TaskState.SUCCEEDED);
    assert.deepEqual(done.resultJson(), { sum: 5 });
    assert.equal(done.attempt, 1);
  });

  it("wait with timeoutMs rejects with DeadlineExceeded when the task does not finish", async () => {
    const t = await client.enqueue("nobody", null, { queue: uniqueQueue("idle") });
    const started = Date.now();
    await assert.rejects(client.wait(t.id, { timeoutMs: 300 }), (e: unknown) => {
      assert.ok(e instanceof DeadlineExceeded, String(e));
      assert.match((e as Error).message, /not finished after 300 ms \(state TASK_STATE_READY\)/);
      return true;
    });
    const took = Date.now() - started;
    assert.ok(took >= 290 && took < 5_000, `took ${took} ms`);
  });

  it("get and cancel; wait returns a canceled task; errors for unknown and finished tasks", async () => {
    const queue = uniqueQueue("cancel");
    const t = await client.enqueue("k", null, { queue });
    assert.equal((await client.get(t.id)).state, TaskState.READY);
    const c = await client.cancel(t.id);
    assert.equal(c.state, TaskState.CANCELED);
    assert.equal((await client.cancel(t.id)).state, TaskState.CANCELED, "cancel is idempotent");
    assert.equal((await client.wait(t.id, { timeoutMs: 5_000 })).state, TaskState.CANCELED);

    const unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    await assert.rejects(client.get(unknown), (e: unknown) => {
      assert.ok(e instanceof TaskNotFound, String(e));
      assert.equal(e.reason, "TASK_NOT_FOUND");
      assert.equal(e.codeName, "NOT_FOUND");
      assert.equal(e.metadata.task_id, unknown);
      return true;
    });

    const done = await client.enqueue("k", null, { queue: uniqueQueue("finished") });
    const worker = new Worker(broker.addr, {
      ...broker.conn,
      queues: [done.queue],
      handleSignals: false,
      logger: null,
    });
    worker.task("k", () => "ok");
    const run = worker.run();
    await client.wait(done.id, { timeoutMs: 10_000 });
    await worker.stop();
    await run;
    await assert.rejects(
      client.cancel(done.id),
      (e: unknown) => e instanceof TaskFinished && e.reason === "TASK_FINISHED",
    );
  });

  it("enqueueMany returns the tasks in order, or every item's outcome when some are refused", async () => {
    const queue = uniqueQueue("many");
    const tasks = await client.enqueueMany([
      { kind: "a", payload: { n: 1 }, queue },
      { kind: "b", payload: "two", queue, priority: 9 },
      { kind: "c", queue },
    ]);
    assert.deepEqual(
      tasks.map((t) => [t.kind, t.queue, t.priority]),
      [
        ["a", queue, 0],
        ["b", queue, 9],
        ["c", queue, 0],
      ],
    );
    await assert.rejects(
      client.enqueueMany([
        { kind: "ok", queue },
        { kind: "", queue },
      ]),
      (e: unknown) => {
        assert.ok(e instanceof EnqueueManyError, String(e));
        assert.ok(e.results[0] instanceof Task);
        assert.ok(e.results[1] instanceof InvalidArgument);
        assert.deepEqual(
          (e.results[1] as InvalidArgument).fieldViolations.map((v) => v.field),
          ["kind"],
        );
        assert.equal(e.errors.length, 1);
        return true;
      },
    );
  });

  it("maps a bad priority to InvalidArgument naming the field", async () => {
    await assert.rejects(client.enqueue("k", null, { queue: uniqueQueue("bad"), priority: 12 }), (e: unknown) => {
      assert.ok(e instanceof InvalidArgument, String(e));
      assert.equal(e.code, 3);
      assert.equal(e.reason, "INVALID_ARGUMENT");
      assert.equal(e.domain, "taskbroker");
      assert.deepEqual(
        e.fieldViolations.map((v) => v.field),
        ["priority"],
      );
      assert.match(e.fieldViolations[0].description, /0-9/);
      return true;
    });
  });

  it("maps an undeclared queue under strict_queues to QueueNotFound", async () => {
    const strict = await startBroker({ config: 'strict_queues = true\n[queues.declared]\n' });
    const c = new Client(strict.addr, strict.conn);
    try {
      assert.equal((await c.enqueue("k", null, { queue: "declared" })).queue, "declared");
      await assert.rejects(c.enqueue("k", null, { queue: "undeclared" }), (e: unknown) => {
        assert.ok(e instanceof QueueNotFound, String(e));
        assert.equal(e.metadata.queue, "undeclared");
        return true;
      });
    } finally {
      c.close();
      await strict.stop();
    }
  });

  it("retries an enqueue after UNAVAILABLE until the broker is up", async () => {
    const port = await freePort();
    const retried = new Signal<number>();
    let retries = 0;
    const c = new Client(`127.0.0.1:${port}`, {
      ...broker.conn, // the late broker is made like this one
      retry: {
        maxAttempts: 50,
        initialMs: 50,
        maxMs: 200,
        onRetry: (e, attempt) => {
          assert.ok(e instanceof Unavailable);
          retries = attempt;
          retried.resolve(attempt);
        },
      },
    });
    let late: Broker | null = null;
    try {
      const enqueued = c.enqueue("k", "late", { queue: "late" });
      await within(retried.promise, 10_000, "the first retry");
      late = await startBroker({ listen: `127.0.0.1:${port}` });
      const t = await within(enqueued, 20_000, "the enqueue to succeed");
      assert.equal((await c.get(t.id)).payload.toString(), "late");
      assert.ok(retries >= 1);
      assert.equal((await c.get(t.id)).id, t.id);
    } finally {
      c.close();
      await late?.stop();
    }
  });

  it("gives up with Unavailable after maxAttempts", async () => {
    const port = await freePort();
    let retries = 0;
    const c = new Client(`127.0.0.1:${port}`, {
      ...broker.conn,
      retry: { maxAttempts: 3, initialMs: 10, onRetry: () => retries++ },
    });
    try {
      await assert.rejects(c.enqueue("k", null), Unavailable);
      assert.equal(retries, 2);
    } finally {
      c.close();
    }
  });

  it("speaks TLS when asked: a plaintext broker (secure pass: an untrusted CA) fails the handshake", async () => {
    // By name, so that Node does not warn about an IP address as the TLS server name.
    const c = new Client(`localhost:${broker.port}`, { tls: true, retry: { maxAttempts: 1 }, deadlineMs: 5_000 });
    try {
      await assert.rejects(c.enqueue("k", null), Unavailable);
    } finally {
      c.close();
    }
  });

  it("sends concurrencyKey and semaphores, and reads them back on the task", async () => {
    const b = await startBroker({ config: "[semaphores.selenium]\nlimit = 1\n" });
    const c = new Client(b.addr, b.conn);
    try {
      const t = await c.enqueue("k", null, { queue: "browsers", concurrencyKey: "tenant-1", semaphores: ["selenium"] });
      const got = await c.get(t.id);
      assert.deepEqual([got.concurrencyKey, got.semaphores], ["tenant-1", ["selenium"]]);
      await assert.rejects(c.enqueue("k", null, { queue: "browsers", semaphores: ["nope"] }), (e: any) => {
        assert.deepEqual(e.fieldViolations.map((v: any) => v.field), ["semaphores"]);
        return true;
      });
    } finally {
      c.close();
      await b.stop();
    }
  });

  it("sends dependsOn, onDependencyFailure and ttlMs; reads the dependencies back", async () => {
    const dep = await client.enqueue("part", null, { queue: uniqueQueue("parts") });
    const join = await client.enqueue("join", null, {
      queue: uniqueQueue("joins"),
      dependsOn: [dep.id],
      onDependencyFailure: "run",
      ttlMs: 60_000,
    });
    assert.deepEqual([join.state, join.dependsOn, join.pendingDependencies], [TaskState.WAITING, [dep.id], 1]);
    assert.ok(join.expireTime instanceof Date);
    await client.cancel(dep.id);
    assert.equal((await client.get(join.id)).state, TaskState.READY, "RUN: a canceled dependency counts as done");
    const deps = await client.getDependencies(join.id);
    assert.deepEqual(
      deps.map((d) => [d.id, d.state]),
      [[dep.id, TaskState.CANCELED]],
    );
  });

  it("accepts concurrencyKey only when the API has EnqueueRequest.concurrency_key", async () => {
    const supported = loadApi().enqueueFields.has("concurrencyKey");
    const attempt = client.enqueue("k", null, { queue: uniqueQueue("ck"), concurrencyKey: "tenant-1" });
    if (supported) {
      assert.ok((await attempt) instanceof Task);
    } else {
      await assert.rejects(attempt, /concurrencyKey: .* has no concurrency_key field/);
    }
  });
});
