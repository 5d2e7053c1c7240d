//! How the embedded and Redis stores keep a schedule: private and
//! versioned, so [`Schedule`] can change without making stored schedules
//! read as corrupt.
//!
//! A value is one format byte and the postcard encoding of that format's
//! record; the schedule's name is the key it is stored under. A checked-in
//! record of each format (`schedule_record/schedule-v1.hex`) is decoded by
//! a test, so an accidental change of a layout fails the tests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoredSchedule;
use crate::core::schedule::{CatchUp, Schedule, ScheduleSource};
use crate::core::Millis;

/// The newest format.
const CURRENT: u8 = 1;

/// Format 1. Never change it; add a V2.
#[derive(Serialize, Deserialize)]
struct ScheduleV1 {
    cron: String,
    every: Option<u64>,
    timezone: String,
    queue: String,
    kind: String,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
    /// 0 none, 1 one, 2 all.
    catch_up: u8,
    /// 0 config, 1 runtime.
    source: u8,
    since: u64,
    last_fired: Option<u64>,
}

/// `stored` as bytes (its name is the key it goes under).
pub fn encode(stored: &StoredSchedule) -> Vec<u8> {
    let StoredSchedule { schedule, last_fired } = stored;
    let Schedule { name: _, cron, every, timezone, queue, kind, payload, headers, catch_up, source, since } =
        schedule.clone();
    let record = ScheduleV1 {
        cron,
        every,
        timezone,
        queue,
        kind,
        payload,
        headers,
        catch_up: match catch_up {
            CatchUp::None => 0,
            CatchUp::One => 1,
            CatchUp::All => 2,
        },
        source: match source {
            ScheduleSource::Config => 0,
            ScheduleSource::Runtime => 1,
        },
        since,
        last_fired: *last_fired,
    };
    let mut out = vec![CURRENT];
    out.extend(postcard::to_stdvec(&record).expect("a schedule always encodes"));
    out
}

/// The schedule stored under `name` as `bytes`.
pub fn decode(name: &str, bytes: &[u8]) -> Result<StoredSchedule, String> {
    let (format, body) = bytes.split_first().ok_or("an empty schedule record")?;
    match format {
        1 => {
            let r: ScheduleV1 = postcard::from_bytes(body).map_err(|e| format!("schedule format 1: {e}"))?;
            let catch_up = match r.catch_up {
                0 => CatchUp::None,
                1 => CatchUp::One,
                2 => CatchUp::All,
                n => return Err(format!("schedule catch_up {n}")),
            };
            let source = match r.source {
                0 => ScheduleSource::Config,
                1 => ScheduleSource::Runtime,
                n => return Err(format!("schedule source {n}")),
            };
            let schedule = Schedule {
                name: name.to_owned(),
                cron: r.cron,
                every: r.every,
                timezone: r.timezone,
                queue: r.queue,
                kind: r.kind,
                payload: r.payload,
                headers: r.headers,
                catch_up,
                source,
                since: r.since as Millis,
            };
            Ok(StoredSchedule { schedule, last_fired: r.last_fired })
        }
        other => Err(format!("unknown schedule format {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredSchedule {
        StoredSchedule {
            schedule: Schedule {
                name: "nightly-report".into(),
                cron: "0 3 * * *".into(),
                every: None,
                timezone: "Europe/Berlin".into(),
                queue: "reports".into(),
                kind: "report.build".into(),
                payload: br#"{"scope":"all"}"#.to_vec(),
                headers: [("source".to_owned(), "cron".to_owned())].into(),
                catch_up: CatchUp::All,
                source: ScheduleSource::Config,
                since: 1_700_000_000_000,
            },
            last_fired: Some(1_700_000_060_000),
        }
    }

    /// Format 1 as written when it was introduced (hex of `encode(&sample())`).
    const V1: &str = include_str!("schedule_record/schedule-v1.hex");

    #[test]
    fn a_checked_in_format_1_record_still_decodes() {
        let bytes: Vec<u8> = (0..V1.trim().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&V1.trim()[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(decode("nightly-report", &bytes).unwrap(), sample());
    }

    #[test]
    fn a_schedule_round_trips() {
        let mut s = sample();
        s.schedule.every = Some(900_000);
        s.schedule.cron.clear();
        s.last_fired = None;
        assert_eq!(decode("nightly-report", &encode(&s)).unwrap(), s);
        assert!(decode("x", &[9]).is_err());
        assert!(decode("x", &[]).is_err());
    }
}
