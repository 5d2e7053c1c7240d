//! Periodic schedules: what one is, when it is due, and which due times a
//! firing pass enqueues.
//!
//! Pure: every function takes the times it needs (`now`, the last due time
//! fired) as parameters. The store keeps each schedule's last fired due
//! time and fires a due time at most once ([`crate::store::Store::fire_schedule`]);
//! this module only decides which due times to ask for.
//!
//! # Due times
//! - `cron`: a 5-field pattern evaluated in the schedule's time zone (IANA
//!   name, default UTC), parsed and searched by `croner`. Across DST
//!   transitions a wall-clock time that does not exist (spring forward:
//!   02:30 on the day the clock jumps from 02:00 to 03:00) runs once, at the
//!   first instant after the gap (03:00); one that exists twice (fall back)
//!   runs once, at its first occurrence. Interval patterns (`*/15 * * * *`)
//!   follow real time through both.
//! - `every`: multiples of the interval since the Unix epoch (UTC), so every
//!   replica computes the same due times without talking to the others.
//!
//! # Catch-up
//! When a firing pass finds due times between the last one fired (or the
//! schedule's `since`) and now, [`plan`] picks: `all` fires each of them
//! (at most [`MAX_CATCH_UP`] per pass, the rest in the next passes), `one`
//! (the default) fires the latest only, `none` fires the latest only if it
//! is at most [`ON_TIME`] old, and otherwise records it as fired without
//! enqueuing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use super::Millis;

/// How late a due time may be fired under `catch_up = "none"`: a pass that
/// comes later than this after it (the broker was down) skips it.
pub const ON_TIME: Millis = 60_000;

/// Most due times one pass fires under `catch_up = "all"`; the next pass
/// goes on from the last one fired.
pub const MAX_CATCH_UP: usize = 100;

/// Shortest `every`.
pub const MIN_EVERY: Millis = 1_000;

/// What a broker that was down does about the runs it missed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CatchUp {
    /// Skip missed runs; fire a due time only while it is on time.
    None,
    /// Fire the latest missed run, once.
    #[default]
    One,
    /// Fire every missed run.
    All,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::One => "one",
            CatchUp::All => "all",
        }
    }
}

impl FromStr for CatchUp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(CatchUp::None),
            "one" | "" => Ok(CatchUp::One),
            "all" => Ok(CatchUp::All),
            other => Err(format!("{other:?} is not one of \"none\", \"one\", \"all\"")),
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a schedule was declared, which decides who may replace it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScheduleSource {
    /// `[[schedules]]` in the config file: declared at start and on every
    /// reload, and deleted by a reload that no longer declares it.
    Config,
    /// `PutSchedule`: kept until `DeleteSchedule`, whatever the config says.
    #[default]
    Runtime,
}

impl ScheduleSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleSource::Config => "config",
            ScheduleSource::Runtime => "runtime",
        }
    }
}

/// A periodic schedule: when it is due, and the task each due time enqueues.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// Unique; part of each fired task's dedup key.
    pub name: String,
    /// A 5-field cron pattern; empty when `every` is set.
    pub cron: String,
    /// A fixed interval (ms, at least [`MIN_EVERY`]); `None` with `cron`.
    pub every: Option<Millis>,
    /// IANA time zone `cron` is read in; empty: UTC.
    pub timezone: String,
    pub queue: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub catch_up: CatchUp,
    pub source: ScheduleSource,
    /// Due times at or before this do not count: when the schedule was
    /// created, or last had its timing or queue changed (so a new or
    /// changed schedule does not catch up on runs it never had).
    pub since: Millis,
}

/// Why a schedule is not valid: the field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSchedule {
    pub field: &'static str,
    pub message: String,
}

impl InvalidSchedule {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// Longest schedule name.
pub const MAX_NAME: usize = 128;

/// Schedule names: like queue names (they go into dedup keys and paths).
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

impl Schedule {
    /// Every problem of the schedule itself (name, timing, queue, kind);
    /// what its task may carry (payload size, headers) is the broker's
    /// enqueue validation.
    pub fn check(&self) -> Vec<InvalidSchedule> {
        let mut out = Vec::new();
        if !valid_name(&self.name) {
            out.push(InvalidSchedule::new("name", "must match [A-Za-z0-9._:-]{1,128}"));
        }
        if let Err(e) = self.timing() {
            out.push(e);
        }
        if !super::queue::valid_queue_name(&self.queue) {
            out.push(InvalidSchedule::new("queue", "must match [A-Za-z0-9._:-]{1,128}"));
        }
        if self.kind.is_empty() {
            out.push(InvalidSchedule::new("kind", "must not be empty"));
        }
        out
    }

    /// Its timing, checked.
    pub fn timing(&self) -> Result<Timing, InvalidSchedule> {
        Timing::new(&self.cron, self.every, &self.timezone)
    }

    /// Whether `other` fires at other times or into another queue than
    /// this one (its `since` then starts again).
    pub fn moves(&self, other: &Schedule) -> bool {
        self.cron != other.cron
            || self.every != other.every
            || self.timezone != other.timezone
            || self.queue != other.queue
    }

