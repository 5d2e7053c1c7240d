//! `taskbroker watch ID`: print a task's state changes until it finishes.

use clap::Args;
use tokio_stream::StreamExt;

use super::client::{status_error, task_json, ServerArg};
use crate::pb;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The task id.
    pub id: String,
    #[command(flatten)]
    pub server: ServerArg,
}

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let mut client = args.server.producer().await?;
    let last = watch(&mut client, args.id, true).await?;
    finished_ok(&last)
}

/// Follows a task until a final state; prints every state (or only the last).
pub async fn watch(
    client: &mut pb::producer_service_client::ProducerServiceClient<super::client::Authed>,
    task_id: String,
    print_each: bool,
) -> anyhow::Result<pb::Task> {
    let mut states =
        client.watch_task(pb::WatchTaskRequest { task_id }).await.map_err(status_error)?.into_inner();
    let mut last = None;
    while let Some(msg) = states.next().await {
        let task = msg.map_err(status_error)?.task.unwrap_or_default();
        if print_each {
            println!("{}", task_json(&task));
        }
        last = Some(task);
    }
    last.ok_or_else(|| anyhow::anyhow!("the watch ended without a state"))
}

/// Exit status of a finished task: success only when it SUCCEEDED.
pub fn finished_ok(task: &pb::Task) -> anyhow::Result<()> {
    match pb::TaskState::try_from(task.state) {
        Ok(pb::TaskState::Succeeded) => Ok(()),
        Ok(state) => anyhow::bail!("task {} ended {}: {}", task.id, state.as_str_name(), task.last_error),
        Err(_) => anyhow::bail!("task {} ended in an unknown state", task.id),
    }
}
