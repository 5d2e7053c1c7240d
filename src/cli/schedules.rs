//! `taskbroker schedules`: the periodic schedules with their last and next
//! runs; `schedules trigger NAME` runs one now, `schedules delete NAME`
//! removes a runtime one.

use std::io::Write;

use clap::{Args, Subcommand};

use super::client::{status_error, task_json, ServerArg};
use crate::pb;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SchedulesArgs {
    #[command(subcommand)]
    pub action: Option<ScheduleAction>,
    /// One JSON object per schedule instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Enqueue one run of the schedule now (its due times are unaffected);
    /// prints the task as JSON.
    Trigger(ScheduleName),
    /// Delete a runtime schedule (one made with PutSchedule).
    Delete(ScheduleName),
}

#[derive(Debug, Args)]
pub struct ScheduleName {
    pub name: String,
    #[command(flatten)]
    pub server: ServerArg,
}

/// A time as RFC 3339 UTC to the second; `-` when unset.
fn time(t: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let d = std::time::Duration::from_secs(t.seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + d).to_string()
}

/// When it runs: the cron pattern (and its zone), or `every 15m`.
fn when(s: &pb::Schedule) -> String {
    match &s.every {
        Some(every) => {
            let d = std::time::Duration::new(every.seconds.max(0) as u64, every.nanos.max(0) as u32);
            format!("every {}", humantime::format_duration(d)).replace(' ', "_")
        }
        None if s.timezone.is_empty() => s.cron.clone(),
        None => format!("{} ({})", s.cron, s.timezone),
    }
}

fn source(s: &pb::Schedule) -> &'static str {
    match s.source() {
        pb::ScheduleSource::Config => "config",
        pb::ScheduleSource::Runtime => "runtime",
        pb::ScheduleSource::Unspecified => "-",
    }
}

fn catch_up(s: &pb::Schedule) -> &'static str {
    match s.catch_up() {
        pb::ScheduleCatchUp::None => "none",
        pb::ScheduleCatchUp::One | pb::ScheduleCatchUp::Unspecified => "one",
        pb::ScheduleCatchUp::All => "all",
    }
}

pub fn schedule_json(s: &pb::Schedule) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> =
        s.headers.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
    serde_json::json!({
        "name": s.name,
        "source": source(s),
        "cron": s.cron,
        "every_seconds": s.every.as_ref().map(|e| e.seconds),
        "timezone": s.timezone,
        "queue": s.queue,
        "kind": s.kind,
        "payload": String::from_utf8_lossy(&s.payload),
        "headers": headers,
        "catch_up": catch_up(s),
        "last_run_time": s.last_run_time.as_ref().map(|_| time(&s.last_run_time)),
        "next_run_time": s.next_run_time.as_ref().map(|_| time(&s.next_run_time)),
    })
}

pub async fn run(args: SchedulesArgs) -> anyhow::Result<()> {
    match args.action {
        Some(ScheduleAction::Trigger(ScheduleName { name, server })) => {
            let request = pb::TriggerScheduleRequest { name };
            let r = server.admin().await?.trigger_schedule(request).await.map_err(status_error)?;
            let task = r.into_inner().task.unwrap_or_default();
            println!("{}", task_json(&task));
            Ok(())
        }
        Some(ScheduleAction::Delete(ScheduleName { name, server })) => {
            let request = pb::DeleteScheduleRequest { name: name.clone() };
            server.admin().await?.delete_schedule(request).await.map_err(status_error)?;
            println!("{}", serde_json::json!({ "deleted": name }));
            Ok(())
        }
        None => list(args.json, &args.server).await,
    }
}

async fn list(json: bool, server: &ServerArg) -> anyhow::Result<()> {
    let mut client = server.admin().await?;
    let schedules = client
        .list_schedules(pb::ListSchedulesRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .schedules;
    let mut out = std::io::stdout().lock();
    if json {
        for s in &schedules {
            writeln!(out, "{}", schedule_json(s))?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<8} {:<20} {:<32} {:<8} {:<20} {:<20} KIND",
        "NAME", "SOURCE", "NEXT_RUN", "WHEN", "CATCH_UP", "LAST_RUN", "QUEUE"
    )?;
    for s in &schedules {
        writeln!(
            out,
            "{:<24} {:<8} {:<20} {:<32} {:<8} {:<20} {:<20} {}",
            s.name,
            source(s),
            time(&s.next_run_time),
            when(s),
            catch_up(s),
            time(&s.last_run_time),
            s.queue,
            s.kind
        )?;
    }
    Ok(())
}
