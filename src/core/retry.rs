//! Retry timing: exponential backoff with jitter, capped.

use std::time::Duration;

use super::Millis;

/// How long to wait before retrying a failed task.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Growth per further attempt (>= 1).
    pub multiplier: f64,
    /// Fraction (0-1) of the delay that is randomized, to spread retries out.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max: Duration::from_secs(600), multiplier: 2.0, jitter: 0.2 }
    }
}

impl Backoff {
    /// The delay after delivery number `attempt` (1-based) failed.
    ///
    /// `sample` is a random number in `[0, 1)`: the delay is scaled by a factor
    /// in `[1 - jitter, 1 + jitter)` and then capped at `max`.
    pub fn delay(&self, attempt: u32, sample: f64) -> Millis {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_millis() as f64 * self.multiplier.powi(exponent);
        let factor = 1.0 + self.jitter * (2.0 * sample.clamp(0.0, 1.0) - 1.0);
        let capped = (base * factor).min(self.max.as_millis() as f64);
        capped.max(0.0) as Millis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(jitter: f64) -> Backoff {
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60), multiplier: 2.0, jitter }
    }

    #[test]
    fn grows_exponentially_without_jitter() {
        let b = backoff(0.0);
        let delays: Vec<_> = (1..=4).map(|a| b.delay(a, 0.5)).collect();
        assert_eq!(delays, vec![1_000, 2_000, 4_000, 8_000]);
    }

    #[test]
    fn is_capped_at_max() {
        assert_eq!(backoff(0.0).delay(30, 0.5), 60_000);
        assert_eq!(backoff(0.5).delay(30, 0.99), 60_000);
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = backoff(0.2);
        assert_eq!(b.delay(1, 0.0), 800);
        assert_eq!(b.delay(1, 0.5), 1_000);
        assert!(b.delay(1, 0.999) < 1_200);
    }
}
