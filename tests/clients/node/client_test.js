#!/usr/bin/env node
// taskbroker from a real Node.js gRPC client, as a new user would write it.
//
// Usage: node client_test.js HOST:PORT
//
// The protos are loaded at run time with @grpc/proto-loader from the
// repository's proto/ directory; google/protobuf/*.proto come from
// protobufjs's bundled common types.
//
// Needs: npm ci --prefix tests/clients/node
// Exit 0 and a one-line summary on success; non-zero with a FAIL line otherwise.
'use strict';

const path = require('path');
const crypto = require('crypto');

const PROTO_DIR = path.resolve(__dirname, '..', '..', '..', 'proto');
const RPC_TIMEOUT_MS = 10000;
const STREAM_TIMEOUT_MS = 10000;

class CheckFailed extends Error {}

let checks = 0;
function check(cond, msg) {
  if (!cond) throw new CheckFailed(msg);
  checks += 1;
}

let grpc, protoLoader;
try {
  grpc = require('@grpc/grpc-js');
  protoLoader = require('@grpc/proto-loader');
} catch (e) {
  console.error(
    `FAIL: node client: missing package (${e.message.split('\n')[0]}); ` +
      'install with: npm ci --prefix tests/clients/node',
  );
  process.exit(3);
}

function loadApi() {
  const def = protoLoader.loadSync(['taskbroker/v1/producer.proto', 'taskbroker/v1/worker.proto'], {
    includeDirs: [PROTO_DIR],
    keepCase: true, // field names as in the .proto (task_id, lease_id)
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true, // a virtual field names the member of each oneof that is set
  });
  return grpc.loadPackageDefinition(def).taskbroker.v1;
}

// --- A minimal protobuf wire reader, enough for google.rpc.Status,
// google.protobuf.Any and google.rpc.ErrorInfo (no error_details.proto needed).
function readFields(buf) {
  const fields = [];
  let i = 0;
  const varint = () => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      if (i >= buf.length) throw new CheckFailed('truncated protobuf varint');
      const b = buf[i++];
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return v;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = Number(varint());
    const no = key >> 3;
    const wire = key & 7;
    if (wire === 0) fields.push({ no, value: varint() });
    else if (wire === 2) {
      const len = Number(varint());
      fields.push({ no, value: buf.subarray(i, i + len) });
      i += len;
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else throw new CheckFailed(`unexpected protobuf wire type ${wire}`);
  }
  return fields;
}

// google.rpc.Status {code=1, message=2, details=3 (Any {type_url=1, value=2})}
function decodeStatus(buf) {
  const st = { code: 0, message: '', details: [] };
  for (const f of readFields(buf)) {
    if (f.no === 1) st.code = Number(BigInt.asIntN(32, f.value));
    else if (f.no === 2) st.message = f.value.toString('utf8');
    else if (f.no === 3) {
      const any = { type_url: '', value: Buffer.alloc(0) };
      for (const g of readFields(f.value)) {
        if (g.no === 1) any.type_url = g.value.toString('utf8');
        else if (g.no === 2) any.value = g.value;
      }
      st.details.push(any);
    }
  }
  return st;
}

// google.rpc.ErrorInfo {reason=1, domain=2, metadata=3}
function errorInfo(st) {
  const any = st.details.find((d) => d.type_url === 'type.googleapis.com/google.rpc.ErrorInfo');
  if (!any) return null;
  const info = { reason: '', domain: '' };
  for (const f of readFields(any.value)) {
    if (f.no === 1) info.reason = f.value.toString('utf8');
    else if (f.no === 2) info.domain = f.value.toString('utf8');
  }
  return info;
}

function deadline(ms = RPC_TIMEOUT_MS) {
  return { deadline: Date.now() + ms };
}

