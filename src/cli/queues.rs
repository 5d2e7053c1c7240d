//! `taskbroker queues`, `taskbroker queue pause|resume|purge|redrive`,
//! `taskbroker tasks`: the operations API from the command line.

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand, ValueEnum};

use super::client::{status_error, task_json, ServerArg};
use crate::pb;

/// A task state on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Scheduled,
    Ready,
    Leased,
    Succeeded,
    Dead,
    Canceled,
    Waiting,
}

impl StateArg {
    fn pb(self) -> pb::TaskState {
        match self {
            StateArg::Scheduled => pb::TaskState::Scheduled,
            StateArg::Ready => pb::TaskState::Ready,
            StateArg::Leased => pb::TaskState::Leased,
            StateArg::Succeeded => pb::TaskState::Succeeded,
            StateArg::Dead => pb::TaskState::Dead,
            StateArg::Canceled => pb::TaskState::Canceled,
            StateArg::Waiting => pb::TaskState::Waiting,
        }
    }
}

#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// One JSON object per queue instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Stop delivering the queue's tasks (enqueues are still accepted).
    Pause(QueueArg),
    /// Deliver the queue's tasks again.
    Resume(QueueArg),
    /// Remove the queue's tasks in the given states.
    Purge(PurgeArgs),
    /// Put DEAD tasks back to READY with attempt 0.
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
pub struct QueueArg {
    pub queue: String,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    pub queue: String,
    /// A state to purge (repeatable): waiting, scheduled, ready, succeeded, dead, canceled.
    #[arg(long = "state", required = true)]
    pub states: Vec<StateArg>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
pub struct RedriveArgs {
    pub queue: String,
    /// Only this task (repeatable); default: every dead task.
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Most tasks to redrive (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
pub struct TasksArgs {
    pub queue: String,
    #[arg(long, value_enum)]
    pub state: StateArg,
    /// Most tasks to print (oldest first).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// One JSON object per task instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArg,
}

/// Age of `t` as "3m12s" (empty when unset).
fn age(t: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = (now.as_secs() as i64 - t.seconds).max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string().replace(' ', "")
}

pub fn queue_json(q: &pb::QueueInfo) -> serde_json::Value {
    let c = q.counts.unwrap_or_default();
    let t = q.totals.unwrap_or_default();
    let s = q.settings.clone().unwrap_or_default();
    serde_json::json!({
        "name": q.name,
        "paused": q.paused,
        "declared": q.declared,
        "counts": {"scheduled": c.scheduled, "ready": c.ready, "leased": c.leased,
                   "succeeded": c.succeeded, "dead": c.dead, "canceled": c.canceled,
                   "waiting": c.waiting},
        "oldest_ready_age": age(&q.oldest_ready_time),
        "totals": {"enqueued": t.enqueued, "delivered": t.delivered, "acked": t.acked,
                   "nacked": t.nacked, "dead": t.dead, "expired": t.expired},
        "max_in_flight": s.max_in_flight,
    })
}

pub async fn queues(args: QueuesArgs) -> anyhow::Result<()> {
    let mut client = args.server.admin().await?;
    let queues =
        client.list_queues(pb::ListQueuesRequest {}).await.map_err(status_error)?.into_inner().queues;
    let mut out = std::io::stdout().lock();
    if args.json {
        for q in &queues {
            writeln!(out, "{}", queue_json(q))?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:>6} {:>8} {:>9} {:>7} {:>7} {:>11} {:>9}",
        "QUEUE", "PAUSED", "READY", "SCHEDULED", "LEASED", "DEAD", "OLDEST", "IN-FLIGHT"
    )?;
    for q in &queues {
        let c = q.counts.unwrap_or_default();
        let limit = q.settings.as_ref().map_or(0, |s| s.max_in_flight);
        let in_flight = if limit == 0 { format!("{}/-", c.leased) } else { format!("{}/{limit}", c.leased) };
        writeln!(
            out,
            "{:<24} {:>6} {:>8} {:>9} {:>7} {:>7} {:>11} {:>9}",
            q.name,
            if q.paused { "yes" } else { "no" },
            c.ready,
            c.scheduled,
            c.leased,
            c.dead,
            age(&q.oldest_ready_time),
            in_flight
        )?;
    }
    Ok(())
}

pub async fn queue(cmd: QueueCommand) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Pause(QueueArg { queue, server }) => {
            let q = server.admin().await?.pause_queue(pb::PauseQueueRequest { queue }).await;
            println!("{}", queue_json(&q.map_err(status_error)?.into_inner()));
        }
        QueueCommand::Resume(QueueArg { queue, server }) => {
            let q = server.admin().await?.resume_queue(pb::ResumeQueueRequest { queue }).await;
            println!("{}", queue_json(&q.map_err(status_error)?.into_inner()));
        }
        QueueCommand::Purge(PurgeArgs { queue, states, yes, server }) => {
            if !yes && !confirm(&format!("Purge {states:?} tasks of queue {queue:?}?"))? {
                anyhow::bail!("not purged (confirm, or pass --yes)");
            }
            let states = states.iter().map(|s| s.pb() as i32).collect();
            let r = server.admin().await?.purge_queue(pb::PurgeQueueRequest { queue, states }).await;
            println!("{}", serde_json::json!({"purged": r.map_err(status_error)?.into_inner().purged}));
        }
        QueueCommand::Redrive(RedriveArgs { queue, ids, limit, server }) => {
            let request = pb::RedriveTasksRequest { queue, task_ids: ids, limit };
            let r = server.admin().await?.redrive_tasks(request).await.map_err(status_error)?;
            println!("{}", serde_json::json!({"redriven": r.into_inner().redriven}));
        }
    }
    Ok(())
}

/// Asks on the terminal; refuses when there is none to ask on.
fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question} Not a terminal to confirm on: pass --yes");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

pub async fn tasks(args: TasksArgs) -> anyhow::Result<()> {
    let mut client = args.server.admin().await?;
    let (mut token, mut left) = (String::new(), args.limit);
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(out, "{:<26} {:<20} {:>7} {:<24} LAST_ERROR", "ID", "KIND", "ATTEMPT", "UPDATED")?;
    }
    while left > 0 {
        let request = pb::ListTasksRequest {
            queue: args.queue.clone(),
            state: args.state.pb() as i32,
            page_size: left.min(1000) as u32,
            page_token: std::mem::take(&mut token),
        };
        let page = client.list_tasks(request).await.map_err(status_error)?.into_inner();
        for t in &page.tasks {
            if args.json {
                writeln!(out, "{}", task_json(t))?;
            } else {
                let updated =
                    serde_json::from_str::<serde_json::Value>(&task_json(t))?["update_time"].clone();
                writeln!(
                    out,
                    "{:<26} {:<20} {:>7} {:<24} {}",
                    t.id,
                    t.kind,
                    format!("{}/{}", t.attempt, t.max_attempts),
                    updated.as_str().unwrap_or_default(),
                    t.last_error.replace('\n', " ")
                )?;
            }
        }
        left = left.saturating_sub(page.tasks.len());
        if page.next_page_token.is_empty() || page.tasks.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(())
}
