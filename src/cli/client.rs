//! What client subcommands share: the server address and task printing.

use clap::Args;

use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::producer_service_client::ProducerServiceClient;

#[derive(Debug, Clone, Args)]
pub struct ServerArg {
    /// Broker address.
    #[arg(long, env = "TASKBROKER_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
}

impl ServerArg {
    pub async fn producer(&self) -> anyhow::Result<ProducerServiceClient<tonic::transport::Channel>> {
        ProducerServiceClient::connect(self.server.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", self.server))
    }

    pub async fn admin(&self) -> anyhow::Result<AdminServiceClient<tonic::transport::Channel>> {
        AdminServiceClient::connect(self.server.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", self.server))
    }
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
    })
    .to_string()
}
