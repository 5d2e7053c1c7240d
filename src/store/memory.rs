//! The in-memory store: the reference backend, no persistence.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::table::Table;
use super::{AckItem, Enqueued, LeaseSpec, NackSpec, Store, StoreError, Swept};
use crate::core::queue::Policies;
use crate::core::task::{NewTask, Task, TaskId};
use crate::core::Millis;

/// Tasks live in a [`Table`] behind a mutex that is never held across `.await`.
pub struct MemoryStore {
    table: Mutex<Table>,
}

impl MemoryStore {
    pub fn new(policies: Arc<Policies>) -> Self {
        Self { table: Mutex::new(Table::new(policies, false)) }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave a half-applied change
        // visible to callers in a way poisoning would fix: keep serving.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn enqueue(&self, tasks: Vec<NewTask>, now: Millis) -> Result<Vec<Enqueued>, StoreError> {
        Ok(self.table().enqueue(tasks, now))
    }

    async fn lease(&self, spec: LeaseSpec, now: Millis) -> Result<Vec<Task>, StoreError> {
        Ok(self.table().lease(&spec, now))
    }

    async fn ack(&self, id: TaskId, lease_id: u64, result: Vec<u8>, now: Millis) -> Result<Task, StoreError> {
        self.table().ack(id, lease_id, result, now)
    }

    async fn ack_many(
        &self,
        items: Vec<AckItem>,
        now: Millis,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        Ok(self.table().ack_many(items, now))
    }

    async fn nack(&self, id: TaskId, lease_id: u64, spec: NackSpec, now: Millis) -> Result<Task, StoreError> {
        self.table().nack(id, lease_id, spec, now)
    }

    async fn extend(&self, id: TaskId, lease_id: u64, by: Millis, now: Millis) -> Result<Millis, StoreError> {
        self.table().extend(id, lease_id, by, now)
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<Task, StoreError> {
        self.table().cancel(id, now)
    }

    async fn get(&self, id: TaskId) -> Result<Task, StoreError> {
        self.table().get(id)
    }

    async fn requeue_expired(&self, now: Millis) -> Result<Swept, StoreError> {
        Ok(self.table().requeue_expired(now))
    }

    async fn promote_due(&self, now: Millis) -> Result<Swept, StoreError> {
        Ok(self.table().promote_due(now))
    }

    async fn purge_finished(&self, now: Millis) -> Result<Swept, StoreError> {
        Ok(self.table().purge_finished(now))
    }

    async fn next_timer(&self) -> Result<Option<Millis>, StoreError> {
        Ok(self.table().next_timer())
    }

    async fn healthy(&self) -> bool {
        true
    }
}