    /// The dedup key of the task fired for `due`: one task per schedule
    /// and due time, whoever fires it.
    pub fn dedup_key(&self, due: Millis) -> String {
        format!("schedule:{}:{due}", self.name)
    }
}

/// When a schedule is due.
#[derive(Clone, Debug)]
pub enum Timing {
    Cron { cron: Box<Cron>, tz: Tz },
    Every(Millis),
}

impl Timing {
    /// Exactly one of `cron` (non-empty) and `every`; `timezone` an IANA
    /// name or empty (UTC), and only with `cron`.
    pub fn new(cron: &str, every: Option<Millis>, timezone: &str) -> Result<Timing, InvalidSchedule> {
        let tz = if timezone.is_empty() {
            Tz::UTC
        } else {
            timezone.parse::<Tz>().map_err(|_| {
                InvalidSchedule::new("timezone", format!("{timezone:?} is not an IANA time zone"))
            })?
        };
        match (cron.trim().is_empty(), every) {
            (true, None) => Err(InvalidSchedule::new("cron", "one of cron or every must be set")),
            (false, Some(_)) => Err(InvalidSchedule::new("every", "set cron or every, not both")),
            (true, Some(every)) if every < MIN_EVERY => {
                Err(InvalidSchedule::new("every", "must be at least 1s"))
            }
            (true, Some(_)) if tz != Tz::UTC => {
                Err(InvalidSchedule::new("timezone", "only with cron (every counts real time)"))
            }
            (true, Some(every)) => Ok(Timing::Every(every)),
            (false, None) => {
                if cron.split_whitespace().count() != 5 {
                    return Err(InvalidSchedule::new(
                        "cron",
                        format!("{cron:?} must have 5 fields: minute hour day-of-month month day-of-week"),
                    ));
                }
                let parsed = CronParser::builder()
                    .seconds(Seconds::Disallowed)
                    .year(Year::Disallowed)
                    .build()
                    .parse(cron)
                    .map_err(|e| InvalidSchedule::new("cron", format!("{cron:?}: {e}")))?;
                // A pattern no date matches (`0 0 31 2 *`) would cost a search
                // through every year croner knows on each pass: refuse it.
                let epoch = at(&tz, 0).ok_or_else(|| InvalidSchedule::new("timezone", "unusable"))?;
                if parsed.find_next_occurrence(&epoch, false).is_err() {
                    return Err(InvalidSchedule::new("cron", format!("{cron:?} matches no date")));
                }
                Ok(Timing::Cron { cron: Box::new(parsed), tz })
            }
        }
    }

    /// The first due time strictly after `t`.
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        match self {
            Timing::Every(every) => Some((t / every + 1) * every),
            Timing::Cron { cron, tz } => {
                let at = at(tz, t)?;
                cron.find_next_occurrence(&at, false).ok().map(|d| d.timestamp_millis() as Millis)
            }
        }
    }

    /// The last due time at or before `t`.
    pub fn latest_until(&self, t: Millis) -> Option<Millis> {
        match self {
            Timing::Every(every) => Some(t / every * every),
            Timing::Cron { cron, tz } => {
                let at = at(tz, t)?;
                cron.find_previous_occurrence(&at, true).ok().map(|d| d.timestamp_millis() as Millis)
            }
        }
    }
}

/// `t` in `tz`.
fn at(tz: &Tz, t: Millis) -> Option<DateTime<Tz>> {
    let utc = Utc.timestamp_millis_opt(i64::try_from(t).ok()?).single()?;
    Some(utc.with_timezone(tz))
}

/// What one firing pass does for one schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Due times to enqueue, oldest first.
    pub fire: Vec<Millis>,
    /// A due time to record as fired without enqueuing (missed runs
    /// skipped by `catch_up`), before `fire`.
    pub skip_to: Option<Millis>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.fire.is_empty() && self.skip_to.is_none()
    }
}

/// The due times a pass at `now` fires, given the last one fired (or the
/// schedule's `since`, whichever is later) as `after`.
pub fn plan(timing: &Timing, catch_up: CatchUp, after: Millis, now: Millis) -> Plan {
    let Some(latest) = timing.latest_until(now).filter(|&l| l > after) else {
        return Plan::default();
    };
    match catch_up {
        CatchUp::One => Plan { fire: vec![latest], skip_to: None },
        CatchUp::None if now - latest <= ON_TIME => Plan { fire: vec![latest], skip_to: None },
        CatchUp::None => Plan { fire: Vec::new(), skip_to: Some(latest) },
        CatchUp::All => {
            let mut fire = Vec::new();
            let mut t = after;
            while fire.len() < MAX_CATCH_UP {
                match timing.next_after(t) {
                    Some(next) if next <= now => {
                        fire.push(next);
                        t = next;
                    }
                    _ => break,
                }
            }
            Plan { fire, skip_to: None }
        }
    }
}

/// The first due time after `now` that a pass would fire (for listings).
pub fn next_run(timing: &Timing, after: Millis, now: Millis) -> Option<Millis> {
    timing.next_after(after.max(now))
}

#[cfg(test)]
mod tests;
