//! The `mixed` scenario: [`QUEUES`] queues × priorities 0-9 with a skewed
//! load (most tasks low priority), pre-filled, then drained by
//! `--concurrency` workers that each prefer a different queue. It measures
//! the drain and checks priority order.
//!
//! # The check
//! Lease ids are numbers handed out in delivery order. With nothing enqueued
//! during the drain, replaying a queue's deliveries in lease-id order and
//! taking each task off its priority's count must never deliver priority `p`
//! while a task of a priority above `p` is still counted: each such delivery
//! is an inversion, and any inversion fails the scenario.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::load::{self, join};
use super::meter::Meter;
use super::report::{ScenarioReport, Transport};
use super::work::Worker;
use super::Ctx;
use crate::pb;

/// Queues in the mix.
const QUEUES: usize = 4;
/// Relative share of each priority 0..=9: low priorities dominate.
const WEIGHTS: [u32; 10] = [40, 20, 12, 8, 6, 5, 4, 2, 2, 1];
/// Most tasks per Lease.
const MAX_TASKS: u32 = 10;
/// Seed of the task mix, so every run sends the same one.
const SEED: u64 = 0x7a5b;

/// Priority counts per queue: `counts[queue][priority]`.
type Counts = HashMap<String, [u64; 10]>;

/// One delivery: (queue, lease id, priority).
type Delivery = (String, u64, u32);

pub async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let queues: Vec<String> = (0..QUEUES).map(|q| ctx.queue(&format!("mixed.{q}"))).collect();
    let plan = Arc::new(plan(&queues, ctx.opts.tasks));
    let payload = ctx.payload();

    let queued: Arc<Mutex<Counts>> = Arc::default();
    let make = {
        let plan = plan.clone();
        move |i: u64| {
            let (queue, priority) = &plan[i as usize];
            pb::EnqueueRequest { priority: Some(*priority), ..load::task(queue, payload.clone()) }
        }
    };
    let count = {
        let queued = queued.clone();
        move |t: &pb::Task| {
            let mut queued = queued.lock().unwrap_or_else(|p| p.into_inner());
            queued.entry(t.queue.clone()).or_default()[t.priority.min(9) as usize] += 1;
        }
    };
    let filled = load::prefill(&ctx.pool, ctx.opts.concurrency, ctx.opts.tasks, "mixed", make, count).await;

    let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let meter = Meter::start(ctx.probes.clone(), "mixed", format!("{QUEUES}q-10p"));
    let handles = (0..ctx.opts.concurrency)
        .map(|caller| {
            let mut preference = queues.clone();
            preference.rotate_left(caller % QUEUES);
            let worker = Worker {
                client: ctx.pool.worker(caller),
                queues: preference,
                max_tasks: MAX_TASKS,
                wait: None,
            };
            let deliveries = deliveries.clone();
            let seen = move |t: &pb::LeasedTask| {
                let (Some(task), Ok(lease)) = (&t.task, t.lease_id.parse::<u64>()) else { return };
                deliveries.lock().unwrap_or_else(|p| p.into_inner()).push((
                    task.queue.clone(),
                    lease,
                    task.priority,
                ));
            };
            tokio::spawn(worker.drain(meter.tally(), seen))
        })
        .collect();
    join(handles).await;
    let row = meter.finish(Transport::Unary, Some(&ctx.baseline));

    let queued = std::mem::take(&mut *queued.lock().unwrap_or_else(|p| p.into_inner()));
    let mut deliveries = std::mem::take(&mut *deliveries.lock().unwrap_or_else(|p| p.into_inner()));
    let delivered = deliveries.len() as u64;
    let inversions = inversions(queued, &mut deliveries);

    let mut report = ScenarioReport::new("mixed", vec![row]);
    report.inversions = Some(inversions);
    if inversions > 0 {
        report.failures.push(format!("{inversions} priority inversions (expected 0)"));
    }
    if let Some(e) = &filled.error {
        report.notes.push(format!("pre-fill: {e}"));
    }
    if delivered != filled.tasks {
        report.notes.push(format!("delivered {delivered} of {} pre-filled tasks", filled.tasks));
    }
    Ok(report)
}

/// The (queue, priority) of each of `total` tasks, from a fixed seed.
fn plan(queues: &[String], total: u64) -> Vec<(String, u32)> {
    let sum: u32 = WEIGHTS.iter().sum();
    let mut rng = StdRng::seed_from_u64(SEED);
    (0..total)
        .map(|_| {
            let queue = &queues[rng.random_range(0..queues.len())];
            let mut pick = rng.random_range(0..sum);
            let mut priority = 0;
            while pick >= WEIGHTS[priority] {
                pick -= WEIGHTS[priority];
                priority += 1;
            }
            (queue.clone(), priority as u32)
        })
        .collect()
}

/// Deliveries of a priority while a higher one of the same queue was still
/// queued, replaying `deliveries` in lease-id order against `queued`.
fn inversions(mut queued: Counts, deliveries: &mut [Delivery]) -> u64 {
    deliveries.sort_by_key(|(_, lease, _)| *lease);
    let mut found = 0;
    for (queue, _, priority) in deliveries.iter() {
        let counts = queued.entry(queue.clone()).or_default();
        let p = (*priority).min(9) as usize;
        if counts[p + 1..].iter().any(|&n| n > 0) {
            found += 1;
        }
        counts[p] = counts[p].saturating_sub(1);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(q: &str, by_priority: &[(usize, u64)]) -> Counts {
        let mut c = [0; 10];
        for &(p, n) in by_priority {
            c[p] = n;
        }
        HashMap::from([(q.to_string(), c)])
    }

    #[test]
    fn in_order_deliveries_have_no_inversions() {
        let mut d = vec![("q".into(), 3, 1), ("q".into(), 1, 9), ("q".into(), 2, 9)];
        assert_eq!(inversions(counts("q", &[(9, 2), (1, 1)]), &mut d), 0);
    }

    #[test]
    fn a_low_priority_first_is_an_inversion() {
        let mut d = vec![("q".into(), 1, 1), ("q".into(), 2, 9), ("q".into(), 3, 5)];
        assert_eq!(inversions(counts("q", &[(9, 1), (5, 1), (1, 1)]), &mut d), 1);
    }

    #[test]
    fn queues_are_judged_apart() {
        let mut d = vec![("a".into(), 1, 0), ("b".into(), 2, 9)];
        let mut c = counts("a", &[(0, 1)]);
        c.extend(counts("b", &[(9, 1)]));
        assert_eq!(inversions(c, &mut d), 0);
    }

    #[test]
    fn the_plan_is_skewed_low() {
        let plan = plan(&["q".to_string()], 10_000);
        let low = plan.iter().filter(|(_, p)| *p == 0).count();
        let high = plan.iter().filter(|(_, p)| *p == 9).count();
        assert!(low > 3_000 && high < 300, "low {low}, high {high}");
    }
}
