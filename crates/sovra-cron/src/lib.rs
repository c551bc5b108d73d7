//! pg_cron's schedule syntax, parsed without IO, and the next time a
//! schedule fires.
//!
//! Accepted (case-insensitive; fields separated by spaces or tabs):
//!
//! - `'N seconds'` (or `'N second'`), `N` from 1 to 59: every `N` seconds,
//!   on the multiples of `N` within each minute (pg_cron's interval jobs);
//! - the macros `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//!   `@midnight`, `@hourly`;
//! - five fields `minute hour day-of-month month day-of-week`, each a
//!   comma-separated list of `*`, `N`, `N-M`, `*/S` or `N-M/S`, with month
//!   names (`jan`..`dec`) and day names (`sun`..`sat`), day of week 0–7
//!   (0 and 7 are Sunday), and `$` in the day of month for the month's last
//!   day. As in vixie cron, when both day fields are restricted a day that
//!   matches either one fires; when one starts with `*`, both must match.
//!
//! Refused: anything else, including numbers of more than four digits,
//! ranges that run backwards, steps of zero, a step after a single number,
//! and any character that is not printable ASCII or a tab. The SQL check
//! `cron._schedule_ok` in the migration implements the same grammar; a
//! differential test keeps them equal.
//!
//! Times are seconds since the Unix epoch, in UTC (pg_cron's default
//! `cron.timezone`).

#![forbid(unsafe_code)]

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule: {0}")]
pub struct ParseError(pub &'static str);

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every `n` seconds (1–59).
    Seconds(u32),
    /// A five-field cron schedule.
    Cron(Cron),
}

/// The sets of a five-field schedule, as bit masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    /// Bits 1–31.
    days: u32,
    /// `$`: the last day of the month.
    last_day: bool,
    /// Bits 1–12.
    months: u16,
    /// Bits 0–6 (Sunday is 0).
    weekdays: u8,
    day_star: bool,
    weekday_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn is_sep(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Parses a schedule as `cron.schedule` accepts it.
pub fn parse(input: &str) -> Result<Schedule, ParseError> {
    if !input.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
        return Err(ParseError("only printable ASCII characters are allowed"));
    }
    let lower = input.to_ascii_lowercase();
    let text = lower.trim_matches(is_sep);
    if let Some(n) = seconds(text)? {
        return Ok(Schedule::Seconds(n));
    }
    let expanded = match text {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other if other.starts_with('@') => return Err(ParseError("unknown macro")),
        other => other,
    };
    let fields: Vec<&str> = expanded.split(is_sep).filter(|f| !f.is_empty()).collect();
    let [minute, hour, day, month, weekday] = fields[..] else {
        return Err(ParseError("a schedule has five fields"));
    };
    let minutes = field(minute, 0, 59, &[], false)?;
    let hours = field(hour, 0, 23, &[], false)?;
    let days = field(day, 1, 31, &[], true)?;
    let months = field(month, 1, 12, &MONTHS, false)?;
    let weekdays = field(weekday, 0, 7, &DAYS, false)?;
    // 7 is Sunday too.
    let weekdays = (weekdays.bits | (weekdays.bits >> 7)) & 0x7f;
    Ok(Schedule::Cron(Cron {
        minutes: minutes.bits,
        hours: minutes_to_u32(hours.bits),
        days: minutes_to_u32(days.bits),
        last_day: days.last,
        months: u16::try_from(months.bits).unwrap_or(0),
        weekdays: u8::try_from(weekdays).unwrap_or(0),
        day_star: day.starts_with('*'),
        weekday_star: weekday.starts_with('*'),
    }))
}

fn minutes_to_u32(bits: u64) -> u32 {
    u32::try_from(bits).unwrap_or(0)
}

/// `N seconds`, `N second`, with optional blanks between.
fn seconds(text: &str) -> Result<Option<u32>, ParseError> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits_end == 0 {
        return Ok(None);
    }
    let rest = text[digits_end..].trim_start_matches(is_sep);
    if rest != "seconds" && rest != "second" {
        return Ok(None);
    }
    let n = number(&text[..digits_end])?;
    if !(1..=59).contains(&n) {
        return Err(ParseError("seconds must be from 1 to 59"));
    }
    Ok(Some(n))
}

/// One to four ASCII digits.
fn number(text: &str) -> Result<u32, ParseError> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError("expected a number of one to four digits"));
    }
    text.parse().map_err(|_| ParseError("expected a number"))
}

struct Field {
    bits: u64,
    last: bool,
}

