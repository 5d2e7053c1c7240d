//! The task state machine: every decision about where a task goes next, as
//! pure functions of the facts a store reads under its lock (or inside its
//! Lua script) and the policy the broker resolved.
//!
//! Stores *apply* these outcomes; they do not decide. The table
//! (`store/table.rs`) calls them directly; each Redis script that must decide
//! the same thing in Lua names the function it mirrors (`-- mirrors
//! core::transition::on_nack`), and `tests/differential.rs` replays random
//! operation sequences against every store to keep the copies equal.
//!
//! ```text
//!  SCHEDULED --due--> READY --lease--> LEASED --ack--> SUCCEEDED
//!                       ^                |  \--nack / expiry, attempts left--> READY or SCHEDULED
//!                       |                \--nack(no_retry) / last attempt----> DEAD
//!  WAITING / SCHEDULED / READY / LEASED --cancel--> CANCELED
//! ```
//!
//! WAITING (dependencies) and deadlines are decided in [`super::dependency`].

use super::retry::Backoff;
use super::task::TaskState;
use super::Millis;

/// Whether a delivery may be followed by another one: `attempt` counts
/// deliveries so far, including the current one.
pub fn attempts_left(attempt: u32, max_attempts: u32) -> bool {
    attempt < max_attempts
}

/// Where a task goes after its holder's Ack: always SUCCEEDED (the lease was
/// checked first with [`super::lease::check`]).
pub fn on_ack() -> TaskState {
    TaskState::Succeeded
}

/// How a Nack asks for the task to be settled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NackRequest<'a> {
    /// Retry after this long instead of the queue's backoff.
    pub retry_after: Option<Millis>,
    /// Go straight to DEAD.
    pub no_retry: bool,
    /// The queue's backoff, resolved by the broker.
    pub backoff: &'a Backoff,
    /// A random number in `[0, 1)` for the backoff's jitter.
    pub jitter_sample: f64,
}

/// Where a nacked (or otherwise failed) delivery goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// READY again at once, at the back of its priority level.
    Now,
    /// SCHEDULED, due at this time.
    At(Millis),
    /// DEAD: no attempts left, or the worker said not to retry.
    Dead,
}

impl Retry {
    /// The state this outcome puts the task in.
    pub fn state(self) -> TaskState {
        match self {
            Retry::Now => TaskState::Ready,
            Retry::At(_) => TaskState::Scheduled,
            Retry::Dead => TaskState::Dead,
        }
    }
}

/// The outcome of a Nack of delivery number `attempt` (of `max_attempts`) at
/// `now`. A due time that would overflow the clock is clamped to the end of
/// time rather than wrapped into the past.
pub fn on_nack(attempt: u32, max_attempts: u32, request: &NackRequest<'_>, now: Millis) -> Retry {
    if request.no_retry || !attempts_left(attempt, max_attempts) {
        return Retry::Dead;
    }
    let delay = request.retry_after.unwrap_or_else(|| request.backoff.delay(attempt, request.jitter_sample));
    match delay {
        0 => Retry::Now,
        delay => Retry::At(now.saturating_add(delay)),
    }
}

/// The outcome of a lease that ran out unsettled: READY again while attempts
/// remain (the lost delivery counted), else DEAD with [`expiry_error`].
pub fn on_expiry(attempt: u32, max_attempts: u32) -> Retry {
    if attempts_left(attempt, max_attempts) {
        Retry::Now
    } else {
        Retry::Dead
    }
}

/// The `last_error` of a task whose last attempt's lease ran out.
/// (`reap.lua` formats the same text.)
pub fn expiry_error(attempt: u32, max_attempts: u32) -> String {
    format!("lease expired on the last attempt ({attempt} of {max_attempts})")
}

/// When a task that finished at `finished` is removed: after its queue's
/// `retention`, but never before the task of the same queue that finished
/// last before it (`last`), so finished tasks leave in the order they
/// finished. A shortened retention (a config reload) therefore takes effect
/// once the tasks finished under the longer one are gone. (Redis gets the
/// same from its finished list, purged from the head in finish order.)
pub fn purge_time(finished: Millis, retention: Millis, last: Option<Millis>) -> Millis {
    finished.saturating_add(retention).max(last.unwrap_or(0))
}

