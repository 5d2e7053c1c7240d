//! The `e2e` scenario: latency from the moment a task was meant to be
//! enqueued to the moment a worker receives it, at each fixed open-loop rate
//! of `--rates`, for `--duration` each: once with long-polling Lease workers,
//! once with streaming workers.
//!
//! # Coordinated omission
//! Task `i` is due at `start + i/rate` whatever happened to earlier ones; its
//! due time travels in the first 8 bytes of its payload and latency is
//! measured from it, so a stalled broker shows up as latency of every task
//! that should have been sent meanwhile instead of as fewer samples. A pacer
//! thread (`std::thread::sleep`, ~0.1 ms slack) makes the sends; each send is
//! its own task, at most [`MAX_IN_FLIGHT`] at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use super::load::{self, join, stop_signal, Pool, Tally};
use super::meter::Meter;
use super::report::{Latency, Row, ScenarioReport, Transport};
use super::work::{StreamWorker, Worker};
use super::Ctx;

/// Most tasks per Lease.
const MAX_TASKS: u32 = 100;
/// Workers' long-poll.
const WAIT: Duration = Duration::from_secs(1);
/// Window of a streaming worker.
const STREAM_WINDOW: u32 = 100;
/// Sends in flight at most; past it the pacer waits (and latency grows).
const MAX_IN_FLIGHT: usize = 10_000;
/// After the last send, deliveries that stop for this long are given up on.
const SETTLE: Duration = Duration::from_secs(2);
/// Histogram range: 1 µs to 60 s, 3 significant digits.
const MAX_LATENCY_US: u64 = 60_000_000;

pub async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    // Due times are nanoseconds since this instant: producers and workers are
    // both in this process, so one monotonic clock serves both.
    let base = Instant::now();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &rate in &ctx.opts.rates {
        for workers in [Workers::LongPoll, Workers::Stream] {
            let (row, missing) = run_rate(ctx, rate, workers, base).await?;
            if missing > 0 {
                notes.push(format!("{}: {missing} enqueued tasks never delivered", row.mode));
            }
            rows.push(row);
        }
    }
    let mut report = ScenarioReport::new("e2e", rows);
    report.notes = notes;
    Ok(report)
}

/// How the workers take tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workers {
    /// Lease (up to [`MAX_TASKS`], long-polling [`WAIT`]), then Ack.
    LongPoll,
    /// One `Stream` each, window [`STREAM_WINDOW`].
    Stream,
}

/// One rate: its row, and how many enqueued tasks never arrived.
async fn run_rate(ctx: &Ctx, rate: u64, kind: Workers, base: Instant) -> anyhow::Result<(Row, u64)> {
    let (mode, transport) = match kind {
        Workers::LongPoll => (format!("rate-{rate}"), Transport::Unary),
        Workers::Stream => (format!("rate-{rate}-stream"), Transport::Stream),
    };
    let queue = ctx.queue(&format!("e2e.{mode}"));
    let total = ((rate as f64 * ctx.opts.duration.as_secs_f64()).round() as u64).max(1);
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)?));
    let received = Arc::new(AtomicU64::new(0));
    let enqueued = Arc::new(AtomicU64::new(0));

    let meter = Meter::start(ctx.probes.clone(), "e2e", mode);
    let tally = meter.tally();
    let (stop, stopped) = stop_signal();
    let workers: Vec<_> = (0..ctx.opts.concurrency)
        .map(|caller| {
            let (histogram, received) = (histogram.clone(), received.clone());
            let seen = move |t: &crate::pb::LeasedTask| {
                let now = base.elapsed().as_nanos() as u64;
                let due = t
                    .task
                    .as_ref()
                    .and_then(|t| t.payload.get(..8))
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
                if let Some(due) = due {
                    let micros = now.saturating_sub(due) / 1000;
                    histogram.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(micros.max(1));
                }
                received.fetch_add(1, Ordering::Relaxed);
            };
            let (client, queues) = (ctx.pool.worker(caller), vec![queue.clone()]);
            match kind {
                Workers::LongPoll => {
                    let worker = Worker { client, queues, max_tasks: MAX_TASKS, wait: Some(WAIT) };
                    tokio::spawn(worker.run_until(stopped.clone(), tally.clone(), seen))
                }
                Workers::Stream => {
                    let worker = StreamWorker { client, queues, max_in_flight: STREAM_WINDOW };
                    tokio::spawn(worker.run_until(stopped.clone(), tally.clone(), seen))
                }
            }
        })
        .collect();

    let sends = Sends { pool: ctx.pool.clone(), queue, payload_bytes: ctx.opts.payload_bytes.max(8) };
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    sends.pace(rate, total, base, in_flight.clone(), tally.clone(), enqueued.clone()).await?;
    let _all_back = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
    let done = || received.load(Ordering::Relaxed);
    load::settle(done, || enqueued.load(Ordering::Relaxed), SETTLE).await;
    // And their acks, so the next rate starts on a quiet broker.
    load::settle(|| tally.tasks(), done, SETTLE).await;
    stop.stop();
    join(workers).await;

    let mut row = meter.finish(transport, Some(&ctx.baseline));
    let h = histogram.lock().unwrap_or_else(|p| p.into_inner());
    let ms = |us: u64| us as f64 / 1000.0;
    row.target_rate = Some(rate);
    if !h.is_empty() {
        row.latency_ms = Some(Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        });
    }
    let missing = enqueued.load(Ordering::Relaxed).saturating_sub(received.load(Ordering::Relaxed));
    Ok((row, missing))
}

/// What the pacer sends with.
struct Sends {
    pool: Pool,
    queue: String,
    /// At least 8: the due time.
    payload_bytes: usize,
}

impl Sends {
    /// Sends `total` Enqueues at `rate`, each as its own task on the current
    /// runtime, from a pacer thread; returns when the last one was started.
    async fn pace(
        self,
        rate: u64,
        total: u64,
        base: Instant,
        in_flight: Arc<Semaphore>,
        tally: Arc<Tally>,
        enqueued: Arc<AtomicU64>,
    ) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Handle::current();
        let payload = load::payload(self.payload_bytes);
        let pacer = std::thread::Builder::new().name("bench-pacer".into()).spawn(move || {
            let start = Instant::now();
            for i in 0..total {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let permit = match in_flight.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => match runtime.block_on(in_flight.clone().acquire_owned()) {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let mut body = payload.clone();
                body[..8].copy_from_slice(&(due.duration_since(base).as_nanos() as u64).to_le_bytes());
                let req = load::task(&self.queue, body);
                let mut client = self.pool.producer(i as usize);
                let (tally, enqueued) = (tally.clone(), enqueued.clone());
                runtime.spawn(async move {
                    let _permit = permit;
                    match client.enqueue(req).await {
                        Ok(_) => {
                            enqueued.fetch_add(1, Ordering::Relaxed);
                            tally.done(0, 1);
                        }
                        Err(s) => tally.status(&s),
                    }
                });
            }
        })?;
        tokio::task::spawn_blocking(move || pacer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the e2e pacer thread panicked"))
    }
}
