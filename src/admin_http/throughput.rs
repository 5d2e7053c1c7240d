//! Throughput over the last minutes, from the queues' monotonic totals: a
//! sampler reads every queue's `enqueued` and `acked` totals every
//! [`SAMPLE_INTERVAL`] into a per-queue ring buffer covering [`WINDOW`]; a
//! page divides what the totals grew since the oldest sample in the window
//! by the time that passed.
//!
//! The totals come from the store, so over Redis every replica shows the
//! same rates; only the sampling is this process's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::Broker;
use crate::core::access::Access;
use crate::core::stats::QueueTotals;
use crate::core::Millis;

/// How often the sampler reads the totals.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// How far back a rate looks.
pub const WINDOW: Duration = Duration::from_secs(5 * 60);
/// Shortest span a rate is computed over: below it a rate is noise.
const MIN_SPAN: Millis = 1_000;

/// One reading of a queue's totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    at: Millis,
    enqueued: u64,
    acked: u64,
}

/// Tasks per minute over a span ending now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub enqueued_per_min: f64,
    pub acked_per_min: f64,
    /// How long the span is (shorter than [`WINDOW`] right after start-up).
    pub span: Duration,
}

/// The samples of every queue. Cheap to clone (one shared buffer).
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    /// Per queue, oldest first, none older than [`WINDOW`] before the newest.
    /// A std mutex: held for a few pushes, never across an `.await`.
    queues: Arc<Mutex<HashMap<String, VecDeque<Sample>>>>,
}

impl Throughput {
    /// Records `queue`'s totals read at `now`.
    pub fn record(&self, queue: &str, now: Millis, totals: &QueueTotals) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let ring = queues.entry(queue.to_owned()).or_default();
        ring.push_back(Sample { at: now, enqueued: totals.enqueued, acked: totals.acked });
        let horizon = now.saturating_sub(WINDOW.as_millis() as Millis);
        while ring.front().is_some_and(|s| s.at < horizon) {
            ring.pop_front();
        }
    }

    /// Records `queue`'s totals read at `now` if it has no sample yet (a
    /// queue created since the last sampling): its rate starts from here,
    /// not from whenever the sampler runs next.
    pub fn first_sight(&self, queue: &str, now: Millis, totals: &QueueTotals) {
        let known = self.queues.lock().unwrap_or_else(|p| p.into_inner()).contains_key(queue);
        if !known {
            self.record(queue, now, totals);
        }
    }

    /// Forgets queues not in `alive` (purged away or expired).
    pub fn retain<'a>(&self, alive: impl IntoIterator<Item = &'a str>) {
        let alive: std::collections::HashSet<&str> = alive.into_iter().collect();
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.retain(|name, _| alive.contains(name.as_str()));
    }

    /// `queue`'s rates from its oldest sample to `current` (read at `now`);
    /// `None` until a sample is at least a second old.
    pub fn rate(&self, queue: &str, now: Millis, current: &QueueTotals) -> Option<Rate> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = queues.get(queue)?.front().copied()?;
        let span = now.checked_sub(oldest.at).filter(|s| *s >= MIN_SPAN)?;
        let per_min = |now: u64, then: u64| now.saturating_sub(then) as f64 * 60_000.0 / span as f64;
        Some(Rate {
            enqueued_per_min: per_min(current.enqueued, oldest.enqueued),
            acked_per_min: per_min(current.acked, oldest.acked),
            span: Duration::from_millis(span),
        })
    }

    /// Reads every queue's totals once.
    pub async fn sample(&self, broker: &Broker) {
        match broker.list_queues(&Access::Open).await {
            Ok(queues) => {
                let now = broker.now();
                for q in &queues {
                    self.record(&q.name, now, &q.stats.totals);
                }
                self.retain(queues.iter().map(|q| q.name.as_str()));
            }
            Err(e) => tracing::debug!(error = %e, "throughput sample skipped"),
        }
    }

    /// Samples every [`SAMPLE_INTERVAL`] until `stop` turns true.
    pub async fn run(self, broker: Broker, mut stop: watch::Receiver<bool>) {
        // The first sample was taken at start-up.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + SAMPLE_INTERVAL, SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.sample(&broker).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(enqueued: u64, acked: u64) -> QueueTotals {
        QueueTotals { enqueued, acked, ..QueueTotals::default() }
    }

    #[test]
    fn a_rate_is_the_growth_since_the_oldest_sample_per_minute() {
        let t = Throughput::default();
        assert_eq!(t.rate("q", 0, &totals(0, 0)), None, "no sample yet");
        t.record("q", 10_000, &totals(100, 40));
        assert_eq!(t.rate("q", 10_500, &totals(101, 40)), None, "under a second is noise");
        let r = t.rate("q", 40_000, &totals(130, 55)).unwrap();
        assert_eq!((r.enqueued_per_min, r.acked_per_min), (60.0, 30.0));
        assert_eq!(r.span, Duration::from_secs(30));
    }

    #[test]
    fn samples_older_than_the_window_are_dropped() {
        let t = Throughput::default();
        let step = SAMPLE_INTERVAL.as_millis() as Millis;
        for i in 0..100u64 {
            t.record("q", i * step, &totals(i * 10, 0));
        }
        let now = 99 * step;
        let r = t.rate("q", now, &totals(990, 0)).unwrap();
        assert_eq!(r.span, WINDOW);
        assert_eq!(r.enqueued_per_min, 60.0, "10 per 10 s");
    }

    #[test]
    fn a_queue_first_seen_between_samplings_starts_its_span_there() {
        let t = Throughput::default();
        t.first_sight("new", 1_000, &totals(7, 0));
        t.first_sight("new", 2_000, &totals(9, 0));
        let r = t.rate("new", 4_000, &totals(10, 0)).unwrap();
        assert_eq!((r.enqueued_per_min, r.span), (60.0, Duration::from_secs(3)), "the first sight only");
    }

    #[test]
    fn queues_that_went_away_are_forgotten() {
        let t = Throughput::default();
        t.record("a", 0, &totals(1, 0));
        t.record("b", 0, &totals(1, 0));
        t.retain(["b"]);
        assert!(t.rate("a", 5_000, &totals(1, 0)).is_none());
        assert!(t.rate("b", 5_000, &totals(1, 0)).is_some());
    }
}
