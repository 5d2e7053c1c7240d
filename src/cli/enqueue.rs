//! `taskbroker enqueue`: enqueue one task and print it as JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::client::{status_error, task_json, ServerArg};
use crate::pb;

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Target queue (default: routing rules, then "default").
    #[arg(long, default_value = "")]
    pub queue: String,
    /// Task type name.
    #[arg(long)]
    pub kind: String,
    /// Payload as a string.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Payload read from a file ("-" for stdin).
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    #[arg(long, default_value = "")]
    pub content_type: String,
    /// 0-9, higher runs first.
    #[arg(long)]
    pub priority: Option<u32>,
    /// Run after this delay (e.g. 10s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    #[arg(long, default_value = "")]
    pub dedup_key: String,
    /// A header as NAME=VALUE (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The task's group in its queue (a tenant, a device): groups take
    /// turns, and the queue's per_key_max_in_flight caps each.
    #[arg(long, default_value = "")]
    pub concurrency_key: String,
    /// A declared semaphore the task holds a permit of while leased (repeatable).
    #[arg(long = "semaphore")]
    pub semaphores: Vec<String>,
    /// A task id this task runs after (repeatable): it waits until every
    /// one has SUCCEEDED.
    #[arg(long = "depends-on")]
    pub depends_on: Vec<String>,
    /// Run even if a dependency ends DEAD or CANCELED (default: cancel).
    #[arg(long)]
    pub run_on_dependency_failure: bool,
    /// Deadline from now (e.g. 10m): not delivered by then, the task is
    /// CANCELED as expired.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// Wait until the task finishes; print it then (exit 1 unless it SUCCEEDED).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub server: ServerArg,
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

pub fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

pub async fn run(args: EnqueueArgs) -> anyhow::Result<()> {
    let payload = match (&args.payload, &args.payload_file) {
        (Some(p), _) => p.clone().into_bytes(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => Vec::new(),
    };
    let request = pb::EnqueueRequest {
        queue: args.queue,
        kind: args.kind,
        payload,
        content_type: args.content_type,
        priority: args.priority,
        headers: args.headers.into_iter().collect(),
        delay: args.delay.map(duration),
        scheduled_time: None,
        max_attempts: args.max_attempts,
        dedup_key: args.dedup_key,
        request_id: String::new(),
        concurrency_key: args.concurrency_key,
        semaphores: args.semaphores,
        depends_on: args.depends_on,
        on_dependency_failure: if args.run_on_dependency_failure {
            pb::DependencyFailurePolicy::Run
        } else {
            pb::DependencyFailurePolicy::Cancel
        } as i32,
        expire_time: None,
        ttl: args.ttl.map(duration),
    };
    let mut client = args.server.producer().await?;
    let response = client.enqueue(request).await.map_err(status_error)?.into_inner();
    let task = response.task.unwrap_or_default();
    if !args.wait {
        println!("{}", task_json(&task));
        return Ok(());
    }
    let last = super::watch::watch(&mut client, task.id, false).await?;
    println!("{}", task_json(&last));
    super::watch::finished_ok(&last)
}
