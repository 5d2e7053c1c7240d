//! Delivery order inside a queue: higher priority first, FIFO within a level.

use super::MAX_PRIORITY;

/// The sort key of a ready task: smaller sorts (and is delivered) first.
///
/// The first part inverts the priority so that 9 sorts before 0; the second is
/// the order in which tasks became ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadyKey {
    inverted_priority: u8,
    seq: u64,
}

impl ReadyKey {
    pub fn new(priority: u8, seq: u64) -> Self {
        Self { inverted_priority: MAX_PRIORITY - priority.min(MAX_PRIORITY), seq }
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
