// TLS and bearer tokens as the client sends them. These tests put a
// TLS-terminating TCP proxy (node:tls, like an ingress) in front of a
// plaintext broker, with certificates from a throwaway CA made by the openssl
// CLI, so that they control the server side (a wrong name, mutual TLS).
// Tokens are checked on the wire with a grpc-js interceptor. The broker's own
// TLS and auth are the secure pass (TASKBROKER_TEST_SECURE=1, see broker.ts
// and auth.test.ts), in which these tests skip.

import { after, before, describe, it } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as tls from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { Client, TaskState, Unavailable, Worker } from "../src/index";
import { Broker, SECURE, startBroker, tempDir, uniqueQueue } from "./broker";
import { Certs, makeCerts } from "./certs";

let broker: Broker;
let certs: Certs;

/** A TLS server on 127.0.0.1 that pipes each connection to the broker; resolves with its address. */
async function tlsProxy(opts: { mutual: boolean }): Promise<{ addr: string; close: () => void }> {
  const sockets = new Set<net.Socket>();
  const server = tls.createServer(
    {
      key: fs.readFileSync(certs.serverKey),
      cert: fs.readFileSync(certs.serverCert),
      ca: fs.readFileSync(certs.ca),
      requestCert: opts.mutual,
      rejectUnauthorized: opts.mutual,
      ALPNProtocols: ["h2"],
    },
    (client) => {
      const upstream = net.connect(broker.port, "127.0.0.1");
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
        s.on("close", () => sockets.delete(s));
      }
      client.pipe(upstream).pipe(client);
    },
  );
  server.on("tlsClientError", () => {});
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    addr: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: () => {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

/** Each test says why it skips the secure pass (so the summary counts them). */
const skip = SECURE && "plain pass only: a TLS proxy of its own in front of a plaintext broker";

describe("TLS and tokens", () => {
  before(async () => {
    if (skip) return;
    certs = makeCerts(tempDir("certs"));
    broker = await startBroker();
  });

  after(async () => {
    await broker?.stop();
  });

  it("talks TLS to a server whose certificate a given CA signed (serverName checked)", { skip }, async () => {
    const proxy = await tlsProxy({ mutual: false });
    const tlsOpts = { ca: certs.ca, serverName: "localhost" };
    const client = new Client(proxy.addr, { tls: tlsOpts });
    const queue = uniqueQueue("tls");
    const worker = new Worker(proxy.addr, { queues: [queue], tls: tlsOpts, handleSignals: false, logger: null });
    worker.task("k", (job) => `over TLS: ${job.text()}`);
    const run = worker.run();
    try {
      const t = await client.enqueue("k", "hi", { queue });
      const done = await client.wait(t.id, { timeoutMs: 15_000 });
      assert.equal(done.state, TaskState.SUCCEEDED);
      assert.equal(done.resultText(), "over TLS: hi");
    } finally {
      await worker.stop();
      await run;
      client.close();
      proxy.close();
    }
  });

  it("refuses a server certificate it cannot verify", { skip }, async () => {
    const proxy = await tlsProxy({ mutual: false });
    const untrusting = new Client(proxy.addr, {
      tls: { serverName: "localhost" }, // the system roots: the test CA is not among them
      retry: { maxAttempts: 1 },
    });
    const wrongName = new Client(proxy.addr, {
      tls: { ca: fs.readFileSync(certs.ca), serverName: "not-the-server.example" },
      retry: { maxAttempts: 1 },
    });
    try {
      await assert.rejects(untrusting.enqueue("k", null), Unavailable);
      await assert.rejects(wrongName.enqueue("k", null), Unavailable);
    } finally {
      untrusting.close();
      wrongName.close();
      proxy.close();
    }
  });

  it("presents a client certificate for mutual TLS", { skip }, async () => {
    const proxy = await tlsProxy({ mutual: true });
    const ca = fs.readFileSync(certs.ca, "utf8"); // PEM text this time
    const withCert = new Client(proxy.addr, {
      tls: { ca, cert: certs.clientCert, key: certs.clientKey, serverName: "localhost" },
    });
    const without = new Client(proxy.addr, { tls: { ca, serverName: "localhost" }, retry: { maxAttempts: 1 } });
    try {
      const t = await withCert.enqueue("k", "mtls", { queue: uniqueQueue("mtls") });
      assert.equal((await withCert.get(t.id)).payload.toString(), "mtls");
      await assert.rejects(without.enqueue("k", null), Unavailable);
    } finally {
      withCert.close();
      without.close();
      proxy.close();
    }
  });

  it("sends the token as `authorization: Bearer` on every call and on the worker stream", { skip }, async () => {
    const seen: string[] = [];
    const capture: grpc.Interceptor = (options, nextCall) =>
      new grpc.InterceptingCall(nextCall(options), {
        start(metadata, listener, next) {
          const method = options.method_definition.path.split("/").pop();
          seen.push(`${method} ${metadata.get("authorization").join(",")}`);
          next(metadata, listener);
        },
      });
    const channelOptions = { interceptors: [capture] };
    const client = new Client(broker.addr, { token: "s3cret", channelOptions });
    const queue = uniqueQueue("token");
    const worker = new Worker(broker.addr, {
      queues: [queue],
      token: "s3cret",
      channelOptions,
      handleSignals: false,
      logger: null,
    });
    worker.task("k", () => "ok");
    const run = worker.run();
    try {
      const t = await client.enqueue("k", null, { queue });
      await client.wait(t.id, { timeoutMs: 15_000 });
      await client.get(t.id);
    } finally {
      await worker.stop();
      await run;
      client.close();
    }
    for (const method of ["Enqueue", "WatchTask", "GetTask", "Stream"]) {
      assert.ok(seen.includes(`${method} Bearer s3cret`), `${method} without the token: ${seen.join("; ")}`);
    }
    assert.ok(seen.every((s) => s.endsWith(" Bearer s3cret")), seen.join("; "));
  });
});
