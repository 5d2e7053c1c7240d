//! A session's settlements: a batch of acks, nacks and extends from one
//! worker, settled in arrival order with all acks in one store operation.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use futures_util::future::join_all;

use super::{SettleOp, Settlement};
use crate::broker::{Broker, BrokerError};
use crate::core::access::{Access, Operation};
use crate::core::task::TaskId;
use crate::core::Millis;

/// What a settlement came to: `(task, lease, operation, outcome)`.
pub(super) type Settled = (String, String, SettleOp, Result<Option<Millis>, BrokerError>);
/// Settlements under way, each answering for its arrival slots.
type SettleWork = Pin<Box<dyn Future<Output = Vec<(usize, Settled)>> + Send>>;

/// Checks settlements against the caller's grants: those of tasks this
/// stream holds under the named lease pass (the subscription was checked),
/// others are looked up unless the caller may consume every queue; a refused
/// one is answered with its PERMISSION_DENIED and settles nothing.
pub(super) async fn authorize(
    broker: &Broker,
    access: &Access,
    held: &HashMap<TaskId, u64>,
    settlements: Vec<Settlement>,
) -> Vec<Settlement> {
    if access.allows_everywhere(Operation::Settle) {
        return settlements;
    }
    let mut out = Vec::with_capacity(settlements.len());
    for s in settlements {
        let (id, lease, op) = match &s {
            Settlement::Ack { id, lease, .. } => (*id, *lease, SettleOp::Ack),
            Settlement::Nack { id, lease, .. } => (*id, *lease, SettleOp::Nack),
            Settlement::Extend { id, lease, .. } => (*id, *lease, SettleOp::Extend),
            Settlement::Invalid { .. } => {
                out.push(s);
                continue;
            }
        };
        if held.get(&id) == Some(&lease.0) {
            out.push(s);
            continue;
        }
        match broker.authorize_settle(access, id, lease.0).await {
            Ok(()) => out.push(s),
            Err(error) => out.push(Settlement::Invalid {
                task_id: id.to_string(),
                lease_id: lease.to_string(),
                op,
                error,
            }),
        }
    }
    out
}

/// Settles a batch in arrival order: all acks in one store operation (one
/// commit, one script per queue), the rest concurrently, so a durable store
/// commits them together. Each store operation applies when first polled,
/// and the acks' operation is placed at the first ack, so per task the
/// operations apply in the order they arrived.
pub(super) async fn settle_all(broker: &Broker, settlements: Vec<Settlement>) -> Vec<Settled> {
    let n = settlements.len();
    let mut acks = Vec::new();
    // Arrival slot of each ack, and where in `work` the acks' operation goes.
    let mut ack_slots = Vec::new();
    let mut acks_at = None;
    let mut work: Vec<SettleWork> = Vec::new();
    for (slot, s) in settlements.into_iter().enumerate() {
        match s {
            Settlement::Ack { id, lease, result } => {
                if acks_at.is_none() {
                    acks_at = Some(work.len());
                    work.push(Box::pin(std::future::ready(Vec::new())));
                }
                ack_slots.push(slot);
                acks.push((id, lease, result));
            }
            other => {
                let broker = broker.clone();
                work.push(Box::pin(async move { vec![(slot, settle(broker, other).await)] }));
            }
        }
    }
    if let Some(at) = acks_at {
        let broker = broker.clone();
        let slots = ack_slots;
        work[at] = Box::pin(async move {
            let ids: Vec<_> = acks.iter().map(|(t, l, _)| (t.to_string(), l.to_string())).collect();
            let outcomes = broker.ack_many(acks).await;
            slots
                .into_iter()
                .zip(ids)
                .zip(outcomes)
                .map(|((slot, (t, l)), o)| (slot, (t, l, SettleOp::Ack, o.map(|_| None))))
                .collect()
        });
    }
    let mut out: Vec<Option<Settled>> = (0..n).map(|_| None).collect();
    for (slot, settled) in join_all(work).await.into_iter().flatten() {
        out[slot] = Some(settled);
    }
    out.into_iter().flatten().collect()
}

/// One settling command through the broker: `(task, lease, operation, outcome)`.
async fn settle(
    broker: Broker,
    s: Settlement,
) -> (String, String, SettleOp, Result<Option<Millis>, BrokerError>) {
    match s {
        Settlement::Ack { id, lease, result } => {
            let outcome = broker.ack(id, lease, result).await.map(|_| None);
            (id.to_string(), lease.to_string(), SettleOp::Ack, outcome)
        }
        Settlement::Nack { id, lease, error, retry_after, no_retry } => {
            let outcome = broker.nack(id, lease, error, retry_after, no_retry).await.map(|_| None);
            (id.to_string(), lease.to_string(), SettleOp::Nack, outcome)
        }
        Settlement::Extend { id, lease, extend_by } => {
            let outcome = broker.extend(id, lease, extend_by).await.map(Some);
            (id.to_string(), lease.to_string(), SettleOp::Extend, outcome)
        }
        Settlement::Invalid { task_id, lease_id, op, error } => (task_id, lease_id, op, Err(error)),
    }
}
