//! `/metrics`: the Prometheus text exposition ([`crate::telemetry::metrics`]).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Dashboard;

/// The OpenMetrics text format, as prometheus-client writes it (with its
/// `# EOF` line); Prometheus reads it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(State(d): State<Dashboard>) -> Response {
    match d.broker.encode_metrics().await {
        Ok(text) => ([(CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        // Storage cannot answer the queue gauges: a scrape failure, not a
        // partial exposition that would look like empty queues.
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}
