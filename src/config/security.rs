//! `[auth]` and the TLS settings: their shape and their checks. What they
//! mean at run time is [`crate::security`]'s; the permission model is
//! [`crate::core::access`]'s.

use std::path::PathBuf;

use serde::Deserialize;

use super::{shown, Config};
use crate::core::access::{Action, Grant, Principal, QueueGlob};

/// `[auth]`: who may call, and what each principal may do.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Off (the default): no credentials needed.
    pub enabled: bool,
    /// Reflection needs credentials too (it is open by default: it only
    /// describes the API).
    pub protect_reflection: bool,
    /// `/metrics` on the admin port needs an `inspect` credential (on by
    /// default once auth is on; turn off for a scraper without a token).
    pub protect_metrics: bool,
    /// More token hashes, one `SHA256HEX NAME` per line (`#` comments),
    /// naming principals declared here; re-read when the file changes.
    pub tokens_file: Option<PathBuf>,
    pub principals: Vec<PrincipalConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            protect_reflection: false,
            protect_metrics: true,
            tokens_file: None,
            principals: Vec::new(),
        }
    }
}

/// `[[auth.principals]]`: one identity, its credentials and its grants.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    /// Hex SHA-256 of its bearer token (the token itself is never stored).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Matched against the verified client certificate's subject, in
    /// RFC 4514 form as `openssl x509 -subject -nameopt RFC2253` prints it
    /// (`CN=selenium-worker,O=Example`).
    #[serde(default)]
    pub mtls_subject: Option<String>,
    /// Matched against any of the certificate's subject alternative names
    /// (DNS names, URIs such as `spiffe://...`, emails).
    #[serde(default)]
    pub mtls_san: Option<String>,
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
}

/// `grants = [{ actions = [...], queues = [...] }]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    pub actions: Vec<String>,
    pub queues: Vec<String>,
}

/// A 64-digit lowercase or uppercase hex SHA-256.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

impl PrincipalConfig {
    /// The domain principal. Call after `validate()`.
    pub fn principal(&self) -> Principal {
        Principal {
            name: self.name.clone(),
            grants: self
                .grants
                .iter()
                .map(|g| Grant {
                    actions: g.actions.iter().filter_map(|a| a.parse().ok()).collect(),
                    queues: g.queues.iter().map(QueueGlob::new).collect(),
                })
                .collect(),
        }
    }
}

/// Every problem of the TLS settings and `[auth]`, each with its path.
pub(super) fn validate(config: &Config, errors: &mut Vec<String>) {
    let tls = [("tls_cert", &config.tls_cert), ("tls_key", &config.tls_key)];
    match (&config.tls_cert, &config.tls_key) {
        (Some(_), None) | (None, Some(_)) => {
            errors.push("tls_cert, tls_key: give both or neither".into());
        }
        _ => {}
    }
    if config.tls_client_ca.is_some() && config.tls_cert.is_none() {
        errors.push("tls_client_ca: mTLS needs TLS (tls_cert and tls_key)".into());
    }
    if config.admin_tls && config.tls_cert.is_none() {
        errors.push("admin_tls: needs tls_cert and tls_key".into());
    }
    // Whether the files exist is checked when the broker starts (they may
    // be mounted only where it runs, so `config check` does not look).
    for (name, path) in tls.into_iter().chain([("tls_client_ca", &config.tls_client_ca)]) {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            errors.push(format!("{name}: must not be empty"));
        }
    }
    if !config.health_listen.is_empty() && config.health_listen.parse::<std::net::SocketAddr>().is_err() {
        errors.push(format!(
            "health_listen: {:?} is not an address like 0.0.0.0:50052 (\"\" turns it off)",
            shown(&config.health_listen)
        ));
    }
    let auth = &config.auth;
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in auth.principals.iter().enumerate() {
        let path = format!("auth.principals[{i}]");
        if p.name.is_empty() || p.name.len() > 128 || p.name.chars().any(|c| c.is_control() || c == ' ') {
            errors.push(format!("{path}.name: 1 to 128 characters, no spaces"));
        } else if !names.insert(p.name.as_str()) {
            errors.push(format!("{path}.name: {:?} is declared twice", p.name));
        }
        if p.token_sha256.as_deref().is_some_and(|h| parse_sha256(h).is_none()) {
            errors.push(format!(
                "{path}.token_sha256: must be 64 hex digits (the SHA-256 of the token; \
                 `taskbroker token new` prints one)"
            ));
        }
        if (p.mtls_subject.is_some() || p.mtls_san.is_some()) && config.tls_client_ca.is_none() {
            errors.push(format!("{path}: mtls_subject and mtls_san need tls_client_ca (mTLS)"));
        }
        for (j, g) in p.grants.iter().enumerate() {
            let gpath = format!("{path}.grants[{j}]");
            if g.actions.is_empty() {
                errors.push(format!("{gpath}.actions: must not be empty"));
            }
            for a in &g.actions {
                if let Err(e) = a.parse::<Action>() {
                    errors.push(format!("{gpath}.actions: {e}"));
                }
            }
            if g.queues.is_empty() {
                errors.push(format!("{gpath}.queues: must not be empty (\"*\" is every queue)"));
            }
            for q in &g.queues {
                if q.is_empty() || q.len() > 128 {
                    errors.push(format!("{gpath}.queues: {:?} must be 1 to 128 characters", shown(q)));
                }
            }
        }
    }
    if auth.enabled && auth.principals.is_empty() {
        errors
            .push("auth.principals: auth is enabled but no principal is declared (nobody could call)".into());
    }
}
