//! A worker-stream client for the stream tests: requests go through a tokio
//! mpsc channel, and every read is bounded by a timeout so a hang fails the
//! test instead of stalling it.
#![allow(dead_code)]

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use taskbroker::pb;
use taskbroker::pb::stream_request::Msg as Req;
use taskbroker::pb::stream_response::Msg as Resp;
use taskbroker::pb::worker_service_client::WorkerServiceClient;

/// Longest wait for something that must happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing more arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(200);

/// gRPC codes, as `google.rpc.Status.code` carries them.
pub const INVALID_ARGUMENT: i32 = tonic::Code::InvalidArgument as i32;
pub const FAILED_PRECONDITION: i32 = tonic::Code::FailedPrecondition as i32;

/// One worker stream.
pub struct Worker {
    tx: Option<mpsc::Sender<pb::StreamRequest>>,
    rx: Streaming<pb::StreamResponse>,
}

/// A strict subscription to `queues` with a window of `max_in_flight`.
pub fn subscribe(queues: &[&str], max_in_flight: u32) -> pb::Subscribe {
    pb::Subscribe {
        queues: queues.iter().map(|q| q.to_string()).collect(),
        max_in_flight,
        worker_id: "stream-test".into(),
        ..Default::default()
    }
}

pub fn req(msg: Req) -> pb::StreamRequest {
    pb::StreamRequest { msg: Some(msg) }
}

/// Opens a stream whose first messages are `first`: the stream, or the
/// status the call failed with.
pub async fn open_raw(
    client: &WorkerServiceClient<Channel>,
    first: Vec<pb::StreamRequest>,
) -> Result<Worker, tonic::Status> {
    let (tx, rx) = mpsc::channel(4096);
    for m in first {
        tx.send(m).await.unwrap();
    }
    let mut client = client.clone();
    let resp = timeout(WAIT, client.stream(ReceiverStream::new(rx))).await.expect("Stream call answered")?;
    Ok(Worker { tx: Some(tx), rx: resp.into_inner() })
}

/// Opens a stream with `sub` as its first message.
pub async fn open(client: &WorkerServiceClient<Channel>, sub: pb::Subscribe) -> Worker {
    open_raw(client, vec![req(Req::Subscribe(sub))]).await.expect("subscribe accepted")
}

/// The status a stream opened with `first` ends with: either the call fails,
/// or the stream's first item is the error.
pub async fn open_failure(
    client: &WorkerServiceClient<Channel>,
    first: Vec<pb::StreamRequest>,
) -> tonic::Status {
    match open_raw(client, first).await {
        Err(status) => status,
        Ok(mut w) => w.ends_with_error().await,
    }
}

pub fn id(t: &pb::LeasedTask) -> &str {
    &t.task.as_ref().unwrap().id
}

pub fn task_of(t: &pb::LeasedTask) -> &pb::Task {
    t.task.as_ref().unwrap()
}

/// The error code of a `Settled` (0 when it succeeded).
pub fn code(s: &pb::Settled) -> i32 {
    s.error.as_ref().map_or(0, |e| e.code)
}

impl Worker {
    pub async fn send(&self, msg: Req) {
        let tx = self.tx.as_ref().expect("request side still open");
        timeout(WAIT, tx.send(req(msg))).await.expect("request buffered").expect("stream still open");
    }

    pub async fn ack(&self, t: &pb::LeasedTask) {
        self.ack_with(id(t), &t.lease_id, Vec::new()).await;
    }

    pub async fn ack_with(&self, task_id: &str, lease_id: &str, result: Vec<u8>) {
        self.send(Req::Ack(pb::AckRequest { task_id: task_id.into(), lease_id: lease_id.into(), result }))
            .await;
    }

    pub async fn nack(&self, t: &pb::LeasedTask, error: &str) {
        self.send(Req::Nack(pb::NackRequest {
            task_id: id(t).into(),
            lease_id: t.lease_id.clone(),
            error: error.into(),
            ..Default::default()
        }))
        .await;
    }

