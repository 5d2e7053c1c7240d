//! The admin HTTP port (`admin_listen`): the web dashboard, `/metrics`,
//! `/healthz` and `/readyz`. It calls the broker's operations API ([`crate::broker::admin`])
//! as the gRPC AdminService does, and knows nothing of stores or gRPC.
//!
//! - [`server`]: serving on a bound listener, stopping.
//! - [`pages`]: the pages (GET), rendered server-side from the askama
//!   templates in `templates/` (compiled in; auto-escaping on, so every
//!   queue name, kind, header, error and payload is escaped).
//! - [`schedules`]: the periodic schedules (read-only).
//! - [`actions`]: pause, resume, purge, redrive (POST forms), behind
//!   [`guard`] (same-origin check and a per-process form token).
//! - [`login`]: who is looking (a bearer token or the sign-in cookie) when
//!   authentication is on; pages show only what the viewer may inspect.
//! - [`health`]: liveness and readiness.
//! - [`metrics`]: `/metrics` for Prometheus.
//! - [`throughput`]: the sampler behind the enqueued/acked rates.
//! - [`view`]: formatting, payload previews, error pages.
//!
//! The stylesheet and the one small script (confirmation dialogs) are in
//! `assets/`, compiled into the binary: the dashboard works offline. Pages
//! allow scripts and styles from this origin only (CSP), and no framing.

pub mod actions;
pub mod guard;
pub mod health;
pub mod login;
pub mod metrics;
pub mod pages;
pub mod schedules;
pub mod server;
pub mod throughput;
pub mod view;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

pub use server::AdminServer;

use std::sync::Arc;

use crate::broker::Broker;
use crate::security::Authenticator;
use guard::CsrfToken;
use throughput::Throughput;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct Dashboard {
    broker: Broker,
    /// Who may look and act (authentication off: everyone).
    auth: Arc<Authenticator>,
    /// Served over TLS (cookies are then `Secure`).
    tls: bool,
    /// Put into every form; required by every action.
    csrf: CsrfToken,
    throughput: Throughput,
}

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// Every route of the admin port.
pub fn router(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/", get(pages::queues))
        .route("/queues/{name}", get(pages::queue))
        .route("/queues/{name}/{action}", post(actions::act))
        .route("/tasks/{id}", get(pages::task))
        .route("/login", get(login::form).post(login::sign_in))
        .route("/logout", post(login::sign_out))
        .route("/schedules", get(schedules::schedules))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/assets/dashboard.css", get(|| async { ([(CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
        .route(
            "/assets/dashboard.js",
            get(|| async { ([(CONTENT_TYPE, "text/javascript; charset=utf-8")], JS) }),
        )
        // Browsers ask for it on every page; there is none.
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .fallback(|| async { view::Problem::not_found("There is no such page.") })
        .layer(axum::middleware::map_response(secure))
        .with_state(dashboard)
}

/// Headers every response gets: no framing, no sniffing, scripts and
/// styles from this origin only, nothing cached.
async fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name: &'static str, value: &'static str| {
        h.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "same-origin");
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
