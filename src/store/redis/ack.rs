//! Ack: a batch grouped by queue, one `ack.lua` call per queue (the queues
//! concurrently), each item settled alone and answered in the batch's order.

use futures_util::future::join_all;

use super::keys::{self, QueueKeys};
use super::reply::{self, array, bounded, task, unexpected};
use super::{scripts, RedisStore};
use crate::core::lease::LeaseError;
use crate::core::task::{Task, TaskId};
use crate::core::Millis;
use crate::store::{AckItem, StoreError};

impl RedisStore {
    /// Acks `items`; the outer error only when nothing could be tried.
    pub(super) async fn ack_items(
        &self,
        items: Vec<AckItem>,
        now: Millis,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let queues = self.queues_of_many(items.iter().map(|i| i.id)).await?;
        let mut out: Vec<Option<Result<Task, StoreError>>> = (0..items.len()).map(|_| None).collect();
        // (queue, positions, items): the batch split by queue, in order.
        let mut groups: Vec<(String, Vec<usize>, Vec<AckItem>)> = Vec::new();
        for (pos, (item, queue)) in items.into_iter().zip(queues).enumerate() {
            let Some(queue) = queue else {
                out[pos] = Some(Err(StoreError::TaskNotFound(item.id)));
                continue;
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
        for ((_, positions, _), result) in groups.iter().zip(results) {
            match result {
                Ok(tasks) => {
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

    /// Acks `items` (all of `queue`) with one script call.
    async fn ack_queue(
        &self,
        queue: &str,
        items: &[AckItem],
        now: Millis,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let mut inv = self.invocation(&scripts::ACK, &QueueKeys::new(queue), now);
        inv.arg(self.retention(queue));
        for item in items {
            inv.arg(item.id.to_string()).arg(item.lease_id).arg(&item.result);
        }
        let replies = array(self.run(&inv).await?)?;
        if replies.len() != items.len() * 2 {
            return Err(unexpected("an ack reply of the wrong length"));
        }
        Ok(replies
            .chunks(2)
            .zip(items)
            .map(|(pair, item)| match reply::text(&pair[0])? {
                "ok" => task(&pair[1]),
                "not_found" => Err(StoreError::TaskNotFound(item.id)),
                "mismatch" => Err(StoreError::Lease(LeaseError::Mismatch)),
                "canceled" => Err(StoreError::Lease(LeaseError::Canceled)),
                other => Err(unexpected(&format!("ack status {other:?}"))),
            })
            .collect())
    }

    /// The queue of each task (`None`: no such task), from the cache, the
    /// rest read from `tb:index` in one call.
    async fn queues_of_many(
        &self,
        ids: impl Iterator<Item = TaskId>,
    ) -> Result<Vec<Option<String>>, StoreError> {
        let ids: Vec<TaskId> = ids.collect();
        let mut out: Vec<Option<String>> = ids.iter().map(|id| self.queues_of.get(*id)).collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|i| out[*i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(keys::INDEX);
        for i in &missing {
            cmd.arg(ids[*i].to_string());
        }
        let mut conn = self.conn.clone();
        let found: Vec<Option<String>> = bounded(cmd.query_async(&mut conn)).await?;
        if found.len() != missing.len() {
            return Err(unexpected("an HMGET reply of the wrong length"));
        }
        self.queues_of
            .remember(missing.iter().zip(&found).filter_map(|(i, q)| Some((ids[*i], q.as_deref()?))));
        for (i, queue) in missing.into_iter().zip(found) {
            out[i] = queue;
        }
        Ok(out)
    }
}