fn value(text: &str, names: &[&str]) -> Result<u32, ParseError> {
    if let Some(i) = names.iter().position(|n| *n == text) {
        return Ok(u32::try_from(i).unwrap_or(0) + u32::from(names.len() == 12));
    }
    number(text)
}

fn field(
    text: &str,
    low: u32,
    high: u32,
    names: &[&str],
    dollar: bool,
) -> Result<Field, ParseError> {
    let mut out = Field {
        bits: 0,
        last: false,
    };
    for item in text.split(',') {
        if dollar && item == "$" {
            out.last = true;
            continue;
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(number(step)?)),
            None => (item, None),
        };
        let (from, to) = if range == "*" {
            (low, high)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names)?, value(b, names)?)
        } else {
            if step.is_some() {
                return Err(ParseError("a step needs a range or *"));
            }
            let v = value(range, names)?;
            (v, v)
        };
        if from < low || to > high {
            return Err(ParseError("value out of range"));
        }
        if from > to {
            return Err(ParseError("range runs backwards"));
        }
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(ParseError("step must be at least 1"));
        }
        let mut v = from;
        while v <= to {
            out.bits |= 1 << v;
            v += step;
        }
    }
    Ok(out)
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn month_length(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// How far ahead [`Schedule::next_after`] looks before giving up on a
/// schedule that never fires (such as February 30th).
const HORIZON_DAYS: i64 = 366 * 5;

impl Cron {
    fn day_matches(&self, y: i64, m: u32, d: u32, days_since_epoch: i64) -> bool {
        let last = month_length(y, m);
        let dom = self.days & (1 << d) != 0 || (self.last_day && d == last);
        // 1970-01-01 was a Thursday (4).
        let dow_index = (days_since_epoch + 4).rem_euclid(7);
        let dow = self.weekdays & (1 << dow_index) != 0;
        if self.day_star || self.weekday_star {
            dom && dow
        } else {
            dom || dow
        }
    }
}

impl Schedule {
    /// Whether the schedule fires at `t` (seconds since the epoch, UTC).
    pub fn fires_at(&self, t: i64) -> bool {
        match self {
            Schedule::Seconds(n) => t.rem_euclid(60) % i64::from(*n) == 0,
            Schedule::Cron(cron) => {
                if t.rem_euclid(60) != 0 {
                    return false;
                }
                let day = t.div_euclid(86_400);
                let minute_of_day = t.rem_euclid(86_400) / 60;
                let (y, m, d) = civil(day);
                cron.months & (1 << m) != 0
                    && cron.day_matches(y, m, d, day)
                    && cron.hours & (1 << (minute_of_day / 60)) != 0
                    && cron.minutes & (1 << (minute_of_day % 60)) != 0
            }
        }
    }

    /// The first time strictly after `after` (seconds since the epoch, UTC)
    /// at which the schedule fires, or `None` if it fires on no day in the
    /// next five years.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        match self {
            Schedule::Seconds(n) => {
                let n = i64::from(*n);
                let minute = after.div_euclid(60) * 60;
                let within = after - minute;
                let next = (within / n + 1) * n;
                Some(if next >= 60 {
                    minute + 60
                } else {
                    minute + next
                })
            }
            Schedule::Cron(cron) => cron.next_after(after),
        }
    }
}

