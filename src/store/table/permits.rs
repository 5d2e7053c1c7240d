//! The permits LEASED tasks hold: per queue (`max_in_flight`), per queue and
//! `concurrency_key` (`per_key_max_in_flight`), per semaphore.
//!
//! Counted in one place only: [`super::indexes::index`] takes a task's
//! permits when it enters the LEASED index and
//! [`super::indexes::unindex`] gives them back when it leaves it, so every
//! way out of LEASED (ack, nack, expiry, cancel, release) frees them and
//! none can forget to. A settling call with a stale lease is refused before
//! the task changes, so it frees nothing.

use std::collections::HashMap;

use super::names::{Names, Sym};
use super::record::Record;
use crate::core::flow::room;
use crate::core::queue::Policies;

#[derive(Default)]
pub struct Permits {
    /// LEASED tasks per queue.
    queue: HashMap<Sym, u32>,
    /// LEASED tasks per (queue, concurrency_key), for tasks with a key.
    key: HashMap<(Sym, Sym), u32>,
    /// LEASED tasks holding each semaphore.
    semaphore: HashMap<Box<str>, u32>,
}

impl Permits {
    /// `task` entered LEASED.
    pub fn take(&mut self, task: &Record, names: &Names) {
        *self.queue.entry(task.queue).or_default() += 1;
        if task.key() != Sym::NONE {
            *self.key.entry((task.queue, task.key())).or_default() += 1;
        }
        for s in task.semaphores(names) {
            match self.semaphore.get_mut(s) {
                Some(n) => *n += 1,
                None => {
                    self.semaphore.insert(s.into(), 1);
                }
            }
        }
    }

    /// `task` left LEASED.
    pub fn give_back(&mut self, task: &Record, names: &Names) {
        fn down<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: &K) {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
        down(&mut self.queue, &task.queue);
        if task.key() != Sym::NONE {
            down(&mut self.key, &(task.queue, task.key()));
        }
        for s in task.semaphores(names) {
            if let Some(n) = self.semaphore.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    self.semaphore.remove(s);
                }
            }
        }
    }

    /// LEASED tasks of `queue`.
    pub fn in_flight(&self, queue: Sym) -> u32 {
        self.queue.get(&queue).copied().unwrap_or(0)
    }

    /// LEASED tasks of `queue` with concurrency key `key`.
    pub fn of_key(&self, queue: Sym, key: Sym) -> u32 {
        self.key.get(&(queue, key)).copied().unwrap_or(0)
    }

    /// LEASED tasks holding semaphore `name`.
    pub fn held(&self, name: &str) -> u32 {
        self.semaphore.get(name).copied().unwrap_or(0)
    }

    /// Whether every semaphore of the set `sems` (a record's) has a permit free.
    pub fn semaphores_open(&self, sems: Sym, names: &Names, policies: &Policies) -> bool {
        sems == Sym::NONE
            || names
                .resolve(sems)
                .split(super::record::SEMAPHORE_SEPARATOR)
                .all(|s| policies.semaphore_limit(s).is_none_or(|limit| room(limit, self.held(s)) > 0))
    }
}
