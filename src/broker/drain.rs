//! What a graceful shutdown waits for: leases handed to unary workers and not
//! yet settled, and open worker streams.
//!
//! A stream's session knows what it holds and gives it back itself; a unary
//! worker's leases are only known here. While the broker drains, workers keep
//! settling over their open connections; the drain is over when nothing is
//! held and no stream is open, or when the grace runs out, and then whatever
//! unary workers still hold goes back in one batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::join_all;
use tokio::sync::Notify;

use super::Broker;
use crate::core::task::{Task, TaskId};
use crate::core::Millis;

#[derive(Default)]
pub(super) struct Drain {
    /// Leases handed out by unary Lease calls and not yet settled through
    /// this broker: task -> (lease id, deadline, queue). An entry whose
    /// deadline passed is dropped (the lease is gone anyway); one settled
    /// through another replica stays until then. The queue lets a
    /// settlement's permission check skip a store read.
    held: Mutex<HashMap<TaskId, Held>>,
    /// Open worker streams.
    sessions: AtomicUsize,
    /// Wakes [`Broker::drained`] when either goes down.
    changed: Notify,
}

/// An open stream, counted until dropped.
pub(crate) struct OpenSession(Arc<super::Inner>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.drain.sessions.fetch_sub(1, Ordering::AcqRel);
        self.0.drain.changed.notify_waiters();
    }
}

/// A lease held by a unary worker: (lease id, deadline, the task's queue).
type Held = (u64, Millis, Arc<str>);

impl Drain {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records leases a unary Lease handed out.
    pub(super) fn hold(&self, tasks: &[Task]) {
        if tasks.is_empty() {
            return;
        }
        let mut held = self.held();
        let mut queue: Option<Arc<str>> = None;
        for t in tasks {
            if let Some(lease) = &t.lease {
                let q = match &queue {
                    Some(q) if **q == *t.queue => q.clone(),
                    _ => queue.insert(Arc::from(t.queue.as_str())).clone(),
                };
                held.insert(t.id, (lease.id, lease.expire_time, q));
            }
        }
    }

    /// The queue of the task `id` if this broker handed out `lease` on it.
    pub(super) fn queue_of(&self, id: TaskId, lease: u64) -> Option<Arc<str>> {
        self.held().get(&id).filter(|(l, _, _)| *l == lease).map(|(_, _, q)| q.clone())
    }

    /// The lease `(id, lease)` ended (settled, or found not held).
    pub(super) fn ended(&self, id: TaskId, lease: u64) {
        let mut held = self.held();
        if held.get(&id).is_some_and(|(l, _, _)| *l == lease) {
            held.remove(&id);
            if held.is_empty() {
                self.changed.notify_waiters();
            }
        }
    }

    /// The lease `(id, lease)` now runs until `deadline`.
    pub(super) fn extended(&self, id: TaskId, lease: u64, deadline: Millis) {
        if let Some(entry) = self.held().get_mut(&id).filter(|(l, _, _)| *l == lease) {
            entry.1 = deadline;
        }
    }

    /// Forgets leases whose deadline is at or before `now`.
    pub(super) fn expire(&self, now: Millis) {
        let mut held = self.held();
        let before = held.len();
        held.retain(|_, (_, deadline, _)| *deadline > now);
        if before > 0 && held.is_empty() {
            self.changed.notify_waiters();
        }
    }

    fn idle(&self, now: Millis) -> bool {
        self.expire(now);
        self.sessions.load(Ordering::Acquire) == 0 && self.held().is_empty()
    }
}

impl Broker {
    /// Counts an open worker stream until the returned guard is dropped.
    /// Worker streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner.drain.sessions.load(Ordering::Acquire)
    }

    pub(crate) fn open_session(&self) -> OpenSession {
        self.inner.drain.sessions.fetch_add(1, Ordering::AcqRel);
        OpenSession(self.inner.clone())
    }

    /// Returns once no worker stream is open and no lease handed to a unary
    /// worker is still held (the shutdown waits for it, within its grace).
    pub async fn drained(&self) {
        loop {
            let changed = self.inner.drain.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.inner.drain.idle(self.now()) {
                return;
            }
            let next = self.inner.drain.held().values().map(|(_, d, _)| *d).min();
            let expiry = async {
                match next {
                    Some(deadline) => {
                        let wait = deadline.saturating_sub(self.now());
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changed => {}
                _ = expiry => {}
            }
        }
    }

    /// Gives back at once every lease unary workers still hold, all together
    /// (a durable store commits them in one go); returns how many went back.
    pub async fn release_held(&self) -> usize {
        let held: Vec<_> = self.inner.drain.held().drain().collect();
        let released = join_all(held.into_iter().map(|(id, (lease, _, _))| async move {
            self.release(id, lease, "the broker shut down before the worker settled").await.is_ok()
        }))
        .await;
        released.into_iter().filter(|ok| *ok).count()
    }
}
