//! The in-memory store: the reference backend, no persistence.

use std::sync::Arc;

use super::local::{Durable, Persist, TableStore};
use super::table::{Changes, Table};
use super::StoreError;
use crate::core::queue::Policies;

/// Tasks live in a [`Table`]; nothing is kept beyond the process.
pub type MemoryStore = TableStore<Volatile>;

/// Keeps nothing: changes are never even recorded.
pub struct Volatile;

impl MemoryStore {
    pub fn new(policies: Arc<Policies>) -> Self {
        TableStore::with(Table::new(policies, Volatile::TRACKS_CHANGES), Volatile)
    }
}

impl Persist for Volatile {
    const TRACKS_CHANGES: bool = false;

    fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn submit(&self, _changes: Changes) -> Result<Durable, StoreError> {
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    fn healthy(&self) -> bool {
        true
    }

    fn commits(&self) -> Option<u64> {
        None
    }
}
