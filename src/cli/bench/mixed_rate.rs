//! The `mixed-rate` scenario: producers and workers on one queue at the same
//! time for `--duration`, the sustained rate being acked tasks/s.
//!
//! Producers send EnqueueBatch of [`BATCH`] and pause while the backlog
//! (enqueued − acked) is over [`BACKLOG_BATCHES`] batches per producer, so the
//! figure is the broker's steady state with a bounded queue, not the speed of
//! filling an ever-deeper one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::load::{self, join, stop_signal, Stop, Tally};
use super::meter::Meter;
use super::report::{ScenarioReport, Transport};
use super::work::Worker;
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

pub async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let queue = ctx.queue("mixed-rate");
    let producers = (ctx.opts.concurrency / 4).max(1);
    let workers = ctx.opts.concurrency.saturating_sub(producers).max(1);
    let backlog_limit = BACKLOG_BATCHES * BATCH * producers as u64;
    let enqueued = Arc::new(AtomicU64::new(0));

    let meter = Meter::start(ctx.probes, "mixed-rate", format!("{producers}p+{workers}w"));
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
        handles.push(tokio::spawn(producer.run(stopped.clone())));
    }
    for caller in 0..workers {
        // Workers use connections after the producers', so each side spreads.
        let worker = Worker {
            client: ctx.pool.worker(producers + caller),
            queues: vec![queue.clone()],
            max_tasks: BATCH as u32,
            wait: Some(WAIT),
        };
        handles.push(tokio::spawn(worker.run_until(stopped.clone(), acked.clone(), |_| {})));
    }
    tokio::time::sleep(ctx.opts.duration).await;
    stop.stop();
    join(handles).await;
    let row = meter.finish(Transport::Unary, Some(&ctx.baseline));

    let mut report = ScenarioReport::new("mixed-rate", vec![row]);
    report.notes.push(format!(
        "{producers} producers (EnqueueBatch of {BATCH}), {workers} workers (Lease up to {BATCH}, wait {}s); \
         {} enqueued, backlog bound {backlog_limit}",
        WAIT.as_secs(),
        enqueued.load(Ordering::Relaxed)
    ));
    Ok(report)
}

/// Sends batches until stopped, pausing while the backlog is over its bound.
struct Producer {
    client: pb::producer_service_client::ProducerServiceClient<tonic::transport::Channel>,
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
    async fn run(mut self, stop: Stop) {
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
