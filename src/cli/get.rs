//! `taskbroker get ID` and `taskbroker cancel ID`.

use clap::Args;

use super::client::{status_error, task_json, ServerArg};
use crate::pb;

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The task id.
    pub id: String,
    #[command(flatten)]
    pub server: ServerArg,
}

pub async fn run(args: GetArgs, cancel: bool) -> anyhow::Result<()> {
    let mut client = args.server.producer().await?;
    let task = if cancel {
        client
            .cancel_task(pb::CancelTaskRequest { task_id: args.id })
            .await
            .map_err(status_error)?
            .into_inner()
            .task
    } else {
        client
            .get_task(pb::GetTaskRequest { task_id: args.id, include_dependencies: false })
            .await
            .map_err(status_error)?
            .into_inner()
            .task
    };
    println!("{}", task_json(&task.unwrap_or_default()));
    Ok(())
}
