//! `taskbroker.v1.ProducerService`.

use tonic::{Request, Response, Status};

use super::convert;
use super::status::to_rpc_status;
use crate::broker::Broker;
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

#[tonic::async_trait]
impl ProducerService for Producer {
    async fn enqueue(
        &self,
        req: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let input = convert::enqueue_input(req.into_inner())?;
        let out = self.broker.enqueue(input).await?;
        Ok(Response::new(pb::EnqueueResponse {
            task: Some(convert::task(out.task)),
            deduplicated: out.deduplicated,
        }))
    }

    async fn enqueue_batch(
        &self,
        req: Request<pb::EnqueueBatchRequest>,
    ) -> Result<Response<pb::EnqueueBatchResponse>, Status> {
        let pb::EnqueueBatchRequest { tasks } = req.into_inner();
        let items = tasks.into_iter().map(convert::enqueue_input).collect();
        let results = self
            .broker
            .enqueue_batch(items)
            .await?
            .into_iter()
            .map(|outcome| match outcome {
                Ok(e) => pb::EnqueueResult {
                    result: Some(pb::enqueue_result::Result::Task(convert::task(e.task))),
                    deduplicated: e.deduplicated,
                },
                Err(err) => pb::EnqueueResult {
                    result: Some(pb::enqueue_result::Result::Error(to_rpc_status(err))),
                    deduplicated: false,
                },
            })
            .collect();
        Ok(Response::new(pb::EnqueueBatchResponse { results }))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let pb::GetTaskRequest { task_id } = req.into_inner();
        let task = self.broker.get(&task_id).await?;
        Ok(Response::new(pb::GetTaskResponse { task: Some(convert::task(task)) }))
    }

    async fn cancel_task(
        &self,
        req: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let pb::CancelTaskRequest { task_id } = req.into_inner();
        let task = self.broker.cancel(&task_id).await?;
        Ok(Response::new(pb::CancelTaskResponse { task: Some(convert::task(task)) }))
    }
}
