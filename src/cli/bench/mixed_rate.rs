//! The `mixed-rate` scenario: producers and workers on one queue at the same
//! time for `--duration`, the sustained rate being acked tasks/s. Two rows:
//! - `unary`: producers send EnqueueBatch of [`BATCH`]; workers Lease (long-poll)
//!   and Ack;
//! - `stream`: producers pipeline single tasks on EnqueueStream; workers hold a
//!   `Stream` with [`STREAM_CREDITS`] credits and ack on it.
//!
//! Producers pause while the backlog (enqueued − acked) is over
//! [`BACKLOG_BATCHES`] batches per producer, so the figure is the broker's
//! steady state with a bounded queue, not the speed of filling an ever-deeper
//! one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::load::{self, join, stop_signal, Stop, Tally};
use super::meter::Meter;
use super::report::{Row, ScenarioReport, Transport};
use super::work::{StreamWorker, Worker};
use super::Ctx;
use crate::pb;

/// Tasks per EnqueueBatch and most tasks per Lease.
const BATCH: u64 = 100;
/// Producers pause while more than this many batches per producer wait.
const BACKLOG_BATCHES: u64 = 10;
/// Workers' long-poll.
const WAIT: Duration = Duration::from_secs(1);
/// A paused producer looks again after this long.
const PAUSE: Duration = Duration::from_millis(1);

/// Credits of each stream worker in the `stream` row.
const STREAM_CREDITS: u32 = 128;
/// Most unanswered EnqueueStream requests per producer.
const STREAM_WINDOW: u64 = 1000;

pub async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let (unary, note) = run_mode(ctx, Transport::Unary).await;
    let (stream, stream_note) = run_mode(ctx, Transport::Stream).await;
    let mut report = ScenarioReport::new("mixed-rate", vec![unary, stream]);
    report.notes.push(note);
    report.notes.push(stream_note);
    Ok(report)
}

/// One row: producers and workers of one transport together for `--duration`.
async fn run_mode(ctx: &Ctx, transport: Transport) -> (Row, String) {
    let stream = transport == Transport::Stream;
    let mode = if stream { "stream" } else { "unary" };
    let queue = ctx.queue(&format!("mixed-rate-{mode}"));
    // Unary workers need many callers to keep calls in flight; streams do not.
    let (producers, workers) = if stream {
        ((ctx.opts.concurrency / 8).max(1), (ctx.opts.concurrency / 8).max(1))
    } else {
        let producers = (ctx.opts.concurrency / 4).max(1);
        (producers, ctx.opts.concurrency.saturating_sub(producers).max(1))
    };
    let backlog_limit = BACKLOG_BATCHES * BATCH * producers as u64;
    let enqueued = Arc::new(AtomicU64::new(0));
    let meter = Meter::start(ctx.probes.clone(), "mixed-rate", mode.to_string());
    let acked = meter.tally();
    let (stop, stopped) = stop_signal();
    let mut handles = Vec::new();
    for caller in 0..producers {
        let producer = Producer {
            client: ctx.pool.producer(caller),
            queue: queue.clone(),
            payload: ctx.payload(),
            enqueued: enqueued.clone(),
            tally: acked.clone(),
            backlog_limit,
        };
        handles.push(if stream {
            tokio::spawn(producer.run_stream(stopped.clone()))
        } else {
            tokio::spawn(producer.run_batches(stopped.clone()))
        });
    }
    for caller in 0..workers {
        // Workers use connections after the producers', so each side spreads.
        let client = ctx.pool.worker(producers + caller);
        let queues = vec![queue.clone()];
        handles.push(if stream {
            let worker = StreamWorker { client, queues, max_in_flight: STREAM_CREDITS };
            tokio::spawn(worker.run_until(stopped.clone(), acked.clone(), |_| {}))
        } else {
            let worker = Worker { client, queues, max_tasks: BATCH as u32, wait: Some(WAIT) };
            tokio::spawn(worker.run_until(stopped.clone(), acked.clone(), |_| {}))
        });
    }
    tokio::time::sleep(ctx.opts.duration).await;
    stop.stop();
    join(handles).await;
    let row = meter.finish(transport, Some(&ctx.baseline));
    let enqueued = enqueued.load(Ordering::Relaxed);
    let note = if stream {
        format!(
            "stream: {producers} producers (EnqueueStream, up to {STREAM_WINDOW} unanswered), {workers} stream \
             workers ({STREAM_CREDITS} credits); {enqueued} enqueued, backlog bound {backlog_limit}"
        )
    } else {
        format!(
            "unary: {producers} producers (EnqueueBatch of {BATCH}), {workers} workers (Lease up to {BATCH}, \
             wait {}s); {enqueued} enqueued, backlog bound {backlog_limit}",
            WAIT.as_secs()
        )
    };
    (row, note)
}

/// Enqueues until stopped, pausing while the backlog is over its bound.
struct Producer {
    client: super::load::Producer,
    queue: String,
    payload: Vec<u8>,
    /// Tasks enqueued by every producer.
    enqueued: Arc<AtomicU64>,
    /// The run's tally: its tasks are the acked ones; producers add their
    /// calls and errors.
    tally: Arc<Tally>,
    backlog_limit: u64,
}

impl Producer {
    /// Pipelines single enqueues on one EnqueueStream until stopped.
    async fn run_stream(mut self, mut stop: Stop) {
        let (tx, rx) = mpsc::channel(STREAM_WINDOW as usize);
        let mut answers = match self.client.enqueue_stream(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return self.tally.status(&s),
        };
        let answered = Arc::new(AtomicU64::new(0));
        let reader = {
            let (answered, enqueued, tally) = (answered.clone(), self.enqueued.clone(), self.tally.clone());
            tokio::spawn(async move {
                while let Ok(Some(a)) = answers.message().await {
                    answered.fetch_add(1, Ordering::Relaxed);
                    match a.result {
                        Some(pb::enqueue_stream_response::Result::Task(_)) => {
                            enqueued.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => tally.failed(1, || "stream enqueue failed".into()),
                    }
                }
            })
        };
        let mut sent = 0u64;
        while !stop.is_set() {
            let backlog = self.enqueued.load(Ordering::Relaxed).saturating_sub(self.tally.tasks());
            if backlog > self.backlog_limit || sent - answered.load(Ordering::Relaxed) >= STREAM_WINDOW {
                tokio::select! {
                    _ = tokio::time::sleep(PAUSE) => {}
                    _ = stop.wait() => break,
                }
                continue;
            }
            if tx.send(load::task(&self.queue, self.payload.clone())).await.is_err() {
                break;
            }
            sent += 1;
        }
        drop(tx);
        let _ = reader.await;
    }
    /// Sends batches until stopped.
    async fn run_batches(mut self, stop: Stop) {
        while !stop.is_set() {
            let backlog = self.enqueued.load(Ordering::Relaxed).saturating_sub(self.tally.tasks());
            if backlog > self.backlog_limit {
                tokio::time::sleep(PAUSE).await;
                continue;
            }
            let tasks = (0..BATCH).map(|_| load::task(&self.queue, self.payload.clone())).collect();
            match self.client.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await {
                Ok(r) => {
                    let ok = load::count_batch(&self.tally, &r.into_inner().results);
                    self.enqueued.fetch_add(ok, Ordering::Relaxed);
                    self.tally.done(0, 1);
                }
                Err(s) => {
                    self.tally.status(&s);
                    tokio::time::sleep(PAUSE).await;
                }
            }
        }
    }
}
