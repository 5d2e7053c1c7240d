//! The mixed load of the fault matrix, and its ledger.
//!
//! Producers enqueue unary (`Enqueue`, `EnqueueBatch`, each item with a
//! `request_id`, retried as sent after a failure) and streamed
//! (`EnqueueStream`); workers lease unary (`Lease` + `Ack`) and over worker
//! streams (`Stream` + acks, settling what they hold when told to drain).
//! Every actor keeps going through failures (the fault under test) until the
//! load is stopped.
//!
//! The [`Ledger`] keeps what the broker acknowledged: every enqueue answered
//! with a task, every ack answered OK (with the attempt it settled), and the
//! highest attempt each task was delivered with. A task delivered with a
//! higher attempt than the one acked was redelivered after its ack, whatever
//! order the answers were seen in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

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
    fn enqueued(&self, id: String) {
        self.enqueued.lock().unwrap().insert(id, ());
    }

    fn delivered(&self, t: &pb::Task) {
        let mut d = self.delivered.lock().unwrap();
        let max = d.entry(t.id.clone()).or_default();
        *max = (*max).max(t.attempt);
    }

    fn acked(&self, id: String, attempt: u32) {
        self.acked.lock().unwrap().insert(id, attempt);
    }

    fn failed(&self, s: &tonic::Status) {
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
        match client.get_task(pb::GetTaskRequest { task_id: id.clone() }).await {
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
            let t = client.get_task(pb::GetTaskRequest { task_id: id.clone() }).await;
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
