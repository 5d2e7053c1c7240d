//! The memory cost of queued tasks: the growth of the process's RSS across a
//! pre-fill, scaled to a million tasks. In-process only.
//!
//! It runs first, while the process is fresh: memory freed by earlier load
//! (call buffers, answered batches) stays mapped and a later pre-fill would
//! reuse it, understating the cost. The pre-fill goes in two halves and only
//! the second half's growth counts, so one-off costs of a fresh process
//! (runtime, connection and allocator warm-up) do not; two callers keep the
//! pre-fill's own in-flight buffers small next to what stays queued. The
//! figure includes what the store keeps per task in memory (both backends
//! keep every task in an in-memory table), index growth and allocator
//! overhead. The tasks stay queued, in a queue of their own, until the broker
//! stops.

use serde::Serialize;

use super::load::{self, Pool};
use super::meter::mib;
use super::procfs;
use super::Opts;

/// Callers of the probe's pre-fill.
const CALLERS: usize = 2;

#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    /// Tasks of the measured (second) half.
    pub tasks: u64,
    /// RSS growth across the second half, in MiB.
    pub rss_growth_mib: f64,
    /// That growth per million queued tasks, in MiB.
    pub per_million_queued_mib: f64,
}

impl Memory {
    pub fn describe(&self) -> String {
        format!(
            "memory: {:.0} MiB of RSS per million queued tasks (+{:.1} MiB for {} more tasks)",
            self.per_million_queued_mib, self.rss_growth_mib, self.tasks
        )
    }
}

/// Pre-fills `queue` with `--tasks` tasks and measures the RSS growth of the
/// second half.
pub async fn probe(pool: &Pool, queue: &str, opts: &Opts) -> Memory {
    let payload = load::payload(opts.payload_bytes);
    let make = {
        let queue = queue.to_owned();
        move |_| load::task(&queue, payload.clone())
    };
    let first_half = opts.tasks / 2;
    load::prefill(pool, CALLERS, first_half, "memory", make.clone(), |_| {}).await;
    let before = procfs::rss_bytes().unwrap_or(0);
    let filled = load::prefill(pool, CALLERS, opts.tasks - first_half, "memory", make, |_| {}).await;
    let after = procfs::rss_bytes().unwrap_or(0);
    let growth = mib(after.saturating_sub(before));
    Memory {
        tasks: filled.tasks,
        rss_growth_mib: growth,
        per_million_queued_mib: if filled.tasks > 0 { growth * 1e6 / filled.tasks as f64 } else { 0.0 },
    }
}
