//! When repeatable jobs run: every fixed interval, or on a cron schedule (UTC). Pure: no Redis.

use std::time::Duration;

use crate::{Error, Result};

/// When a repeatable job runs. Times are UTC, in milliseconds since the Unix epoch.
///
/// ```
/// use std::time::Duration;
/// use geostack_jobs::Schedule;
///
/// let hourly = Schedule::cron("0 * * * *").unwrap();
/// // 2026-12-01 17:40:13 UTC → 18:00:00.
/// assert_eq!(hourly.next_after(1_796_146_813_000), Some(1_796_148_000_000));
/// let every = Schedule::every(Duration::from_secs(30)).unwrap();
/// assert_eq!(every.next_after(1_000), Some(30_000));
/// assert!(Schedule::cron("61 * * * *").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// At every multiple of this interval since the epoch.
    Every(Duration),
    /// On a five-field cron expression: minute, hour, day of month, month, day of week.
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

    /// A cron expression: `minute hour day-of-month month day-of-week`, each `*`, a number, a
    /// range `a-b`, a step `*/n` or `a-b/n`, or a comma-separated list of those; days of week 0–7
    /// (0 and 7 are Sunday). As in Vixie cron, when both day fields are restricted a day
    /// matching either runs.
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

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    expression: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    any_day: bool,
    any_weekday: bool,
}

impl Cron {
    fn parse(expression: &str) -> Result<Self> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let bad = |why: String| Error::invalid("cron expression", format!("{expression:?}: {why}"));
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(bad("expected five fields".into()));
        };
        let field = |text: &str, lo: u32, hi: u32, name: &str| {
            parse_field(text, lo, hi).ok_or_else(|| bad(format!("bad {name} field {text:?}")))
        };
        let mut weekdays = field(weekday, 0, 7, "day-of-week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Self {
            expression: fields.join(" "),
            minutes: field(minute, 0, 59, "minute")?,
            hours: field(hour, 0, 23, "hour")?,
            days: field(day, 1, 31, "day-of-month")?,
            months: field(month, 1, 12, "month")?,
            weekdays,
            any_day: day == "*",
            any_weekday: weekday == "*",
        })
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let d = self.days & (1 << day) != 0;
        let w = self.weekdays & (1 << weekday) != 0;
        match (self.any_day, self.any_weekday) {
            (false, false) => d || w,
            (false, true) => d,
            (true, false) => w,
            (true, true) => true,
        }
    }

    fn next_after(&self, after_ms: u64) -> Option<u64> {
        const MINUTE: u64 = 60;
        let mut t = (after_ms / 1000 / MINUTE + 1) * MINUTE;
        // Each turn moves to the next month, day, hour or minute that can match: bounded.
        for _ in 0..200_000 {
            let days = t / 86_400;
            let (year, month, day) = civil_from_days(i64::try_from(days).ok()?);
            let weekday = u32::try_from((days + 4) % 7).ok()?; // 1970-01-01 was a Thursday
            let secs = t % 86_400;
            let (hour, minute) = (
                u32::try_from(secs / 3600).ok()?,
                u32::try_from(secs % 3600 / 60).ok()?,
            );
            if self.months & (1 << month) == 0 {
                let (y, m) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                t = u64::try_from(days_from_civil(y, m, 1)).ok()? * 86_400;
            } else if !self.day_matches(day, weekday) {
                t = (days + 1) * 86_400;
            } else if self.hours & (1 << hour) == 0 {
                t = (t / 3600 + 1) * 3600;
            } else if self.minutes & (1 << minute) == 0 {
                t += MINUTE;
            } else {
                return t.checked_mul(1000);
            }
        }
        None
    }
}

/// One cron field as a bit set of the values it allows, or `None` when it does not parse.
fn parse_field(text: &str, lo: u32, hi: u32) -> Option<u64> {
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                None => {
                    let v: u32 = r.parse().ok()?;
                    (v, if part.contains('/') { hi } else { v })
                }
            },
        };
        if from < lo || to > hi || from > to {
            return None;
        }
        let mut v = from;
        while v <= to {
            set |= 1 << v;
            v += step;
        }
    }
    Some(set)
}

/// Days since 1970-01-01 to (year, month 1–12, day 1–31), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, mo: u32, d: u32, h: u64, mi: u64) -> u64 {
        (days_from_civil(y, mo, d) as u64 * 86_400 + h * 3600 + mi * 60) * 1000
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468, -1, 0, 59, 60, 11_016, 20_788, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
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
        for s in [s, Schedule::cron("0 9 * * 1-5").unwrap()] {
            assert_eq!(Schedule::decode(&s.encode()).unwrap(), s);
        }
    }
}
