//! Conversions of `taskbroker.v1.Schedule` to and from the domain's
//! [`Schedule`]; the AdminService handlers in [`super::admin`] use them.

use super::convert::{duration_field, timestamp};
use crate::broker::{BrokerError, ScheduleInfo};
use crate::core::millis;
use crate::core::schedule::{CatchUp, Schedule, ScheduleSource};
use crate::pb;

/// A PutSchedule's schedule (output-only fields ignored); `since` is the
/// broker's to set.
impl TryFrom<pb::Schedule> for Schedule {
    type Error = BrokerError;

    fn try_from(s: pb::Schedule) -> Result<Self, Self::Error> {
        let pb::Schedule {
            name,
            cron,
            every,
            timezone,
            queue,
            kind,
            payload,
            headers,
            catch_up,
            source: _,
            last_run_time: _,
            next_run_time: _,
        } = s;
        let every = duration_field("schedule.every", every)?.map(millis);
        let catch_up = match pb::ScheduleCatchUp::try_from(catch_up) {
            Ok(pb::ScheduleCatchUp::Unspecified | pb::ScheduleCatchUp::One) => CatchUp::One,
            Ok(pb::ScheduleCatchUp::None) => CatchUp::None,
            Ok(pb::ScheduleCatchUp::All) => CatchUp::All,
            Err(_) => return Err(BrokerError::invalid("schedule.catch_up", "must be NONE, ONE or ALL")),
        };
        Ok(Schedule {
            name,
            cron,
            every,
            timezone,
            queue,
            kind,
            payload,
            headers: headers.into_iter().collect(),
            catch_up,
            source: ScheduleSource::Runtime,
            since: 0,
        })
    }
}

/// A schedule as listed.
pub fn schedule_pb(info: ScheduleInfo) -> pb::Schedule {
    let ScheduleInfo { stored, next_run } = info;
    let Schedule { name, cron, every, timezone, queue, kind, payload, headers, catch_up, source, since: _ } =
        stored.schedule;
    pb::Schedule {
        name,
        cron,
        every: every.map(|ms| super::convert::duration_pb(std::time::Duration::from_millis(ms))),
        timezone,
        queue,
        kind,
        payload,
        headers: headers.into_iter().collect(),
        catch_up: match catch_up {
            CatchUp::None => pb::ScheduleCatchUp::None,
            CatchUp::One => pb::ScheduleCatchUp::One,
            CatchUp::All => pb::ScheduleCatchUp::All,
        } as i32,
        source: match source {
            ScheduleSource::Config => pb::ScheduleSource::Config,
            ScheduleSource::Runtime => pb::ScheduleSource::Runtime,
        } as i32,
        last_run_time: stored.last_fired.map(timestamp),
        next_run_time: next_run.map(timestamp),
    }
}
