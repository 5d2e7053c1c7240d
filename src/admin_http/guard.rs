//! Protection of the state-changing POSTs against cross-site requests, in
//! two independent checks that must both pass:
//! - **same origin**: a browser's `Sec-Fetch-Site` must say `same-origin`
//!   (or `none`: typed by the user), and an `Origin` header must name the
//!   host the request was sent to;
//! - **token**: the form carries this process's [`CsrfToken`], a random
//!   secret made at start-up and put into every form the dashboard renders;
//!   another site cannot read it, so cannot forge a form with it.
//!
//! A client that sends neither header (curl, an old browser) passes the
//! first check and still needs the token.

use axum::http::header::{HOST, ORIGIN};
use axum::http::HeaderMap;
use rand::RngCore;

/// Why a POST was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("cross-site request refused")]
    CrossSite,
    #[error("missing or wrong form token; reload the page and try again")]
    BadToken,
}

/// The per-process form token.
#[derive(Clone)]
pub struct CsrfToken(String);

impl CsrfToken {
    /// A fresh token: 32 random bytes, hex.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// What forms carry.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where `given` differs.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Both checks of the module docs.
    pub fn check(&self, headers: &HeaderMap, given: &str) -> Result<(), Refusal> {
        if !same_origin(headers) {
            return Err(Refusal::CrossSite);
        }
        if !self.matches(given) {
            return Err(Refusal::BadToken);
        }
        Ok(())
    }
}

impl std::fmt::Debug for CsrfToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfToken(..)")
    }
}

/// Whether the browser's own headers say the request comes from a page of
/// this server.
pub fn same_origin(headers: &HeaderMap) -> bool {
    // A header that is not text matches nothing.
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    if let Some(site) = text("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match text(ORIGIN.as_str()) {
        None => true,
        Some(origin) => {
            let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
            match (authority, text(HOST.as_str())) {
                (Some(a), Some(host)) => a.eq_ignore_ascii_case(host),
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let t = CsrfToken::generate();
        assert_eq!(t.as_str().len(), 64);
        assert_ne!(t.as_str(), CsrfToken::generate().as_str());
        assert!(t.matches(t.as_str()));
        assert!(!t.matches(""));
        assert!(!t.matches(&t.as_str()[..63]));
        assert!(!t.matches(&format!("{}0", t.as_str())));
    }

    #[test]
    fn the_origin_must_be_the_host_asked() {
        let host = ("host", "127.0.0.1:9090");
        assert!(same_origin(&headers(&[host])), "no browser headers: the token decides");
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:9090")])));
        assert!(same_origin(&headers(&[host, ("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[("origin", "http://127.0.0.1:9090")])), "no Host");
        assert!(!same_origin(&headers(&[host, ("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[host, ("sec-fetch-site", "same-site")])));
    }

    #[test]
    fn both_checks_must_pass() {
        let t = CsrfToken::generate();
        let ok = headers(&[("host", "h:1"), ("origin", "http://h:1")]);
        assert_eq!(t.check(&ok, t.as_str()), Ok(()));
        assert_eq!(t.check(&ok, "nope"), Err(Refusal::BadToken));
        let cross = headers(&[("host", "h:1"), ("origin", "http://other:1")]);
        assert_eq!(t.check(&cross, t.as_str()), Err(Refusal::CrossSite));
    }
}
