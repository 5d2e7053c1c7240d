//! `taskbroker route` (the routing dry-run) and `taskbroker reload`.

use clap::Args;

use super::client::{status_error, ServerArg};
use crate::pb;

#[derive(Debug, Args)]
pub struct RouteArgs {
    /// Task type name.
    #[arg(long)]
    pub kind: String,
    /// An explicit queue, as Enqueue would name it (routes are then skipped).
    #[arg(long, default_value = "")]
    pub queue: String,
    /// A header as NAME=VALUE (repeatable).
    #[arg(long = "header", value_parser = super::enqueue::parse_header)]
    pub headers: Vec<(String, String)>,
    #[command(flatten)]
    pub server: ServerArg,
}

pub async fn route(args: RouteArgs) -> anyhow::Result<()> {
    let request = pb::ExplainRouteRequest {
        queue: args.queue,
        kind: args.kind,
        headers: args.headers.into_iter().collect(),
    };
    let r = args.server.admin().await?.explain_route(request).await.map_err(status_error)?.into_inner();
    println!(
        "{}",
        serde_json::json!({
            "queue": r.queue,
            "priority": r.priority,
            "route_index": r.route_index,
            "explanation": r.explanation,
        })
    );
    Ok(())
}

pub async fn reload(server: ServerArg) -> anyhow::Result<()> {
    let r = server.admin().await?.reload_config(pb::ReloadConfigRequest {}).await.map_err(status_error)?;
    let changes = r.into_inner().changes;
    if changes.is_empty() {
        println!("reloaded: nothing changed");
    }
    for c in changes {
        println!("{c}");
    }
    Ok(())
}