impl Cron {
    fn next_after(&self, after: i64) -> Option<i64> {
        let start_minute = after.div_euclid(60) + 1;
        let mut day = start_minute.div_euclid(1440);
        let mut minute_of_day = start_minute.rem_euclid(1440);
        let end = day + HORIZON_DAYS;
        while day <= end {
            let (y, m, d) = civil(day);
            if self.months & (1 << m) == 0 {
                // The first day of the next month.
                day += i64::from(month_length(y, m) - d + 1);
                minute_of_day = 0;
                continue;
            }
            if !self.day_matches(y, m, d, day) {
                day += 1;
                minute_of_day = 0;
                continue;
            }
            while minute_of_day < 1440 {
                let hour = minute_of_day / 60;
                if self.hours & (1 << hour) == 0 {
                    minute_of_day = (hour + 1) * 60;
                    continue;
                }
                if self.minutes & (1 << (minute_of_day % 60)) != 0 {
                    return Some((day * 1440 + minute_of_day) * 60);
                }
                minute_of_day += 1;
            }
            day += 1;
            minute_of_day = 0;
        }
        None
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// 2026-12-07 00:00:00 UTC, a Monday.
    const MONDAY: i64 = 1_796_601_600;

    fn next(s: &str, after: i64) -> i64 {
        parse(s).unwrap().next_after(after).unwrap()
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(MONDAY / 86_400), (2026, 12, 7));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn valid_forms() {
        for s in [
            "* * * * *",
            "*/5 * * * *",
            "0 3 * * *",
            "0,30 9-17 * * mon-fri",
            "0 0 1 jan,jul *",
            "0 0 $ * *",
            "15 10 1,$ * *",
            "0 0 * * 7",
            "0 0 * * SUN",
            "1-59/2 0-23/3 1-31/10 1-12/6 0-7/2",
            "  0\t12 * * *  ",
            "@daily",
            "@Hourly",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@midnight",
            "1 seconds",
            "59 seconds",
            "10 second",
            "30seconds",
            " 5  SECONDS ",
            "0007 * * * *",
        ] {
            assert!(parse(s).is_ok(), "{s:?} should parse");
        }
    }

    #[test]
    fn invalid_forms() {
        for s in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "5-3 * * * *",
            "*/0 * * * *",
            "5/15 * * * *",
            "a * * * *",
            "* * * foo *",
            "* * * * mon-funday",
            "* * * jan-dec/0 *",
            "$ * * * *",
            "* * * $ *",
            "00000 * * * *",
            "@reboot",
            "@every 5m",
            "0 seconds",
            "60 seconds",
            "-1 seconds",
            "seconds",
            "5 minutes",
            "1,,2 * * * *",
            "* * * * *\n",
            "*\u{a0}* * * *",
            "1- * * * *",
            "-1 * * * *",
        ] {
            assert!(parse(s).is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn next_times() {
        assert_eq!(next("* * * * *", MONDAY), MONDAY + 60);
        assert_eq!(next("* * * * *", MONDAY + 59), MONDAY + 60);
        assert_eq!(next("*/15 * * * *", MONDAY + 60), MONDAY + 15 * 60);
        assert_eq!(next("0 3 * * *", MONDAY), MONDAY + 3 * 3600);
        assert_eq!(
            next("0 3 * * *", MONDAY + 3 * 3600),
            MONDAY + 86_400 + 3 * 3600
        );
        // Saturday 2026-12-12.
        assert_eq!(next("0 0 * * sat", MONDAY), MONDAY + 5 * 86_400);
        assert_eq!(next("0 0 * * 6", MONDAY), MONDAY + 5 * 86_400);
        // Sunday as 7 and as 0.
        assert_eq!(next("0 0 * * 7", MONDAY), MONDAY + 6 * 86_400);
        assert_eq!(next("0 0 * * 0", MONDAY), MONDAY + 6 * 86_400);
        // The last day of December 2026, and of February 2027.
        assert_eq!(next("0 0 $ * *", MONDAY), MONDAY + 24 * 86_400);
        let feb_28_2027 = MONDAY + (24 + 31 + 28) * 86_400;
        assert_eq!(next("0 0 $ 2 *", MONDAY), feb_28_2027);
        // The 1st of January 2027.
        assert_eq!(next("@yearly", MONDAY), MONDAY + 25 * 86_400);
        assert_eq!(next("@monthly", MONDAY), MONDAY + 25 * 86_400);
        // Either day field when both are restricted: Thursday the 10th
        // comes before Sunday the 13th.
        assert_eq!(next("0 0 10 * sun", MONDAY), MONDAY + 3 * 86_400);
        assert_eq!(next("0 0 20 * tue", MONDAY), MONDAY + 86_400);
        // Both must match when one is `*`.
        assert_eq!(next("0 0 * 1 mon", MONDAY), MONDAY + (25 + 3) * 86_400);
        // February 29th: the next leap year is 2028.
        let feb_29_2028 = 1_835_395_200;
        assert_eq!(next("0 0 29 2 *", MONDAY), feb_29_2028);
        // Never.
        assert_eq!(parse("0 0 30 2 *").unwrap().next_after(MONDAY), None);
    }

    #[test]
    fn seconds_schedules() {
        assert_eq!(next("1 seconds", MONDAY), MONDAY + 1);
        assert_eq!(next("1 seconds", MONDAY + 59), MONDAY + 60);
        assert_eq!(next("10 seconds", MONDAY + 3), MONDAY + 10);
        assert_eq!(next("10 seconds", MONDAY + 50), MONDAY + 60);
        assert_eq!(next("45 seconds", MONDAY + 45), MONDAY + 60);
        assert_eq!(next("59 seconds", MONDAY), MONDAY + 59);
    }
}
