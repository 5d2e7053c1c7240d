//! `taskbroker.v1.ProducerService`.

use std::pin::Pin;

use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::caller::Caller;
use super::convert;
use super::status::to_rpc_status;
use crate::broker::{Broker, BrokerError, Enqueued, Watch};
use crate::core::access::Operation;
use crate::core::task::{Task, TaskId};
use crate::pb;
use crate::pb::producer_service_server::ProducerService;

pub struct Producer {
    broker: Broker,
}

impl Producer {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

/// Most requests of an EnqueueStream committed together.
const STREAM_BATCH: usize = 1000;
/// Responses buffered towards a slow reader.
const OUTBOUND_BUFFER: usize = 1024;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// An enqueued task as an enqueue answers it: without `payload` and `result`,
/// so the answer stays small whatever was enqueued (a batch of large payloads
/// would otherwise come back over the client's message limit after the
/// commit, and a retry would enqueue it twice). GetTask returns them.
fn enqueued(mut task: Task) -> pb::Task {
    task.payload = Vec::new();
    task.result = Vec::new();
    convert::task(task)
}

fn enqueue_result(outcome: Result<Enqueued, BrokerError>) -> pb::EnqueueResult {
    match outcome {
        Ok(e) => pb::EnqueueResult {
            result: Some(pb::enqueue_result::Result::Task(enqueued(e.task))),
            deduplicated: e.deduplicated,
        },
        Err(err) => pb::EnqueueResult {
            result: Some(pb::enqueue_result::Result::Error(to_rpc_status(err))),
            deduplicated: false,
        },
    }
}

fn stream_result(outcome: Result<Enqueued, BrokerError>) -> pb::EnqueueStreamResponse {
    let pb::EnqueueResult { result, deduplicated } = enqueue_result(outcome);
    let result = result.map(|r| match r {
        pb::enqueue_result::Result::Task(t) => pb::enqueue_stream_response::Result::Task(t),
        pb::enqueue_result::Result::Error(e) => pb::enqueue_stream_response::Result::Error(e),
    });
    pb::EnqueueStreamResponse { result, deduplicated }
}

/// EnqueueStream: takes what has arrived (up to a batch), commits it in one
/// store call, answers in order, repeats. A store failure fails that chunk's
/// items, not the stream.
async fn pump_enqueues(
    broker: Broker,
    caller: Caller,
    mut inbound: Streaming<pb::EnqueueRequest>,
    out: mpsc::Sender<Result<pb::EnqueueStreamResponse, Status>>,
) {
    loop {
        let first = tokio::select! {
            m = inbound.next() => m,
            _ = out.closed() => return,
        };
        let Some(first) = first else { return };
        let mut chunk = vec![first];
        while chunk.len() < STREAM_BATCH {
            match inbound.next().now_or_never() {
                Some(Some(m)) => chunk.push(m),
                _ => break,
            }
        }
        let mut ended = None;
        let items: Vec<_> = chunk
            .into_iter()
            .filter_map(|m| match m {
                Ok(req) => Some(convert::enqueue_input(req, &caller)),
                Err(status) => {
                    ended = Some(status);
                    None
                }
            })
            .collect();
        if !items.is_empty() {
            let n = items.len();
            let results = match broker.enqueue_batch(items).await {
                Ok(results) => results,
                Err(e) => vec![Err(e); n],
            };
            for r in results {
                if out.send(Ok(stream_result(r))).await.is_err() {
                    return;
                }
            }
        }
        if let Some(status) = ended {
            let _ = out.send(Err(status)).await;
            return;
        }
    }
}

/// WatchTask: the current state, then every change, until a final state.
async fn pump_watch(
    broker: Broker,
    task_id: TaskId,
    first: Task,
    mut changes: Watch,
    out: mpsc::Sender<Result<pb::WatchTaskResponse, Status>>,
) {
    let mut current = first;
    // Replicas may report one change twice: send each state once.
    let mut sent: Option<(crate::core::task::TaskState, u64)> = None;
    loop {
        let done = current.state.is_final();
        let key = Some((current.state, current.update_time));
        if sent != key {
            sent = key;
            let msg = pb::WatchTaskResponse { task: Some(convert::task(current)) };
            if out.send(Ok(msg)).await.is_err() {
                break;
            }
        }
        if done {
            break;
        }
        current = tokio::select! {
            change = changes.recv() => match change {
                Ok(task) => task,
                Err(broadcast::error::RecvError::Lagged(_)) => match broker.get(task_id).await {
                    Ok(task) => task,
                    Err(e) => {
                        let _ = out.send(Err(e.into())).await;
                        break;
                    }
                },
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = out.closed() => break,
        };
    }
    // Dropping `changes` ends the watch.
}

#[tonic::async_trait]
impl ProducerService for Producer {
    type EnqueueStreamStream = ResponseStream<pb::EnqueueStreamResponse>;
    type WatchTaskStream = ResponseStream<pb::WatchTaskResponse>;

    async fn enqueue_stream(
        &self,
        req: Request<Streaming<pb::EnqueueRequest>>,
    ) -> Result<Response<Self::EnqueueStreamStream>, Status> {
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let caller = Caller::of(&req);
        tokio::spawn(pump_enqueues(self.broker.clone(), caller, req.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn watch_task(
        &self,
        req: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let caller = Caller::of(&req);
        let pb::WatchTaskRequest { task_id } = req.into_inner();
        let task_id = convert::task_id(&task_id)?;
        self.broker.authorize_task(&caller.access, Operation::WatchTask, task_id).await?;
        let (task, changes) = self.broker.watch(task_id).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(pump_watch(self.broker.clone(), task_id, task, changes, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn enqueue(
        &self,
        req: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let caller = Caller::of(&req);
        let input = convert::enqueue_input(req.into_inner(), &caller)?;
        let out = self.broker.enqueue(input).await?;
        Ok(Response::new(pb::EnqueueResponse {
            task: Some(enqueued(out.task)),
            deduplicated: out.deduplicated,
        }))
    }

    async fn enqueue_batch(
        &self,
        req: Request<pb::EnqueueBatchRequest>,
    ) -> Result<Response<pb::EnqueueBatchResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::EnqueueBatchRequest { tasks } = req.into_inner();
        let items = tasks.into_iter().map(|t| convert::enqueue_input(t, &caller)).collect();
        let results = self.broker.enqueue_batch(items).await?.into_iter().map(enqueue_result).collect();
        Ok(Response::new(pb::EnqueueBatchResponse { results }))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::GetTaskRequest { task_id, include_dependencies } = req.into_inner();
        let id = convert::task_id(&task_id)?;
        let (task, dependencies) =
            self.broker.get_with_dependencies(&caller.access, id, include_dependencies).await?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(convert::task(task)),
            dependencies: dependencies.into_iter().map(convert::task).collect(),
        }))
    }

    async fn cancel_task(
        &self,
        req: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::CancelTaskRequest { task_id } = req.into_inner();
        let task_id = convert::task_id(&task_id)?;
        self.broker.authorize_task(&caller.access, Operation::CancelTask, task_id).await?;
        let task = self.broker.cancel(task_id).await?;
        Ok(Response::new(pb::CancelTaskResponse { task: Some(convert::task(task)) }))
    }
}
