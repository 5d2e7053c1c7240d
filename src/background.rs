//! The background loops.
//!
//! The timer loop returns expired leases, promotes due scheduled tasks and
//! purges finished ones past retention. It sleeps until the store's
//! earliest timer (at most [`MAX_SLEEP`]) and is woken early when the
//! broker creates an earlier one.
//!
//! The schedule loop fires periodic schedules (see
//! [`crate::broker::schedules`]) every [`SCHEDULE_TICK`], and declares the
//! config's schedules again whenever a reload changes them.

use std::time::Duration;

use tokio::sync::watch;

use crate::broker::Broker;
use crate::core::schedule::Schedule;

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

/// How often the schedule loop looks for due times: due times are whole
/// seconds (`every`) or minutes (`cron`), so a run starts at most this late.
pub const SCHEDULE_TICK: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true: declares the config's schedules
/// (`declared`'s value, again on each change) and fires what is due.
pub async fn schedule_loop(
    broker: Broker,
    mut declared: watch::Receiver<Vec<Schedule>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The current value was declared at start-up; later ones on change.
    declared.mark_unchanged();
    let mut pending: Option<Vec<Schedule>> = None;
    loop {
        if let Some(schedules) = pending.take() {
            if let Err(e) = broker.declare_schedules(&schedules).await {
                crate::telemetry::storage_failure("declaring the config's schedules (retrying)", &e);
                pending = Some(schedules);
            }
        }
        if let Err(e) = broker.fire_schedules().await {
            crate::telemetry::storage_failure("a schedule pass (retrying)", &e);
        }
        tokio::select! {
            _ = tokio::time::sleep(SCHEDULE_TICK) => {}
            changed = declared.changed() => {
                if changed.is_ok() {
                    pending = Some(declared.borrow_and_update().clone());
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
