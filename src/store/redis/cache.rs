//! Which queue a task is in, remembered for tasks this store created, leased
//! or read, so a settling call skips the `tb:index` lookup (one round trip of
//! the two it would take).
//!
//! Safe to be stale: a task never changes queue and its id is never reused,
//! so a remembered queue is either right or names a queue whose script then
//! answers "not found", as `tb:index` would have.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::core::task::TaskId;

/// Entries kept per generation; at most twice this many are held.
const GENERATION: usize = 50_000;

/// A bounded map in two generations: when the current one is full it becomes
/// the previous one and the oldest generation is dropped.
#[derive(Default)]
pub struct QueueCache {
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<TaskId, String>,
    previous: HashMap<TaskId, String>,
}

impl QueueCache {
    pub fn get(&self, id: TaskId) -> Option<String> {
        let g = self.lock();
        g.current.get(&id).or_else(|| g.previous.get(&id)).cloned()
    }

    pub fn remember<'a>(&self, tasks: impl IntoIterator<Item = (TaskId, &'a str)>) {
        let mut g = self.lock();
        for (id, queue) in tasks {
            if g.current.len() >= GENERATION {
                g.previous = std::mem::take(&mut g.current);
            }
            g.current.insert(id, queue.to_owned());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The maps stay consistent whatever panicked: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_between_one_and_two_generations() {
        let cache = QueueCache::default();
        let g = GENERATION as u128;
        cache.remember((0..2 * g).map(|i| (TaskId(i), "q")));
        assert_eq!(cache.get(TaskId(0)).as_deref(), Some("q"), "two generations are kept");
        cache.remember([(TaskId(2 * g), "r")]);
        assert_eq!(cache.get(TaskId(0)), None, "the oldest generation is dropped");
        assert_eq!(cache.get(TaskId(g)).as_deref(), Some("q"));
        assert_eq!(cache.get(TaskId(2 * g)).as_deref(), Some("r"));
    }
}
