//! Events between replicas: the scripts `PUBLISH` on [`keys::EVENTS`]; every
//! `RedisStore` keeps one pub/sub connection subscribed to it and forwards what
//! it hears to the receivers [`crate::store::Store::events`] hands out.
//!
//! Messages (written by `lua/lib.lua`):
//! - `freed`: a lease holding shared semaphore permits ended (any queue's
//!   waiting workers may now take a task);
//! - `ready <queue> <n>`: a script made `n` tasks READY in the queue;
//! - `lost <task id> <lease id> <0|1>`: a lease ended unsettled (expired, or
//!   `1`: the task was canceled while leased);
//! - `changed <task id>`: a watched task changed state (see
//!   [`crate::store::Store::set_watched`]).
//!
//! - `beat <token>`: a listener's heartbeat (below), not an event.
//!
//! A replica also hears its own events; the broker treats them as idempotent
//! (a spurious wake-up, a lost lease it already dropped). Pub/sub delivers at
//! most once: after the subscription comes back from an outage the listener
//! announces every queue as ready, since wake-ups may have been missed.
//!
//! A subscription can die without its connection closing (a partition, a
//! dropped NAT entry: nothing ever resets the socket). So every listener
//! publishes a heartbeat every [`HEARTBEAT`] and, when it has heard nothing at
//! all, not even its own heartbeat, for [`SILENCE`], drops the subscription
//! and subscribes again on a new connection.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSub;
use redis::{AsyncCommands, RedisResult};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::conn::Conn;
use super::keys;
use crate::store::StoreEvent;

/// How long one (re)subscription may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a listener publishes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a listener may hear nothing before it resubscribes.
pub const SILENCE: Duration = Duration::from_secs(6);
/// Bounds of the wait between resubscription attempts.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A new pub/sub connection subscribed to the events channel, on the node
/// `conn` names for it.
pub async fn subscribe(conn: &Conn) -> RedisResult<PubSub> {
    let mut pubsub = conn.pubsub_client().await?.get_async_pubsub().await?;
    pubsub.subscribe(keys::EVENTS).await?;
    Ok(pubsub)
}

/// The event a message stands for, if it is one.
pub fn parse(payload: &[u8]) -> Option<StoreEvent> {
    let text = std::str::from_utf8(payload).ok()?;
    if text == "freed" {
        return Some(StoreEvent::Freed);
    }
    if let Some(rest) = text.strip_prefix("ready ") {
        // Queue names have no spaces; a message without a count (an older
        // broker's) wakes every waiter.
        return Some(match rest.rsplit_once(' ') {
            Some((queue, n)) => StoreEvent::Ready(queue.to_owned(), n.parse().ok()?),
            None => StoreEvent::Ready(rest.to_owned(), 0),
        });
    }
    if text.starts_with("beat ") {
        return None;
    }
    if let Some(id) = text.strip_prefix("changed ") {
        return Some(StoreEvent::Changed(id.parse().ok()?));
    }
    let mut words = text.strip_prefix("lost ")?.split(' ');
    let (id, lease, canceled) = (words.next()?, words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let canceled = match canceled {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    Some(StoreEvent::LeaseLost(id.parse().ok()?, lease.parse().ok()?, canceled))
}

/// The background task that relays events; stops when dropped.
pub struct Listener(JoinHandle<()>);

impl Listener {
    /// Relays from `first` (already subscribed), then resubscribes by itself
    /// whenever the connection drops or goes silent.
    pub fn spawn(first: PubSub, conn: Conn, tx: broadcast::Sender<StoreEvent>) -> Self {
        Self(tokio::spawn(listen(first, conn, tx)))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn listen(first: PubSub, conn: Conn, tx: broadcast::Sender<StoreEvent>) {
    let mut pubsub = Some(first);
    let mut delay = RETRY_MIN;
    let token = rand::random::<u64>();
    loop {
        let Some(current) = pubsub.take() else {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(&conn)).await {
                Ok(Ok(p)) => {
                    tracing::info!("redis event subscription restored");
                    delay = RETRY_MIN;
                    pubsub = Some(p);
                    // Off the loop: events may already be arriving.
                    tokio::spawn(announce_all_queues(conn.clone(), tx.clone()));
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "redis event subscription failed"),
                Err(_) => tracing::debug!("redis event subscription timed out"),
            }
            continue;
        };
        let mut messages = current.into_on_message();
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("redis event subscription lost; resubscribing");
                        break;
                    };
                    heard = tokio::time::Instant::now();
                    let payload = msg.get_payload_bytes();
                    match parse(payload) {
                        // No receiver is fine: nobody is listening yet.
                        Some(event) => drop(tx.send(event)),
                        None if payload.starts_with(b"beat ") => {}
                        None => tracing::debug!("ignored a malformed redis event"),
                    }
                }
                _ = beat.tick() => {
                    if heard.elapsed() >= SILENCE {
                        tracing::warn!(silence = ?heard.elapsed(), "redis event subscription silent; resubscribing");
                        break;
                    }
                    // Off the loop, so a Redis that does not answer cannot
                    // hold up the events already arriving.
                    let mut conn = conn.clone();
                    let beat = format!("beat {token:016x}");
                    tokio::spawn(async move {
                        let publish = conn.publish::<_, _, ()>(keys::EVENTS, beat);
                        let _ = tokio::time::timeout(HEARTBEAT, publish).await;
                    });
                }
            }
        }
    }
}

/// Wakes every queue's waiters: events may have been missed while away.
async fn announce_all_queues(mut conn: Conn, tx: broadcast::Sender<StoreEvent>) {
    let queues: RedisResult<Vec<String>> = conn.smembers(keys::QUEUES).await;
    for queue in queues.unwrap_or_default() {
        let _ = tx.send(StoreEvent::Ready(queue, 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::task::TaskId;

    #[test]
    fn parses_what_the_scripts_publish() {
        let id = TaskId::generate(1_767_225_600_000);
        assert_eq!(parse(b"ready emails 3"), Some(StoreEvent::Ready("emails".into(), 3)));
        assert_eq!(parse(b"ready emails"), Some(StoreEvent::Ready("emails".into(), 0)));
        let lost = format!("lost {id} 42 1");
        assert_eq!(parse(lost.as_bytes()), Some(StoreEvent::LeaseLost(id, 42, true)));
        let lost = format!("lost {id} 7 0");
        assert_eq!(parse(lost.as_bytes()), Some(StoreEvent::LeaseLost(id, 7, false)));
        let changed = format!("changed {id}");
        assert_eq!(parse(changed.as_bytes()), Some(StoreEvent::Changed(id)));
        for bad in
            ["", "ready", "lost x 1 0", "lost 1 2", "changed 1", &format!("lost {id} 7 2"), "beat 00ff"]
        {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
