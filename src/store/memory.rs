//! The in-memory store: the reference backend, no persistence.

use super::local::{Durable, Persist, TableStore};
use super::table::{Changes, Table};
use super::StoreError;
use crate::core::queue::QueueRegistry;

/// Tasks live in a [`super::table::Table`]; nothing is kept beyond the process.
pub type MemoryStore = TableStore<Volatile>;

/// Keeps nothing: changes are never even recorded.
pub struct Volatile;

impl MemoryStore {
    pub fn new(queues: impl Into<QueueRegistry>) -> Self {
        let queues = queues.into();
        TableStore::with(queues.clone(), Self::table_for(&queues), Volatile)
    }
}

impl Persist for Volatile {
    const TRACKS_CHANGES: bool = false;

    fn check(&self, _table: &mut Table) -> Result<(), StoreError> {
        Ok(())
    }

    fn submit(&self, _changes: Changes) -> Result<Durable, StoreError> {
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    fn barrier(&self) -> Result<Option<Durable>, StoreError> {
        Ok(None)
    }

    fn commits(&self) -> Option<u64> {
        None
    }
}
