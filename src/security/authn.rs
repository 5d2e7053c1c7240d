//! Authentication: from credentials (a bearer token, a verified client
//! certificate) to a principal, once per call. What a principal may do is
//! [`crate::core::access`]'s.
//!
//! Tokens are known only by their SHA-256: the presented token is hashed and
//! compared with every known hash in constant time, so neither the tokens
//! nor the timing of a comparison reveal anything. Tokens come from the
//! config (`token_sha256`) and from `tokens_file`, re-read when it changes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use subtle::ConstantTimeEq;

use super::conn::PeerIdentity;
use crate::config::security::{parse_sha256, AuthConfig};
use crate::core::access::{Access, Gate, Principal};

/// Why a call was not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("credentials required: send `authorization: Bearer <token>` or a client certificate")]
    Missing,
    #[error("unknown token")]
    UnknownToken,
    #[error("the client certificate matches no principal")]
    UnknownCertificate,
    #[error("malformed authorization header: expected `Bearer <token>`")]
    Malformed,
}

/// The SHA-256 of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who is known, built from the config and the tokens file.
#[derive(Default)]
struct Directory {
    enabled: bool,
    protect_reflection: bool,
    protect_metrics: bool,
    tokens: Vec<([u8; 32], Arc<Principal>)>,
    subjects: Vec<(String, Arc<Principal>)>,
    sans: Vec<(String, Arc<Principal>)>,
}

impl Directory {
    fn build(config: &AuthConfig, file_tokens: &[([u8; 32], String)]) -> Self {
        let mut d = Directory {
            enabled: config.enabled,
            protect_reflection: config.protect_reflection,
            protect_metrics: config.protect_metrics,
            ..Default::default()
        };
        for p in &config.principals {
            let principal = Arc::new(p.principal());
            if let Some(hash) = p.token_sha256.as_deref().and_then(parse_sha256) {
                d.tokens.push((hash, principal.clone()));
            }
            if let Some(s) = &p.mtls_subject {
                d.subjects.push((normalize_dn(s), principal.clone()));
            }
            if let Some(s) = &p.mtls_san {
                d.sans.push((s.clone(), principal.clone()));
            }
        }
        for (hash, name) in file_tokens {
            match config.principals.iter().position(|p| &p.name == name) {
                Some(i) => {
                    let principal = d.tokens.iter().find(|(_, p)| &p.name == name).map(|(_, p)| p.clone());
                    d.tokens.push((
                        *hash,
                        principal.unwrap_or_else(|| Arc::new(config.principals[i].principal())),
                    ));
                }
                None => {
                    tracing::warn!(principal = %name, "tokens_file names a principal that [auth] does not declare; line ignored")
                }
            }
        }
        d
    }

    fn by_token(&self, token: &str) -> Option<Arc<Principal>> {
        let hash = token_hash(token);
        // Every entry is compared, whatever matched: the time taken does not
        // depend on which entry (if any) matched.
        let mut found = None;
        for (known, principal) in &self.tokens {
            if bool::from(known.ct_eq(&hash)) {
                found = Some(principal.clone());
            }
        }
        found
    }

    fn by_certificate(&self, id: &PeerIdentity) -> Option<Arc<Principal>> {
        let subject = normalize_dn(&id.subject);
        self.subjects
            .iter()
            .find(|(s, _)| *s == subject)
            .or_else(|| self.sans.iter().find(|(s, _)| id.sans.iter().any(|san| san == s)))
            .map(|(_, p)| p.clone())
    }
}

/// Distinguished names compare without the spaces around `,` and `=` that
/// printers differ on (`CN=a, O=b` and `CN=a,O=b` are one name).
fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.split('=').map(str::trim).collect::<Vec<_>>().join("="))
        .collect::<Vec<_>>()
        .join(",")
}

/// The tokens file as last read.
struct TokensFile {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    tokens: Vec<([u8; 32], String)>,
}

/// Reads `SHA256HEX NAME` lines; a bad line is logged and skipped (one typo
/// must not lock every other principal out).
fn read_tokens(path: &PathBuf) -> std::io::Result<Vec<([u8; 32], String)>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next().and_then(parse_sha256), parts.next(), parts.next()) {
            (Some(hash), Some(name), None) => out.push((hash, name.to_owned())),
            _ => tracing::warn!(
                file = %path.display(),
                line = i + 1,
                "tokens_file: expected `SHA256HEX NAME`; line ignored"
            ),
        }
    }
    Ok(out)
}

