//! `/metrics`: the Prometheus text exposition ([`crate::telemetry::metrics`]).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::login::{unauthorized, Viewer};
use super::Dashboard;
use crate::core::access::Operation;
use axum::http::HeaderMap;

/// The OpenMetrics text format, as prometheus-client writes it (with its
/// `# EOF` line); Prometheus reads it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// When `[auth] protect_metrics` (the default once auth is on), the scraper
/// needs a token with `inspect` on every queue (`*`): the exposition names
/// them all.
pub async fn metrics(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    if d.auth.protects_metrics() {
        match Viewer::of(&d, &headers) {
            None => return unauthorized(),
            Some(a) if !a.allows_everywhere(Operation::Metrics) => {
                return (StatusCode::FORBIDDEN, "this token may not inspect every queue (*)\n")
                    .into_response()
            }
            Some(_) => {}
        }
    }
    match d.broker.encode_metrics().await {
        Ok(text) => ([(CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        // Storage cannot answer the queue gauges: a scrape failure, not a
        // partial exposition that would look like empty queues.
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}
