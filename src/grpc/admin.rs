//! `taskbroker.v1.AdminService`: translates to the broker's operations API.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller::Caller;
use super::{convert, schedules};
use crate::broker::{Broker, BrokerError, QueueInfo};
use crate::config::reload::Reloader;
use crate::core::access::Operation;
use crate::core::stats::STATES;
use crate::core::task::{TaskId, TaskState};
use crate::pb;
use crate::pb::admin_service_server::AdminService;

/// Most `task_ids` one RedriveTasks may name.
const MAX_REDRIVE_IDS: usize = 10_000;

pub struct Admin {
    broker: Broker,
    /// What ReloadConfig re-reads; `None`: reload is refused.
    reloader: Option<Arc<Reloader>>,
}

impl Admin {
    pub fn new(broker: Broker, reloader: Option<Arc<Reloader>>) -> Self {
        Self { broker, reloader }
    }
}

/// A task state named in a request (`field` for the error).
fn state(field: &str, value: i32) -> Result<TaskState, BrokerError> {
    let s = pb::TaskState::try_from(value).unwrap_or(pb::TaskState::Unspecified);
    STATES.into_iter().find(|st| convert::state(*st) == s).ok_or_else(|| {
        BrokerError::invalid(
            field,
            "must be a task state (WAITING, SCHEDULED, READY, LEASED, SUCCEEDED, DEAD, CANCELED)",
        )
    })
}

