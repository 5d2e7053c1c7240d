//! "Something changed": a signal for observers of queue depth (the KEDA
//! scaler's StreamIsActive), fired after every change the broker makes or
//! hears of from other replicas. Costs one atomic load when nobody listens.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Activity {
    /// Observers waiting now; the signal is skipped when there are none.
    listeners: AtomicUsize,
    notify: Notify,
}

impl Activity {
    /// Something changed.
    pub fn touch(&self) {
        if self.listeners.load(Ordering::Acquire) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Waits for the next change. The wait counts from its first poll: a
    /// caller that must not miss a change between looking and waiting also
    /// looks again on a timer (the scaler does).
    pub async fn changed(&self) {
        self.listeners.fetch_add(1, Ordering::AcqRel);
        let _guard = Listening(&self.listeners);
        self.notify.notified().await;
    }
}

/// Counts a listener out when its wait ends or is dropped.
struct Listening<'a>(&'a AtomicUsize);

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
