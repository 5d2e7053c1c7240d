//! `--auth` and `--tls`: the in-process broker with authentication or TLS
//! on, and what the bench's clients then need (`--token`, `--tls-ca` for a
//! broker at `--server`).

use tempfile::TempDir;

use super::load::Credentials;
use super::BenchArgs;
use crate::config::security::{GrantConfig, PrincipalConfig};
use crate::config::Config;
use crate::security::authn::{hex, token_hash};

/// The broker's config with security applied, and the clients' side.
pub struct Secured {
    pub config: Config,
    pub credentials: Credentials,
    /// Holds the certificate files while the broker runs.
    pub _files: Option<TempDir>,
}

pub fn secure(mut config: Config, args: &BenchArgs) -> anyhow::Result<Secured> {
    let mut credentials = Credentials { ca_pem: None, token: args.token.clone() };
    if let Some(ca) = &args.tls_ca {
        credentials.ca_pem =
            Some(std::fs::read_to_string(ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?);
    }
    if args.auth {
        let token = crate::cli::token::generate();
        config.auth.enabled = true;
        config.auth.principals.push(PrincipalConfig {
            name: "bench".into(),
            token_sha256: Some(hex(&token_hash(&token))),
            mtls_subject: None,
            mtls_san: None,
            grants: vec![GrantConfig {
                actions: ["enqueue", "consume", "inspect", "admin"].map(String::from).to_vec(),
                // Like a real deployment's principal: named queues, not "*",
                // so settlements pay the per-task queue check.
                queues: vec!["bench.*".into()],
            }],
        });
        credentials.token = Some(token);
    }
    let mut files = None;
    if args.tls {
        let dir = tempfile::Builder::new().prefix("taskbroker-bench-tls-").tempdir()?;
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
        params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
        let cert = params.self_signed(&key)?;
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        config.tls_cert = Some(cert_path);
        config.tls_key = Some(key_path);
        credentials.ca_pem = Some(cert.pem());
        files = Some(dir);
    }
    Ok(Secured { config, credentials, _files: files })
}
