"""OpenTelemetry: the producer's trace context travels in the task, and the
worker's `process {queue}` span is its child (recorded by the real SDK)."""

from __future__ import annotations

from conftest import running

from taskbroker import Client, Worker

try:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError as e:  # pragma: no cover - the test extra installs it
    raise ImportError(f"{e}: pip install -e 'clients/python[test]'") from e


def test_process_span_is_a_child_of_the_producers_span(broker):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("test")

    client = Client(broker.addr, **broker.conn)
    worker = Worker(broker.addr, **broker.conn, queues=["traced"])
    seen = {}

    @worker.task("k")
    def handle(job):
        seen["inside"] = trace.get_current_span().get_span_context()
        return "ok"

    with tracer.start_as_current_span("send traced") as producer_span:
        task = client.enqueue("k", queue="traced")
    parent = producer_span.get_span_context()
    assert task.headers["traceparent"].startswith(f"00-{parent.trace_id:032x}-{parent.span_id:016x}-")

    with running(worker):
        client.wait(task, timeout=10)
    provider.force_flush()
    spans = [s for s in exporter.get_finished_spans() if s.name == "process traced"]
    assert len(spans) == 1
    span = spans[0]
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.context.trace_id == parent.trace_id
    assert span.parent is not None and span.parent.span_id == parent.span_id
    assert span.attributes["messaging.system"] == "taskbroker"
    assert span.attributes["messaging.destination.name"] == "traced"
    assert span.attributes["messaging.message.id"] == task.id
    # The handler ran inside the span (so its own spans and logs join the trace).
    assert seen["inside"].span_id == span.context.span_id
