//! Queue selection for a worker that listens on several queues: strict
//! preference, or shares by weight (smooth weighted round-robin, so every
//! weighted queue gets its turn and none starves).

/// How deliveries are shared among a worker's queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Always the first queue with ready work.
    Strict,
    /// Shares proportional to these weights (one per queue, each >= 1).
    Weighted(Vec<u32>),
}

/// Plans which queues the next deliveries come from.
#[derive(Clone, Debug)]
pub struct Selector {
    queues: Vec<String>,
    mode: Mode,
    /// Smooth weighted round-robin state, one per queue.
    current: Vec<i64>,
}

impl Selector {
    pub fn new(queues: Vec<String>, mode: Mode) -> Self {
        let current = vec![0; queues.len()];
        Self { queues, mode, current }
    }

    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Quotas for the next `n` deliveries: `(queue, most to take from it)` in
    /// the order to try. A store takes up to each quota in order, then fills
    /// what is left from the queues in the same order (so an idle queue's
    /// share goes to the others).
    pub fn plan(&mut self, n: usize) -> Vec<(String, usize)> {
        let weights = match &self.mode {
            Mode::Strict => return self.queues.iter().map(|q| (q.clone(), n)).collect(),
            Mode::Weighted(w) => w,
        };
        let total: i64 = weights.iter().map(|&w| w.max(1) as i64).sum();
        let mut counts = vec![0usize; self.queues.len()];
        let mut first_pick = Vec::new();
        for _ in 0..n {
            for (c, &w) in self.current.iter_mut().zip(weights) {
                *c += w.max(1) as i64;
            }
            let best =
                (0..self.current.len()).max_by_key(|&i| (self.current[i], usize::MAX - i)).unwrap_or(0);
            self.current[best] -= total;
            if counts[best] == 0 {
                first_pick.push(best);
            }
            counts[best] += 1;
        }
        // Queues in the order they were first picked, then the rest.
        let rest = (0..self.queues.len()).filter(|i| counts[*i] == 0);
        first_pick.into_iter().chain(rest).map(|i| (self.queues[i].clone(), counts[i])).collect()
    }
}

/// The lease driver every store runs over its own per-queue primitive ("take
/// up to n ready tasks from this queue"): first up to each queue's quota, in
/// order, then whatever is still missing from the queues in the same order.
/// A queue that gave less than it was asked has nothing more to give and is
/// not asked again.
#[derive(Clone, Debug)]
pub struct Fill<'a> {
    plan: &'a [(String, usize)],
    max_tasks: usize,
    /// Position in the two passes over `plan`.
    step: usize,
    drained: Vec<bool>,
}

impl<'a> Fill<'a> {
    pub fn new(plan: &'a [(String, usize)], max_tasks: usize) -> Self {
        Self { plan, max_tasks, step: 0, drained: vec![false; plan.len()] }
    }

    /// The next queue to lease from and how many to take, given that `have`
    /// tasks were leased so far; `None` when the lease is complete.
    pub fn next(&mut self, have: usize) -> Option<(&'a str, usize)> {
        while self.step < 2 * self.plan.len() && have < self.max_tasks {
            let i = self.step % self.plan.len();
            let first_pass = self.step < self.plan.len();
            self.step += 1;
            let missing = self.max_tasks - have;
            let take = if first_pass { self.plan[i].1.min(missing) } else { missing };
            if take > 0 && !self.drained[i] {
                return Some((&self.plan[i].0, take));
            }
        }
        None
    }

    /// Records that the queue last returned by [`Self::next`] gave `got` of
    /// the `asked` tasks.
    pub fn took(&mut self, asked: usize, got: usize) {
        if got < asked {
            let i = (self.step - 1) % self.plan.len();
            self.drained[i] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn strict_gives_every_queue_the_whole_batch_in_order() {
        let mut s = Selector::new(names(&["a", "b"]), Mode::Strict);
        assert_eq!(s.plan(5), vec![("a".to_string(), 5), ("b".to_string(), 5)]);
    }

    #[test]
    fn weighted_shares_follow_the_weights() {
        let mut s = Selector::new(names(&["a", "b", "c"]), Mode::Weighted(vec![5, 3, 2]));
        let mut totals = [0usize; 3];
        for _ in 0..100 {
            for (q, n) in s.plan(7) {
                totals[["a", "b", "c"].iter().position(|x| *x == q).unwrap()] += n;
            }
        }
        assert_eq!(totals.iter().sum::<usize>(), 700);
        assert_eq!(totals, [350, 210, 140]);
    }

    #[test]
    fn a_low_weight_queue_gets_its_turn_even_one_at_a_time() {
        let mut s = Selector::new(names(&["big", "small"]), Mode::Weighted(vec![9, 1]));
        let picks: Vec<String> = (0..10).map(|_| s.plan(1)[0].0.clone()).collect();
        assert_eq!(picks.iter().filter(|q| *q == "small").count(), 1);
    }

    fn fill(plan: &[(String, usize)], max: usize, available: &mut [usize]) -> Vec<(String, usize)> {
        let mut fill = Fill::new(plan, max);
        let (mut have, mut asks) = (0, Vec::new());
        while let Some((queue, take)) = fill.next(have) {
            let i = plan.iter().position(|(q, _)| q == queue).unwrap();
            let got = take.min(available[i]);
            available[i] -= got;
            have += got;
            fill.took(take, got);
            asks.push((queue.to_owned(), take));
        }
        asks
    }

    #[test]
    fn fill_takes_quotas_first_then_the_shortfall_in_order() {
        let plan = vec![("a".to_string(), 2), ("b".to_string(), 3)];
        let mut available = [10, 1];
        let asks = fill(&plan, 5, &mut available);
        // a gives its 2, b only 1 of 3 (drained), then a makes up the rest.
        assert_eq!(asks, vec![("a".into(), 2), ("b".into(), 3), ("a".into(), 2)]);
        assert_eq!(available, [6, 0]);
    }

    #[test]
    fn fill_stops_when_full_and_never_asks_a_drained_queue_again() {
        let plan = vec![("a".to_string(), 4), ("b".to_string(), 4)];
        assert_eq!(fill(&plan, 4, &mut [9, 9]), vec![("a".into(), 4)]);
        let asks = fill(&plan, 4, &mut [0, 0]);
        assert_eq!(asks, vec![("a".into(), 4), ("b".into(), 4)]);
    }
}
