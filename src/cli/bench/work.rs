//! The worker side every consuming scenario shares: take tasks from a list of
//! queues, ack what came, count it. [`Worker`] uses the unary Lease and Ack;
//! [`StreamWorker`] one `Stream` per worker, acks on the same stream.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::load::{Stop, Tally};
use crate::pb;
use crate::pb::stream_request::Msg;
use crate::pb::stream_response::Msg as Pushed;

/// A unary worker: Lease, then Ack every delivered task concurrently.
pub struct Worker {
    pub client: super::load::Worker,
    /// In strict preference order.
    pub queues: Vec<String>,
    pub max_tasks: u32,
    /// Long-poll this long when nothing is ready; `None` returns at once.
    pub wait: Option<Duration>,
}

impl Worker {
    pub async fn lease(&mut self) -> Result<Vec<pb::LeasedTask>, tonic::Status> {
        let req = pb::LeaseRequest {
            queues: self.queues.clone(),
            max_tasks: self.max_tasks,
            wait: self.wait.and_then(|w| prost_types::Duration::try_from(w).ok()),
            worker_id: "bench".into(),
            ..Default::default()
        };
        Ok(self.client.lease(req).await?.into_inner().tasks)
    }

    /// Acks every task (all at once when there are several) and counts the
    /// acked ones as tasks, every call (the lease included) as a call.
    pub async fn ack_all(&mut self, tasks: Vec<pb::LeasedTask>, tally: &Tally) {
        let calls = tasks.len() as u64 + 1;
        let acks =
            tasks.into_iter().map(|t| {
                let mut client = self.client.clone();
                let task_id = t.task.map(|t| t.id).unwrap_or_default();
                async move {
                    client.ack(pb::AckRequest { task_id, lease_id: t.lease_id, result: Vec::new() }).await
                }
            });
        let mut acked = 0;
        for outcome in join_all(acks).await {
            match outcome {
                Ok(_) => acked += 1,
                Err(s) => tally.status(&s),
            }
        }
        tally.done(acked, calls);
    }

    /// Leases and acks until a lease comes back empty (use without `wait`
    /// on a pre-filled queue) or fails; `seen` is shown every delivery.
    pub async fn drain(mut self, tally: Arc<Tally>, seen: impl Fn(&pb::LeasedTask)) {
        loop {
            match self.lease().await {
                Ok(tasks) if tasks.is_empty() => return,
                Ok(tasks) => {
                    tasks.iter().for_each(&seen);
                    self.ack_all(tasks, &tally).await;
                }
                Err(s) => return tally.status(&s),
            }
        }
    }

    /// Leases (long-polling) and acks until `stop`; `seen` is shown every
    /// delivery as it arrives, before the acks.
    pub async fn run_until(mut self, mut stop: Stop, tally: Arc<Tally>, seen: impl Fn(&pb::LeasedTask)) {
        while !stop.is_set() {
            let leased = tokio::select! {
                leased = self.lease() => leased,
                _ = stop.wait() => return,
            };
            match leased {
                Ok(tasks) => {
                    tasks.iter().for_each(&seen);
                    self.ack_all(tasks, &tally).await;
                }
                Err(s) => {
                    tally.status(&s);
                    // Do not spin on a broker that refuses.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// A streaming worker: subscribes with a window of `max_in_flight`, acks
/// every pushed task on the stream, counts a task when its ack is confirmed.
pub struct StreamWorker {
    pub client: super::load::Worker,
    pub queues: Vec<String>,
    pub max_in_flight: u32,
}

impl StreamWorker {
    /// Works until `stop` (or until the broker ends the stream); `seen` is
    /// shown every task as it arrives, before its ack. Ending the stream gives
    /// back whatever is still held.
    pub async fn run_until(mut self, mut stop: Stop, tally: Arc<Tally>, seen: impl Fn(&pb::LeasedTask)) {
        // Room for every ack the window allows, so sending never waits on
        // the reader of this very loop.
        let (tx, rx) = mpsc::channel(self.max_in_flight as usize + 16);
        let subscribe = pb::Subscribe {
            queues: self.queues.clone(),
            max_in_flight: self.max_in_flight,
            worker_id: "bench".into(),
            ..Default::default()
        };
        let _ = tx.send(pb::StreamRequest { msg: Some(Msg::Subscribe(subscribe)) }).await;
        let mut pushed = match self.client.stream(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return tally.status(&s),
        };
        tally.done(0, 1);
        loop {
            let next = tokio::select! {
                next = pushed.message() => next,
                _ = stop.wait() => return,
            };
            let msg = match next {
                Ok(Some(m)) => m.msg,
                Ok(None) => return,
                Err(s) => return tally.status(&s),
            };
            match msg {
                Some(Pushed::Task(t)) => {
                    seen(&t);
                    let task_id = t.task.map(|t| t.id).unwrap_or_default();
                    let ack = pb::AckRequest { task_id, lease_id: t.lease_id, result: Vec::new() };
                    if tx.send(pb::StreamRequest { msg: Some(Msg::Ack(ack)) }).await.is_err() {
                        return;
                    }
                }
                Some(Pushed::Settled(s)) => match s.error {
                    None => tally.done(1, 0),
                    Some(e) => tally.failed(1, || format!("stream ack: {}", e.message)),
                },
                Some(Pushed::LeaseLost(l)) => tally.failed(1, || format!("lease lost: {}", l.reason)),
                Some(Pushed::Draining(_)) | None => return,
            }
        }
    }
}
