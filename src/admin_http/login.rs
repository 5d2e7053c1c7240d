//! Who is looking at the dashboard, when authentication is on: the
//! [`Viewer`] of a request is read from its `Authorization: Bearer` header
//! (Prometheus, curl) or from the `taskbroker_token` cookie the sign-in form
//! sets (browsers: HttpOnly, SameSite=Strict, Secure under TLS).
//!
//! A page without a known viewer redirects to `/login`; `/metrics` answers
//! 401. With authentication off every viewer is [`Access::Open`].

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::view::{page, Problem};
use super::Dashboard;
use crate::core::access::Access;
use crate::security::authn::bearer;

/// The cookie that carries a browser's token.
pub const COOKIE_NAME: &str = "taskbroker_token";

/// The access of the request's credentials.
pub struct Viewer(pub Access);

/// The token a request carries, by header or cookie.
fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION) {
        return bearer(v.as_bytes()).map(str::to_owned);
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.to_owned())
}

impl Viewer {
    /// The viewer of `headers`, or `None` when authentication is on and the
    /// credentials are missing or unknown.
    pub fn of(d: &Dashboard, headers: &HeaderMap) -> Option<Access> {
        if !d.auth.enabled() {
            return Some(Access::Open);
        }
        d.auth.admit_token(&token(headers)?).ok()
    }
}

impl FromRequestParts<Dashboard> for Viewer {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, d: &Dashboard) -> Result<Self, Self::Rejection> {
        Viewer::of(d, &parts.headers).map(Viewer).ok_or_else(|| Redirect::to("/login"))
    }
}

/// 401 with the scheme to use (for `/metrics`).
pub fn unauthorized() -> Response {
    let mut r =
        (StatusCode::UNAUTHORIZED, "credentials required: Authorization: Bearer <token>\n").into_response();
    r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    failed: bool,
}

/// `GET /login`.
pub async fn form(State(d): State<Dashboard>) -> Result<Html<String>, Problem> {
    page(&LoginPage { csrf: d.csrf.as_str(), failed: false })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoginForm {
    csrf: String,
    token: String,
}

/// `POST /login`: a known token becomes the cookie; an unknown one shows the
/// form again (401).
pub async fn sign_in(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, Problem> {
    let given = form.as_ref().map(|f| f.csrf.as_str()).unwrap_or("");
    d.csrf.check(&headers, given).map_err(|r| Problem::new(StatusCode::FORBIDDEN, r.to_string()))?;
    let Form(form) = form.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let token = form.token.trim();
    let cookie_safe =
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
    if !cookie_safe || d.auth.admit_token(token).is_err() {
        let html = page(&LoginPage { csrf: d.csrf.as_str(), failed: true })?;
        return Ok((StatusCode::UNAUTHORIZED, html).into_response());
    }
    let secure = if d.tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    Ok(r)
}

/// `POST /logout`: forgets the cookie.
pub async fn sign_out() -> Response {
    let mut r = Redirect::to("/login").into_response();
    let gone = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&gone) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}
