//! The `drain` scenario: a queue pre-filled with `--tasks` tasks (untimed),
//! then emptied by `--concurrency` workers, once per mode.

use std::time::Duration;

use super::load::{self, join, stop_signal};
use super::meter::Meter;
use super::report::{Row, ScenarioReport, Transport};
use super::work::{StreamWorker, Worker};
use super::Ctx;

/// How workers take tasks; a new way is a variant here and an arm in [`drain`].
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Lease(max_tasks = 1), then Ack: two round trips per task.
    Single,
    /// Lease(max_tasks = 100), then the acks all at once.
    Batch100,
    /// One `Stream` per worker with a window of 100, acks on the stream.
    Stream,
}

const MODES: [Mode; 3] = [Mode::Single, Mode::Batch100, Mode::Stream];
/// Window of a streaming worker, like the batch mode's lease size.
const STREAM_WINDOW: u32 = 100;
/// A streaming drain that has not moved for this long is over (tasks lost).
const IDLE: Duration = Duration::from_secs(2);

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Single => "lease1-ack",
            Mode::Batch100 => "lease100-acks",
            Mode::Stream => "stream",
        }
    }

    fn transport(self) -> Transport {
        match self {
            Mode::Single | Mode::Batch100 => Transport::Unary,
            Mode::Stream => Transport::Stream,
        }
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for mode in MODES {
        let queue = ctx.queue(&format!("drain.{}", mode.name()));
        let payload = ctx.payload();
        let make = {
            let queue = queue.clone();
            move |_| load::task(&queue, payload.clone())
        };
        let label = format!("drain {}", mode.name());
        let filled =
            load::prefill(&ctx.pool, ctx.opts.concurrency, ctx.opts.tasks, &label, make, |_| {}).await;
        let row = drain(ctx, mode, queue, filled.tasks).await;
        if let Some(e) = &filled.error {
            notes.push(format!("{}: pre-fill: {e}", mode.name()));
        }
        if row.tasks != filled.tasks {
            notes.push(format!("{}: acked {} of {} pre-filled tasks", mode.name(), row.tasks, filled.tasks));
        }
        rows.push(row);
    }
    let mut report = ScenarioReport::new("drain", rows);
    report.notes = notes;
    Ok(report)
}

async fn drain(ctx: &Ctx, mode: Mode, queue: String, expected: u64) -> Row {
    let meter = Meter::start(ctx.probes.clone(), "drain", mode.name());
    let tally = meter.tally();
    let workers = 0..ctx.opts.concurrency;
    let unary = |max_tasks| {
        let handles = workers.clone().map(|caller| {
            let queues = vec![queue.clone()];
            let worker = Worker { client: ctx.pool.worker(caller), queues, max_tasks, wait: None };
            tokio::spawn(worker.drain(tally.clone(), |_| {}))
        });
        join(handles.collect())
    };
    match mode {
        Mode::Single => unary(1).await,
        Mode::Batch100 => unary(100).await,
        Mode::Stream => {
            // A stream has no "empty": it ends once every pre-filled task is acked.
            let (stop, stopped) = stop_signal();
            let handles = workers
                .map(|caller| {
                    let queues = vec![queue.clone()];
                    let worker = StreamWorker {
                        client: ctx.pool.worker(caller),
                        queues,
                        max_in_flight: STREAM_WINDOW,
                    };
                    tokio::spawn(worker.run_until(stopped.clone(), tally.clone(), |_| {}))
                })
                .collect();
            load::settle(|| tally.tasks(), || expected, IDLE).await;
            stop.stop();
            join(handles).await;
        }
    }
    meter.finish(mode.transport(), Some(&ctx.baseline))
}
