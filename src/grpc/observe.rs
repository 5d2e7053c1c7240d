//! The metrics stage of the middleware stack: counts every call by method
//! and status code and times it (`taskbroker_grpc_requests_total`,
//! `taskbroker_grpc_request_duration_seconds`).
//!
//! The code is read from the response headers, where tonic puts an error
//! that ends a call before any message (every unary error); a call whose
//! headers carry no status is counted `OK` when its response starts (a
//! stream that fails later is still `OK` here). A path the server does not
//! serve is counted as method `unknown`, so clients cannot mint labels.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tower::{Layer, Service};

use crate::core::trace::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace;

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        // A cheap clone (shared bytes), not a copy of the path.
        let path = req.uri().path_and_query().cloned();
        let metrics = self.metrics.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await;
            if let Ok(r) = &response {
                let code = r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                let path = path.as_ref().map_or("", |p| p.path().trim_start_matches('/'));
                let method = if code == tonic::Code::Unimplemented as i32 { "unknown" } else { path };
                metrics.request(method, code, started.elapsed().as_secs_f64());
            }
            response
        })
    }
}

/// The span of one call. With trace export on: an OpenTelemetry server span,
/// the child of the caller's W3C `traceparent`/`tracestate` metadata, whose
/// ids JSON logs carry; otherwise a debug span (off at the default level).
///
/// With authentication on, the span is enabled at `info` even without trace
/// export, so that log lines of the call carry its `principal` (recorded by
/// [`super::caller`]); off, it is a `debug` span that costs nothing unless
/// asked for.
pub fn call_span<B>(req: &http::Request<B>, auth: bool) -> tracing::Span {
    let path = req.uri().path();
    if !trace::enabled() {
        if auth {
            return tracing::info_span!("grpc", path = %path, principal = tracing::field::Empty);
        }
        return tracing::debug_span!("grpc", path = %path);
    }
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("", path));
    let span = tracing::info_span!(
        target: trace::TARGET,
        "grpc",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        messaging.batch.message_count = tracing::field::Empty,
        principal = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok());
    let parent = header(TRACEPARENT).map(|p| TraceContext::parse(Some(p), header(TRACESTATE)));
    let parent = parent.and_then(|p| trace::context_from(p.traceparent.as_deref(), p.tracestate.as_deref()));
    trace::set_parent(&span, parent);
    if let Some((trace_id, span_id)) = trace::ids_of(&span) {
        span.record("trace_id", trace_id);
        span.record("span_id", span_id);
    }
    span
}