function unary(client, method, req, ms) {
  return new Promise((resolve, reject) => {
    client[method](req, deadline(ms), (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

async function expectError(code, promise, what) {
  try {
    await promise;
  } catch (err) {
    if (err instanceof CheckFailed) throw err;
    check(err.code === code, `${what}: expected code ${code}, got ${err.code}: ${err.details}`);
    return err;
  }
  throw new CheckFailed(`${what}: expected code ${code}, but the call succeeded`);
}

// Buffers a call's 'data' events so the test can await them with a timeout.
class Inbox {
  constructor(call) {
    this.items = [];
    this.waiters = [];
    call.on('data', (m) => this.push({ msg: m }));
    call.on('end', () => this.push({ end: true }));
    call.on('error', (e) => this.push({ error: e }));
  }

  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }

  take(ms) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve) => {
      const waiter = (item) => {
        clearTimeout(timer);
        resolve(item);
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        resolve(null);
      }, ms);
      this.waiters.push(waiter);
    });
  }

  // The next message; 'end' when the stream closed cleanly.
  async next(what, ms = STREAM_TIMEOUT_MS) {
    const item = await this.take(ms);
    if (item === null) throw new CheckFailed(`timed out after ${ms} ms waiting for ${what}`);
    if (item.error) throw new CheckFailed(`stream failed while waiting for ${what}: ${item.error.message}`);
    return item.end ? 'end' : item.msg;
  }
}