/// Authenticates calls; shared by the gRPC layer and the admin port.
pub struct Authenticator {
    directory: RwLock<Arc<Directory>>,
    config: Mutex<AuthConfig>,
    file: Mutex<Option<TokensFile>>,
}

impl Authenticator {
    /// From a validated `[auth]`; reads its tokens file.
    pub fn new(config: &AuthConfig) -> Self {
        let file =
            config.tokens_file.clone().map(|path| TokensFile { path, stamp: None, tokens: Vec::new() });
        let auth = Self {
            directory: RwLock::new(Arc::new(Directory::default())),
            config: Mutex::new(config.clone()),
            file: Mutex::new(file),
        };
        auth.refresh();
        auth.rebuild();
        auth
    }

    /// Authentication is off: every call runs with [`Access::Open`].
    pub fn disabled() -> Self {
        Self::new(&AuthConfig::default())
    }

    pub fn enabled(&self) -> bool {
        self.directory().enabled
    }

    pub fn protects_metrics(&self) -> bool {
        let d = self.directory();
        d.enabled && d.protect_metrics
    }

    fn directory(&self) -> Arc<Directory> {
        self.directory.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn rebuild(&self) {
        let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = file.as_ref().map_or(&[][..], |f| &f.tokens[..]);
        let next = Directory::build(&config, tokens);
        *self.directory.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }

    /// Puts a reloaded `[auth]` into force (calls already admitted keep
    /// their access; the next ones get the new).
    pub fn replace(&self, config: &AuthConfig) {
        // One lock at a time (`rebuild` takes the config's, then the file's).
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config.clone();
        {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            if file.as_ref().map(|f| &f.path) != config.tokens_file.as_ref() {
                *file = config.tokens_file.clone().map(|path| TokensFile {
                    path,
                    stamp: None,
                    tokens: Vec::new(),
                });
            }
        }
        self.refresh();
        self.rebuild();
    }

    /// Re-reads the tokens file if it changed; true if it did. An unreadable
    /// file keeps the tokens last read.
    pub fn refresh(&self) -> bool {
        let changed = {
            let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
            let Some(file) = guard.as_mut() else { return false };
            let stamp = std::fs::metadata(&file.path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
            if stamp == file.stamp {
                false
            } else {
                file.stamp = stamp;
                match read_tokens(&file.path) {
                    Ok(tokens) => {
                        tracing::info!(file = %file.path.display(), tokens = tokens.len(), "tokens file read");
                        file.tokens = tokens;
                        true
                    }
                    Err(e) => {
                        tracing::warn!(file = %file.path.display(), error = %e, "tokens file unreadable; keeping the tokens last read");
                        false
                    }
                }
            }
        };
        if changed {
            self.rebuild();
        }
        changed
    }

    /// The access of a call to a method behind `gate`, given its
    /// `authorization` header value and its client certificate's names.
    pub fn admit(
        &self,
        gate: Gate,
        authorization: Option<&[u8]>,
        peer: Option<&PeerIdentity>,
    ) -> Result<Access, Unauthenticated> {
        let d = self.directory();
        if !d.enabled || gate == Gate::Open || (gate == Gate::Reflection && !d.protect_reflection) {
            return Ok(Access::Open);
        }
        if let Some(header) = authorization {
            let token = bearer(header).ok_or(Unauthenticated::Malformed)?;
            return d.by_token(token).map(Access::As).ok_or(Unauthenticated::UnknownToken);
        }
        match peer {
            Some(id) => d.by_certificate(id).map(Access::As).ok_or(Unauthenticated::UnknownCertificate),
            None => Err(Unauthenticated::Missing),
        }
    }

    /// The access of a bearer token alone (the admin port's cookie).
    pub fn admit_token(&self, token: &str) -> Result<Access, Unauthenticated> {
        let d = self.directory();
        if !d.enabled {
            return Ok(Access::Open);
        }
        d.by_token(token).map(Access::As).ok_or(Unauthenticated::UnknownToken)
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
pub fn bearer(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::security::{GrantConfig, PrincipalConfig};

    fn config() -> AuthConfig {
        AuthConfig {
            enabled: true,
            principals: vec![
                PrincipalConfig {
                    name: "api".into(),
                    token_sha256: Some(hex(&token_hash("secret-1"))),
                    mtls_subject: None,
                    mtls_san: None,
                    grants: vec![GrantConfig { actions: vec!["enqueue".into()], queues: vec!["*".into()] }],
                },
                PrincipalConfig {
                    name: "worker".into(),
                    token_sha256: None,
                    mtls_subject: Some("CN=worker, O=Example".into()),
                    mtls_san: Some("spiffe://example/worker".into()),
                    grants: vec![],
                },
            ],
            ..AuthConfig::default()
        }
    }

    #[test]
    fn a_known_token_is_its_principal_and_anything_else_is_refused() {
        let auth = Authenticator::new(&config());
        let gate = Gate::Authenticated;
        let access = auth.admit(gate, Some(b"Bearer secret-1"), None).unwrap();
        assert_eq!(access.principal(), Some("api"));
        assert_eq!(auth.admit(gate, Some(b"bearer secret-1"), None).unwrap().principal(), Some("api"));
        assert_eq!(auth.admit(gate, Some(b"Bearer secret-2"), None), Err(Unauthenticated::UnknownToken));
        assert_eq!(auth.admit(gate, Some(b"Basic abc"), None), Err(Unauthenticated::Malformed));
        assert_eq!(auth.admit(gate, None, None), Err(Unauthenticated::Missing));
        assert_eq!(auth.admit(Gate::Open, None, None), Ok(Access::Open), "health is open");
        assert_eq!(auth.admit(Gate::Reflection, None, None), Ok(Access::Open));
    }

    #[test]
    fn certificates_match_by_subject_ignoring_spaces_or_by_any_san() {
        let auth = Authenticator::new(&config());
        let by_subject = PeerIdentity { subject: "CN=worker,O=Example".into(), sans: vec![] };
        let by_san =
            PeerIdentity { subject: "CN=other".into(), sans: vec!["spiffe://example/worker".into()] };
        let nobody = PeerIdentity { subject: "CN=other".into(), sans: vec!["x".into()] };
        let gate = Gate::Authenticated;
        assert_eq!(auth.admit(gate, None, Some(&by_subject)).unwrap().principal(), Some("worker"));
        assert_eq!(auth.admit(gate, None, Some(&by_san)).unwrap().principal(), Some("worker"));
        assert_eq!(auth.admit(gate, None, Some(&nobody)), Err(Unauthenticated::UnknownCertificate));
    }

    #[test]
    fn a_reload_replaces_the_principals_for_the_next_calls() {
        let auth = Authenticator::new(&config());
        let gate = Gate::Authenticated;
        assert!(auth.admit(gate, Some(b"Bearer secret-1"), None).is_ok());
        let mut next = config();
        next.principals[0].token_sha256 = Some(hex(&token_hash("secret-2")));
        auth.replace(&next);
        assert_eq!(auth.admit(gate, Some(b"Bearer secret-1"), None), Err(Unauthenticated::UnknownToken));
        assert_eq!(auth.admit(gate, Some(b"Bearer secret-2"), None).unwrap().principal(), Some("api"));
        auth.replace(&AuthConfig::default());
        assert_eq!(auth.admit(gate, None, None), Ok(Access::Open), "auth turned off by a reload");
    }

    #[test]
    fn off_means_open_whatever_is_sent() {
        let auth = Authenticator::disabled();
        assert_eq!(auth.admit(Gate::Authenticated, Some(b"Bearer nope"), None), Ok(Access::Open));
    }

    #[test]
    fn the_tokens_file_adds_tokens_and_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("# comment\n{} worker\nnot a line\n", hex(&token_hash("t1")))).unwrap();
        let auth = Authenticator::new(&AuthConfig { tokens_file: Some(path.clone()), ..config() });
        let gate = Gate::Authenticated;
        assert_eq!(auth.admit(gate, Some(b"Bearer t1"), None).unwrap().principal(), Some("worker"));
        assert!(!auth.refresh(), "unchanged");
        std::fs::write(
            &path,
            format!("{} worker\n{} ghost\n", hex(&token_hash("t2-longer")), hex(&token_hash("g"))),
        )
        .unwrap();
        assert!(auth.refresh());
        assert_eq!(auth.admit(gate, Some(b"Bearer t1"), None), Err(Unauthenticated::UnknownToken));
        assert_eq!(auth.admit(gate, Some(b"Bearer t2-longer"), None).unwrap().principal(), Some("worker"));
        assert_eq!(
            auth.admit(gate, Some(b"Bearer g"), None),
            Err(Unauthenticated::UnknownToken),
            "undeclared name"
        );
    }
}
