//! Who is calling and in what context: request metadata read once per call,
//! by one tower layer on the server, into a typed [`Caller`] that handlers
//! take from the request's extensions.
//!
//! Today it carries the W3C trace context and the client's deadline
//! (`grpc-timeout`); credentials join it with authentication.

use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;
use tower::{Layer, Service};

use crate::core::trace::{TraceContext, TRACEPARENT, TRACESTATE};

/// What the server knows about a call before a handler runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The trace the call belongs to (W3C `traceparent`/`tracestate`).
    pub trace: TraceContext,
    /// How long the client is willing to wait (`grpc-timeout`).
    pub deadline: Option<Duration>,
}

impl Caller {
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Self {
            trace: TraceContext::parse(text(TRACEPARENT), text(TRACESTATE)),
            deadline: text("grpc-timeout").and_then(parse_grpc_timeout),
        }
    }

    /// The caller a handler was given (a default one when the layer did not
    /// run, as in a handler called directly).
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request.extensions().get::<Caller>().cloned().unwrap_or_default()
    }
}

/// `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The layer that puts a [`Caller`] into every request's extensions.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallerLayer;

impl<S> Layer<S> for CallerLayer {
    type Service = WithCaller<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithCaller { inner }
    }
}

#[derive(Clone, Debug)]
pub struct WithCaller<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for WithCaller<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let caller = Caller::from_headers(req.headers());
        req.extensions_mut().insert(caller);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "123456789S", "5s", "-5S", "5"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_layer_reads_metadata_once_into_the_extensions() {
        let mut req = http::Request::new(());
        req.headers_mut().insert("grpc-timeout", "1500m".parse().unwrap());
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        req.headers_mut().insert(TRACEPARENT, parent.parse().unwrap());
        let mut svc = CallerLayer.layer(tower::service_fn(|req: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(req.extensions().get::<Caller>().cloned())
        }));
        let caller = futures_util::FutureExt::now_or_never(svc.call(req)).unwrap().unwrap().unwrap();
        assert_eq!(caller.deadline, Some(Duration::from_millis(1500)));
        assert_eq!(caller.trace.traceparent.as_deref(), Some(parent));
    }
}
