//! The timer loop: returns expired leases, promotes due scheduled tasks and
//! purges finished ones past retention.
//!
//! It sleeps until the store's earliest timer (at most [`MAX_SLEEP`]) and is
//! woken early when the broker creates an earlier one.

use std::time::Duration;

use tokio::sync::watch;

use crate::broker::Broker;

/// Longest sleep between sweeps: a safety net, and the purge granularity.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true.
pub async fn timer_loop(broker: Broker, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = broker.run_timers().await {
            crate::telemetry::storage_failure("a timer sweep (retrying)", &e);
        }
        let now = broker.now();
        let next = broker.next_timer().await.ok().flatten();
        let max = MAX_SLEEP.as_millis() as u64;
        let sleep = next.map_or(max, |t| t.saturating_sub(now).min(max));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(sleep)) => {}
            _ = broker.timers_changed(now + sleep) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
