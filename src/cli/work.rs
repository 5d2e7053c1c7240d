//! `taskbroker work -- CMD ARGS...`: any program becomes a worker.
//!
//! Holds one `Stream` with `--concurrency` credits. Each pushed task runs
//! `CMD` with the payload on stdin and the task in environment variables;
//! exit 0 acks with stdout as the result, anything else nacks with the tail of
//! stderr. The payload is written to stdin while stdout and stderr are read,
//! so a command that answers as it reads (`cat`) never blocks on a full pipe.
//! A result over `--max-result-bytes`, or one the broker refuses as too large,
//! is a Nack without retry (running the command again would give the same
//! result). Leases are extended while the command runs; a command whose lease
//! is lost is killed. SIGTERM (or Ctrl-C) stops taking work, finishes what
//! runs, and exits.

use crate::core::trace::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::telemetry::trace;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::client::ServerArg;
use crate::pb;
use crate::pb::stream_request::Msg;
use crate::pb::stream_response::Msg as Pushed;

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
    /// Largest result (stdout) acked; a larger one fails the task without
    /// retry. The broker's `max_payload_bytes` (default 1 MiB) also applies.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_result_bytes: usize,
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
    outcome: Outcome,
}

/// How a command ended.
enum Outcome {
    /// Exit 0: Ack with stdout.
    Succeeded(Vec<u8>),
    /// Nack with this error; `no_retry` when another run cannot help.
    Failed { error: String, no_retry: bool },
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
    let mut client = args.server.worker().await?;
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
    // Acks sent and not yet answered: task -> (lease, result length), so an
    // Ack the broker refuses for its result's size becomes a final Nack.
    let mut acking: HashMap<String, (String, usize)> = HashMap::new();
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
                        let max = args.max_result_bytes;
                        tokio::spawn(run_command(args.command.clone(), task, leased.lease_id.clone(), max, killed, done_tx.clone()));
                        jobs.insert(id, Job { lease_id: leased.lease_id, _kill: kill });
                    }
                    Some(Pushed::LeaseLost(lost))
                        if jobs.get(&lost.task_id).is_some_and(|j| j.lease_id == lost.lease_id) =>
                    {
                        jobs.remove(&lost.task_id);
                        tracing::warn!(task_id = %lost.task_id, reason = %lost.reason, "lease lost; command killed");
                    }
                    Some(Pushed::Settled(s)) => {
                        let acked = (s.operation == pb::SettleOperation::Ack as i32)
                            .then(|| acking.remove(&s.task_id))
                            .flatten()
                            .filter(|(lease, _)| *lease == s.lease_id);
                        let Some(err) = s.error else { continue };
                        tracing::warn!(task_id = %s.task_id, error = %err.message, "settlement refused");
                        // A refused result (too large for the broker) fails the task for good.
                        if let Some((lease_id, len)) = acked.filter(|_| err.code == tonic::Code::InvalidArgument as i32) {
                            let error = format!("result of {len} bytes refused by the broker: {}", err.message);
                            let msg = Msg::Nack(pb::NackRequest { task_id: s.task_id, lease_id, error, retry_after: None, no_retry: true });
                            tx.send(send(msg)).await?;
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
                        Outcome::Succeeded(result) => {
                            acking.insert(done.task_id.clone(), (done.lease_id.clone(), result.len()));
                            Msg::Ack(pb::AckRequest { task_id: done.task_id, lease_id: done.lease_id, result })
                        }
                        Outcome::Failed { error, no_retry } => Msg::Nack(pb::NackRequest { task_id: done.task_id, lease_id: done.lease_id, error, retry_after: None, no_retry }),
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
    drop((tx, acking));
    let _ =
        tokio::time::timeout(Duration::from_secs(5), async { while pushed.next().await.is_some() {} }).await;
    Ok(())
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// The environment a command sees for `task`; `trace`: the context of the
/// span processing it (else the task's own creation context is passed on).
pub fn task_env(task: &pb::Task, trace: Option<&TraceContext>) -> Vec<(String, String)> {
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
    let (parent, state) = match trace {
        Some(t) => (t.traceparent.clone(), t.tracestate.clone()),
        None => (task.headers.get(TRACEPARENT).cloned(), task.headers.get(TRACESTATE).cloned()),
    };
    if let Some(tp) = parent {
        env.push(("TRACEPARENT".to_owned(), tp));
    }
    if let Some(ts) = state {
        env.push(("TRACESTATE".to_owned(), ts));
    }
    env
}

/// With trace export on, the `process {queue}` span of one task: a CONSUMER
/// span, child of the task's creation context and linked to it.
fn process_span(task: &pb::Task) -> Option<tracing::Span> {
    if !trace::enabled() {
        return None;
    }
    let span = tracing::info_span!(
        target: trace::TARGET,
        "process",
        otel.name = format!("process {}", task.queue),
        otel.kind = "consumer",
        messaging.system = "taskbroker",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = task.queue.as_str(),
        messaging.message.id = task.id.as_str(),
        messaging.message.delivery_attempt = task.attempt,
        otel.status_code = tracing::field::Empty,
    );
    let headers: std::collections::BTreeMap<String, String> =
        task.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(cx) = trace::task_context(&headers) {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.add_link(cx.span().span_context().clone());
        trace::set_parent(&span, Some(cx));
    }
    Some(span)
}

async fn run_command(
    command: Vec<String>,
    task: pb::Task,
    lease_id: String,
    max_result: usize,
    killed: oneshot::Receiver<()>,
    done: mpsc::Sender<Done>,
) {
    let span = process_span(&task);
    let trace = span.as_ref().and_then(trace::context_of);
    let outcome = tokio::select! {
        outcome = execute(&command, &task, trace.as_ref(), max_result) => outcome,
        // Lease lost: dropping `execute` drops the child, which kills it.
        _ = killed => return,
    };
    if let (Some(span), Outcome::Failed { .. }) = (&span, &outcome) {
        span.record("otel.status_code", "ERROR");
    }
    drop(span);
    let _ = done.send(Done { task_id: task.id, lease_id, outcome }).await;
}

/// Runs `command` for `task`: writes the payload to its stdin while reading
/// its stdout (up to `max_result` bytes kept) and the tail of its stderr.
async fn execute(
    command: &[String],
    task: &pb::Task,
    trace: Option<&TraceContext>,
    max_result: usize,
) -> Outcome {
    let failed = |error: String| Outcome::Failed { error, no_retry: false };
    let mut child = match tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .envs(task_env(task, trace))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start {:?}: {e}", command[0])),
    };
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its stdin is fine. Dropping the
            // pipe afterwards closes it: the command sees end of input.
            let _ = stdin.write_all(&task.payload).await;
        }
    };
    let (_, out, err, status) =
        tokio::join!(feed, read_capped(stdout, max_result), read_tail(stderr, ERROR_TAIL), child.wait());
    let status = match status {
        Ok(status) => status,
        Err(e) => return failed(format!("waiting for the command: {e}")),
    };
    let ((stdout, out_len), (stderr, _)) = match (out, err) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => return failed(format!("reading the command's output: {e}")),
    };
    if status.success() {
        if out_len > max_result {
            let error = format!("result of {out_len} bytes is over --max-result-bytes ({max_result})");
            return Outcome::Failed { error, no_retry: true };
        }
        return Outcome::Succeeded(stdout);
    }
    let tail_start = stderr.len().saturating_sub(ERROR_TAIL);
    let tail = String::from_utf8_lossy(&stderr[tail_start..]);
    failed(format!("{}: {}", status, tail.trim_end()))
}

/// Reads `pipe` to its end, keeping its first `keep` bytes; returns them and
/// the total length. Reading on past `keep` lets the command finish writing.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, keep: usize) -> std::io::Result<(Vec<u8>, usize)> {
    let Some(mut pipe) = pipe else { return Ok((Vec::new(), 0)) };
    let mut kept = Vec::new();
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, total));
        }
        total += n;
        let room = keep.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&buf[..room]);
    }
}

/// Reads `pipe` to its end, keeping (at least) its last `keep` bytes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, keep: usize) -> std::io::Result<(Vec<u8>, usize)> {
    let Some(mut pipe) = pipe else { return Ok((Vec::new(), 0)) };
    let mut kept = Vec::new();
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, total));
        }
        total += n;
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * keep {
            kept.drain(..kept.len() - keep);
        }
    }
}