    pub async fn extend(&self, t: &pb::LeasedTask, by_secs: i64) {
        self.send(Req::Extend(pb::ExtendLeaseRequest {
            task_id: id(t).into(),
            lease_id: t.lease_id.clone(),
            extend_by: Some(prost_types::Duration { seconds: by_secs, nanos: 0 }),
        }))
        .await;
    }

    pub async fn credit(&self, count: u32) {
        self.send(Req::Credit(pb::Credit { count })).await;
    }

    /// The next message, within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Resp {
        match timeout(within, self.rx.message()).await {
            Err(_) => panic!("no stream message within {within:?}"),
            Ok(Err(status)) => panic!("stream failed: {status:?}"),
            Ok(Ok(None)) => panic!("stream ended"),
            Ok(Ok(Some(m))) => m.msg.expect("a message with a body"),
        }
    }

    /// Reads past whatever is buffered to the status that ended the stream.
    pub async fn end_status(&mut self) -> tonic::Status {
        loop {
            match timeout(WAIT, self.rx.message()).await {
                Err(_) => panic!("the stream did not end within {WAIT:?}"),
                Ok(Err(status)) => return status,
                Ok(Ok(None)) => panic!("the stream ended without an error"),
                Ok(Ok(Some(_))) => {}
            }
        }
    }

    pub async fn next(&mut self) -> Resp {
        self.next_within(WAIT).await
    }

    pub async fn task_within(&mut self, within: Duration) -> pb::LeasedTask {
        match self.next_within(within).await {
            Resp::Task(t) => t,
            other => panic!("expected a task, got {other:?}"),
        }
    }

    pub async fn task(&mut self) -> pb::LeasedTask {
        self.task_within(WAIT).await
    }

    pub async fn settled(&mut self) -> pb::Settled {
        match self.next().await {
            Resp::Settled(s) => s,
            other => panic!("expected settled, got {other:?}"),
        }
    }

    /// The next message is a successful `settled` of `op` for `task_id`.
    pub async fn settled_ok(&mut self, task_id: &str, op: pb::SettleOperation) -> pb::Settled {
        let s = self.settled().await;
        assert_eq!((s.task_id.as_str(), s.operation, &s.error), (task_id, op as i32, &None), "{s:?}");
        s
    }

    pub async fn lease_lost(&mut self) -> pb::LeaseLost {
        match self.next().await {
            Resp::LeaseLost(l) => l,
            other => panic!("expected lease_lost, got {other:?}"),
        }
    }

    /// The next message, or `None` when nothing arrives for [`QUIET`].
    pub async fn next_or_quiet(&mut self) -> Option<Resp> {
        match timeout(QUIET, self.rx.message()).await {
            Err(_) => None,
            Ok(Err(status)) => panic!("stream failed: {status:?}"),
            Ok(Ok(None)) => panic!("stream ended"),
            Ok(Ok(Some(m))) => m.msg,
        }
    }

    /// Nothing arrives for [`QUIET`].
    pub async fn assert_quiet(&mut self) {
        if let Ok(m) = timeout(QUIET, self.rx.message()).await {
            panic!("expected nothing more, got {m:?}");
        }
    }

    /// The stream ends with an error status (after nothing else).
    pub async fn ends_with_error(&mut self) -> tonic::Status {
        match timeout(WAIT, self.rx.message()).await {
            Err(_) => panic!("stream did not end within {WAIT:?}"),
            Ok(Err(status)) => status,
            Ok(Ok(m)) => panic!("expected the stream to fail, got {m:?}"),
        }
    }

    /// The stream ends within `within` with nothing more pushed: `None` for a
    /// clean end, or the status it failed with.
    pub async fn ends_within(&mut self, within: Duration) -> Option<tonic::Status> {
        match timeout(within, self.rx.message()).await {
            Err(_) => panic!("stream did not end within {within:?}"),
            Ok(Ok(None)) => None,
            Ok(Err(status)) => Some(status),
            Ok(Ok(Some(m))) => panic!("expected the stream to end, got {m:?}"),
        }
    }

    /// Closes the request side only (the worker sends nothing more).
    pub fn close_requests(&mut self) {
        self.tx = None;
    }
}
