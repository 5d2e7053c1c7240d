use std::time::Duration;

use chrono::{TimeZone, Utc};

use super::*;
use crate::core::clock::{Clock, ManualClock};

/// Milliseconds of a UTC wall-clock time.
fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Millis {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap().timestamp_millis() as Millis
}

fn cron(pattern: &str, tz: &str) -> Timing {
    Timing::new(pattern, None, tz).unwrap()
}

/// Runs a firing pass every `step` from `start` until `end` on an injected
/// clock, as the broker's loop does, and returns every due time fired.
fn simulate(timing: &Timing, catch_up: CatchUp, start: Millis, end: Millis, step: Duration) -> Vec<Millis> {
    let clock = ManualClock::new(start);
    let mut last = start;
    let mut fired = Vec::new();
    while clock.now() < end {
        clock.advance(step);
        let plan = plan(timing, catch_up, last, clock.now());
        if let Some(skip) = plan.skip_to {
            last = skip;
        }
        for due in plan.fire {
            assert!(due > last, "fired {due} again (last {last})");
            fired.push(due);
            last = due;
        }
    }
    fired
}

#[test]
fn a_daily_job_in_the_skipped_hour_runs_once_right_after_the_gap() {
    // Europe/Berlin, 2025-03-30: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    let timing = cron("30 2 * * *", "Europe/Berlin");
    let fired = simulate(
        &timing,
        CatchUp::One,
        utc(2025, 3, 28, 12, 0),
        utc(2025, 4, 1, 0, 0),
        Duration::from_secs(60),
    );
    assert_eq!(
        fired,
        vec![
            utc(2025, 3, 29, 1, 30), // 02:30 CET
            utc(2025, 3, 30, 1, 0),  // 03:00 CEST: the first instant after the gap
            utc(2025, 3, 31, 0, 30), // 02:30 CEST
        ]
    );
}

#[test]
fn a_daily_job_in_the_repeated_hour_runs_once_at_its_first_occurrence() {
    // Europe/Berlin, 2025-10-26: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    let timing = cron("30 2 * * *", "Europe/Berlin");
    let fired = simulate(
        &timing,
        CatchUp::One,
        utc(2025, 10, 25, 12, 0),
        utc(2025, 10, 27, 12, 0),
        Duration::from_secs(60),
    );
    assert_eq!(fired, vec![utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)]);
}

#[test]
fn an_interval_pattern_follows_real_time_through_both_transitions() {
    let timing = cron("*/30 * * * *", "Europe/Berlin");
    for (start, end) in [
        (utc(2025, 3, 29, 22, 0), utc(2025, 3, 30, 4, 0)),
        (utc(2025, 10, 25, 22, 0), utc(2025, 10, 26, 4, 0)),
    ] {
        let fired = simulate(&timing, CatchUp::One, start, end, Duration::from_secs(60));
        assert_eq!(fired.len(), 12, "{fired:?}");
        assert!(fired.windows(2).all(|w| w[1] - w[0] == 30 * 60_000), "{fired:?}");
    }
}

#[test]
fn cron_is_read_in_the_time_zone_and_utc_by_default() {
    let berlin = cron("0 3 * * *", "Europe/Berlin");
    let utc_timing = cron("0 3 * * *", "");
    let t = utc(2025, 6, 1, 0, 0);
    assert_eq!(berlin.next_after(t), Some(utc(2025, 6, 1, 1, 0)));
    assert_eq!(utc_timing.next_after(t), Some(utc(2025, 6, 1, 3, 0)));
    assert_eq!(utc_timing.latest_until(utc(2025, 6, 1, 3, 0)), Some(utc(2025, 6, 1, 3, 0)));
    assert_eq!(utc_timing.next_after(utc(2025, 6, 1, 3, 0)), Some(utc(2025, 6, 2, 3, 0)));
}

#[test]
fn every_counts_multiples_of_the_interval_since_the_epoch() {
    let timing = Timing::new("", Some(15 * 60_000), "").unwrap();
    let t = utc(2025, 6, 1, 10, 7);
    assert_eq!(timing.next_after(t), Some(utc(2025, 6, 1, 10, 15)));
    assert_eq!(timing.latest_until(t), Some(utc(2025, 6, 1, 10, 0)));
    assert_eq!(timing.next_after(utc(2025, 6, 1, 10, 15)), Some(utc(2025, 6, 1, 10, 30)));
    let fired = simulate(&timing, CatchUp::One, t, utc(2025, 6, 1, 11, 7), Duration::from_secs(1));
    assert_eq!(
        fired,
        vec![
            utc(2025, 6, 1, 10, 15),
            utc(2025, 6, 1, 10, 30),
            utc(2025, 6, 1, 10, 45),
            utc(2025, 6, 1, 11, 0)
        ]
    );
}

