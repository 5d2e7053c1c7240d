//! The mixed load of the fault matrix.
//!
//! Producers enqueue unary (`Enqueue`, `EnqueueBatch`, each item with a
//! `request_id`, retried as sent after a failure) and streamed
//! (`EnqueueStream`); workers lease unary (`Lease` + `Ack`) and over worker
//! streams (`Stream` + acks, settling what they hold when told to drain).
//! Every actor keeps going through failures (the fault under test) until the
//! load is stopped. What the broker acknowledged goes to a [`Ledger`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::ledger::Ledger;
use taskbroker::pb;
use taskbroker::pb::enqueue_result::Result as BatchItem;
use taskbroker::pb::enqueue_stream_response::Result as StreamItem;
use taskbroker::pb::producer_service_client::ProducerServiceClient;
use taskbroker::pb::stream_request::Msg as Req;
use taskbroker::pb::stream_response::Msg as Resp;
use taskbroker::pb::worker_service_client::WorkerServiceClient;

/// The queues the load uses.
pub const QUEUES: [&str; 2] = ["fm-a", "fm-b"];
/// Pause after a failed call before the next try.
const BACKOFF: Duration = Duration::from_millis(50);
/// Bound on one read, so actors notice the stop.
const POLL: Duration = Duration::from_millis(250);

/// How much load, of what shape.
#[derive(Clone)]
pub struct Shape {
    pub unary_producers: usize,
    pub stream_producers: usize,
    pub unary_workers: usize,
    pub stream_workers: usize,
    pub payload_bytes: usize,
    /// Lease length the workers ask for (what a crash leaves out comes back after it).
    pub lease_secs: i64,
    /// Tasks per unary Lease, and each worker stream's `max_in_flight`.
    pub window: u32,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            unary_producers: 2,
            stream_producers: 2,
            unary_workers: 2,
            stream_workers: 2,
            payload_bytes: 64,
            lease_secs: 2,
            window: 16,
        }
    }
}

/// A running load; [`Load::stop`] ends it.
pub struct Load {
    stop: Arc<AtomicBool>,
    actors: Vec<JoinHandle<()>>,
    pub ledger: Arc<Ledger>,
}

impl Load {
    /// Starts `shape` against `channel`, recording in `ledger`.
    pub fn start(channel: Channel, shape: &Shape, ledger: Arc<Ledger>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut actors = Vec::new();
        let ctx =
            |name: String| Actor { name, stop: stop.clone(), ledger: ledger.clone(), shape: shape.clone() };
        for p in 0..shape.unary_producers {
            let a = ctx(format!("up{p}"));
            actors.push(tokio::spawn(a.unary_producer(ProducerServiceClient::new(channel.clone()))));
        }
        for p in 0..shape.stream_producers {
            let a = ctx(format!("sp{p}"));
            actors.push(tokio::spawn(a.stream_producer(ProducerServiceClient::new(channel.clone()))));
        }
        for w in 0..shape.unary_workers {
            let a = ctx(format!("uw{w}"));
            actors.push(tokio::spawn(a.unary_worker(WorkerServiceClient::new(channel.clone()))));
        }
        for w in 0..shape.stream_workers {
            let a = ctx(format!("sw{w}"));
            actors.push(tokio::spawn(a.stream_worker(WorkerServiceClient::new(channel.clone()))));
        }
        Load { stop, actors, ledger }
    }

    /// Stops every actor and waits for them (each notices within a poll).
    pub async fn stop(self) -> Arc<Ledger> {
        self.stop.store(true, Ordering::SeqCst);
        for a in self.actors {
            timeout(Duration::from_secs(40), a).await.expect("an actor stops").expect("an actor");
        }
        self.ledger
    }
}

struct Actor {
    name: String,
    stop: Arc<AtomicBool>,
    ledger: Arc<Ledger>,
    shape: Shape,
}

impl Actor {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn request(&self, n: usize, i: usize) -> pb::EnqueueRequest {
        pb::EnqueueRequest {
            queue: QUEUES[(n + i) % QUEUES.len()].into(),
            kind: "fault.matrix".into(),
            payload: vec![b'x'; self.shape.payload_bytes],
            request_id: format!("{}-{n}-{i}", self.name),
            ..Default::default()
        }
    }

    /// Alternates Enqueue and EnqueueBatch; a failed call is sent again as
    /// it was (its request ids make a retry safe).
    async fn unary_producer(self, mut client: ProducerServiceClient<Channel>) {
        let mut n = 0;
        while !self.stopped() {
            n += 1;
            loop {
                let outcome = if n % 2 == 0 {
                    client.enqueue(self.request(n, 0)).await.map(|r| {
                        self.ledger.enqueued(r.into_inner().task.expect("a task").id);
                    })
                } else {
                    let tasks = (0..1 + n % 8).map(|i| self.request(n, i)).collect();
                    client.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await.map(|r| {
                        for item in r.into_inner().results {
                            match item.result {
                                Some(BatchItem::Task(t)) => self.ledger.enqueued(t.id),
                                Some(BatchItem::Error(e)) => {
                                    self.ledger.failed(&tonic::Status::new(e.code.into(), e.message))
                                }
                                None => panic!("{}: a batch item without a result", self.name),
                            }
                        }
                    })
                };
                match outcome {
                    Ok(()) => break,
                    Err(s) => self.ledger.failed(&s),
                }
                if self.stopped() {
                    return;
                }
                sleep(BACKOFF).await;
            }
        }
    }

