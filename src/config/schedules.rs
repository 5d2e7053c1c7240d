//! `[[schedules]]`: periodic tasks declared in the config file.
//!
//! Config schedules are stored with `source = config` at start-up and on
//! every reload, replacing a runtime schedule (PutSchedule) of the same
//! name; a reload deletes the config schedules the file no longer declares.
//! Runtime schedules are never touched by the config.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

use super::{shown, Config};
use crate::broker::validate::{MAX_HEADERS, MAX_NAME};
use crate::core::millis;
use crate::core::schedule::{CatchUp, Schedule, ScheduleSource};

/// One `[[schedules]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Unique; part of every fired task's dedup key.
    pub name: String,
    /// A 5-field cron pattern (minute hour day-of-month month day-of-week).
    #[serde(default)]
    pub cron: String,
    /// Or a fixed interval (`"15m"`, at least 1s), counted from the epoch.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// IANA time zone the cron pattern is read in; default UTC.
    #[serde(default)]
    pub timezone: String,
    /// Default: the default queue.
    #[serde(default)]
    pub queue: String,
    pub kind: String,
    /// The task's payload, as text.
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `"none"`, `"one"` (default) or `"all"`: runs missed while no broker ran.
    #[serde(default)]
    pub catch_up: String,
}

impl ScheduleConfig {
    /// The schedule it declares (its `since` is the broker's to set).
    pub fn schedule(&self) -> Schedule {
        Schedule {
            name: self.name.clone(),
            cron: self.cron.clone(),
            every: self.every.map(millis),
            timezone: self.timezone.clone(),
            queue: if self.queue.is_empty() {
                crate::core::queue::DEFAULT_QUEUE.into()
            } else {
                self.queue.clone()
            },
            kind: self.kind.clone(),
            payload: self.payload.clone().into_bytes(),
            headers: self.headers.clone(),
            catch_up: self.catch_up.parse().unwrap_or_default(),
            source: ScheduleSource::Config,
            since: 0,
        }
    }
}

impl Config {
    /// The schedules the file declares. Call after `validate()`.
    pub fn schedules(&self) -> Vec<Schedule> {
        self.schedules.iter().map(ScheduleConfig::schedule).collect()
    }

    /// Every problem of `[[schedules]]`, as `schedules[i].field: ...`.
    pub(super) fn validate_schedules(&self, errors: &mut Vec<String>) {
        let mut names = BTreeSet::new();
        for (i, s) in self.schedules.iter().enumerate() {
            let path = format!("schedules[{i}]");
            if !names.insert(s.name.as_str()) {
                errors.push(format!("{path}.name: {:?} is declared twice", shown(&s.name)));
            }
            if let Err(e) = s.catch_up.parse::<CatchUp>() {
                errors.push(format!("{path}.catch_up: {e}"));
            }
            let schedule = s.schedule();
            for e in schedule.check() {
                errors.push(format!("{path}.{}: {}", e.field, e.message));
            }
            if self.strict_queues && !s.queue.is_empty() && !self.queues.contains_key(&s.queue) {
                errors.push(format!("{path}.queue: {:?} is not declared (strict_queues)", shown(&s.queue)));
            }
            if s.kind.len() > MAX_NAME {
                errors.push(format!("{path}.kind: must be at most {MAX_NAME} bytes"));
            }
            if s.payload.len() > self.max_payload_bytes {
                errors.push(format!(
                    "{path}.payload: must be at most max_payload_bytes ({})",
                    self.max_payload_bytes
                ));
            }
            if s.headers.len() > MAX_HEADERS {
                errors.push(format!("{path}.headers: at most {MAX_HEADERS}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(toml: &str) -> Vec<String> {
        Config::from_toml(toml).unwrap().validate().unwrap_err()
    }

    #[test]
    fn the_issue_example_is_valid() {
        let config = Config::from_toml(
            r#"
            [[schedules]]
            name = "nightly-report"
            cron = "0 3 * * *"
            timezone = "Europe/Berlin"
            queue = "reports"
            kind = "report.build"
            payload = '{"scope":"all"}'
            headers = { source = "cron" }
            catch_up = "one"

            [[schedules]]
            name = "heartbeat"
            every = "15m"
            kind = "ping"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let s = config.schedules();
        assert_eq!(
            (s[0].payload.as_slice(), s[0].timezone.as_str()),
            (br#"{"scope":"all"}"#.as_slice(), "Europe/Berlin")
        );
        assert_eq!((s[1].every, s[1].queue.as_str()), (Some(900_000), "default"));
    }

    #[test]
    fn problems_are_named_by_path() {
        let got = problems(
            r#"
            [[schedules]]
            name = "a"
            cron = "0 3 * *"
            kind = "k"

            [[schedules]]
            name = "a"
            every = "500ms"
            kind = "k"
            catch_up = "some"

            [[schedules]]
            name = "b"
            cron = "0 3 * * *"
            timezone = "Mars/Olympus"
            kind = ""
            "#,
        );
        assert_eq!(
            got,
            [
                "schedules[0].cron: \"0 3 * *\" must have 5 fields: minute hour day-of-month month day-of-week",
                "schedules[1].name: \"a\" is declared twice",
                "schedules[1].catch_up: \"some\" is not one of \"none\", \"one\", \"all\"",
                "schedules[1].every: must be at least 1s",
                "schedules[2].timezone: \"Mars/Olympus\" is not an IANA time zone",
                "schedules[2].kind: must not be empty",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            Config::from_toml("[[schedules]]\nname = \"a\"\nkind = \"k\"\ncorn = \"* * * * *\"\n").is_err()
        );
    }

    /// `taskbroker config example` shows a schedule, commented out; with its
    /// lines uncommented it is valid.
    #[test]
    fn the_examples_commented_schedule_is_valid() {
        let example = crate::config::EXAMPLE;
        let start = example.find("# [[schedules]]").expect("the example shows a schedule");
        let block: Vec<&str> = example[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .collect();
        let config = Config::from_toml(&format!("{example}\n{}\n", block.join("\n"))).unwrap();
        config.validate().unwrap();
        assert_eq!(config.schedules()[0].name, "nightly-report");
    }
}
