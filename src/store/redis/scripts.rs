//! The Lua scripts, one per operation, each loaded once and run by its SHA
//! (`EVALSHA`, falling back to loading it when Redis does not know it, as
//! after a restart).
//!
//! Every script is `lua/lib.lua` (shared helpers and the KEYS layout) followed
//! by the operation's own file, which opens with its ARGV and return contract.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($(#[$doc:meta])* $name:ident, $file:literal) => {
        $(#[$doc])*
        pub static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(concat!(include_str!("lua/lib.lua"), include_str!($file))));
    };
}

script!(
    /// Creates a batch of tasks in one queue.
    ENQUEUE,
    "lua/enqueue.lua"
);
/// Records a schedule's due time as fired and enqueues its task, in one
/// step: lib.lua, enqueue.lua as the function `enqueue_main`, fire.lua.
pub static FIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/lib.lua"),
        "local function enqueue_main()\n",
        include_str!("lua/enqueue.lua"),
        "\nend\n",
        include_str!("lua/fire.lua")
    ))
});
script!(
    /// Leases up to N ready tasks of one queue.
    LEASE,
    "lua/lease.lua"
);
script!(
    /// Settles leases of one queue as SUCCEEDED, each alone.
    ACK,
    "lua/ack.lua"
);
script!(
    /// Settles a lease as a failure: retry or DEAD.
    NACK,
    "lua/nack.lua"
);
script!(
    /// Moves a live lease's deadline.
    EXTEND,
    "lua/extend.lua"
);
script!(
    /// Cancels a task that has not finished.
    CANCEL,
    "lua/cancel.lua"
);
script!(
    /// Reads one task.
    GET,
    "lua/get.lua"
);
script!(
    /// Cancels undelivered tasks past their deadline.
    EXPIRE,
    "lua/expire.lua"
);
script!(
    /// Registers a task as depending on one of this queue (workflow.rs).
    DEPEND,
    "lua/depend.lua"
);
script!(
    /// Settles one ended dependency for a WAITING task (workflow.rs).
    RESOLVE,
    "lua/resolve.lua"
);
script!(
    /// A finished task stops reading a dependency of this queue (workflow.rs).
    RELEASE,
    "lua/release.lua"
);
script!(
    /// Counts the watches of a task, so changes to it are announced.
    WATCH,
    "lua/watch.lua"
);
/// Takes permits of one shared semaphore (its own key and slot; no lib.lua).
pub static SEMAPHORE_TAKE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/semaphore_take.lua")));

script!(
    /// How long until a rate-limited queue's bucket has a token.
    THROTTLE,
    "lua/throttle.lua"
);
script!(
    /// Returns expired leases to READY (or DEAD).
    REAP,
    "lua/reap.lua"
);
script!(
    /// Makes due SCHEDULED tasks READY.
    PROMOTE,
    "lua/promote.lua"
);
script!(
    /// Removes finished tasks past their retention.
    PURGE,
    "lua/purge.lua"
);
script!(
    /// Deletes the keys of a queue that holds no task.
    FORGET,
    "lua/forget.lua"
);

script!(
    /// A queue's counts, totals, oldest ready time and pause.
    STATS,
    "lua/stats.lua"
);
script!(
    /// Pauses or resumes delivery from a queue.
    PAUSE,
    "lua/pause.lua"
);
script!(
    /// Removes a queue's tasks in some states.
    PURGE_QUEUE,
    "lua/purge_queue.lua"
);
script!(
    /// Lists a queue's tasks in one state by id.
    LIST,
    "lua/list.lua"
);
script!(
    /// DEAD tasks back to READY.
    REDRIVE,
    "lua/redrive.lua"
);

/// Most tasks one sweep script handles, so no call blocks Redis for long; the
/// caller runs it again while it comes back full.
pub const SWEEP_BATCH: usize = 1000;
