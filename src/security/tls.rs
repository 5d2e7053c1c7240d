//! Server TLS: certificates read from PEM files, re-read when the files
//! change (cert-manager rotation) so new connections get the new
//! certificate while open ones carry on, and optional client-certificate
//! verification (mTLS).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The PEM files of a TLS endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are required and verified against these CAs.
    pub client_ca: Option<PathBuf>,
}

/// What protocol the endpoint speaks over TLS (its ALPN id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only (gRPC clients insist on `h2`).
    Grpc,
    /// The admin port: HTTP/1.1.
    Http1,
}

/// When each file was last changed, and its size: a change of either means
/// a re-read.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// A TLS endpoint whose certificate follows its files.
pub struct ServerTls {
    files: TlsFiles,
    alpn: Alpn,
    current: RwLock<(Stamp, TlsAcceptor)>,
}

impl ServerTls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles, alpn: Alpn) -> anyhow::Result<Arc<Self>> {
        let stamp = stamp(&files);
        let acceptor = acceptor(&files, alpn)?;
        Ok(Arc::new(Self { files, alpn, current: RwLock::new((stamp, acceptor)) }))
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// Re-reads the files if they changed since the last read; a bad new
    /// certificate is logged and the old one stays in use. True if a new
    /// certificate was put in use.
    pub fn refresh(&self) -> bool {
        let now = stamp(&self.files);
        if now == self.current.read().unwrap_or_else(|p| p.into_inner()).0 {
            return false;
        }
        match acceptor(&self.files, self.alpn) {
            Ok(next) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (now, next);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Remember the stamp: a half-written pair is retried when it changes again.
                self.current.write().unwrap_or_else(|p| p.into_inner()).0 = now;
                tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the current certificate");
                false
            }
        }
    }
}

fn stamp(files: &TlsFiles) -> Stamp {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: holds no certificate", path.display());
    }
    Ok(certs)
}

fn acceptor(files: &TlsFiles, alpn: Alpn) -> anyhow::Result<TlsAcceptor> {
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("{}: not a PEM private key: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = match alpn {
        Alpn::Grpc => vec![b"h2".to_vec()],
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}
