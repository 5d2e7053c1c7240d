//! `taskbroker.v1.WorkerService` (unary calls).

use tonic::{Request, Response, Status, Streaming};

use super::caller::Caller;
use super::convert;
use crate::broker::Broker;
use crate::pb;
use crate::pb::worker_service_server::WorkerService;

pub struct Worker {
    broker: Broker,
}

impl Worker {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl WorkerService for Worker {
    type StreamStream = super::stream::ResponseStream;

    async fn stream(
        &self,
        req: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let caller = Caller::of(&req);
        Ok(Response::new(super::stream::open(self.broker.clone(), caller, req.into_inner()).await?))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let caller = Caller::of(&req);
        let input = convert::lease_input(req.into_inner(), &caller)?;
        let tasks = self.broker.lease(input).await?;
        Ok(Response::new(pb::LeaseResponse { tasks: tasks.into_iter().map(convert::leased_task).collect() }))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::AckRequest { task_id, lease_id, result } = req.into_inner();
        let (id, lease) = convert::held(&task_id, &lease_id)?;
        self.broker.authorize_settle(&caller.access, id, lease.0).await?;
        self.broker.ack(id, lease, result).await?;
        Ok(Response::new(pb::AckResponse {}))
    }

    async fn nack(&self, req: Request<pb::NackRequest>) -> Result<Response<pb::NackResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::NackRequest { task_id, lease_id, error, retry_after, no_retry } = req.into_inner();
        let retry_after = convert::duration_field("retry_after", retry_after)?;
        let (id, lease) = convert::held(&task_id, &lease_id)?;
        self.broker.authorize_settle(&caller.access, id, lease.0).await?;
        let task = self.broker.nack(id, lease, error, retry_after, no_retry).await?;
        Ok(Response::new(pb::NackResponse { task: Some(convert::task(task)) }))
    }

    async fn extend_lease(
        &self,
        req: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::ExtendLeaseRequest { task_id, lease_id, extend_by } = req.into_inner();
        let extend_by = convert::duration_field("extend_by", extend_by)?;
        let (id, lease) = convert::held(&task_id, &lease_id)?;
        self.broker.authorize_settle(&caller.access, id, lease.0).await?;
        let expire = self.broker.extend(id, lease, extend_by).await?;
        Ok(Response::new(pb::ExtendLeaseResponse { lease_expire_time: Some(convert::timestamp(expire)) }))
    }
}