#[test]
fn catch_up_one_fires_only_the_latest_missed_run() {
    let hourly = cron("0 * * * *", "");
    let last = utc(2025, 6, 1, 10, 0);
    let now = utc(2025, 6, 1, 13, 20); // 11:00, 12:00 and 13:00 were missed
    assert_eq!(
        plan(&hourly, CatchUp::One, last, now),
        Plan { fire: vec![utc(2025, 6, 1, 13, 0)], skip_to: None }
    );
}

#[test]
fn catch_up_all_fires_every_missed_run_in_order() {
    let hourly = cron("0 * * * *", "");
    let last = utc(2025, 6, 1, 10, 0);
    let now = utc(2025, 6, 1, 13, 20);
    let fire = vec![utc(2025, 6, 1, 11, 0), utc(2025, 6, 1, 12, 0), utc(2025, 6, 1, 13, 0)];
    assert_eq!(plan(&hourly, CatchUp::All, last, now), Plan { fire, skip_to: None });
}

#[test]
fn catch_up_all_fires_a_long_outage_a_bounded_batch_at_a_time() {
    let minutely = cron("* * * * *", "");
    let last = utc(2025, 6, 1, 0, 0);
    let now = utc(2025, 6, 2, 0, 0);
    let first = plan(&minutely, CatchUp::All, last, now);
    assert_eq!(first.fire.len(), MAX_CATCH_UP);
    assert_eq!(first.fire[0], utc(2025, 6, 1, 0, 1));
    let second = plan(&minutely, CatchUp::All, *first.fire.last().unwrap(), now);
    assert_eq!(second.fire[0], first.fire.last().unwrap() + 60_000);
}

#[test]
fn catch_up_none_skips_missed_runs_but_fires_one_on_time() {
    let hourly = cron("0 * * * *", "");
    let last = utc(2025, 6, 1, 10, 0);
    let late = utc(2025, 6, 1, 13, 20);
    assert_eq!(
        plan(&hourly, CatchUp::None, last, late),
        Plan { fire: vec![], skip_to: Some(utc(2025, 6, 1, 13, 0)) }
    );
    let on_time = utc(2025, 6, 1, 13, 0) + ON_TIME;
    assert_eq!(
        plan(&hourly, CatchUp::None, last, on_time),
        Plan { fire: vec![utc(2025, 6, 1, 13, 0)], skip_to: None }
    );
}

#[test]
fn nothing_fires_before_the_next_due_time() {
    let hourly = cron("0 * * * *", "");
    let last = utc(2025, 6, 1, 10, 0);
    for catch_up in [CatchUp::None, CatchUp::One, CatchUp::All] {
        assert!(plan(&hourly, catch_up, last, utc(2025, 6, 1, 10, 59)).is_empty());
    }
    assert_eq!(next_run(&hourly, last, utc(2025, 6, 1, 10, 30)), Some(utc(2025, 6, 1, 11, 0)));
}

#[test]
fn bad_timings_name_the_field() {
    let err = |cron: &str, every: Option<Millis>, tz: &str| Timing::new(cron, every, tz).unwrap_err();
    assert_eq!(err("0 0 3 * * *", None, "").field, "cron");
    assert_eq!(err("61 * * * *", None, "").field, "cron");
    assert_eq!(err("", None, "").field, "cron");
    assert_eq!(err("0 3 * * *", Some(60_000), "").field, "every");
    assert_eq!(err("", Some(999), "").field, "every");
    assert_eq!(err("0 3 * * *", None, "Mars/Olympus").field, "timezone");
    assert_eq!(err("", Some(60_000), "Europe/Berlin").field, "timezone");
    assert!(Timing::new("0 3 * * MON-FRI", None, "America/New_York").is_ok());
}

#[test]
fn catch_up_parses_its_three_names() {
    assert_eq!("none".parse(), Ok(CatchUp::None));
    assert_eq!("one".parse(), Ok(CatchUp::One));
    assert_eq!("all".parse(), Ok(CatchUp::All));
    assert!("some".parse::<CatchUp>().is_err());
}

#[test]
fn a_schedule_checks_its_name_queue_and_kind() {
    let good = Schedule {
        name: "nightly-report".into(),
        cron: "0 3 * * *".into(),
        queue: "reports".into(),
        kind: "k".into(),
        ..Schedule::default()
    };
    assert_eq!(good.check(), []);
    let bad = Schedule { name: "a b".into(), queue: String::new(), kind: String::new(), ..good };
    let fields: Vec<_> = bad.check().into_iter().map(|e| e.field).collect();
    assert_eq!(fields, ["name", "queue", "kind"]);
}

#[test]
fn a_pattern_that_matches_no_date_is_refused() {
    let err = Timing::new("0 0 31 2 *", None, "").unwrap_err();
    assert_eq!(err.field, "cron");
    assert!(err.message.contains("matches no date"), "{err}");
    // February 29th exists, in leap years only.
    let leap = cron("0 0 29 2 *", "");
    assert_eq!(leap.next_after(utc(2026, 1, 1, 0, 0)), Some(utc(2028, 2, 29, 0, 0)));
}
