//! When repeatable jobs run: every fixed interval, or on a cron schedule in a time zone (UTC
//! unless named). Pure: no Redis.

use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::{Error, Result};

/// When a repeatable job runs. Times are in milliseconds since the Unix epoch.
///
/// ```
/// use std::time::Duration;
/// use geostack_jobs::Schedule;
///
/// let hourly = Schedule::cron("0 * * * *").unwrap();
/// // 2026-12-01 17:40:13 UTC → 18:00:00.
/// assert_eq!(hourly.next_after(1_796_146_813_000), Some(1_796_148_000_000));
/// // Weekdays at 9:00 in Paris: 8:00 UTC in winter.
/// let paris = Schedule::cron("0 9 * * MON-FRI Europe/Paris").unwrap();
/// assert_eq!(paris.next_after(1_796_146_813_000), Some(1_796_198_400_000));
/// let every = Schedule::every(Duration::from_secs(30)).unwrap();
/// assert_eq!(every.next_after(1_000), Some(30_000));
/// assert!(Schedule::cron("61 * * * *").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// At every multiple of this interval since the epoch.
    Every(Duration),
    /// On a cron expression: `[second] minute hour day-of-month month day-of-week [zone]`.
    Cron(Cron),
}

impl Schedule {
    /// Every `interval` (at least a second), at its multiples since the epoch.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an interval under a second.
    pub fn every(interval: Duration) -> Result<Self> {
        if interval < Duration::from_secs(1) {
            return Err(Error::invalid("schedule", "an interval of at least 1 s"));
        }
        Ok(Self::Every(interval))
    }

    /// A cron expression, parsed by [croner](https://docs.rs/croner):
    /// `minute hour day-of-month month day-of-week`, optionally preceded by a seconds field and
    /// followed by an IANA time zone (`Europe/Paris`; UTC when absent), as Sidekiq-cron and
    /// BullMQ take them. Each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`,
    /// or a comma-separated list of those; months `JAN`–`DEC` and days `SUN`–`SAT` by name,
    /// days of week 0–7 (0 and 7 are Sunday); `L`, `W` and `#` (last day, nearest weekday,
    /// nth weekday) and `@daily`-style nicknames. As in Vixie cron, when both day fields are
    /// restricted a day matching either runs. Across a daylight-saving change a time that does
    /// not exist runs at the first instant after the gap, and a repeated one once.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an expression that does not parse or never runs.
    pub fn cron(expression: &str) -> Result<Self> {
        let cron = Cron::parse(expression)?;
        let schedule = Self::Cron(cron);
        // One run within about eight years, or it is no schedule.
        if schedule.next_after(0).is_none() {
            return Err(Error::invalid(
                "schedule",
                format!("{expression:?} never runs"),
            ));
        }
        Ok(schedule)
    }

    /// The first run strictly after `after_ms`, or `None` when there is none within about
    /// eight years.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match self {
            Self::Every(interval) => {
                let every = u64::try_from(interval.as_millis()).ok()?.max(1);
                (after_ms / every).checked_add(1)?.checked_mul(every)
            }
            Self::Cron(cron) => cron.next_after(after_ms),
        }
    }

    /// The stored form: `every:<ms>` or `cron:<expression>`.
    pub(crate) fn encode(&self) -> String {
        match self {
            Self::Every(d) => format!("every:{}", d.as_millis()),
            Self::Cron(c) => format!("cron:{}", c.expression),
        }
    }

    pub(crate) fn decode(stored: &str) -> Result<Self> {
        match stored.split_once(':') {
            Some(("every", ms)) => ms
                .parse()
                .map(|ms| Self::Every(Duration::from_millis(ms)))
                .map_err(|_| Error::invalid("schedule", format!("stored {stored:?}"))),
            Some(("cron", expression)) => Self::cron(expression),
            _ => Err(Error::invalid("schedule", format!("stored {stored:?}"))),
        }
    }
}

/// A parsed cron expression and the time zone it runs in.
#[derive(Clone, Debug)]
pub struct Cron {
    /// The expression as given (fields separated by single spaces): its stored form.
    expression: String,
    cron: std::sync::Arc<croner::Cron>,
    zone: TimeZone,
}

impl PartialEq for Cron {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

impl Eq for Cron {}

impl Cron {
    fn parse(expression: &str) -> Result<Self> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let bad = |why: String| Error::invalid("cron expression", format!("{expression:?}: {why}"));
        // A last field that names a time zone (no cron field starts with a letter and is one).
        let zone = fields
            .split_last()
            .filter(|(last, rest)| {
                rest.len() >= 5 && last.starts_with(|c: char| c.is_ascii_alphabetic())
            })
            .and_then(|(last, _)| TimeZone::get(last).ok().map(|tz| (*last, tz)));
        let (pattern, zone) = match zone {
            Some((_, tz)) => (&fields[..fields.len() - 1], tz),
            None => (&fields[..], TimeZone::UTC),
        };
        if !(5..=6).contains(&pattern.len()) && !pattern.first().is_some_and(|f| f.starts_with('@'))
        {
            return Err(bad(
                "expected five fields (six with seconds first), then an optional time zone".into(),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(&pattern.join(" "))
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            expression: fields.join(" "),
            cron: std::sync::Arc::new(cron),
            zone,
        })
    }

