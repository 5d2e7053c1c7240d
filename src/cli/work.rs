//! `taskbroker work -- CMD ARGS...`: any program becomes a worker.
//!
//! Holds one `Stream` with `--concurrency` credits. Each pushed task runs
//! `CMD` with the payload on stdin and the task in environment variables;
//! exit 0 acks with stdout as the result, anything else nacks with the tail of
//! stderr. Leases are extended while the command runs; a command whose lease
//! is lost is killed. SIGTERM (or Ctrl-C) stops taking work, finishes what
//! runs, and exits.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::client::ServerArg;
use crate::pb;
use crate::pb::stream_request::Msg;
use crate::pb::stream_response::Msg as Pushed;
use crate::pb::worker_service_client::WorkerServiceClient;

/// Most bytes of stderr kept as a failed task's error.
const ERROR_TAIL: usize = 4096;

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Queue to take tasks from (repeat for several, in preference order).
    #[arg(long = "queue", required = true)]
    pub queues: Vec<String>,
    /// Tasks run at once (the stream's credits).
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// Lease length; extended every third of it while the command runs.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Name reported to the broker.
    #[arg(long, default_value = "")]
    pub worker_id: String,
    #[command(flatten)]
    pub server: ServerArg,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// A command that finished: how to settle its task.
struct Done {
    task_id: String,
    lease_id: String,
    outcome: Result<Vec<u8>, String>,
}

/// A running command.
struct Job {
    lease_id: String,
    /// Kills the command (dropping it does too).
    _kill: oneshot::Sender<()>,
}

pub async fn run(args: WorkArgs) -> anyhow::Result<()> {
    if args.lease < Duration::from_secs(1) {
        bail!("--lease must be at least 1s");
    }
    let channel = tonic::transport::Endpoint::from_shared(args.server.server.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.server.server))?;
    let mut client = WorkerServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::StreamRequest>(1024);
    let send = |msg: Msg| pb::StreamRequest { msg: Some(msg) };
    let worker_id = if args.worker_id.is_empty() {
        format!("work-{}", std::process::id())
    } else {
        args.worker_id.clone()
    };
    tx.send(send(Msg::Subscribe(pb::Subscribe {
        queues: args.queues.clone(),
        mode: pb::SubscribeMode::Strict as i32,
        weights: Default::default(),
        max_in_flight: args.concurrency.max(1),
        lease_duration: Some(proto_duration(args.lease)),
        worker_id,
    })))
    .await?;
    let mut pushed = client.stream(ReceiverStream::new(rx)).await.context("opening the stream")?.into_inner();

    let (done_tx, mut done_rx) = mpsc::channel::<Done>(64);
    let mut jobs: HashMap<String, Job> = HashMap::new();
    let mut extend = tokio::time::interval(args.lease / 3);
    extend.tick().await;
    let mut stopping = false;
    let mut stop = Box::pin(super::serve::shutdown_signal()?);
    loop {
        if stopping && jobs.is_empty() {
            break;
        }
        tokio::select! {
            msg = pushed.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(status)) => bail!("stream ended: {:?}: {}", status.code(), status.message()),
                    None => break,
                };
                match msg.msg {
                    Some(Pushed::Task(leased)) => {
                        let Some(task) = leased.task else { continue };
                        let (kill, killed) = oneshot::channel();
                        let id = task.id.clone();
                        tokio::spawn(run_command(args.command.clone(), task, leased.lease_id.clone(), killed, done_tx.clone()));
                        jobs.insert(id, Job { lease_id: leased.lease_id, _kill: kill });
                    }
                    Some(Pushed::LeaseLost(lost))
                        if jobs.get(&lost.task_id).is_some_and(|j| j.lease_id == lost.lease_id) =>
                    {
                        jobs.remove(&lost.task_id);
                        tracing::warn!(task_id = %lost.task_id, reason = %lost.reason, "lease lost; command killed");
                    }
                    Some(Pushed::Settled(s)) => {
                        if let Some(err) = s.error {
                            tracing::warn!(task_id = %s.task_id, error = %err.message, "settlement refused");
                        }
                    }
                    Some(Pushed::Draining(_)) => {
                        tracing::info!("broker is draining; finishing running commands");
                        stopping = true;
                    }
                    Some(Pushed::LeaseLost(_)) | None => {}
                }
            }
            Some(done) = done_rx.recv() => {
                if jobs.get(&done.task_id).is_some_and(|j| j.lease_id == done.lease_id) {
                    jobs.remove(&done.task_id);
                    let msg = match done.outcome {
                        Ok(result) => Msg::Ack(pb::AckRequest { task_id: done.task_id, lease_id: done.lease_id, result }),
                        Err(error) => Msg::Nack(pb::NackRequest { task_id: done.task_id, lease_id: done.lease_id, error, retry_after: None, no_retry: false }),
                    };
                    tx.send(send(msg)).await?;
                }
            }
            _ = extend.tick() => {
                for (task_id, job) in &jobs {
                    let msg = Msg::Extend(pb::ExtendLeaseRequest {
                        task_id: task_id.clone(),
                        lease_id: job.lease_id.clone(),
                        extend_by: Some(proto_duration(args.lease)),
                    });
                    tx.send(send(msg)).await?;
                }
            }
            _ = &mut stop, if !stopping => {
                tracing::info!(running = jobs.len(), "stopping: no new tasks; finishing running commands");
                stopping = true;
                tx.send(send(Msg::Drain(pb::Drain {}))).await?;
            }
        }
    }
    // Let the last settlements reach the broker before closing the stream.
    drop(tx);
    let _ =
        tokio::time::timeout(Duration::from_secs(5), async { while pushed.next().await.is_some() {} }).await;
    Ok(())
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// The environment a command sees for `task`.
pub fn task_env(task: &pb::Task) -> Vec<(String, String)> {
    let mut env = vec![
        ("TASKBROKER_TASK_ID".to_owned(), task.id.clone()),
        ("TASKBROKER_KIND".to_owned(), task.kind.clone()),
        ("TASKBROKER_QUEUE".to_owned(), task.queue.clone()),
        ("TASKBROKER_ATTEMPT".to_owned(), task.attempt.to_string()),
        ("TASKBROKER_CONTENT_TYPE".to_owned(), task.content_type.clone()),
    ];
    for (name, value) in &task.headers {
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
            .collect();
        env.push((format!("TASKBROKER_HEADER_{name}"), value.clone()));
    }
    if let Some(tp) = task.headers.get("traceparent") {
        env.push(("TRACEPARENT".to_owned(), tp.clone()));
    }
    env
}

async fn run_command(
    command: Vec<String>,
    task: pb::Task,
    lease_id: String,
    killed: oneshot::Receiver<()>,
    done: mpsc::Sender<Done>,
) {
    let outcome = tokio::select! {
        outcome = execute(&command, &task) => outcome,
        // Lease lost: dropping `execute` drops the child, which kills it.
        _ = killed => return,
    };
    let _ = done.send(Done { task_id: task.id, lease_id, outcome }).await;
}

async fn execute(command: &[String], task: &pb::Task) -> Result<Vec<u8>, String> {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .envs(task_env(task))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", command[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is fine.
        let _ = stdin.write_all(&task.payload).await;
    }
    let output = child.wait_with_output().await.map_err(|e| format!("waiting for the command: {e}"))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let tail_start = output.stderr.len().saturating_sub(ERROR_TAIL);
    let tail = String::from_utf8_lossy(&output.stderr[tail_start..]);
    Err(format!("{}: {}", output.status, tail.trim_end()))
}
