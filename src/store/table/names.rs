//! Interned names: the queue, kind and lease holder of every record, stored
//! once per distinct string and referred to by a 4-byte [`Sym`].
//!
//! A name is reference-counted by the record fields that hold it and freed
//! when the last one lets go, so free-form kinds and worker ids cannot pile up
//! forever. The interner knows nothing about tasks.

use std::collections::HashMap;
use std::sync::Arc;

/// An interned name: an index into [`Names`]. Valid while a reference taken
/// with [`Names::acquire`] is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sym(u32);

impl Default for Sym {
    fn default() -> Self {
        Sym::NONE
    }
}

impl Sym {
    /// No name: what an empty optional name (a task without a
    /// `concurrency_key`) is interned as. Never counted, resolves to "".
    pub const NONE: Sym = Sym(u32::MAX);
}

/// The strings behind [`Sym`]s.
#[derive(Default)]
pub struct Names {
    /// Each symbol's name and how many references hold it; `None` is a free slot.
    slots: Vec<Option<(Arc<str>, u32)>>,
    /// The symbol of each live name (the `Arc` is shared with `slots`).
    ids: HashMap<Arc<str>, Sym>,
    /// Slots to reuse before growing `slots`.
    free: Vec<u32>,
}

impl Names {
    /// The symbol of `name`, taking one reference on it.
    pub fn acquire(&mut self, name: &str) -> Sym {
        if let Some(&sym) = self.ids.get(name) {
            if let Some((_, refs)) = &mut self.slots[sym.0 as usize] {
                *refs += 1;
            }
            return sym;
        }
        let name: Arc<str> = Arc::from(name);
        let sym = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some((name.clone(), 1));
                Sym(i)
            }
            None => {
                let i = u32::try_from(self.slots.len()).expect("fewer than 2^32 distinct names");
                self.slots.push(Some((name.clone(), 1)));
                Sym(i)
            }
        };
        self.ids.insert(name, sym);
        sym
    }

    /// [`Self::acquire`], with "" as [`Sym::NONE`] (no reference taken).
    pub fn acquire_opt(&mut self, name: &str) -> Sym {
        if name.is_empty() {
            Sym::NONE
        } else {
            self.acquire(name)
        }
    }

    /// Drops one reference; the name is freed with its last one.
    pub fn release(&mut self, sym: Sym) {
        if sym == Sym::NONE {
            return;
        }
        let slot = &mut self.slots[sym.0 as usize];
        let Some((name, refs)) = slot else { return };
        *refs -= 1;
        if *refs == 0 {
            self.ids.remove(&**name);
            *slot = None;
            self.free.push(sym.0);
        }
    }

    /// The symbol of `name` if some record holds it (takes no reference).
    pub fn get(&self, name: &str) -> Option<Sym> {
        self.ids.get(name).copied()
    }

    /// The name behind a held symbol.
    pub fn resolve(&self, sym: Sym) -> &str {
        self.slots.get(sym.0 as usize).and_then(Option::as_ref).map_or("", |(name, _)| name)
    }

    /// Gives back what a burst of names left: the map's slack once it is
    /// four times larger than what it holds, and the free slots at the end.
    /// (Slots in the middle stay: records refer to their neighbours.)
    pub fn shrink(&mut self) {
        if self.ids.capacity() > 1024 && self.ids.len() * 4 < self.ids.capacity() {
            self.ids.shrink_to_fit();
        }
        let keep = self.slots.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        if self.slots.len() > 1024 && keep * 4 < self.slots.len() {
            self.slots.truncate(keep);
            self.slots.shrink_to_fit();
            self.free.retain(|&i| (i as usize) < keep);
            self.free.shrink_to_fit();
        }
    }

    /// Capacity of the name map (tests of [`Names::shrink`]).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.ids.capacity().max(self.slots.capacity())
    }

    /// How many distinct names are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_lives_while_referenced_and_its_slot_is_reused() {
        let mut names = Names::default();
        let a = names.acquire("emails");
        assert_eq!(names.acquire("emails"), a);
        let b = names.acquire("thumbs");
        assert_ne!(a, b);
        assert_eq!((names.resolve(a), names.resolve(b)), ("emails", "thumbs"));
        names.release(a);
        assert_eq!(names.get("emails"), Some(a), "one reference left");
        names.release(a);
        assert_eq!(names.get("emails"), None);
        assert_eq!(names.len(), 1);
        let c = names.acquire("reports");
        assert_eq!(c, a, "the freed slot is reused");
        assert_eq!(names.resolve(c), "reports");
        names.release(b);
        assert_eq!(names.resolve(b), "", "a freed name resolves to nothing");
    }
}