pub fn queue_info(q: QueueInfo) -> pb::QueueInfo {
    let QueueInfo { name, declared, stats, policy } = q;
    let c = stats.counts;
    let t = stats.totals;
    pb::QueueInfo {
        name,
        paused: stats.paused,
        declared,
        counts: Some(pb::QueueCounts {
            scheduled: c.get(TaskState::Scheduled),
            ready: c.get(TaskState::Ready),
            leased: c.get(TaskState::Leased),
            succeeded: c.get(TaskState::Succeeded),
            dead: c.get(TaskState::Dead),
            canceled: c.get(TaskState::Canceled),
            waiting: c.get(TaskState::Waiting),
        }),
        oldest_ready_time: stats.oldest_ready_time.map(convert::timestamp),
        totals: Some(pb::QueueTotals {
            enqueued: t.enqueued,
            delivered: t.delivered,
            acked: t.acked,
            nacked: t.nacked,
            dead: t.dead,
            expired: t.expired,
        }),
        settings: Some(pb::QueueSettings {
            lease_duration: Some(convert::duration_pb(policy.lease_duration)),
            max_attempts: policy.max_attempts,
            default_priority: policy.default_priority as u32,
            retention: Some(convert::duration_pb(policy.retention)),
            max_in_flight: policy.max_in_flight,
            per_key_max_in_flight: policy.per_key_max_in_flight,
            rate_limit: policy.rate_limit.map(|r| r.rate.to_string()).unwrap_or_default(),
            semaphores: policy.semaphores.clone(),
        }),
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let queues = self.broker.list_queues(&Caller::of(&req).access).await?;
        Ok(Response::new(pb::ListQueuesResponse { queues: queues.into_iter().map(queue_info).collect() }))
    }

    async fn get_queue(&self, req: Request<pb::GetQueueRequest>) -> Result<Response<pb::QueueInfo>, Status> {
        let caller = Caller::of(&req);
        let pb::GetQueueRequest { queue } = req.into_inner();
        self.broker.authorize_queue(&caller.access, Operation::GetQueue, &queue)?;
        Ok(Response::new(queue_info(self.broker.queue_info(&queue).await?)))
    }

    async fn pause_queue(
        &self,
        req: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let caller = Caller::of(&req);
        let pb::PauseQueueRequest { queue } = req.into_inner();
        self.broker.authorize_queue(&caller.access, Operation::PauseQueue, &queue)?;
        Ok(Response::new(queue_info(self.broker.set_paused(&queue, true).await?)))
    }

    async fn resume_queue(
        &self,
        req: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let caller = Caller::of(&req);
        let pb::ResumeQueueRequest { queue } = req.into_inner();
        self.broker.authorize_queue(&caller.access, Operation::ResumeQueue, &queue)?;
        Ok(Response::new(queue_info(self.broker.set_paused(&queue, false).await?)))
    }

    async fn purge_queue(
        &self,
        req: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::PurgeQueueRequest { queue, states } = req.into_inner();
        self.broker.authorize_queue(&caller.access, Operation::PurgeQueue, &queue)?;
        let states = states.into_iter().map(|s| state("states", s)).collect::<Result<Vec<_>, _>>()?;
        let purged = self.broker.purge_queue(&queue, &states).await?;
        Ok(Response::new(pb::PurgeQueueResponse { purged }))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::ListTasksRequest { queue, state: s, page_size, page_token } = req.into_inner();
        self.broker.authorize_queue(&caller.access, Operation::ListTasks, &queue)?;
        let s = state("state", s)?;
        let after = match page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .parse::<TaskId>()
                    .map_err(|_| BrokerError::invalid("page_token", "not a token from ListTasks"))?,
            ),
        };
        let page = self.broker.list_tasks(&queue, s, page_size as usize, after).await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: page.tasks.into_iter().map(convert::task).collect(),
            next_page_token: page.next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn redrive_tasks(
        &self,
        req: Request<pb::RedriveTasksRequest>,
    ) -> Result<Response<pb::RedriveTasksResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::RedriveTasksRequest { queue, task_ids, limit } = req.into_inner();
        self.broker.authorize_queue(&caller.access, Operation::RedriveTasks, &queue)?;
        if task_ids.len() > MAX_REDRIVE_IDS {
            let why = format!("at most {MAX_REDRIVE_IDS} ids per call");
            return Err(BrokerError::invalid("task_ids", why).into());
        }
        let ids = task_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                id.parse::<TaskId>()
                    .map_err(|_| BrokerError::invalid(format!("task_ids[{i}]"), "not a task id (a ULID)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let redriven = self.broker.redrive(&queue, &ids, limit as usize).await?;
        Ok(Response::new(pb::RedriveTasksResponse { redriven }))
    }

    async fn explain_route(
        &self,
        req: Request<pb::ExplainRouteRequest>,
    ) -> Result<Response<pb::ExplainRouteResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::ExplainRouteRequest { queue, kind, headers } = req.into_inner();
        let e = self.broker.explain_route(&queue, &kind, &headers.into_iter().collect())?;
        self.broker.authorize_queue(&caller.access, Operation::ExplainRoute, &e.queue)?;
        Ok(Response::new(pb::ExplainRouteResponse {
            queue: e.queue,
            priority: e.priority as u32,
            route_index: e.route_index.map_or(-1, |i| i as i32),
            explanation: e.text,
        }))
    }

    async fn reload_config(
        &self,
        req: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        Caller::of(&req)
            .access
            .check_everywhere(Operation::ReloadConfig)
            .map_err(BrokerError::PermissionDenied)?;
        let Some(reloader) = &self.reloader else {
            return Err(
                BrokerError::ConfigInvalid(vec!["this broker cannot reload its config".into()]).into()
            );
        };
        let reloader = reloader.clone();
        let changes = tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(BrokerError::ConfigInvalid)?;
        Ok(Response::new(pb::ReloadConfigResponse { changes }))
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let access = Caller::of(&req).access;
        let mut schedules = self.broker.list_schedules().await?;
        schedules.retain(|s| {
            let queue = self.broker.schedule_queue(&s.stored.schedule).unwrap_or_default();
            access.allows(Operation::ListSchedules, &queue)
        });
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: schedules.into_iter().map(schedules::schedule_pb).collect(),
        }))
    }

    async fn put_schedule(
        &self,
        req: Request<pb::PutScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let access = Caller::of(&req).access;
        let pb::PutScheduleRequest { schedule } = req.into_inner();
        let schedule = schedule.ok_or_else(|| BrokerError::invalid("schedule", "required"))?;
        let schedule: crate::core::schedule::Schedule = schedule.try_into()?;
        // The one it replaces, and the queue its tasks will go to.
        self.broker.authorize_schedule(&access, &schedule.name, true).await?;
        if let Ok(queue) = self.broker.schedule_queue(&schedule) {
            self.broker.authorize_queue(&access, Operation::ManageSchedule, &queue)?;
        }
        // The broker names the schedule's fields; the request holds them in `schedule`.
        let put = self.broker.put_schedule(schedule).await.map_err(|e| match e {
            BrokerError::Invalid(violations) => BrokerError::Invalid(
                violations
                    .into_iter()
                    .map(|v| match v.field.strip_prefix("schedule.") {
                        Some(_) => v,
                        None => crate::broker::Violation::new(format!("schedule.{}", v.field), v.description),
                    })
                    .collect(),
            ),
            other => other,
        })?;
        Ok(Response::new(schedules::schedule_pb(put)))
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let access = Caller::of(&req).access;
        let pb::DeleteScheduleRequest { name } = req.into_inner();
        self.broker.authorize_schedule(&access, &name, false).await?;
        self.broker.delete_schedule(&name).await?;
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn trigger_schedule(
        &self,
        req: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        let access = Caller::of(&req).access;
        let pb::TriggerScheduleRequest { name } = req.into_inner();
        self.broker.authorize_schedule(&access, &name, false).await?;
        let task = self.broker.trigger_schedule(&name).await?;
        Ok(Response::new(pb::TriggerScheduleResponse { task: Some(convert::task(task)) }))
    }
}