    /// EnqueueStream: sends a few items at a time and reads their answers;
    /// reopens the stream after a failure.
    async fn stream_producer(self, mut client: ProducerServiceClient<Channel>) {
        let mut n = 0;
        while !self.stopped() {
            let (tx, rx) = mpsc::channel(64);
            let mut answers = match client.enqueue_stream(ReceiverStream::new(rx)).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    self.ledger.failed(&s);
                    sleep(BACKOFF).await;
                    continue;
                }
            };
            'stream: while !self.stopped() {
                n += 1;
                for i in 0..4 {
                    if tx.send(self.request(n, i)).await.is_err() {
                        break 'stream;
                    }
                }
                for _ in 0..4 {
                    match timeout(Duration::from_secs(10), answers.message()).await {
                        Ok(Ok(Some(a))) => match a.result {
                            Some(StreamItem::Task(t)) => self.ledger.enqueued(t.id),
                            Some(StreamItem::Error(e)) => {
                                self.ledger.failed(&tonic::Status::new(e.code.into(), e.message));
                                sleep(BACKOFF).await;
                            }
                            None => panic!("{}: an answer without a result", self.name),
                        },
                        Ok(Err(s)) => {
                            self.ledger.failed(&s);
                            break 'stream;
                        }
                        Ok(Ok(None)) | Err(_) => break 'stream,
                    }
                }
            }
            drop(tx);
            sleep(BACKOFF).await;
        }
    }

    /// Lease (long-poll) then Ack each task.
    async fn unary_worker(self, mut client: WorkerServiceClient<Channel>) {
        while !self.stopped() {
            let lease = pb::LeaseRequest {
                queues: QUEUES.iter().map(|q| q.to_string()).collect(),
                max_tasks: self.shape.window,
                lease_duration: Some(prost_types::Duration { seconds: self.shape.lease_secs, nanos: 0 }),
                wait: Some(prost_types::Duration { seconds: 0, nanos: 300_000_000 }),
                worker_id: self.name.clone(),
            };
            let tasks = match client.lease(lease).await {
                Ok(r) => r.into_inner().tasks,
                Err(s) => {
                    self.ledger.failed(&s);
                    sleep(BACKOFF).await;
                    continue;
                }
            };
            for lt in tasks {
                let t = lt.task.expect("a leased task");
                self.ledger.delivered(&t);
                let ack =
                    pb::AckRequest { task_id: t.id.clone(), lease_id: lt.lease_id, result: b"ok".to_vec() };
                match client.ack(ack).await {
                    Ok(_) => self.ledger.acked(t.id, t.attempt),
                    Err(s) => self.ledger.failed(&s),
                }
            }
        }
    }

    /// A worker stream acking every task it gets; on `draining` it settles
    /// what it holds and closes; it reconnects after any end.
    async fn stream_worker(self, client: WorkerServiceClient<Channel>) {
        while !self.stopped() {
            if let Err(s) = self.one_stream(client.clone()).await {
                self.ledger.failed(&s);
            }
            sleep(BACKOFF).await;
        }
    }

    async fn one_stream(&self, mut client: WorkerServiceClient<Channel>) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel(1024);
        let subscribe = pb::Subscribe {
            queues: QUEUES.iter().map(|q| q.to_string()).collect(),
            max_in_flight: self.shape.window,
            lease_duration: Some(prost_types::Duration { seconds: self.shape.lease_secs, nanos: 0 }),
            worker_id: self.name.clone(),
            ..Default::default()
        };
        let req = |msg| pb::StreamRequest { msg: Some(msg) };
        tx.send(req(Req::Subscribe(subscribe))).await.expect("a fresh channel");
        let mut rx = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        let mut tx = Some(tx);
        // Acks sent and not yet settled: task id -> attempt.
        let mut pending: HashMap<String, u32> = HashMap::new();
        let mut draining = false;
        loop {
            if draining && pending.is_empty() {
                tx = None; // a clean end: the worker holds nothing
            }
            if self.stopped() && pending.is_empty() {
                return Ok(());
            }
            let msg = match timeout(POLL, rx.message()).await {
                Err(_) => continue,
                Ok(Err(s)) => return Err(s),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(m))) => m.msg.expect("a message with a body"),
            };
            match msg {
                Resp::Task(lt) => {
                    let t = lt.task.expect("a leased task");
                    self.ledger.delivered(&t);
                    pending.insert(t.id.clone(), t.attempt);
                    let ack = pb::AckRequest { task_id: t.id, lease_id: lt.lease_id, result: b"ok".to_vec() };
                    if let Some(tx) = &tx {
                        let _ = tx.send(req(Req::Ack(ack))).await;
                    }
                }
                Resp::Settled(s) => {
                    let Some(attempt) = pending.remove(&s.task_id) else { continue };
                    match s.error {
                        None => self.ledger.acked(s.task_id, attempt),
                        Some(e) => self.ledger.failed(&tonic::Status::new(e.code.into(), e.message)),
                    }
                }
                Resp::LeaseLost(l) => {
                    pending.remove(&l.task_id);
                }
                Resp::Draining(_) => draining = true,
            }
        }
    }
}
