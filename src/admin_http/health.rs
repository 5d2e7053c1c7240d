//! `/healthz` (liveness: the process answers) and `/readyz` (readiness:
//! storage is healthy and the broker is not shutting down). Liveness never
//! looks at storage: a storage outage must not become a restart storm.

use axum::extract::State;
use axum::http::StatusCode;

use super::Dashboard;
use crate::broker::Phase;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(d): State<Dashboard>) -> (StatusCode, &'static str) {
    if *d.broker.phase().borrow() != Phase::Serving {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    if d.broker.healthy().await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n")
    }
}
