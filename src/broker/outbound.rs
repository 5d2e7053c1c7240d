//! A worker stream's outbound queue, bounded in bytes rather than in events:
//! a session waits for room before it sends, and the room comes back as the
//! transport takes each event (which it does only as fast as the client
//! reads, HTTP/2 flow control holding the rest).
//!
//! So a client that stops reading holds at most `limit` bytes here (one
//! event larger than the limit goes alone), and a session that waits too
//! long for room knows its client stopped reading.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::session::Event;
use super::BrokerError;
use crate::core::budget;

/// How worker streams are bounded (from the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Most bytes of events waiting for one stream's client to read them.
    pub outbound_bytes: usize,
    /// How long a session waits for room before it ends the stream.
    pub stall_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self { outbound_bytes: 2 << 20, stall_timeout: Duration::from_secs(60) }
    }
}

/// An event on its way, holding its room until the transport takes it.
struct Queued {
    item: Result<Event, BrokerError>,
    _room: Option<OwnedSemaphorePermit>,
}

/// The session's end.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    /// Room of the whole queue, in bytes (a permit per byte, as `u32`).
    limit: u32,
}

/// Room for one event, taken from the queue's budget.
pub struct Room(OwnedSemaphorePermit);

/// The transport went away.
#[derive(Debug)]
pub struct Closed;

/// The transport's end: the events, each giving its room back when taken.
pub struct Pending {
    rx: mpsc::UnboundedReceiver<Queued>,
}

/// A queue of at most `limit` bytes of events.
pub fn channel(limit: usize) -> (Outbound, Pending) {
    let limit = u32::try_from(limit).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32).max(1);
    let (tx, rx) = mpsc::unbounded_channel();
    (Outbound { tx, room: Arc::new(Semaphore::new(limit as usize)), limit }, Pending { rx })
}

impl Outbound {
    fn permits(&self, bytes: usize) -> u32 {
        u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.limit)
    }

    /// Room for `event` if there is some now.
    pub fn try_room(&self, event: &Event) -> Option<Room> {
        self.room.clone().try_acquire_many_owned(self.permits(size(event))).ok().map(Room)
    }

    /// Waits until there is room for `event` (the client read enough).
    pub async fn room(&self, event: &Event) -> Result<Room, Closed> {
        let permits = self.permits(size(event));
        self.room.clone().acquire_many_owned(permits).await.map(Room).map_err(|_| Closed)
    }

    pub fn send(&self, room: Room, event: Event) -> Result<(), Closed> {
        self.tx.send(Queued { item: Ok(event), _room: Some(room.0) }).map_err(|_| Closed)
    }

    /// Ends the stream with `error` (one message, outside the budget).
    pub fn fail(&self, error: BrokerError) {
        let _ = self.tx.send(Queued { item: Err(error), _room: None });
    }

    /// Resolves when the transport went away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl Stream for Pending {
    type Item = Result<Event, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // The room goes back here, as the transport takes the event.
        self.rx.poll_recv(cx).map(|q| q.map(|q| q.item))
    }
}

/// Upper bound of an event's encoded size.
fn size(event: &Event) -> usize {
    const SMALL: usize = 128;
    match event {
        Event::Task(t) => budget::task_bytes_of(t) + t.last_error.len() + t.result.len() + 12,
        Event::Settled { outcome: Err(e), .. } => SMALL + 2 * e.to_string().len(),
        Event::Settled { .. } | Event::LeaseLost(_) | Event::Draining => SMALL,
    }
}
