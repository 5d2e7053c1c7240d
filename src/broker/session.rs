//! A worker stream's session: one spawned task per stream that owns its state
//! (subscription, credit window, held leases) and talks through channels.
//!
//! It pushes tasks while the stream has credit and the queues have ready
//! work, sleeps on queue wake-ups otherwise (no polling), settles what the
//! worker sends, tells the worker about leases it lost, drains on shutdown,
//! and gives back everything it holds the moment the stream ends.
//!
//! What it sends waits in an [`outbound`](super::outbound) queue bounded in
//! bytes. While it waits for room it still follows lost leases and the
//! broker's phase; a client that reads nothing for `stall_timeout` while
//! events wait has its stream ended and its leases given back at once.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::{join_all, select_all, FutureExt};
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio::sync::watch;

mod settle;

use self::settle::{authorize, settle_all};
use super::outbound;
pub use super::outbound::{channel as outbound, Outbound, Pending, StreamLimits};
use super::validate::{Subscription, MAX_BATCH, MAX_IN_FLIGHT};
use super::{Broker, BrokerError, LostLease, LostReason, Phase};
use crate::core::access::Access;
use crate::core::lease::LeaseId;
use crate::core::select::Selector;
use crate::core::task::{Task, TaskId, TaskState};
use crate::core::Millis;
use crate::store::LeaseSpec;

/// How long to wait before leasing again after the store failed.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Most commands handled before pushing again.
const COMMAND_BATCH: usize = 256;

/// Which settling call a [`Event::Settled`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettleOp {
    Ack,
    Nack,
    Extend,
}

/// What the worker sends after subscribing.
#[derive(Debug)]
pub enum Command {
    Settle(Settlement),
    Credit(u32),
    /// The worker is stopping: push nothing more.
    Drain,
    /// A protocol violation: ends the stream with this error.
    Violation(BrokerError),
}

/// A settling message: each gets a [`Event::Settled`] answer.
#[derive(Debug)]
pub enum Settlement {
    Ack {
        id: TaskId,
        lease: LeaseId,
        result: Vec<u8>,
    },
    Nack {
        id: TaskId,
        lease: LeaseId,
        error: String,
        retry_after: Option<Duration>,
        no_retry: bool,
    },
    Extend {
        id: TaskId,
        lease: LeaseId,
        extend_by: Option<Duration>,
    },
    /// A settling message that could not be read: answered with its error.
    Invalid {
        task_id: String,
        lease_id: String,
        op: SettleOp,
        error: BrokerError,
    },
}

/// What the session sends to the worker.
#[derive(Debug)]
pub enum Event {
    Task(Box<Task>),
    Settled {
        task_id: String,
        lease_id: String,
        op: SettleOp,
        /// The new deadline (extend), or the error.
        outcome: Result<Option<Millis>, BrokerError>,
    },
    LeaseLost(LostLease),
    Draining,
}

struct Session {
    broker: Broker,
    selector: Selector,
    lease_duration: Option<Millis>,
    worker_id: String,
    /// What the stream's caller may do.
    access: Access,
    /// Most unsettled tasks this stream may hold.
    window: usize,
    /// Task -> lease id of every task pushed and not yet settled or lost.
    held: HashMap<TaskId, u64>,
    /// No more pushes: the broker is shutting down or the worker asked.
    draining: bool,
    out: Outbound,
    lost: broadcast::Receiver<LostLease>,
    phase: watch::Receiver<Phase>,
    /// How long a send may wait for the client to read before the stream ends.
    stall_timeout: Duration,
    /// What came up while a send waited, to be sent next: lost leases, the
    /// broker's drain, a lagged lost-lease feed to check against the store.
    owed: Owed,
    /// The stream ended because its client stopped reading.
    stalled: bool,
    /// The worker was told the broker drains.
    told_draining: bool,
}

/// What a session owes the worker after waiting for room.
#[derive(Default)]
struct Owed {
    lost: Vec<LostLease>,
    draining: bool,
    recheck: bool,
}

/// The client went away (or the stream must end): stop the session.
struct Gone;