    /// The first run strictly after `after_ms`.
    fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after = i64::try_from(after_ms).ok()?;
        let mut from = Timestamp::from_millisecond(after)
            .ok()?
            .to_zoned(self.zone.clone());
        // The search works in whole seconds: a run within the second of `after_ms` but not
        // after it is skipped.
        for _ in 0..2 {
            let next = self.cron.find_next_occurrence(&from, false).ok()?;
            let ms = next.timestamp().as_millisecond();
            if ms > after {
                return u64::try_from(ms).ok();
            }
            from = next;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y-mo-d h:mi` UTC in epoch milliseconds.
    fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> u64 {
        in_zone(y, mo, d, h, mi, "UTC")
    }

    /// `y-mo-d h:mi` in `zone` in epoch milliseconds.
    fn in_zone(y: i16, mo: i8, d: i8, h: i8, mi: i8, zone: &str) -> u64 {
        let ms = jiff::civil::date(y, mo, d)
            .at(h, mi, 0, 0)
            .in_tz(zone)
            .unwrap()
            .timestamp()
            .as_millisecond();
        u64::try_from(ms).unwrap()
    }

    #[test]
    fn cron_expressions_find_their_next_run() {
        let next = |expr: &str, after: u64| Schedule::cron(expr).unwrap().next_after(after);
        let now = at(2026, 12, 1, 17, 40) + 13_000; // a Tuesday
        assert_eq!(next("* * * * *", now), Some(at(2026, 12, 1, 17, 41)));
        assert_eq!(next("*/15 * * * *", now), Some(at(2026, 12, 1, 17, 45)));
        assert_eq!(next("0 9 * * *", now), Some(at(2026, 12, 2, 9, 0)));
        assert_eq!(next("30 2 1 * *", now), Some(at(2027, 1, 1, 2, 30)));
        // Mondays at 8:00; Sunday as 7 or 0.
        assert_eq!(next("0 8 * * 1", now), Some(at(2026, 12, 7, 8, 0)));
        assert_eq!(next("0 8 * * 7", now), next("0 8 * * 0", now));
        assert_eq!(next("0 8 * * 0", now), Some(at(2026, 12, 6, 8, 0)));
        // Both day fields restricted: either matches (the 13th, or any Friday).
        assert_eq!(next("0 0 13 * 5", now), Some(at(2026, 12, 4, 0, 0)));
        // Leap days, ranges, lists.
        assert_eq!(next("0 0 29 2 *", now), Some(at(2028, 2, 29, 0, 0)));
        assert_eq!(next("5,10 1-2 * 1,6 *", now), Some(at(2027, 1, 1, 1, 5)));
        // Strictly after: a run at `now` itself is not the next one.
        assert_eq!(
            next("0 9 * * *", at(2026, 12, 2, 9, 0)),
            Some(at(2026, 12, 3, 9, 0))
        );
        // Names of days and months.
        assert_eq!(next("0 8 * * MON", now), Some(at(2026, 12, 7, 8, 0)));
        assert_eq!(next("0 0 1 JAN *", now), Some(at(2027, 1, 1, 0, 0)));
        assert_eq!(next("0 9 * * MON-FRI", now), Some(at(2026, 12, 2, 9, 0)));
        // Seconds first, when there are six fields.
        assert_eq!(next("*/10 * * * * *", now), Some(now + 7_000));
        assert_eq!(
            next("30 0 9 * * *", now),
            Some(at(2026, 12, 2, 9, 0) + 30_000)
        );
        // Within the second of `now`, the next run is a second later.
        assert_eq!(next("* * * * * *", now + 500), Some(now + 1_000));
        // The last day of the month.
        assert_eq!(next("0 0 L * *", now), Some(at(2026, 12, 31, 0, 0)));
    }

    #[test]
    fn cron_expressions_run_in_their_time_zone_across_daylight_saving() {
        let next = |expr: &str, after: u64| Schedule::cron(expr).unwrap().next_after(after);
        let now = at(2026, 12, 1, 17, 40);
        // 9:00 in Paris is 8:00 UTC in winter, 7:00 UTC in summer.
        assert_eq!(
            next("0 9 * * * Europe/Paris", now),
            Some(at(2026, 12, 2, 8, 0))
        );
        assert_eq!(
            next("0 9 * * * Europe/Paris", at(2027, 6, 1, 12, 0)),
            Some(at(2027, 6, 2, 7, 0))
        );
        // New York springs forward on 2027-03-14 at 2:00: 2:30 does not exist that day, and
        // the run comes right after the gap; the next day it is 2:30 again.
        let before = in_zone(2027, 3, 14, 0, 0, "America/New_York");
        let first = next("30 2 * * * America/New_York", before).unwrap();
        assert_eq!(first, in_zone(2027, 3, 14, 3, 0, "America/New_York"));
        assert_eq!(
            next("30 2 * * * America/New_York", first),
            Some(in_zone(2027, 3, 15, 2, 30, "America/New_York"))
        );
        // An unknown zone is no zone: seven fields do not parse.
        assert!(Schedule::cron("0 9 * * * Mars/Olympus").is_err());
    }

    #[test]
    fn bad_and_impossible_expressions_are_refused() {
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "0 0 30 2 *",
            "* * * * * * * *",
            "0 9 * * FUNDAY",
        ] {
            assert!(Schedule::cron(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn intervals_land_on_their_multiples_and_round_trip_stored() {
        let s = Schedule::every(Duration::from_secs(60)).unwrap();
        assert_eq!(s.next_after(59_999), Some(60_000));
        assert_eq!(s.next_after(60_000), Some(120_000));
        assert!(Schedule::every(Duration::from_millis(999)).is_err());
        for s in [
            s,
            Schedule::cron("0 9 * * 1-5").unwrap(),
            Schedule::cron("0 0 9 * * MON-FRI Europe/Paris").unwrap(),
        ] {
            assert_eq!(Schedule::decode(&s.encode()).unwrap(), s);
        }
    }
}
