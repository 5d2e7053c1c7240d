//! The pure domain: what a task is, how tasks are ordered, routed, retried and
//! leased, and how a worker picks among queues.
//!
//! Nothing here knows about gRPC, storage engines, sockets or the wall clock:
//! every function that depends on time takes `now` (milliseconds since the Unix
//! epoch) as a parameter, so it is tested directly and deterministically.

pub mod budget;
pub mod clock;
pub mod lease;
pub mod priority;
pub mod queue;
pub mod retry;
pub mod routing;
pub mod select;
pub mod task;
pub mod trace;
pub mod transition;

/// Milliseconds since the Unix epoch: the one time unit of the core.
pub type Millis = u64;

/// Highest task priority (lowest is 0).
pub const MAX_PRIORITY: u8 = 9;