/// What a cancel does to a task in `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Already CANCELED: nothing changes, the call succeeds (idempotent).
    AlreadyCanceled,
    /// SUCCEEDED or DEAD: refused.
    Finished,
    /// Becomes CANCELED; `was_leased` tells the holder's stream its lease is lost
    /// (the lease id is kept, so the holder's next settling call learns why).
    Cancel { was_leased: bool },
}

pub fn on_cancel(state: TaskState) -> Cancel {
    match state {
        TaskState::Canceled => Cancel::AlreadyCanceled,
        TaskState::Succeeded | TaskState::Dead => Cancel::Finished,
        TaskState::Waiting | TaskState::Scheduled | TaskState::Ready | TaskState::Leased => {
            Cancel::Cancel { was_leased: state == TaskState::Leased }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(backoff: &Backoff) -> NackRequest<'_> {
        NackRequest { retry_after: None, no_retry: false, backoff, jitter_sample: 0.5 }
    }

    fn no_jitter() -> Backoff {
        Backoff { jitter: 0.0, ..Backoff::default() }
    }

    #[test]
    fn a_nack_with_attempts_left_backs_off() {
        let b = no_jitter();
        assert_eq!(on_nack(1, 3, &request(&b), 10_000), Retry::At(11_000));
        assert_eq!(on_nack(2, 3, &request(&b), 10_000), Retry::At(12_000));
    }

    #[test]
    fn a_nack_on_the_last_attempt_or_with_no_retry_is_dead() {
        let b = no_jitter();
        assert_eq!(on_nack(3, 3, &request(&b), 0), Retry::Dead);
        assert_eq!(on_nack(1, 3, &NackRequest { no_retry: true, ..request(&b) }, 0), Retry::Dead);
    }

    #[test]
    fn retry_after_overrides_the_backoff_and_zero_is_ready_at_once() {
        let b = no_jitter();
        assert_eq!(on_nack(1, 3, &NackRequest { retry_after: Some(0), ..request(&b) }, 5), Retry::Now);
        assert_eq!(on_nack(1, 3, &NackRequest { retry_after: Some(7), ..request(&b) }, 5), Retry::At(12));
    }

    #[test]
    fn a_huge_retry_after_saturates_instead_of_wrapping() {
        let b = no_jitter();
        let huge = NackRequest { retry_after: Some(u64::MAX), ..request(&b) };
        assert_eq!(on_nack(1, 3, &huge, 5), Retry::At(u64::MAX));
    }

    #[test]
    fn expiry_counts_the_lost_delivery() {
        assert_eq!(on_expiry(1, 2), Retry::Now);
        assert_eq!(on_expiry(2, 2), Retry::Dead);
        assert_eq!(expiry_error(2, 2), "lease expired on the last attempt (2 of 2)");
    }

    #[test]
    fn finished_tasks_leave_in_the_order_they_finished() {
        assert_eq!(purge_time(1_000, 500, None), 1_500);
        assert_eq!(purge_time(1_000, 500, Some(1_200)), 1_500);
        assert_eq!(purge_time(1_000, 500, Some(9_000)), 9_000, "not before the one that finished earlier");
    }

    #[test]
    fn cancel_by_state() {
        assert_eq!(on_cancel(TaskState::Canceled), Cancel::AlreadyCanceled);
        assert_eq!(on_cancel(TaskState::Succeeded), Cancel::Finished);
        assert_eq!(on_cancel(TaskState::Dead), Cancel::Finished);
        assert_eq!(on_cancel(TaskState::Ready), Cancel::Cancel { was_leased: false });
        assert_eq!(on_cancel(TaskState::Waiting), Cancel::Cancel { was_leased: false });
        assert_eq!(on_cancel(TaskState::Leased), Cancel::Cancel { was_leased: true });
    }
}
