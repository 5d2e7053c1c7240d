//! What client subcommands share: the server address and task printing.

use clap::Args;

use crate::pb;
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
    let headers: Vec<String> = t.headers.iter().map(|(k, v)| format!("{}:{}", json(k), json(v))).collect();
    format!(
        "{{\"id\":{},\"queue\":{},\"kind\":{},\"state\":{},\"priority\":{},\"attempt\":{},\"max_attempts\":{},\
         \"payload\":{},\"content_type\":{},\"headers\":{{{}}},\"dedup_key\":{},\"create_time\":{},\
         \"update_time\":{},\"scheduled_time\":{},\"result\":{},\"last_error\":{}}}",
        json(&t.id),
        json(&t.queue),
        json(&t.kind),
        json(state),
        t.priority,
        t.attempt,
        t.max_attempts,
        json(&text(&t.payload)),
        json(&t.content_type),
        headers.join(","),
        json(&t.dedup_key),
        json(&ts(&t.create_time)),
        json(&ts(&t.update_time)),
        json(&ts(&t.scheduled_time)),
        json(&text(&t.result)),
        json(&t.last_error),
    )
}

/// A JSON string literal.
fn json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
