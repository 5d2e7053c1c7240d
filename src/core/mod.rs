//! The pure domain: what a task is, how tasks are ordered, routed, retried and
//! leased, and how a worker picks among queues.
//!
//! Nothing here knows about gRPC, storage engines, sockets or the wall clock:
//! every function that depends on time takes `now` (milliseconds since the Unix
//! epoch) as a parameter, so it is tested directly and deterministically.

pub mod access;
pub mod budget;
pub mod clock;
pub mod dependency;
pub mod flow;
pub mod lease;
pub mod priority;
pub mod queue;
pub mod retry;
pub mod routing;
pub mod scaler;
pub mod schedule;
pub mod select;
pub mod stats;
pub mod task;
pub mod trace;
pub mod transition;

/// Milliseconds since the Unix epoch: the one time unit of the core.
pub type Millis = u64;

/// Highest task priority (lowest is 0).
pub const MAX_PRIORITY: u8 = 9;

/// The latest time a client may name: 10000-01-01T00:00:00Z. Every time the
/// broker computes stays far below `Millis::MAX`.
pub const MAX_TIME: Millis = 253_402_300_800_000;

/// `d` in milliseconds, saturating: `Duration::as_millis` is a `u128`, and a
/// plain `as` cast of it wraps (18446744073709552 s would become 384 ms).
pub fn millis(d: std::time::Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}
