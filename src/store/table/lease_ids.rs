//! Lease ids: they increase forever, so a lease id handed out before (even
//! before a crash) never becomes valid again.
//!
//! A lease need not be durable before it is answered (a delivery a crash
//! forgets is delivered again), but its id must never repeat. So ids are
//! reserved in blocks of [`BLOCK`]: the persisted high-water mark is the end
//! of the block, and only the lease that starts a new block waits for its
//! commit ([`LeaseIds::take_reserved`]). After a restart the counter starts
//! at the persisted mark, past every id handed out.

/// Lease ids reserved by one durable write.
pub const BLOCK: u64 = 4096;

#[derive(Debug)]
pub struct LeaseIds {
    next: u64,
    /// Ids below this may have been handed out: what is persisted.
    reserved: u64,
    /// A new block was reserved since [`LeaseIds::take_reserved`].
    reserved_now: bool,
}

impl Default for LeaseIds {
    fn default() -> Self {
        Self { next: 1, reserved: 0, reserved_now: false }
    }
}

impl LeaseIds {
    /// The next id, reserving a new block when this one is used up.
    pub fn take(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        if self.next > self.reserved {
            self.reserved = self.next + BLOCK;
            self.reserved_now = true;
        }
        id
    }

    /// Ids up to and including `id` were handed out (read back from disk).
    pub fn seen(&mut self, id: u64) {
        self.next = self.next.max(id + 1);
    }

    /// Ids below `mark` may have been handed out (a persisted mark).
    pub fn restore(&mut self, mark: u64) {
        self.next = self.next.max(mark);
    }

    /// The mark to persist: no id at or above it was handed out.
    pub fn mark(&self) -> u64 {
        self.reserved.max(self.next)
    }

    /// Whether a lease since the last call reserved a new block: its answer
    /// must then wait for its own commit (which carries the new mark).
    pub fn take_reserved(&mut self) -> bool {
        std::mem::take(&mut self.reserved_now)
    }

    /// Carries on after `stale`'s ids (a table reloaded from disk replaces
    /// it); the next lease reserves a block again, as the reload may not
    /// hold `stale`'s reservation.
    pub fn carry_over(&mut self, stale: &LeaseIds) {
        self.next = self.next.max(stale.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_lease_of_each_block_waits_and_the_mark_covers_every_id() {
        let mut ids = LeaseIds::default();
        let mut waited = 0;
        for _ in 0..3 * BLOCK {
            let id = ids.take();
            assert!(id < ids.mark(), "id {id} at or above the persisted mark {}", ids.mark());
            waited += ids.take_reserved() as u64;
        }
        assert_eq!(waited, 3);
    }

    #[test]
    fn after_a_restart_at_the_mark_no_id_repeats() {
        let mut before = LeaseIds::default();
        let handed: Vec<u64> = (0..10).map(|_| before.take()).collect();
        let mut after = LeaseIds::default();
        after.restore(before.mark());
        let next = after.take();
        assert!(handed.iter().all(|&id| id < next), "{next} repeats one of {handed:?}");
        assert!(after.take_reserved(), "the first lease after a restart reserves a block");
    }
}
