//! The `enqueue` scenario: how fast tasks go in, one per call, in batches and
//! on streams, from `--concurrency` callers, `--tasks` tasks per mode, each
//! mode into a queue of its own.

use std::sync::Arc;

use super::load::{self, closed_loop, Tally};
use super::meter::Meter;
use super::report::{Row, ScenarioReport, Transport};
use super::Ctx;
use crate::pb;
use crate::pb::enqueue_stream_response::Result as Outcome;

/// How tasks are sent; a new way is a variant here and an arm in [`run_mode`].
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// One Enqueue call per task.
    Unary,
    /// EnqueueBatch calls of this many tasks (the last one may be short).
    Batch(u64),
    /// One EnqueueStream per caller, each sending its share as fast as flow
    /// control lets it and reading the answers.
    Stream,
}

const MODES: [Mode; 5] = [Mode::Unary, Mode::Batch(10), Mode::Batch(100), Mode::Batch(1000), Mode::Stream];

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Unary => "unary".into(),
            Mode::Batch(n) => format!("batch-{n}"),
            Mode::Stream => "stream".into(),
        }
    }

    fn transport(self) -> Transport {
        match self {
            Mode::Unary | Mode::Batch(_) => Transport::Unary,
            Mode::Stream => Transport::Stream,
        }
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let mut rows = Vec::new();
    for mode in MODES {
        rows.push(run_mode(ctx, mode).await);
    }
    Ok(ScenarioReport::new("enqueue", rows))
}

async fn run_mode(ctx: &Ctx, mode: Mode) -> Row {
    let queue = ctx.queue(&format!("enqueue.{}", mode.name()));
    let (pool, payload, total) = (ctx.pool.clone(), ctx.payload(), ctx.opts.tasks);
    let meter = Meter::start(ctx.probes.clone(), "enqueue", mode.name());
    let tally = meter.tally();
    match mode {
        Mode::Unary => {
            closed_loop(ctx.opts.concurrency, total, tally, move |caller, _| {
                let mut client = pool.producer(caller);
                let req = load::task(&queue, payload.clone());
                async move { client.enqueue(req).await.map(|_| 1) }
            })
            .await
        }
        Mode::Batch(size) => {
            let counter = tally.clone();
            closed_loop(ctx.opts.concurrency, total.div_ceil(size), tally, move |caller, unit| {
                let mut client = pool.producer(caller);
                let count = size.min(total - unit * size);
                let tasks = (0..count).map(|_| load::task(&queue, payload.clone())).collect();
                let counter = counter.clone();
                async move {
                    let results = client.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await?;
                    Ok(load::count_batch(&counter, &results.into_inner().results))
                }
            })
            .await
        }
        Mode::Stream => {
            let callers = ctx.opts.concurrency as u64;
            let handles = (0..callers)
                .map(|caller| {
                    let share = total / callers + u64::from(caller < total % callers);
                    let client = pool.producer(caller as usize);
                    let requests = (0..share).map({
                        let (queue, payload) = (queue.clone(), payload.clone());
                        move |_| load::task(&queue, payload.clone())
                    });
                    tokio::spawn(stream(client, requests, tally.clone()))
                })
                .collect();
            load::join(handles).await;
        }
    }
    meter.finish(mode.transport(), Some(&ctx.baseline))
}

/// Sends `requests` on one EnqueueStream and counts the answers.
async fn stream(
    mut client: super::load::Producer,
    requests: impl Iterator<Item = pb::EnqueueRequest> + Send + 'static,
    tally: Arc<Tally>,
) {
    let mut requests = requests.peekable();
    if requests.peek().is_none() {
        return;
    }
    let mut answers = match client.enqueue_stream(tokio_stream::iter(requests)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return tally.status(&s),
    };
    tally.done(0, 1);
    loop {
        match answers.message().await {
            Ok(Some(pb::EnqueueStreamResponse { result: Some(Outcome::Task(_)), .. })) => tally.done(1, 0),
            Ok(Some(pb::EnqueueStreamResponse { result, .. })) => tally.failed(1, || match result {
                Some(Outcome::Error(e)) => format!("stream item: {}", e.message),
                _ => "stream item: no result".into(),
            }),
            Ok(None) => return,
            Err(s) => return tally.status(&s),
        }
    }
}
