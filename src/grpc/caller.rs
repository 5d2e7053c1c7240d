//! Who is calling and in what context: request metadata read once per call,
//! by one tower layer on the server, into a typed [`Caller`] that handlers
//! take from the request's extensions.
//!
//! It carries the W3C trace context, the client's deadline (`grpc-timeout`)
//! and the caller's [`Access`]: the layer authenticates each call once
//! ([`Authenticator`]) and answers UNAUTHENTICATED itself, before any
//! handler, when the credentials are missing or unknown.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{ready, BoxFuture, Either, Ready};
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::core::access::{self, Access};
use crate::core::trace::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::security::{Authenticator, Peer, Unauthenticated};

/// What the server knows about a call before a handler runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The trace the call belongs to (W3C `traceparent`/`tracestate`).
    pub trace: TraceContext,
    /// How long the client is willing to wait (`grpc-timeout`).
    pub deadline: Option<Duration>,
    /// What the caller may do.
    pub access: Access,
}

impl Caller {
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Self {
            trace: TraceContext::parse(text(TRACEPARENT), text(TRACESTATE)),
            deadline: text("grpc-timeout").and_then(parse_grpc_timeout),
            access: Access::Open,
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

/// The status of a refused call (reason `UNAUTHENTICATED`).
pub fn unauthenticated(why: Unauthenticated) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "UNAUTHENTICATED",
        super::status::DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    tonic::Status::with_error_details(tonic::Code::Unauthenticated, why.to_string(), details)
}

/// The layer that authenticates every call and puts its [`Caller`] into the
/// request's extensions.
#[derive(Clone)]
pub struct CallerLayer {
    auth: Arc<Authenticator>,
}

impl CallerLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for CallerLayer {
    type Service = WithCaller<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithCaller { inner, auth: self.auth.clone() }
    }
}

#[derive(Clone)]
pub struct WithCaller<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B> Service<http::Request<B>> for WithCaller<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<
        Ready<Result<S::Response, S::Error>>,
        Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let mut caller = Caller::from_headers(req.headers());
        let gate = access::gate(req.uri().path());
        let identity = req.extensions().get::<Peer>().and_then(|p| p.identity.clone());
        let authorization = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        match self.auth.admit(gate, authorization, identity.as_deref()) {
            Ok(access) => caller.access = access,
            Err(why) => {
                tracing::debug!(path = req.uri().path(), error = %why, "call refused: not authenticated");
                return Either::Left(ready(Ok(unauthenticated(why).into_http())));
            }
        }
        let principal = caller.access.principal().map(str::to_owned);
        req.extensions_mut().insert(caller);
        let call = self.inner.call(req);
        match principal {
            None => Either::Right(Either::Left(call)),
            // The call's span is current only while its future runs: name
            // the principal there, so every log line and span of the call has it.
            Some(name) => Either::Right(Either::Right(Box::pin(async move {
                tracing::Span::current().record("principal", name.as_str());
                call.await
            }))),
        }
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
        let layer = CallerLayer::new(Arc::new(Authenticator::disabled()));
        let mut svc = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
            let caller = req.extensions().get::<Caller>().cloned().unwrap();
            let mut response = http::Response::new(tonic::body::Body::empty());
            response.extensions_mut().insert(caller);
            Ok::<_, std::convert::Infallible>(response)
        }));
        let response = futures_util::FutureExt::now_or_never(svc.call(req)).unwrap().unwrap();
        let caller = response.extensions().get::<Caller>().cloned().unwrap();
        assert_eq!(caller.deadline, Some(Duration::from_millis(1500)));
        assert_eq!(caller.trace.traceparent.as_deref(), Some(parent));
    }
}
