//! Ack: a batch grouped by queue, one `ack.lua` call per queue (the queues
//! concurrently), each item settled alone and answered in the batch's order.

use futures_util::future::join_all;

use super::reply::{self, array, unexpected};
use super::{record, scripts, RedisStore};
use crate::core::lease::LeaseError;
use crate::core::task::Task;
use crate::core::Millis;
use crate::store::{AckItem, StoreError};

impl RedisStore {
    /// Acks `items`; the outer error only when nothing could be tried.
    pub(super) async fn ack_items(
        &self,
        items: Vec<AckItem>,
        now: Millis,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let mut out: Vec<Option<Result<Task, StoreError>>> = (0..items.len()).map(|_| None).collect();
        // (queue, positions, items): the batch split by queue, in order.
        let mut groups: Vec<(String, Vec<usize>, Vec<AckItem>)> = Vec::new();
        for (pos, item) in items.into_iter().enumerate() {
            let queue = match self.queue_of(item.id).await {
                Ok(queue) => queue,
                Err(StoreError::TaskNotFound(id)) => {
                    out[pos] = Some(Err(StoreError::TaskNotFound(id)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match groups.iter_mut().find(|(q, _, _)| *q == queue) {
                Some((_, positions, items)) => {
                    positions.push(pos);
                    items.push(item);
                }
                None => groups.push((queue, vec![pos], vec![item])),
            }
        }
        let calls = groups.iter().map(|(queue, _, items)| self.ack_queue(queue, items, now));
        let results = join_all(calls).await;
        for ((queue, positions, items), result) in groups.iter().zip(results) {
            match result {
                Ok((tasks, events)) => {
                    self.announce_freed(queue, tasks.iter().filter(|t| t.is_ok()).count()).await;
                    // Dependents released (or canceled) before the ack returns.
                    if events {
                        self.deliver(queue, now).await?;
                    }
                    for (item, t) in items.iter().zip(&tasks) {
                        if let Ok(t) = t {
                            self.release_permits(t, item.lease_id).await;
                        }
                    }
                    for (pos, t) in positions.iter().zip(tasks) {
                        out[*pos] = Some(t);
                    }
                }
                Err(e) => {
                    for pos in positions {
                        out[*pos] = Some(Err(e.clone()));
                    }
                }
            }
        }
        Ok(out.into_iter().map(|r| r.unwrap_or_else(|| Err(unexpected("a short ack reply")))).collect())
    }

    /// Acks `items` (all of `queue`) with one script call; also whether
    /// that left events in the queue's outbox (see [`super::workflow`]).
    async fn ack_queue(
        &self,
        queue: &str,
        items: &[AckItem],
        now: Millis,
    ) -> Result<(Vec<Result<Task, StoreError>>, bool), StoreError> {
        let mut inv = self.invocation(&scripts::ACK, queue, now);
        inv.arg(self.retention(queue));
        for item in items {
            inv.arg(item.id.to_string()).arg(item.lease_id).arg(&item.result);
        }
        let mut replies = array(self.run(&inv).await?)?;
        let events = replies.len() == items.len() * 3 + 1;
        if events {
            replies.pop();
        }
        if replies.len() != items.len() * 3 {
            return Err(unexpected("an ack reply of the wrong length"));
        }
        let tasks = replies
            .chunks(3)
            .zip(items)
            .map(|(reply, item)| match reply::text(&reply[0])? {
                "ok" => {
                    let [_, meta, body] = reply else { unreachable!("chunks of three") };
                    let t = record::decode(queue, reply::bytes(meta)?, reply::bytes(body)?, &item.result);
                    t.map_err(reply::corrupt)
                }
                "not_found" => Err(StoreError::TaskNotFound(item.id)),
                "mismatch" => Err(StoreError::Lease(LeaseError::Mismatch)),
                "canceled" => Err(StoreError::Lease(LeaseError::Canceled)),
                other => Err(unexpected(&format!("ack status {other:?}"))),
            })
            .collect();
        Ok((tasks, events))
    }
}
