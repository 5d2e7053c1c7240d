//! Distributed traces over OTLP/gRPC (OpenTelemetry), on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! set (the standard `OTEL_SERVICE_NAME`, default `taskbroker`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG` apply).
//!
//! Spans the broker makes for OpenTelemetry use the target [`TARGET`]; they
//! are never enabled while tracing is off, so it costs nothing then
//! ([`enabled`] guards the rest). The messaging spans follow OpenTelemetry's
//! messaging conventions: `send {queue}` (PRODUCER) per enqueued task,
//! `receive {queue}` per delivery, `settle {queue}` per Ack/Nack, each in
//! the trace of the task's creation context.
//!
//! The exporter runs on a small runtime of its own: OpenTelemetry's batch
//! processor exports from a plain thread, and the gRPC client needs a Tokio
//! reactor (see `TokioExporter`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::core::trace::{TraceContext, TRACEPARENT, TRACESTATE};

/// The `tracing` target of every span made for OpenTelemetry.
pub const TARGET: &str = "taskbroker::otel";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (OTLP configured and set up).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the environment asks for OTLP trace export.
pub fn configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The running exporter; [`Tracing::shutdown`] flushes what is buffered.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Sets up OTLP export; returns the layer for the subscriber.
    pub fn start<S>() -> Result<
        (Tracing, tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>),
        String,
    >
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tb-otlp")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OTLP exporter's runtime: {e}"))?;
        let inner = {
            let _inside = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?
        };
        let exporter = TokioExporter { inner, runtime };
        let mut resource = Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name("taskbroker");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("taskbroker");
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        ENABLED.store(true, Ordering::Relaxed);
        Ok((Tracing { provider }, tracing_opentelemetry::layer().with_tracer(tracer)))
    }

    /// Exports what is buffered and stops (the last step of a shutdown).
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("taskbroker: flushing traces failed: {e}");
        }
    }
}

/// The OTLP exporter, driven on a runtime of its own.
#[derive(Debug)]
struct TokioExporter {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: tokio::runtime::Runtime,
}

impl SpanExporter for TokioExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // Called on the batch processor's own thread, outside any runtime.
        self.runtime.block_on(self.inner.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OpenTelemetry context a W3C `traceparent`/`tracestate` pair names.
pub fn context_from(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<opentelemetry::Context> {
    let parent = traceparent?;
    let mut carrier = HashMap::from([(TRACEPARENT.to_owned(), parent.to_owned())]);
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The task's creation context, from its headers.
pub fn task_context(headers: &std::collections::BTreeMap<String, String>) -> Option<opentelemetry::Context> {
    context_from(headers.get(TRACEPARENT).map(String::as_str), headers.get(TRACESTATE).map(String::as_str))
}

/// Makes `span` a child of `parent` (nothing when tracing is off).
pub fn set_parent(span: &tracing::Span, parent: Option<opentelemetry::Context>) {
    if let Some(cx) = parent {
        let _ = span.set_parent(cx);
    }
}

/// `span`'s own context as W3C headers (`None` when it is not exported).
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    let sc: SpanContext = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove(TRACEPARENT),
        tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
    })
}

/// The ids a log line of `span` carries: `(trace_id, span_id)` in hex.
pub fn ids_of(span: &tracing::Span) -> Option<(String, String)> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}
