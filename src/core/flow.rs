//! Flow control's rules: how many tasks may be leased at once (a queue's
//! `max_in_flight`, a `concurrency_key`'s `per_key_max_in_flight`, a shared
//! semaphore's `limit`), how fast a queue may deliver (a token bucket), and
//! the round-robin order across `concurrency_key` groups.
//!
//! The lease is the permit: a store counts a task against every limit while
//! it is LEASED and at no other time, so whatever ends a lease (ack, nack,
//! expiry, cancel, a stream going away) gives the permit back. This module
//! only decides; the stores count. Pure: `now` is passed in.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use super::Millis;

/// Most semaphore names one task may name in its EnqueueRequest.
pub const MAX_TASK_SEMAPHORES: usize = 8;
/// Longest `concurrency_key`, in bytes.
pub const MAX_CONCURRENCY_KEY: usize = 128;

/// How many more may be taken under `limit` (0 = unlimited) with `used` taken.
pub fn room(limit: u32, used: u32) -> u32 {
    if limit == 0 {
        u32::MAX
    } else {
        limit.saturating_sub(used)
    }
}

/// Whether a semaphore name is valid: the same characters as a queue name.
pub fn valid_semaphore_name(name: &str) -> bool {
    super::queue::valid_queue_name(name)
}

/// The semaphore names of a task as one sorted, duplicate-free list.
pub fn normalize_semaphores(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = names.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// A delivery rate: `count` deliveries per `period_ms` (`"R/s"`, `"R/m"`, `"R/h"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub count: u32,
    pub period_ms: u64,
}

/// A rate string that is not `R/s`, `R/m` or `R/h` with a whole `R >= 1`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0:?} is not a rate like \"50/s\", \"100/m\" or \"1000/h\"")]
pub struct BadRate(pub String);

impl FromStr for Rate {
    type Err = BadRate;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRate(s.to_owned());
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let period_ms = match unit.trim() {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(Rate { count, period_ms })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period_ms {
            1_000 => "s",
            60_000 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Rate {
    /// Tokens added per millisecond.
    pub fn per_ms(&self) -> f64 {
        f64::from(self.count) / self.period_ms as f64
    }

    /// The default `rate_burst`: the rate per second, rounded up, at least 1.
    pub fn default_burst(&self) -> u32 {
        ((self.per_ms() * 1_000.0).ceil() as u32).max(1)
    }
}

/// A queue's `rate_limit` with its burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub rate: Rate,
    /// Most tokens the bucket holds (deliveries possible at once after a pause).
    pub burst: u32,
}

/// A token bucket on deliveries: it starts full, refills at the rate up to
/// the burst, and each delivery takes one token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// Tokens held at `at` (fractional: refill is continuous).
    pub tokens: f64,
    /// When `tokens` was last brought up to date.
    pub at: Millis,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(limit: &RateLimit, now: Millis) -> Self {
        Bucket { tokens: f64::from(limit.burst), at: now }
    }

    /// Brings the bucket up to `now` (a clock going back adds nothing).
    pub fn refill(&mut self, limit: &RateLimit, now: Millis) {
        let elapsed = now.saturating_sub(self.at) as f64;
        self.tokens = (self.tokens + elapsed * limit.rate.per_ms()).min(f64::from(limit.burst));
        self.at = self.at.max(now);
    }

    /// Whole tokens available at `now` (after refilling).
    pub fn available(&mut self, limit: &RateLimit, now: Millis) -> u32 {
        self.refill(limit, now);
        // A hair of tolerance: 0.999999... tokens from float steps is one.
        (self.tokens + 1e-9).floor().max(0.0) as u32
    }

    /// Takes `n` tokens (after [`Self::available`] allowed them).
    pub fn take(&mut self, n: u32) {
        self.tokens = (self.tokens - f64::from(n)).max(0.0);
    }

    /// When the bucket next holds a whole token (`now` if it does).
    pub fn next_token(&self, limit: &RateLimit, now: Millis) -> Millis {
        let missing = 1.0 - self.tokens - 1e-9;
        if missing <= 0.0 {
            return now.max(self.at);
        }
        self.at + (missing / limit.rate.per_ms()).ceil() as Millis
    }
}

/// The round-robin turn of a priority level's `concurrency_key` groups: the
/// group served last goes to the back, a group that gets its first task
/// joins at the back, and a group without tasks leaves.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotation<K> {
    order: VecDeque<K>,
}

