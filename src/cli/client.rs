//! What client subcommands share: the server address, TLS and credentials,
//! and task printing.

use std::path::PathBuf;

use clap::Args;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::producer_service_client::ProducerServiceClient;
use crate::pb::worker_service_client::WorkerServiceClient;

#[derive(Debug, Clone, Args)]
pub struct ServerArg {
    /// Broker address; `https://` speaks TLS.
    #[arg(long, env = "TASKBROKER_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// PEM CA bundle that verifies the broker's certificate (implies TLS;
    /// default: the system's roots are not used, so give it for https://).
    #[arg(long, env = "TASKBROKER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a broker that requires mTLS.
    #[arg(long, env = "TASKBROKER_CLIENT_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TASKBROKER_CLIENT_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Bearer token, for a broker with [auth] on (its value is never shown
    /// in --help).
    #[arg(long, env = "TASKBROKER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let value = match token {
            None => None,
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| anyhow::anyhow!("token: not a valid header value"))?,
            ),
        };
        Ok(Self(value))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel with the caller's credentials.
pub type Authed = InterceptedService<Channel, Bearer>;

impl ServerArg {
    /// A connected channel, over TLS for `https://` or when a TLS file is given.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
        let tls_wanted =
            self.server.starts_with("https://") || self.tls_ca.is_some() || self.tls_cert.is_some();
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(|e| anyhow::anyhow!("--server {}: {e}", self.server))?;
        if tls_wanted {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {}", self.server, chain(&e)))
    }

    fn bearer(&self) -> anyhow::Result<Bearer> {
        Bearer::new(self.token.as_deref()).map_err(|e| anyhow::anyhow!("--{e}"))
    }

    pub async fn producer(&self) -> anyhow::Result<ProducerServiceClient<Authed>> {
        Ok(ProducerServiceClient::with_interceptor(self.channel().await?, self.bearer()?))
    }

    pub async fn admin(&self) -> anyhow::Result<AdminServiceClient<Authed>> {
        Ok(AdminServiceClient::with_interceptor(self.channel().await?, self.bearer()?))
    }

    pub async fn worker(&self) -> anyhow::Result<WorkerServiceClient<Authed>> {
        Ok(WorkerServiceClient::with_interceptor(self.channel().await?, self.bearer()?))
    }
}

/// An error with its causes, one line (a TLS failure hides in the sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A gRPC error as one readable line.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| {
            let d = std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + d).to_string()
        })
        .unwrap_or_default()
}

/// A task as one JSON object (payload and result as UTF-8 when they are).
pub fn task_json(t: &pb::Task) -> String {
    let state = pb::TaskState::try_from(t.state).map(|s| s.as_str_name()).unwrap_or("TASK_STATE_UNSPECIFIED");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let headers: serde_json::Map<String, serde_json::Value> =
        t.headers.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
    serde_json::json!({
        "id": t.id,
        "queue": t.queue,
        "kind": t.kind,
        "state": state,
        "priority": t.priority,
        "attempt": t.attempt,
        "max_attempts": t.max_attempts,
        "payload": text(&t.payload),
        "content_type": t.content_type,
        "headers": headers,
        "dedup_key": t.dedup_key,
        "create_time": ts(&t.create_time),
        "update_time": ts(&t.update_time),
        "scheduled_time": ts(&t.scheduled_time),
        "result": text(&t.result),
        "last_error": t.last_error,
        "depends_on": t.depends_on,
        "pending_dependencies": t.pending_dependencies,
        "expire_time": ts(&t.expire_time),
    })
    .to_string()
}
