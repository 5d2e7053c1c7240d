#!/usr/bin/env python3
"""taskbroker from a real Python gRPC client, as a new user would write it.

Usage: python3 client_test.py HOST:PORT

Stubs are generated at run time from the repository's proto/ directory into a
temporary directory with grpc_tools.protoc (which ships google/protobuf/*.proto).
ErrorInfo and BadRequest come from googleapis-common-protos.

Needs: pip install -r tests/clients/python/requirements.txt
Exit 0 and a one-line summary on success; non-zero with a FAIL line otherwise.
"""

import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTO = ROOT / "proto"
RPC_TIMEOUT = 10.0  # seconds, on every unary call
STREAM_TIMEOUT = 10.0  # seconds to wait for one stream message


class CheckFailed(Exception):
    pass


CHECKS = 0


def check(cond, msg):
    global CHECKS
    if not cond:
        raise CheckFailed(msg)
    CHECKS += 1


def generate_stubs(out_dir):
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "taskbroker" / "v1").glob("*.proto"))
    protos.append("google/rpc/status.proto")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckFailed(f"protoc failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    # Our generated google/rpc/status_pb2 must win over any installed copy.
    sys.path.insert(0, str(out_dir))


def details(err, status_pb2):
    """The google.rpc.Status carried in an RpcError's grpc-status-details-bin trailer."""
    md = dict(err.trailing_metadata() or ())
    raw = md.get("grpc-status-details-bin")
    check(raw is not None, f"{err.code()} error has no grpc-status-details-bin trailer: {err.details()!r}")
    st = status_pb2.Status.FromString(raw)
    check(st.code == err.code().value[0], f"Status.code {st.code} != gRPC code {err.code()}")
    return st


def unpack(status, msg_cls):
    """The first detail of type msg_cls in a google.rpc.Status, or None."""
    for any_msg in status.details:
        if any_msg.Is(msg_cls.DESCRIPTOR):
            out = msg_cls()
            any_msg.Unpack(out)
            return out
    return None


class StreamReader:
    """Reads a response stream on a thread so the test can wait with a timeout."""

    END = object()

    def __init__(self, responses):
        self.responses = responses
        self.q = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for msg in self.responses:
                self.q.put(msg)
            self.q.put(self.END)
        except Exception as e:  # grpc.RpcError: the stream failed (or we canceled it)
            self.q.put(e)

    def next(self, what, timeout=STREAM_TIMEOUT):
        try:
            item = self.q.get(timeout=timeout)
        except queue.Empty:
            raise CheckFailed(f"timed out after {timeout}s waiting for {what}")
        if isinstance(item, Exception):
            raise CheckFailed(f"stream failed while waiting for {what}: {item}")
        return item

    def nothing_for(self, seconds):
        try:
            item = self.q.get(timeout=seconds)
        except queue.Empty:
            return None
        return item


def main():
    if len(sys.argv) != 2:
        print("usage: client_test.py HOST:PORT", file=sys.stderr)
        return 2
    addr = sys.argv[1]

    try:
        import grpc
        import grpc_tools  # noqa: F401
        from google.protobuf import duration_pb2
        from google.rpc import error_details_pb2
    except ImportError as e:
        print(
            f"FAIL: python client: missing package ({e}); "
            "install with: python3 -m pip install -r tests/clients/python/requirements.txt",
            file=sys.stderr,
        )
        return 3

    with tempfile.TemporaryDirectory(prefix="taskbroker-py-stubs-") as tmp:
        generate_stubs(tmp)
        from google.rpc import status_pb2
        from taskbroker.v1 import producer_pb2, producer_pb2_grpc, task_pb2, worker_pb2, worker_pb2_grpc

        check(
            Path(status_pb2.__file__).resolve().is_relative_to(Path(tmp).resolve()),
            f"google.rpc.status_pb2 came from {status_pb2.__file__}, not the generated stubs",
        )
        S = task_pb2.TaskState
        ErrorInfo, BadRequest = error_details_pb2.ErrorInfo, error_details_pb2.BadRequest

        channel = grpc.insecure_channel(addr)
        try:
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
        except grpc.FutureTimeoutError:
            raise CheckFailed(f"could not connect to {addr} within {RPC_TIMEOUT}s")
        producer = producer_pb2_grpc.ProducerServiceStub(channel)
        worker = worker_pb2_grpc.WorkerServiceStub(channel)
        run = uuid.uuid4().hex[:12]

        def get(task_id):
            return producer.GetTask(producer_pb2.GetTaskRequest(task_id=task_id), timeout=RPC_TIMEOUT).task

        def lease(q, n, **kw):
            req = worker_pb2.LeaseRequest(queues=[q], max_tasks=n, worker_id="py-client", **kw)
            return list(worker.Lease(req, timeout=RPC_TIMEOUT + 5).tasks)

        def expect_error(code, fn, what):
            try:
                fn()
            except grpc.RpcError as e:
                check(e.code() == code, f"{what}: expected {code}, got {e.code()}: {e.details()!r}")
                return e
            raise CheckFailed(f"{what}: expected {code}, but the call succeeded")

        # --- Enqueue (unary) ---------------------------------------------------
        q = f"py-{run}"
        resp = producer.Enqueue(
            producer_pb2.EnqueueRequest(
                queue=q, kind="py.unary", payload=b"hello", content_type="text/plain", headers={"a": "1"}
            ),
            timeout=RPC_TIMEOUT,
        )
        t1 = resp.task
        check(len(t1.id) == 26, f"task id should be a ULID, got {t1.id!r}")
        check(t1.queue == q and t1.kind == "py.unary", f"enqueued task has queue/kind {t1.queue}/{t1.kind}")
        # Enqueue answers without the payload; GetTask returns it.
        check(t1.payload == b"" and t1.content_type == "text/plain", "Enqueue answers without the payload")
        check(get(t1.id).payload == b"hello", "payload round trip (GetTask)")
        check(dict(t1.headers) == {"a": "1"}, f"headers round trip: {dict(t1.headers)}")
        check(t1.state == S.TASK_STATE_READY, f"new task state {S.Name(t1.state)}, want READY")
        check(not resp.deduplicated, "fresh enqueue reported deduplicated")

        # --- EnqueueBatch with one bad item --------------------------------------
        batch = producer.EnqueueBatch(
            producer_pb2.EnqueueBatchRequest(
                tasks=[
                    producer_pb2.EnqueueRequest(queue=q, kind="py.batch", payload=b"b0"),
                    producer_pb2.EnqueueRequest(queue=q, kind="", payload=b"bad"),
                    producer_pb2.EnqueueRequest(queue=q, kind="py.batch", payload=b"b2"),
                ]
            ),
            timeout=RPC_TIMEOUT,
        )
        check(len(batch.results) == 3, f"batch of 3 gave {len(batch.results)} results")
        kinds = [r.WhichOneof("result") for r in batch.results]
        check(kinds == ["task", "error", "task"], f"batch result kinds {kinds}, want task/error/task")
        bad = batch.results[1].error
        check(bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], f"bad item code {bad.code}, want 3")
        info = unpack(bad, ErrorInfo)
        check(info is not None and info.reason == "INVALID_ARGUMENT", f"bad item ErrorInfo: {info}")
        br = unpack(bad, BadRequest)
        check(br is not None and "kind" in [v.field for v in br.field_violations], f"bad item BadRequest: {br}")
        b0, b2 = batch.results[0].task, batch.results[2].task
        check(b0.payload == b"" and b2.payload == b"", "EnqueueBatch answers without the payloads")
        check(get(b0.id).payload == b"b0" and get(b2.id).payload == b"b2", "batch tasks keep their payloads, in order")

        # --- Lease + Ack -------------------------------------------------------
        leased = lease(q, 10)
        ids = [lt.task.id for lt in leased]
        check(ids == [t1.id, b0.id, b2.id], f"leased {ids}, want FIFO {[t1.id, b0.id, b2.id]}")
        for lt in leased:
            check(lt.lease_id != "", f"leased task {lt.task.id} has no lease_id")
            check(lt.task.state == S.TASK_STATE_LEASED and lt.task.attempt == 1, f"leased task: {lt.task}")
            check(lt.lease_expire_time.seconds > time.time(), "lease_expire_time is in the future")
        l1, l_b0, l_b2 = leased
        worker.Ack(worker_pb2.AckRequest(task_id=t1.id, lease_id=l1.lease_id, result=b"done"), timeout=RPC_TIMEOUT)
        got = get(t1.id)
        check(got.state == S.TASK_STATE_SUCCEEDED, f"after Ack state {S.Name(got.state)}")
        check(got.result == b"done", f"after Ack result {got.result!r}")

        # --- Nack(no_retry) -> DEAD -------------------------------------------
        nr = worker.Nack(
            worker_pb2.NackRequest(task_id=b0.id, lease_id=l_b0.lease_id, error="boom", no_retry=True),
            timeout=RPC_TIMEOUT,
        )
        check(nr.task.state == S.TASK_STATE_DEAD, f"Nack(no_retry) response state {S.Name(nr.task.state)}")
        got = get(b0.id)
        check(got.state == S.TASK_STATE_DEAD, f"GetTask after Nack(no_retry): {S.Name(got.state)}")
        check(got.last_error == "boom", f"last_error {got.last_error!r}")

        # --- Stale lease_id -> FAILED_PRECONDITION / LEASE_MISMATCH ---------------
        # b2's first delivery goes back with a retry right away; its second
        # delivery has a new lease_id, so the first one is stale.
        worker.Nack(
            worker_pb2.NackRequest(
                task_id=b2.id, lease_id=l_b2.lease_id, error="again", retry_after=duration_pb2.Duration(nanos=1)
            ),
            timeout=RPC_TIMEOUT,
        )
        again = lease(q, 1, wait=duration_pb2.Duration(seconds=5))
        check([lt.task.id for lt in again] == [b2.id], f"re-lease after Nack got {[lt.task.id for lt in again]}")
        l_b2_new = again[0]
        check(l_b2_new.lease_id != l_b2.lease_id, "a new delivery must get a new lease_id")
        check(l_b2_new.task.attempt == 2, f"second delivery attempt {l_b2_new.task.attempt}")
        err = expect_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            lambda: worker.Ack(worker_pb2.AckRequest(task_id=b2.id, lease_id=l_b2.lease_id), timeout=RPC_TIMEOUT),
            "Ack with a stale lease_id",
        )
        st = details(err, status_pb2)
        info = unpack(st, ErrorInfo)
        check(info is not None, f"stale-lease error has no ErrorInfo detail: {st}")
        check(info.reason == "LEASE_MISMATCH", f"stale-lease ErrorInfo.reason {info.reason!r}")
        check(info.domain == "taskbroker", f"stale-lease ErrorInfo.domain {info.domain!r}")
        got = get(b2.id)
        check(got.state == S.TASK_STATE_LEASED, f"task after stale Ack should be untouched, is {S.Name(got.state)}")
        worker.Ack(worker_pb2.AckRequest(task_id=b2.id, lease_id=l_b2_new.lease_id), timeout=RPC_TIMEOUT)
        check(get(b2.id).state == S.TASK_STATE_SUCCEEDED, "Ack with the current lease_id succeeds")

        # --- INVALID_ARGUMENT with a BadRequest for `kind` ---------------------
        err = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: producer.Enqueue(producer_pb2.EnqueueRequest(queue=q, kind=""), timeout=RPC_TIMEOUT),
            "Enqueue with an empty kind",
        )
        st = details(err, status_pb2)
        info = unpack(st, ErrorInfo)
        check(info is not None and info.reason == "INVALID_ARGUMENT", f"empty-kind ErrorInfo: {info}")
        br = unpack(st, BadRequest)
        check(br is not None, f"empty-kind error has no BadRequest detail: {st}")
        fields = [v.field for v in br.field_violations]
        check("kind" in fields, f"BadRequest field violations {fields}, want 'kind'")

        # --- Worker Stream: subscribe(max_in_flight=2), ack over the stream ---
        sq = f"py-stream-{run}"
        stream_ids = [
            producer.Enqueue(
                producer_pb2.EnqueueRequest(queue=sq, kind="py.stream", payload=f"s{i}".encode()),
                timeout=RPC_TIMEOUT,
            ).task.id
            for i in range(3)
        ]
        outbox = queue.Queue()

        def requests():
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        outbox.put(
            worker_pb2.StreamRequest(
                subscribe=worker_pb2.Subscribe(queues=[sq], max_in_flight=2, worker_id="py-stream")
            )
        )
        call = worker.Stream(requests())
        reader = StreamReader(call)
        try:
            pushed = []
            for _ in range(2):
                m = reader.next("a pushed task")
                check(m.WhichOneof("msg") == "task", f"expected a task push, got {m}")
                pushed.append(m.task)
            check(
                [p.task.id for p in pushed] == stream_ids[:2],
                f"stream pushed {[p.task.id for p in pushed]}, want {stream_ids[:2]}",
            )
            extra = reader.nothing_for(0.5)
            check(extra is None, f"max_in_flight=2 but a third message came before any ack: {extra}")

            # A made-up lease_id is answered by a settled error and frees no credit.
            outbox.put(
                worker_pb2.StreamRequest(ack=worker_pb2.AckRequest(task_id=pushed[0].task.id, lease_id="bogus"))
            )
            m = reader.next("settled for a bogus lease_id")
            check(m.WhichOneof("msg") == "settled", f"expected settled, got {m}")
            check(m.settled.HasField("error"), f"settled for a bogus lease_id has no error: {m.settled}")
            check(
                m.settled.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0],
                f"settled error code {m.settled.error.code}, want 9",
            )
            info = unpack(m.settled.error, ErrorInfo)
            check(info is not None and info.reason == "LEASE_MISMATCH", f"settled error ErrorInfo: {info}")

            # Ack both, batched in one go.
            for p in pushed:
                outbox.put(
                    worker_pb2.StreamRequest(
                        ack=worker_pb2.AckRequest(task_id=p.task.id, lease_id=p.lease_id, result=b"ok")
                    )
                )
            settled, tasks = [], []
            while len(settled) < 2 or len(tasks) < 1:
                m = reader.next("settled acks and the third task")
                kind = m.WhichOneof("msg")
                if kind == "settled":
                    settled.append(m.settled)
                elif kind == "task":
                    tasks.append(m.task)
                else:
                    raise CheckFailed(f"unexpected stream message {m}")
            for s in settled:
                check(not s.HasField("error"), f"ack over the stream failed: {s.error}")
                check(s.operation == worker_pb2.SETTLE_OPERATION_ACK, f"settled operation {s.operation}")
            check(
                sorted(s.task_id for s in settled) == sorted(stream_ids[:2]),
                f"settled ids {[s.task_id for s in settled]}",
            )
            check([t.task.id for t in tasks] == [stream_ids[2]], f"third push {[t.task.id for t in tasks]}")
            third = tasks[0]
            outbox.put(worker_pb2.StreamRequest(ack=worker_pb2.AckRequest(task_id=third.task.id, lease_id=third.lease_id)))
            m = reader.next("settled for the third ack")
            check(
                m.WhichOneof("msg") == "settled" and m.settled.task_id == third.task.id and not m.settled.HasField("error"),
                f"third ack: {m}",
            )
        finally:
            outbox.put(None)  # half-close
            call.cancel()
        for tid in stream_ids:
            got = get(tid)
            check(got.state == S.TASK_STATE_SUCCEEDED, f"stream task {tid} state {S.Name(got.state)}")
        check(get(stream_ids[0]).result == b"ok", "result sent with a stream ack is kept")

        # --- WatchTask to SUCCEEDED --------------------------------------------
        wq = f"py-watch-{run}"
        wt = producer.Enqueue(producer_pb2.EnqueueRequest(queue=wq, kind="py.watch"), timeout=RPC_TIMEOUT).task
        watch = producer.WatchTask(producer_pb2.WatchTaskRequest(task_id=wt.id), timeout=30)
        wr = StreamReader(watch)
        first = wr.next("the watch's first state")
        check(first.task.state == S.TASK_STATE_READY, f"watch starts at {S.Name(first.task.state)}")
        (lw,) = lease(wq, 1)
        worker.Ack(worker_pb2.AckRequest(task_id=wt.id, lease_id=lw.lease_id, result=b"watched"), timeout=RPC_TIMEOUT)
        states = [first.task.state]
        while True:
            m = wr.next("watch updates until the stream ends")
            if m is StreamReader.END:
                break
            states.append(m.task.state)
        names = [S.Name(s) for s in states]
        check(states[-1] == S.TASK_STATE_SUCCEEDED, f"watch ended at {names}, want SUCCEEDED last")
        check(states == sorted(states), f"watch states out of order: {names}")
        channel.close()

    print(
        f"python client: OK, {CHECKS} checks passed against {addr} "
        f"(grpcio {grpc.__version__}, protobuf {_protobuf_version()})"
    )
    return 0


def _protobuf_version():
    from google.protobuf import __version__

    return __version__


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as e:
        print(f"FAIL: python client: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # an unexpected RPC error or a bug here
        traceback.print_exc()
        code = getattr(e, "code", None)
        desc = f"{e.code()}: {e.details()}" if callable(code) else repr(e)
        print(f"FAIL: python client: unexpected error: {desc}", file=sys.stderr)
        sys.exit(1)
