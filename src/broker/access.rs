//! Permission checks that need the store: a call naming a task id is
//! checked against the task's queue ([`crate::core::access`] decides).

use super::{Broker, BrokerError};
use crate::core::access::{Access, Denied, Operation};
use crate::core::schedule::Schedule;
use crate::core::task::{Task, TaskId};

impl Broker {
    /// The task `id`, if `access` may do `op` on it. An unknown task and a
    /// forbidden one are refused alike (PERMISSION_DENIED), unless the caller
    /// may do `op` on every queue (then an unknown task is NOT_FOUND).
    pub async fn task_for(&self, access: &Access, op: Operation, id: TaskId) -> Result<Task, BrokerError> {
        let found = match self.get(id).await {
            Ok(task) => Some(task),
            Err(BrokerError::TaskNotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let id_text = id.to_string();
        match access.check_task(op, &id_text, found.as_ref().map(|t| t.queue.as_str())) {
            Ok(_) => found.ok_or(BrokerError::TaskNotFound(id_text)),
            Err(denied) => Err(BrokerError::PermissionDenied(denied)),
        }
    }

    /// Checks that `access` may do `op` on the task `id`; reads the task
    /// only when the caller's grant does not cover every queue.
    pub async fn authorize_task(
        &self,
        access: &Access,
        op: Operation,
        id: TaskId,
    ) -> Result<(), BrokerError> {
        if access.allows_everywhere(op) {
            return Ok(());
        }
        self.task_for(access, op, id).await.map(|_| ())
    }

    /// Checks that `access` may settle (Ack, Nack, ExtendLease) the task
    /// `id` under `lease`: without a store read when this broker handed that
    /// lease out (it knows the task's queue), else as [`Self::authorize_task`].
    pub async fn authorize_settle(&self, access: &Access, id: TaskId, lease: u64) -> Result<(), BrokerError> {
        if access.allows_everywhere(Operation::Settle) {
            return Ok(());
        }
        match self.inner.drain.queue_of(id, lease) {
            Some(queue) => access
                .check_task(Operation::Settle, &id.to_string(), Some(&queue))
                .map(drop)
                .map_err(BrokerError::PermissionDenied),
            None => self.authorize_task(access, Operation::Settle, id).await,
        }
    }

    /// Checks that `access` may do `op` on `queue`.
    pub fn authorize_queue(&self, access: &Access, op: Operation, queue: &str) -> Result<(), BrokerError> {
        access.check(op, queue).map_err(BrokerError::PermissionDenied)
    }
}

impl Broker {
    /// The queue a schedule's tasks go to: its own, or where its kind and
    /// headers are routed.
    pub fn schedule_queue(&self, s: &Schedule) -> Result<String, BrokerError> {
        Ok(self.explain_route(&s.queue, &s.kind, &s.headers)?.queue)
    }

    /// Checks that `access` may change or trigger the schedule `name` (on the
    /// queue its tasks go to). An unknown schedule is refused like a
    /// forbidden one unless `missing_ok` (PutSchedule creating it) or the
    /// caller may manage every queue's schedules.
    pub async fn authorize_schedule(
        &self,
        access: &Access,
        name: &str,
        missing_ok: bool,
    ) -> Result<(), BrokerError> {
        let op = Operation::ManageSchedule;
        if access.allows_everywhere(op) {
            return Ok(());
        }
        let found = self.list_schedules().await?.into_iter().find(|s| s.stored.schedule.name == name);
        let allowed = match &found {
            Some(s) => access.allows(op, &self.schedule_queue(&s.stored.schedule)?),
            None => missing_ok,
        };
        if allowed {
            return Ok(());
        }
        let action = op.actions()[0];
        Err(BrokerError::PermissionDenied(Denied {
            action,
            queue: None,
            task_id: None,
            schedule: Some(name.into()),
        }))
    }
}
