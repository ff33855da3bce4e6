//! Civil dates and UTC times without a date library (Howard Hinnant's algorithms).

use std::fmt;

/// Seconds since 1970-01-01T00:00:00Z.
pub type UnixTime = i64;

pub const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if month <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        month,
        day,
    )
}

/// 1-based day of the year of a day number.
pub fn day_of_year(days: i64) -> i64 {
    let (year, _, _) = civil_from_days(days);
    days - days_from_civil(year, 1, 1) + 1
}

/// A day number shown as `YYYY-MM-DD`: formats where it is written, no `String`.
#[derive(Debug, Clone, Copy)]
pub struct Date(pub i64);

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// A time shown as `YYYY-MM-DDTHH:MM:SSZ`.
#[derive(Debug, Clone, Copy)]
pub struct Utc(pub UnixTime);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.rem_euclid(DAY);
        write!(
            f,
            "{}T{:02}:{:02}:{:02}Z",
            Date(self.0.div_euclid(DAY)),
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(t: UnixTime) -> String {
    Utc(t).to_string()
}

fn number(text: &str, digits: usize) -> Option<i64> {
    (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` or `...+00:00` (UTC only).
pub fn parse_utc(text: &str) -> Option<UnixTime> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (
            date,
            Some(
                time.strip_suffix('Z')
                    .or_else(|| time.strip_suffix("+00:00"))?,
            ),
        ),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let (year, month, day) = (
        number(parts.next()?, 4)?,
        number(parts.next()?, 2)?,
        number(parts.next()?, 2)?,
    );
    if parts.next().is_some() || !(1..=12).contains(&month) || day < 1 {
        return None;
    }
    let (month, day) = (month as u32, day as u32);
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) {
        return None; // 2025-02-30
    }
    let seconds = match time {
        None => 0,
        Some(time) => {
            let mut hms = time.split(':');
            let (h, m, s) = (
                number(hms.next()?, 2)?,
                number(hms.next()?, 2)?,
                number(hms.next()?, 2)?,
            );
            if hms.next().is_some() || h > 23 || m > 59 || s > 59 {
                return None;
            }
            h * 3600 + m * 60 + s
        }
    };
    Some(days * DAY + seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for days in [-800_000, -1, 0, 1, 11_016, 19_000, 20_273, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(Date(0).to_string(), "1970-01-01");
        assert_eq!(Date(days_from_civil(2024, 2, 29)).to_string(), "2024-02-29");
        assert_eq!(day_of_year(days_from_civil(2025, 12, 31)), 365);
        assert_eq!(day_of_year(days_from_civil(2024, 12, 31)), 366);
    }

    #[test]
    fn parses_utc_times() {
        let t = parse_utc("2025-07-04T15:30:09Z").unwrap();
        assert_eq!(format_utc(t), "2025-07-04T15:30:09Z");
        assert_eq!(parse_utc("2025-07-04T15:30:09+00:00"), Some(t));
        assert_eq!(
            format_utc(parse_utc("2025-07-04").unwrap()),
            "2025-07-04T00:00:00Z"
        );
        for bad in [
            "2025-02-30",
            "2025-13-01",
            "25-07-04",
            "2025-07-04T25:00:00Z",
            "2025-07-04T12:00:00+02:00",
            "today",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}
