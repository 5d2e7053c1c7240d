//! Task watchers (WatchTask): a broadcast channel per watched task, created by
//! the first watcher and removed with the last.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::core::task::{Task, TaskId};

/// States a slow watcher may fall behind by before it re-reads the task.
const BACKLOG: usize = 16;

#[derive(Default)]
pub struct Watchers {
    tasks: Mutex<HashMap<TaskId, broadcast::Sender<Task>>>,
    /// Number of watched tasks: lets every state change skip the lock when zero.
    watched: AtomicUsize,
}

impl Watchers {
    pub fn any(&self) -> bool {
        self.watched.load(Ordering::Acquire) > 0
    }

    pub fn subscribe(&self, id: TaskId) -> broadcast::Receiver<Task> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let tx = tasks.entry(id).or_insert_with(|| broadcast::channel(BACKLOG).0);
        let rx = tx.subscribe();
        self.watched.store(tasks.len(), Ordering::Release);
        rx
    }

    /// Drops the task's channel once nobody listens.
    pub fn release(&self, id: TaskId) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.get(&id).is_some_and(|tx| tx.receiver_count() == 0) {
            tasks.remove(&id);
        }
        self.watched.store(tasks.len(), Ordering::Release);
    }

    /// How many tasks have a channel.
    pub fn len(&self) -> usize {
        self.watched.load(Ordering::Acquire)
    }

    pub fn publish(&self, task: &Task) {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tasks.get(&task.id) {
            let _ = tx.send(task.clone());
        }
    }
}
