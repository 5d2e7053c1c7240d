//! The `redis-raw` scenario: the Redis store's scripts driven directly, with
//! no broker and no gRPC, against the Redis the in-process broker uses
//! (`--redis-url`, by default `redis://127.0.0.1:6379`). It is the ceiling the
//! broker's Redis rows are read against: the same batch sizes (enqueue 100,
//! lease 100, ack the leased 100 in one call), one [`RedisStore`] (one
//! multiplexed connection, as a broker has), `--concurrency` callers. It
//! includes what the store does around the scripts (records encoded and
//! decoded in Rust, the task index written before an enqueue), since no
//! broker can skip that.
//!
//! Rows: `enqueue-100` (`--tasks` in batches), `lease100-ack-many` (draining
//! them), `lifecycle` (another `--tasks`: producers and workers at once, the
//! rate being acked tasks/s).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::core::queue::{Policies, QueuePolicy};
use crate::core::task::NewTask;
use crate::store::redis::RedisStore;
use crate::store::{AckItem, LeaseSpec, Store};

use super::load::{join, Tally};
use super::meter::Meter;
use super::report::{ScenarioReport, Transport};
use super::Ctx;

/// Tasks per enqueue call and most tasks per lease, as the broker rows use.
const BATCH: usize = 100;

pub async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let fallback = QueuePolicy::default();
    let policies = Arc::new(Policies::new(BTreeMap::new(), fallback));
    let url = ctx.opts.redis_url.clone();
    let store = Arc::new(RedisStore::connect(&url, policies, true).await?);
    let tasks = ctx.opts.tasks;
    let callers = ctx.opts.concurrency;
    let payload = ctx.payload();

    let queue = ctx.queue("redis-raw.drain");
    let before = used_memory(&url).await?;
    let meter = Meter::start(ctx.probes.clone(), "redis-raw", "enqueue-100");
    produce(&store, &queue, &payload, tasks, callers, meter.tally()).await;
    let enqueue = meter.finish(Transport::Unary, None);
    let per_task = used_memory(&url).await?.saturating_sub(before) as f64 / tasks.max(1) as f64;

    let meter = Meter::start(ctx.probes.clone(), "redis-raw", "lease100-ack-many");
    consume(&store, &queue, tasks, callers, meter.tally()).await;
    let drain = meter.finish(Transport::Unary, None);

    let queue = ctx.queue("redis-raw.lifecycle");
    let meter = Meter::start(ctx.probes.clone(), "redis-raw", "lifecycle");
    let (producers, workers) = ((callers / 4).max(1), (callers - callers / 4).max(1));
    let enqueued = Arc::new(Tally::default());
    tokio::join!(
        produce(&store, &queue, &payload, tasks, producers, enqueued),
        consume(&store, &queue, tasks, workers, meter.tally()),
    );
    let lifecycle = meter.finish(Transport::Unary, None);

    let mut report = ScenarioReport::new("redis-raw", vec![enqueue, drain, lifecycle]);
    report.notes.push(format!(
        "the store's scripts without broker or gRPC, at {url}; batches of {BATCH}; lifecycle: \
         {producers} producers, {workers} workers"
    ));
    report.notes.push(format!(
        "Redis memory {per_task:.0} bytes per queued task ({} B payload; used_memory before and after \
         enqueue-100)",
        payload.len()
    ));
    Ok(report)
}

/// Redis's `used_memory` (bytes).
async fn used_memory(url: &str) -> anyhow::Result<u64> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO memory"))
}

/// Enqueues `total` tasks in batches from `callers` callers.
async fn produce(
    store: &Arc<RedisStore>,
    queue: &str,
    payload: &[u8],
    total: u64,
    callers: usize,
    tally: Arc<Tally>,
) {
    let batches = total.div_ceil(BATCH as u64);
    let handles = (0..callers as u64).map(|caller| {
        let (store, tally) = (store.clone(), tally.clone());
        let (queue, payload) = (queue.to_owned(), payload.to_vec());
        tokio::spawn(async move {
            for b in (caller..batches).step_by(callers) {
                let n = (total - b * BATCH as u64).min(BATCH as u64);
                let batch = (0..n).map(|_| new_task(&queue, payload.clone())).collect();
                match store.enqueue(batch, store_now()).await {
                    Ok(done) => tally.done(done.len() as u64, 1),
                    Err(e) => tally.failed(n, || e.to_string()),
                }
            }
        })
    });
    join(handles.collect()).await;
}

/// Leases and acks (`ack_many`) until `total` tasks are acked.
async fn consume(store: &Arc<RedisStore>, queue: &str, total: u64, callers: usize, tally: Arc<Tally>) {
    let handles = (0..callers).map(|caller| {
        let (store, tally) = (store.clone(), tally.clone());
        let spec = LeaseSpec::strict(&[queue.to_owned()], BATCH, None, &format!("raw-{caller}"));
        tokio::spawn(async move {
            while tally.tasks() + tally.errors() < total {
                let leased = match store.lease(spec.clone(), store_now()).await {
                    Ok(leased) => leased,
                    Err(e) => {
                        tally.failed(1, || e.to_string());
                        continue;
                    }
                };
                if leased.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                    continue;
                }
                let items = leased
                    .iter()
                    .map(|t| AckItem {
                        id: t.id,
                        lease_id: t.lease.as_ref().map_or(0, |l| l.id),
                        result: Vec::new(),
                    })
                    .collect();
                match store.ack_many(items, store_now()).await {
                    Ok(results) => {
                        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                        tally.done(ok, 2);
                        if ok < results.len() as u64 {
                            tally.failed(results.len() as u64 - ok, || "an ack_many item failed".into());
                        }
                    }
                    Err(e) => tally.failed(leased.len() as u64, || e.to_string()),
                }
            }
        })
    });
    join(handles.collect()).await;
}

fn new_task(queue: &str, payload: Vec<u8>) -> NewTask {
    NewTask {
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
        queue: queue.to_owned(),
        kind: super::load::KIND.into(),
        payload,
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
        max_attempts: QueuePolicy::default().max_attempts,
        scheduled_time: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
    }
}

/// The store runs on Redis's clock; the `now` it is given is ignored.
fn store_now() -> u64 {
    0
}