/// Runs a stream's session until the worker goes away or the broker stops.
pub async fn run(
    broker: Broker,
    sub: Subscription,
    mut inbound: impl Stream<Item = Command> + Unpin,
    out: Outbound,
) {
    let _open = broker.open_session();
    let notifies = broker.queue_notifies(&sub.queues);
    let mut s = Session {
        selector: Selector::new(sub.queues, sub.mode),
        lease_duration: sub.lease_duration,
        worker_id: sub.worker_id,
        access: sub.access,
        window: sub.max_in_flight,
        held: HashMap::new(),
        draining: false,
        lost: broker.lost_leases(),
        phase: broker.phase(),
        stall_timeout: broker.stream_limits().stall_timeout,
        owed: Owed::default(),
        stalled: false,
        told_draining: false,
        broker,
        out,
    };
    let mut retry_at: Option<tokio::time::Instant> = None;
    let outcome: Result<(), Gone> = async {
        loop {
            s.on_phase()?;
            s.pay_owed().await?;
            let mut woken: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
            let mut idle = false;
            if !s.draining && retry_at.is_none() && s.held.len() < s.window {
                for w in &mut woken {
                    w.as_mut().enable();
                }
                match s.push().await? {
                    Some(0) => idle = true,
                    Some(_) => {}
                    None => retry_at = Some(tokio::time::Instant::now() + STORE_RETRY),
                }
                if s.held.len() < s.window && !idle && retry_at.is_none() {
                    continue;
                }
            }
            // Stay registered for wake-ups only while waiting for them: a
            // registered waiter that is not polled would hold on to a
            // wake-up meant for another idle stream.
            let wake = async move {
                if idle {
                    select_all(woken).await;
                } else {
                    drop(woken);
                    std::future::pending::<()>().await;
                }
            };
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = inbound.next() => {
                    let Some(cmd) = cmd else { return Err(Gone) };
                    // Take what else has arrived, and settle it all at once.
                    let mut batch = vec![cmd];
                    let mut ended = false;
                    while batch.len() < COMMAND_BATCH {
                        match inbound.next().now_or_never() {
                            Some(Some(cmd)) => batch.push(cmd),
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    s.handle(batch).await?;
                    if ended {
                        return Err(Gone);
                    }
                }
                _ = wake => {}
                _ = retry => retry_at = None,
                ev = s.lost.recv() => s.on_lost(ev)?,
                _ = s.phase.changed() => s.on_phase()?,
                _ = s.out.closed() => return Err(Gone),
            }
        }
    }
    .await;
    debug_assert!(outcome.is_err());
    if s.stalled {
        let why = format!("worker stream not read for {:?}: its tasks were given back", s.stall_timeout);
        tracing::warn!(worker_id = %s.worker_id, held = s.held.len(), "{why}");
        s.release_all("worker stream stalled (not read) before settling").await;
        s.out.fail(BrokerError::StreamStalled(why));
    } else {
        s.release_all("worker stream closed before settling").await;
    }
}

impl Session {
    /// Sends `event` once the client has read enough to make room for it;
    /// meanwhile follows lost leases and the broker's phase. Ends the stream
    /// if the client reads nothing for `stall_timeout`.
    async fn send(&mut self, event: Event) -> Result<(), Gone> {
        let room = match self.out.try_room(&event) {
            Some(room) => room,
            None => self.wait_for_room(&event).await?,
        };
        self.out.send(room, event).map_err(|_| Gone)
    }

    async fn wait_for_room(&mut self, event: &Event) -> Result<outbound::Room, Gone> {
        let out = self.out.clone();
        let room = out.room(event);
        let stall = tokio::time::sleep(self.stall_timeout);
        tokio::pin!(room, stall);
        loop {
            tokio::select! {
                room = &mut room => return room.map_err(|_| Gone),
                _ = &mut stall => {
                    self.stalled = true;
                    return Err(Gone);
                }
                ev = self.lost.recv() => self.on_lost(ev)?,
                _ = self.phase.changed() => self.on_phase()?,
                _ = out.closed() => return Err(Gone),
            }
        }
    }

    /// Sends what came up while a send waited.
    async fn pay_owed(&mut self) -> Result<(), Gone> {
        let owed = std::mem::take(&mut self.owed);
        if owed.draining {
            self.send(Event::Draining).await?;
        }
        for lost in owed.lost {
            self.send(Event::LeaseLost(lost)).await?;
        }
        if owed.recheck {
            self.recheck().await?;
        }
        Ok(())
    }

    /// Follows the broker's phase: draining pushes nothing more (the worker
    /// is told once), stopped ends the stream.
    fn on_phase(&mut self) -> Result<(), Gone> {
        let now = *self.phase.borrow_and_update();
        if now == Phase::Stopped {
            return Err(Gone);
        }
        if now != Phase::Serving {
            self.draining = true;
            if !self.told_draining {
                self.told_draining = true;
                self.owed.draining = true;
            }
        }
        Ok(())
    }

    /// Leases and pushes as many tasks as the window allows; returns how
    /// many, or `None` when the store failed (the caller retries later).
    async fn push(&mut self) -> Result<Option<usize>, Gone> {
        let room = (self.window - self.held.len()).min(MAX_BATCH);
        let spec = LeaseSpec {
            queues: self.selector.plan(room),
            max_tasks: room,
            max_bytes: crate::store::LEASE_RESPONSE_BYTES,
            lease_duration: self.lease_duration,
            worker_id: self.worker_id.clone(),
        };
        let tasks = match self.broker.lease_now(spec).await {
            Ok(tasks) => tasks,
            Err(e) => {
                // Every stream retries each second during an outage: one
                // process-wide, rate-limited line says so for all of them.
                crate::telemetry::storage_failure("a worker stream's lease (retrying)", &e);
                return Ok(None);
            }
        };
        let n = tasks.len();
        // Record every lease before sending anything: if the client is gone,
        // `release_all` must give back the whole batch.
        let mut lost = Vec::new();
        for task in &tasks {
            if let Some(lease) = &task.lease {
                if let Some(old) = self.held.insert(task.id, lease.id) {
                    // The task expired and came back to this same stream before
                    // the lost-lease event did: tell the worker first.
                    lost.push(LostLease { task_id: task.id, lease_id: old, reason: LostReason::Expired });
                }
            }
        }
        for l in lost {
            self.send(Event::LeaseLost(l)).await?;
        }
        for task in tasks {
            self.send(Event::Task(Box::new(task))).await?;
        }
        Ok(Some(n))
    }

    /// Handles commands in arrival order. Settlements run concurrently, so a
    /// durable store commits a batch of acks together; each store operation is
    /// applied when first polled, so they still apply in arrival order, and
    /// confirmations go out in that order.
    async fn handle(&mut self, batch: Vec<Command>) -> Result<(), Gone> {
        let mut settlements = Vec::new();
        let mut violation = None;
        for cmd in batch {
            match cmd {
                Command::Credit(n) => self.window = (self.window + n as usize).min(MAX_IN_FLIGHT),
                Command::Drain => self.draining = true,
                Command::Violation(e) => {
                    violation = Some(e);
                    break;
                }
                Command::Settle(s) => settlements.push(s),
            }
        }
        let settlements = authorize(&self.broker, &self.access, &self.held, settlements).await;
        let settled = settle_all(&self.broker, settlements).await;
        for (task_id, lease_id, op, outcome) in settled {
            self.forget_if_settled(&task_id, &lease_id, op, &outcome);
            self.send(Event::Settled { task_id, lease_id, op, outcome }).await?;
        }
        if let Some(e) = violation {
            self.out.fail(e);
            return Err(Gone);
        }
        Ok(())
    }

    /// A held task leaves the window once settled, or once its lease is gone.
    fn forget_if_settled(
        &mut self,
        task_id: &str,
        lease_id: &str,
        op: SettleOp,
        outcome: &Result<Option<Millis>, BrokerError>,
    ) {
        let (Ok(id), Ok(lease)) = (task_id.parse::<TaskId>(), lease_id.parse::<u64>()) else { return };
        if self.held.get(&id) != Some(&lease) {
            return;
        }
        let gone = match outcome {
            Ok(_) => op != SettleOp::Extend,
            Err(BrokerError::LeaseMismatch | BrokerError::TaskCanceled | BrokerError::TaskNotFound(_)) => {
                true
            }
            Err(_) => false,
        };
        if gone {
            self.held.remove(&id);
        }
    }

    /// A lost-lease event: one of ours is owed to the worker (sent by
    /// [`Session::pay_owed`], so this never waits for room).
    fn on_lost(&mut self, ev: Result<LostLease, broadcast::error::RecvError>) -> Result<(), Gone> {
        match ev {
            Ok(lost) => {
                if self.held.get(&lost.task_id) == Some(&lost.lease_id) {
                    self.held.remove(&lost.task_id);
                    self.owed.lost.push(lost);
                }
                Ok(())
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.owed.recheck = true;
                Ok(())
            }
            Err(broadcast::error::RecvError::Closed) => Err(Gone),
        }
    }

    /// After missing lost-lease events: checks every held lease against the store.
    async fn recheck(&mut self) -> Result<(), Gone> {
        let held: Vec<_> = self.held.iter().map(|(id, lease)| (*id, *lease)).collect();
        for (task_id, lease_id) in held {
            let Ok(task) = self.broker.get(task_id).await else { continue };
            let live =
                task.state == TaskState::Leased && task.lease.as_ref().is_some_and(|l| l.id == lease_id);
            if !live {
                self.held.remove(&task_id);
                let reason = if task.state == TaskState::Canceled {
                    LostReason::Canceled
                } else {
                    LostReason::Expired
                };
                self.send(Event::LeaseLost(LostLease { task_id, lease_id, reason })).await?;
            }
        }
        Ok(())
    }

    /// The stream ended: every held task goes back at once, all together (a
    /// durable store commits them in one go).
    async fn release_all(&mut self, why: &str) {
        let broker = &self.broker;
        join_all(self.held.drain().map(|(task_id, lease_id)| async move {
            if let Err(e) = broker.release(task_id, lease_id, why).await {
                tracing::debug!(%task_id, error = %e, "release after stream end");
            }
        }))
        .await;
    }
}