async function main() {
  const addr = process.argv[2];
  if (!addr) {
    console.error('usage: node client_test.js HOST:PORT');
    return 2;
  }
  const api = loadApi();
  const producer = new api.ProducerService(addr, grpc.credentials.createInsecure());
  const worker = new api.WorkerService(addr, grpc.credentials.createInsecure());
  await new Promise((resolve, reject) =>
    producer.waitForReady(Date.now() + RPC_TIMEOUT_MS, (err) =>
      err ? reject(new CheckFailed(`could not connect to ${addr}: ${err.message}`)) : resolve(),
    ),
  );
  const run = crypto.randomBytes(6).toString('hex');
  const get = async (id) => (await unary(producer, 'GetTask', { task_id: id })).task;
  const lease = async (q, n, extra = {}) =>
    (await unary(worker, 'Lease', { queues: [q], max_tasks: n, worker_id: 'node-client', ...extra }, 15000)).tasks;

  // --- Enqueue -------------------------------------------------------------
  const q = `node-${run}`;
  const enq = await unary(producer, 'Enqueue', {
    queue: q,
    kind: 'node.unary',
    payload: Buffer.from('hello'),
    content_type: 'text/plain',
    headers: { a: '1' },
  });
  const t1 = enq.task;
  check(typeof t1.id === 'string' && t1.id.length === 26, `task id should be a ULID, got ${t1.id}`);
  check(t1.queue === q && t1.kind === 'node.unary', `enqueued queue/kind ${t1.queue}/${t1.kind}`);
  // Enqueue answers without the payload; GetTask returns it.
  check(Buffer.from(t1.payload).length === 0, 'Enqueue answers without the payload');
  check(Buffer.from((await get(t1.id)).payload).toString() === 'hello', 'payload round trip (GetTask)');
  check(t1.headers.a === '1', `headers round trip: ${JSON.stringify(t1.headers)}`);
  check(t1.state === 'TASK_STATE_READY', `new task state ${t1.state}`);
  check(enq.deduplicated === false, 'fresh enqueue reported deduplicated');

  // --- EnqueueBatch with one bad item ----------------------------------------
  const batch = await unary(producer, 'EnqueueBatch', {
    tasks: [
      { queue: q, kind: 'node.batch', payload: Buffer.from('b0') },
      { queue: q, kind: '' },
    ],
  });
  check(batch.results.length === 2, `batch of 2 gave ${batch.results.length} results`);
  check(batch.results[0].result === 'task', `first batch item: ${JSON.stringify(batch.results[0])}`);
  check(batch.results[1].result === 'error', `second batch item: ${JSON.stringify(batch.results[1])}`);
  check(batch.results[1].error.code === grpc.status.INVALID_ARGUMENT, `bad item code ${batch.results[1].error.code}`);
  const b0 = batch.results[0].task;

  // --- Lease + Ack ------------------------------------------------------------
  const leased = await lease(q, 10);
  check(
    JSON.stringify(leased.map((l) => l.task.id)) === JSON.stringify([t1.id, b0.id]),
    `leased ${leased.map((l) => l.task.id)}, want FIFO ${[t1.id, b0.id]}`,
  );
  for (const l of leased) {
    check(l.lease_id !== '', `leased task ${l.task.id} has no lease_id`);
    check(l.task.state === 'TASK_STATE_LEASED' && l.task.attempt === 1, `leased task state ${l.task.state}`);
    check(Number(l.lease_expire_time.seconds) > Date.now() / 1000, 'lease_expire_time is in the future');
  }
  await unary(worker, 'Ack', { task_id: t1.id, lease_id: leased[0].lease_id, result: Buffer.from('done') });
  let got = await get(t1.id);
  check(got.state === 'TASK_STATE_SUCCEEDED', `after Ack state ${got.state}`);
  check(Buffer.from(got.result).toString() === 'done', `after Ack result ${got.result}`);

  // --- Stale lease_id -> FAILED_PRECONDITION / LEASE_MISMATCH ------------------
  const stale = leased[1];
  await unary(worker, 'Nack', {
    task_id: b0.id,
    lease_id: stale.lease_id,
    error: 'again',
    retry_after: { seconds: 0, nanos: 1 },
  });
  const again = await lease(q, 1, { wait: { seconds: 5, nanos: 0 } });
  check(again.length === 1 && again[0].task.id === b0.id, `re-lease after Nack got ${again.map((l) => l.task.id)}`);
  check(again[0].lease_id !== stale.lease_id, 'a new delivery must get a new lease_id');
  check(again[0].task.attempt === 2, `second delivery attempt ${again[0].task.attempt}`);
  const err = await expectError(
    grpc.status.FAILED_PRECONDITION,
    unary(worker, 'Ack', { task_id: b0.id, lease_id: stale.lease_id }),
    'Ack with a stale lease_id',
  );
  const raw = err.metadata.get('grpc-status-details-bin');
  check(raw.length === 1, 'stale-lease error has a grpc-status-details-bin trailer');
  const st = decodeStatus(raw[0]);
  check(st.code === grpc.status.FAILED_PRECONDITION, `Status.code ${st.code}`);
  const info = errorInfo(st);
  check(info && info.reason === 'LEASE_MISMATCH', `stale-lease ErrorInfo ${JSON.stringify(info)}`);
  check(info.domain === 'taskbroker', `stale-lease ErrorInfo.domain ${info.domain}`);
  check((await get(b0.id)).state === 'TASK_STATE_LEASED', 'task untouched by a stale Ack');
  await unary(worker, 'Ack', { task_id: b0.id, lease_id: again[0].lease_id });
  check((await get(b0.id)).state === 'TASK_STATE_SUCCEEDED', 'Ack with the current lease_id succeeds');

  await expectError(
    grpc.status.INVALID_ARGUMENT,
    unary(producer, 'Enqueue', { queue: q, kind: '' }),
    'Enqueue with an empty kind',
  );

  // --- Worker Stream: subscribe(max_in_flight=2), ack over the stream ----------
  const sq = `node-stream-${run}`;
  const streamIds = [];
  for (let i = 0; i < 3; i++) {
    streamIds.push((await unary(producer, 'Enqueue', { queue: sq, kind: 'node.stream', payload: Buffer.from(`s${i}`) })).task.id);
  }
  const call = worker.Stream();
  const inbox = new Inbox(call);
  try {
    call.write({ subscribe: { queues: [sq], max_in_flight: 2, worker_id: 'node-stream' } });
    const pushed = [];
    for (let i = 0; i < 2; i++) {
      const m = await inbox.next('a pushed task');
      check(m !== 'end' && m.msg === 'task', `expected a task push, got ${JSON.stringify(m)}`);
      pushed.push(m.task);
    }
    check(
      JSON.stringify(pushed.map((p) => p.task.id)) === JSON.stringify(streamIds.slice(0, 2)),
      `stream pushed ${pushed.map((p) => p.task.id)}, want ${streamIds.slice(0, 2)}`,
    );
    const extra = await inbox.take(500);
    check(extra === null, `max_in_flight=2 but a third message came before any ack: ${JSON.stringify(extra)}`);
    for (const p of pushed) call.write({ ack: { task_id: p.task.id, lease_id: p.lease_id, result: Buffer.from('ok') } });
    const settled = [];
    const tasks = [];
    while (settled.length < 2 || tasks.length < 1) {
      const m = await inbox.next('settled acks and the third task');
      if (m !== 'end' && m.msg === 'settled') settled.push(m.settled);
      else if (m !== 'end' && m.msg === 'task') tasks.push(m.task);
      else throw new CheckFailed(`unexpected stream message ${JSON.stringify(m)}`);
    }
    for (const s of settled) {
      check(s.error === null, `ack over the stream failed: ${JSON.stringify(s.error)}`);
      check(s.operation === 'SETTLE_OPERATION_ACK', `settled operation ${s.operation}`);
    }
    check(
      JSON.stringify(settled.map((s) => s.task_id).sort()) === JSON.stringify(streamIds.slice(0, 2).sort()),
      `settled ids ${settled.map((s) => s.task_id)}`,
    );
    check(tasks.length === 1 && tasks[0].task.id === streamIds[2], `third push ${tasks.map((t) => t.task.id)}`);
    call.write({ ack: { task_id: tasks[0].task.id, lease_id: tasks[0].lease_id } });
    const m = await inbox.next('settled for the third ack');
    check(
      m !== 'end' && m.msg === 'settled' && m.settled.task_id === streamIds[2] && m.settled.error === null,
      `third ack: ${JSON.stringify(m)}`,
    );
  } finally {
    call.end();
    call.cancel();
  }
  for (const id of streamIds) {
    got = await get(id);
    check(got.state === 'TASK_STATE_SUCCEEDED', `stream task ${id} state ${got.state}`);
  }

  // --- WatchTask to SUCCEEDED -------------------------------------------------
  const wq = `node-watch-${run}`;
  const wt = (await unary(producer, 'Enqueue', { queue: wq, kind: 'node.watch' })).task;
  const watch = producer.WatchTask({ task_id: wt.id }, deadline(30000));
  const winbox = new Inbox(watch);
  const first = await winbox.next("the watch's first state");
  check(first !== 'end' && first.task.state === 'TASK_STATE_READY', `watch starts at ${JSON.stringify(first)}`);
  const [lw] = await lease(wq, 1);
  await unary(worker, 'Ack', { task_id: wt.id, lease_id: lw.lease_id, result: Buffer.from('watched') });
  const states = [first.task.state];
  for (;;) {
    const w = await winbox.next('watch updates until the stream ends');
    if (w === 'end') break;
    states.push(w.task.state);
  }
  check(states[states.length - 1] === 'TASK_STATE_SUCCEEDED', `watch states ${states}, want SUCCEEDED last`);
  const order = ['TASK_STATE_READY', 'TASK_STATE_LEASED', 'TASK_STATE_SUCCEEDED'];
  check(
    states.every((s, i) => i === 0 || order.indexOf(s) > order.indexOf(states[i - 1])),
    `watch states out of order: ${states}`,
  );

  producer.close();
  worker.close();
  const version = require('@grpc/grpc-js/package.json').version;
  console.log(`node client: OK, ${checks} checks passed against ${addr} (@grpc/grpc-js ${version}, node ${process.version})`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    if (e instanceof CheckFailed) console.error(`FAIL: node client: ${e.message}`);
    else {
      console.error(e);
      const desc = e && e.code !== undefined ? `code ${e.code}: ${e.details}` : String(e);
      console.error(`FAIL: node client: unexpected error: ${desc}`);
    }
    process.exit(1);
  },
);