impl<K> Default for Rotation<K> {
    fn default() -> Self {
        Self { order: VecDeque::new() }
    }
}

impl<K: PartialEq + Copy> Rotation<K> {
    /// Groups in the order they get their turn.
    pub fn iter(&self) -> impl Iterator<Item = K> + '_ {
        self.order.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// A group got its first task: it waits for its turn behind the others.
    pub fn join(&mut self, key: K) {
        self.order.push_back(key);
    }

    /// A group has no more tasks.
    pub fn leave(&mut self, key: K) {
        if let Some(i) = self.order.iter().position(|k| *k == key) {
            self.order.remove(i);
        }
    }

    /// The group at `position` was served: it goes to the back.
    pub fn served(&mut self, position: usize) {
        if position + 1 < self.order.len() {
            if let Some(k) = self.order.remove(position) {
                self.order.push_back(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: &str, burst: Option<u32>) -> RateLimit {
        let rate: Rate = rate.parse().unwrap();
        RateLimit { rate, burst: burst.unwrap_or_else(|| rate.default_burst()) }
    }

    #[test]
    fn rates_parse_in_three_units_and_bad_ones_are_refused() {
        assert_eq!("50/s".parse(), Ok(Rate { count: 50, period_ms: 1_000 }));
        assert_eq!(" 100 / m ".parse(), Ok(Rate { count: 100, period_ms: 60_000 }));
        assert_eq!("7/h".parse(), Ok(Rate { count: 7, period_ms: 3_600_000 }));
        for bad in ["", "50", "0/s", "-1/s", "1.5/s", "5/d", "x/s", "5/"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
        assert_eq!("100/m".parse::<Rate>().unwrap().to_string(), "100/m");
    }

    #[test]
    fn the_default_burst_is_the_rate_per_second_rounded_up_at_least_one() {
        assert_eq!(limit("50/s", None).burst, 50);
        assert_eq!(limit("90/m", None).burst, 2);
        assert_eq!(limit("1/h", None).burst, 1);
    }

    #[test]
    fn a_bucket_starts_full_refills_at_the_rate_and_never_past_the_burst() {
        let l = limit("50/s", Some(10));
        let mut b = Bucket::full(&l, 1_000);
        assert_eq!(b.available(&l, 1_000), 10);
        b.take(10);
        assert_eq!(b.available(&l, 1_000), 0);
        assert_eq!(b.next_token(&l, 1_000), 1_020, "one token every 20 ms");
        assert_eq!(b.available(&l, 1_019), 0);
        assert_eq!(b.available(&l, 1_020), 1);
        assert_eq!(b.available(&l, 1_100), 5);
        assert_eq!(b.available(&l, 60_000), 10, "capped at the burst");
        assert_eq!(b.next_token(&l, 60_000), 60_000);
        assert_eq!(b.available(&l, 50_000), 10, "a clock going back adds nothing and takes nothing");
    }

    #[test]
    fn over_four_seconds_a_bucket_gives_rate_times_four_plus_burst() {
        let l = limit("50/s", Some(10));
        let mut b = Bucket::full(&l, 0);
        let mut delivered = 0;
        for now in (0..=4_000).step_by(8) {
            let n = b.available(&l, now);
            b.take(n);
            delivered += n;
        }
        assert_eq!(delivered, 50 * 4 + 10);
    }

    #[test]
    fn room_treats_zero_as_unlimited() {
        assert_eq!(room(0, 1_000), u32::MAX);
        assert_eq!(room(5, 3), 2);
        assert_eq!(room(5, 7), 0);
    }

    #[test]
    fn rotation_serves_groups_in_turn_and_newcomers_wait_behind_the_others() {
        let mut r = Rotation::default();
        r.join('a');
        r.join('b');
        r.served(0);
        assert_eq!(r.iter().collect::<String>(), "ba");
        r.join('c');
        r.served(0);
        assert_eq!(r.iter().collect::<String>(), "acb");
        r.served(2);
        assert_eq!(r.iter().collect::<String>(), "acb", "the last one stays last");
        r.leave('c');
        assert_eq!(r.iter().collect::<String>(), "ab");
        r.leave('z');
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn semaphore_lists_are_sorted_without_duplicates() {
        let v = normalize_semaphores(["b".to_owned(), "a".to_owned(), "b".to_owned()]);
        assert_eq!(v, ["a", "b"]);
    }
}
