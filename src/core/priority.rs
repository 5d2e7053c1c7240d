//! Delivery order inside a queue: higher priority first, FIFO within a level.

use super::MAX_PRIORITY;

/// The sort key of a ready task: smaller sorts (and is delivered) first.
///
/// One `u64` (it is stored once per ready task): the top 8 bits invert the
/// priority so that 9 sorts before 0; the low 56 bits are the order in which
/// tasks became ready (2^56 sequence numbers outlast any broker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadyKey(u64);

const SEQ_BITS: u32 = 56;

impl ReadyKey {
    pub fn new(priority: u8, seq: u64) -> Self {
        let inverted = u64::from(MAX_PRIORITY - priority.min(MAX_PRIORITY));
        Self(inverted << SEQ_BITS | (seq & ((1 << SEQ_BITS) - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_sorts_first_then_fifo() {
        let mut keys = vec![
            ReadyKey::new(0, 1),
            ReadyKey::new(9, 4),
            ReadyKey::new(5, 3),
            ReadyKey::new(5, 2),
            ReadyKey::new(9, 5),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                ReadyKey::new(9, 4),
                ReadyKey::new(9, 5),
                ReadyKey::new(5, 2),
                ReadyKey::new(5, 3),
                ReadyKey::new(0, 1),
            ]
        );
    }
}
