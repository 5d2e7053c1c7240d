//! Autoscaling workers per queue (KEDA's external scaler): what a
//! `ScaledObject`'s trigger metadata asks for, and the number it scales on.

use std::collections::HashMap;

use super::queue::valid_queue_name;
use super::stats::QueueCounts;
use super::task::TaskState;

/// A trigger's `scalerMetadata`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalerSpec {
    /// `queue`, or `queues` (comma-separated, summed).
    pub queues: Vec<String>,
    /// `targetPerReplica` (default 10): tasks one worker replica should have.
    pub target_per_replica: f64,
    /// `includeLeased` (default true): count tasks being worked on too.
    pub include_leased: bool,
    /// `activationThreshold` (default 0): active above this many tasks.
    pub activation_threshold: f64,
}

/// A bad metadata key: `(key, why)`.
pub type BadKey = (String, String);

impl ScalerSpec {
    pub fn parse(meta: &HashMap<String, String>) -> Result<ScalerSpec, BadKey> {
        let bad = |k: &str, why: &str| (k.to_owned(), why.to_owned());
        let names: Vec<String> = match (meta.get("queue"), meta.get("queues")) {
            (Some(q), None) => vec![q.trim().to_owned()],
            (None, Some(qs)) => {
                qs.split(',').map(|q| q.trim().to_owned()).filter(|q| !q.is_empty()).collect()
            }
            (Some(_), Some(_)) => return Err(bad("queues", "set queue or queues, not both")),
            (None, None) => return Err(bad("queue", "required (or queues, comma-separated)")),
        };
        if names.is_empty() || names.len() > 100 || !names.iter().all(|q| valid_queue_name(q)) {
            return Err(bad("queue", "1-100 queue names matching [A-Za-z0-9._:-]{1,128}"));
        }
        let number = |k: &str, default: f64, min: f64| -> Result<f64, BadKey> {
            match meta.get(k) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(n) if n.is_finite() && n >= min => Ok(n),
                    _ => Err(bad(k, &format!("must be a number >= {min}"))),
                },
            }
        };
        let include_leased = match meta.get("includeLeased").map(|v| v.trim().to_ascii_lowercase()) {
            None => true,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(_) => return Err(bad("includeLeased", "must be true or false")),
        };
        let target_per_replica = number("targetPerReplica", 10.0, 0.0)?;
        if target_per_replica == 0.0 {
            return Err(bad("targetPerReplica", "must be > 0"));
        }
        Ok(ScalerSpec {
            queues: names,
            target_per_replica,
            include_leased,
            activation_threshold: number("activationThreshold", 0.0, 0.0)?,
        })
    }

    /// The metric's name: `taskbroker-<queue>` (queues joined by `-`).
    pub fn metric_name(&self) -> String {
        format!("taskbroker-{}", self.queues.join("-"))
    }

    /// The number of one queue: ready (and leased) tasks.
    pub fn value_of(&self, counts: &QueueCounts) -> u64 {
        let leased = if self.include_leased { counts.get(TaskState::Leased) } else { 0 };
        counts.get(TaskState::Ready) + leased
    }

    pub fn is_active(&self, value: u64) -> bool {
        value as f64 > self.activation_threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_and_sums() {
        let s = ScalerSpec::parse(&meta(&[("queue", "emails")])).unwrap();
        assert_eq!((s.target_per_replica, s.include_leased, s.activation_threshold), (10.0, true, 0.0));
        assert_eq!(s.metric_name(), "taskbroker-emails");
        let mut c = QueueCounts::default();
        c.add(TaskState::Ready, 3);
        c.add(TaskState::Leased, 2);
        c.add(TaskState::Dead, 9);
        assert_eq!(s.value_of(&c), 5);
        assert!(s.is_active(1) && !s.is_active(0));
        let s = ScalerSpec::parse(&meta(&[
            ("queues", "a, b"),
            ("includeLeased", "false"),
            ("activationThreshold", "4"),
        ]))
        .unwrap();
        assert_eq!(s.queues, ["a", "b"]);
        assert_eq!((s.value_of(&c), s.is_active(4), s.is_active(5)), (3, false, true));
        assert_eq!(s.metric_name(), "taskbroker-a-b");
    }

    #[test]
    fn bad_metadata_names_its_key() {
        for (pairs, key) in [
            (vec![], "queue"),
            (vec![("queue", "a"), ("queues", "b")], "queues"),
            (vec![("queue", "bad name")], "queue"),
            (vec![("queue", "a"), ("targetPerReplica", "0")], "targetPerReplica"),
            (vec![("queue", "a"), ("targetPerReplica", "x")], "targetPerReplica"),
            (vec![("queue", "a"), ("includeLeased", "maybe")], "includeLeased"),
            (vec![("queue", "a"), ("activationThreshold", "-1")], "activationThreshold"),
        ] {
            assert_eq!(ScalerSpec::parse(&meta(&pairs)).unwrap_err().0, key, "{pairs:?}");
        }
    }
}
