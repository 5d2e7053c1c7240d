// Auth is really on in the secure pass: a client without the token gets
// Unauthenticated, a principal without the grant PermissionDenied naming the
// action and the queue (ErrorInfo.metadata).

import { after, before, describe, it } from "node:test";
import * as assert from "node:assert/strict";
import { Client, PermissionDenied, TaskbrokerError, Unauthenticated } from "../src/index";
import { Broker, SECURE, newToken, startBroker, uniqueQueue } from "./broker";

/** Each test says why it skips the plain pass (so the summary counts them). */
const skip = !SECURE && "secure pass only (TASKBROKER_TEST_SECURE=1): the plain pass's brokers have auth off";

describe("auth in the secure pass", () => {
  /** May only enqueue (and so read back) tasks of "granted". */
  const producerToken = newToken();
  let broker: Broker;

  before(async () => {
    if (skip) return;
    broker = await startBroker({
      principals: [
        { name: "producer", token: producerToken, grants: '[{ actions = ["enqueue"], queues = ["granted"] }]' },
      ],
    });
  });

  after(async () => {
    await broker?.stop();
  });

  it("refuses a client without the token, or with an unknown one, as Unauthenticated", { skip }, async () => {
    for (const token of [undefined, "not-a-known-token"]) {
      const c = new Client(broker.addr, { ...broker.conn, token, retry: { maxAttempts: 1 } });
      try {
        await assert.rejects(c.enqueue("k", null, { queue: uniqueQueue("anon") }), (e: TaskbrokerError) => {
          assert.ok(e instanceof Unauthenticated, `${e}`);
          assert.equal(e.reason, "UNAUTHENTICATED");
          return true;
        });
      } finally {
        c.close();
      }
    }
    // The suite's own client, on the same broker, is let in.
    const ok = new Client(broker.addr, broker.conn);
    try {
      assert.equal((await ok.enqueue("k", null, { queue: "anything" })).queue, "anything");
    } finally {
      ok.close();
    }
  });

  it("denies a principal without the grant, naming the action and the queue", { skip }, async () => {
    const c = new Client(broker.addr, { ...broker.conn, token: producerToken, retry: { maxAttempts: 1 } });
    try {
      const t = await c.enqueue("k", null, { queue: "granted" });
      await assert.rejects(c.enqueue("k", null, { queue: "elsewhere" }), (e: TaskbrokerError) => {
        assert.ok(e instanceof PermissionDenied, `${e}`);
        assert.equal(e.reason, "PERMISSION_DENIED");
        assert.deepEqual(e.metadata, { action: "enqueue", queue: "elsewhere" });
        return true;
      });
      // Its grant covers what it enqueued: the denial above was the queue, not the token.
      assert.equal((await c.get(t.id)).queue, "granted");
    } finally {
      c.close();
    }
  });
});
