//! The books of a fault-matrix run, and their check against the broker.
//!
//! The [`Ledger`] keeps what the broker acknowledged: every enqueue answered
//! with a task, every ack answered OK (with the attempt it settled), and the
//! highest attempt each task was delivered with. A task delivered with a
//! higher attempt than the one acked was redelivered after its ack, whatever
//! order the answers were seen in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::load::QUEUES;
use taskbroker::pb;
use taskbroker::pb::producer_service_client::ProducerServiceClient;
use taskbroker::pb::worker_service_client::WorkerServiceClient;

/// What the broker acknowledged during a run.
#[derive(Default)]
pub struct Ledger {
    /// Tasks the broker answered an enqueue with.
    enqueued: Mutex<HashMap<String, ()>>,
    /// Tasks whose ack was answered OK, with the attempt it settled.
    acked: Mutex<HashMap<String, u32>>,
    /// The highest attempt each task was delivered with.
    delivered: Mutex<HashMap<String, u32>>,
    /// Calls that failed (the fault makes some; they are retried).
    pub failures: AtomicUsize,
    /// Statuses of failed calls, by code: what clients saw of the fault.
    pub codes: Mutex<HashMap<tonic::Code, usize>>,
}

impl Ledger {
    pub fn enqueued(&self, id: String) {
        self.enqueued.lock().unwrap().insert(id, ());
    }

    pub fn delivered(&self, t: &pb::Task) {
        let mut d = self.delivered.lock().unwrap();
        let max = d.entry(t.id.clone()).or_default();
        *max = (*max).max(t.attempt);
    }

    pub fn acked(&self, id: String, attempt: u32) {
        self.acked.lock().unwrap().insert(id, attempt);
    }

    pub fn failed(&self, s: &tonic::Status) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.codes.lock().unwrap().entry(s.code()).or_default() += 1;
    }

    pub fn enqueued_ids(&self) -> Vec<String> {
        self.enqueued.lock().unwrap().keys().cloned().collect()
    }

    pub fn enqueue_count(&self) -> usize {
        self.enqueued.lock().unwrap().len()
    }

    pub fn ack_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Acked tasks delivered again after the ack (with a higher attempt).
    pub fn redelivered_after_ack(&self) -> Vec<String> {
        let acked = self.acked.lock().unwrap();
        let delivered = self.delivered.lock().unwrap();
        acked
            .iter()
            .filter(|(id, at)| delivered.get(*id).is_some_and(|d| d > at))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether every acknowledged enqueue has been acked (as far as the
    /// answers seen tell).
    pub fn all_acked(&self) -> bool {
        let acked = self.acked.lock().unwrap();
        self.enqueued.lock().unwrap().keys().all(|id| acked.contains_key(id))
    }
}

/// Leases and acks (with `ledger` as the books) until every acknowledged
/// enqueue is acked, or nothing more comes (long-polls stay empty for
/// `quiet`, long enough for what a crash left leased to expire and come
/// back), or `within` runs out. (An ack whose answer a crash lost leaves a
/// SUCCEEDED task the ledger does not count as acked: [`check`] finds it.)
pub async fn drain(channel: Channel, ledger: &Arc<Ledger>, quiet: Duration, within: Duration) {
    let mut client = WorkerServiceClient::new(channel);
    let deadline = Instant::now() + within;
    let mut last_task = Instant::now();
    while !ledger.all_acked() && Instant::now() < deadline && last_task.elapsed() < quiet {
        let lease = pb::LeaseRequest {
            queues: QUEUES.iter().map(|q| q.to_string()).collect(),
            max_tasks: 100,
            lease_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
            wait: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            worker_id: "drain".into(),
        };
        let tasks = client.lease(lease).await.expect("Lease while draining").into_inner().tasks;
        if !tasks.is_empty() {
            last_task = Instant::now();
        }
        for lt in tasks {
            let t = lt.task.expect("a leased task");
            ledger.delivered(&t);
            let ack = pb::AckRequest { task_id: t.id.clone(), lease_id: lt.lease_id, result: b"ok".to_vec() };
            client.ack(ack).await.expect("Ack while draining");
            ledger.acked(t.id, t.attempt);
        }
    }
}

/// What a check of the broker against the ledger found.
#[derive(Debug, Default)]
pub struct Check {
    /// Acknowledged enqueues the broker does not have.
    pub lost: Vec<String>,
    /// Acked tasks that are not SUCCEEDED.
    pub unsettled: Vec<String>,
    /// Acknowledged enqueues not SUCCEEDED (yet): after a drain, none.
    pub pending: Vec<String>,
}

/// Reads back every acknowledged enqueue and every acked task.
pub async fn check(channel: Channel, ledger: &Ledger) -> Check {
    let mut client = ProducerServiceClient::new(channel);
    let mut out = Check::default();
    let acked = ledger.acked.lock().unwrap().clone();
    for id in ledger.enqueued_ids() {
        match client.get_task(pb::GetTaskRequest { task_id: id.clone(), include_dependencies: false }).await {
            Ok(r) => {
                let t = r.into_inner().task.expect("GetTask returns the task");
                if t.state != pb::TaskState::Succeeded as i32 {
                    if acked.contains_key(&id) {
                        out.unsettled.push(format!("{id}: state {} attempt {}", t.state, t.attempt));
                    }
                    out.pending.push(id);
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => out.lost.push(id),
            Err(s) => panic!("GetTask {id}: {s:?}"),
        }
    }
    for id in acked.keys() {
        if !ledger.enqueued.lock().unwrap().contains_key(id) {
            // Acked but its enqueue answer was lost to the fault: still must be SUCCEEDED.
            let t = client
                .get_task(pb::GetTaskRequest { task_id: id.clone(), include_dependencies: false })
                .await;
            match t.map(|r| r.into_inner().task.expect("a task").state) {
                Ok(s) if s == pb::TaskState::Succeeded as i32 => {}
                other => out.unsettled.push(format!("{id}: {other:?}")),
            }
        }
    }
    out
}

/// Prints the run's numbers (one line, for the test log) and returns them.
pub fn report(scenario: &str, ledger: &Ledger, check: &Check) -> String {
    let line = format!(
        "fault matrix [{scenario}]: enqueues acked {}, tasks acked {}, lost {}, acked-not-succeeded {}, \
         not-yet-succeeded {}, redelivered-after-ack {}, failed calls {} {:?}",
        ledger.enqueue_count(),
        ledger.ack_count(),
        check.lost.len(),
        check.unsettled.len(),
        check.pending.len(),
        ledger.redelivered_after_ack().len(),
        ledger.failures.load(Ordering::Relaxed),
        ledger.codes.lock().unwrap(),
    );
    eprintln!("{line}");
    println!("{line}");
    line
}

/// Panics unless nothing acknowledged was lost and nothing acked ran again.
pub fn assert_clean(scenario: &str, ledger: &Ledger, check: &Check) {
    let again = ledger.redelivered_after_ack();
    assert!(
        check.lost.is_empty() && check.unsettled.is_empty() && again.is_empty(),
        "[{scenario}] lost {:?}, acked but not SUCCEEDED {:?}, redelivered after ack {:?}",
        &check.lost[..check.lost.len().min(10)],
        &check.unsettled[..check.unsettled.len().min(10)],
        &again[..again.len().min(10)],
    );
}
