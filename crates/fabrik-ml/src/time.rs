//! Civil timestamps of the benchmark files (`YYYY-MM-DD HH:MM:SS[.ffffff]`, no time zone) as
//! nanoseconds since the Unix epoch, the unit of `fabrik_core::Timestamp`.
//!
//! The benchmarks write wall-clock times without a zone; they are read as if they were UTC, so
//! the hour of day computed here is the hour field exactly as written in the file.

use crate::MlError;

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
const NANOS_PER_HOUR: i64 = 3_600 * NANOS_PER_SECOND;

/// Parses `YYYY-MM-DD HH:MM:SS` with an optional fraction of up to 9 digits into
/// nanoseconds since 1970-01-01 00:00:00. As leniently as pandas reads the benchmarks' files:
/// spaces around it, `T` or any run of spaces between date and time, `/` in the date, one-digit
/// month, day, hour, minute or second, and no seconds at all.
pub fn parse_civil_timestamp(text: &str) -> Result<i64, MlError> {
    let fail = |reason| MlError::Timestamp {
        text: text.to_owned(),
        reason,
    };
    let shape = "expected YYYY-MM-DD HH:MM:SS";
    let trimmed = text.trim();
    let (date, time) = match trimmed.split_once('T') {
        Some((date, time)) => (date, time),
        None => trimmed
            .split_once(char::is_whitespace)
            .map(|(date, time)| (date, time.trim_start()))
            .ok_or_else(|| fail(shape))?,
    };
    let number = |digits: &str, most: usize| -> Result<i64, MlError> {
        if digits.is_empty()
            || digits.len() > most
            || !digits.bytes().all(|digit| digit.is_ascii_digit())
        {
            return Err(fail(shape));
        }
        Ok(digits
            .bytes()
            .fold(0_i64, |acc, digit| acc * 10 + i64::from(digit - b'0')))
    };
    let separator = if date.contains('/') { '/' } else { '-' };
    let mut date_parts = date.split(separator);
    let (Some(year), Some(month), Some(day), None) = (
        date_parts.next(),
        date_parts.next(),
        date_parts.next(),
        date_parts.next(),
    ) else {
        return Err(fail(shape));
    };
    if year.len() != 4 {
        return Err(fail(shape));
    }
    let (year, month, day) = (number(year, 4)?, number(month, 2)?, number(day, 2)?);
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let mut clock_parts = clock.split(':');
    let (Some(hour), Some(minute), second, None) = (
        clock_parts.next(),
        clock_parts.next(),
        clock_parts.next(),
        clock_parts.next(),
    ) else {
        return Err(fail(shape));
    };
    let (hour, minute) = (number(hour, 2)?, number(minute, 2)?);
    let second = second.map_or(Ok(0), |second| number(second, 2))?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(fail("no such date"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(fail("no such time of day"));
    }
    let fraction_nanos = match fraction {
        None => 0,
        Some(digits) => {
            if digits.is_empty()
                || digits.len() > 9
                || !digits.bytes().all(|digit| digit.is_ascii_digit())
            {
                return Err(fail(
                    "expected a fraction of 1 to 9 digits after the seconds",
                ));
            }
            number(digits, 9)? * 10_i64.pow(9 - u32::try_from(digits.len()).unwrap_or(9))
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * SECONDS_PER_DAY + hour * 3_600 + minute * 60 + second;
    Ok(seconds * NANOS_PER_SECOND + fraction_nanos)
}

/// The hour of day, 0..=23, of a timestamp in nanoseconds since the epoch.
pub fn hour_of_day(timestamp_ns: i64) -> u8 {
    // rem_euclid keeps times before 1970 on the right hour; the result is < 24.
    u8::try_from(timestamp_ns.div_euclid(NANOS_PER_HOUR).rem_euclid(24)).unwrap_or(0)
}

/// Whole seconds since the epoch of a timestamp in nanoseconds (floor).
pub fn seconds_of(timestamp_ns: i64) -> i64 {
    timestamp_ns.div_euclid(NANOS_PER_SECOND)
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_instants() -> Result<(), MlError> {
        assert_eq!(parse_civil_timestamp("1970-01-01 00:00:00")?, 0);
        // 2014-07-01 00:30:00 UTC = 1404174600 s.
        assert_eq!(
            parse_civil_timestamp("2014-07-01 00:30:00")?,
            1_404_174_600 * NANOS_PER_SECOND
        );
        assert_eq!(
            parse_civil_timestamp("2014-07-01 00:30:00.000000")?,
            parse_civil_timestamp("2014-07-01 00:30:00")?
        );
        assert_eq!(
            parse_civil_timestamp("2000-02-29 12:00:00.5")?,
            951_825_600 * NANOS_PER_SECOND + 500_000_000
        );
        Ok(())
    }

    #[test]
    fn reads_what_pandas_reads() -> Result<(), MlError> {
        let canonical = parse_civil_timestamp("2020-03-09 10:34:05")?;
        for variant in [
            "2020-03-09T10:34:05",
            " 2020-03-09 10:34:05 ",
            "2020-03-09  10:34:05",
            "2020-3-9 10:34:05",
            "2020/03/09 10:34:05",
            "2020-03-09 10:34:05.000",
            "2020-03-09 10:34:5",
        ] {
            assert_eq!(parse_civil_timestamp(variant)?, canonical, "{variant}");
        }
        assert_eq!(
            parse_civil_timestamp("2020-03-09 10:34")?,
            canonical - 5 * NANOS_PER_SECOND
        );
        Ok(())
    }

    #[test]
    fn hour_is_the_written_hour_field() -> Result<(), MlError> {
        assert_eq!(
            hour_of_day(parse_civil_timestamp("2015-09-08 11:39:00")?),
            11
        );
        assert_eq!(
            hour_of_day(parse_civil_timestamp("1969-12-31 23:59:59")?),
            23
        );
        Ok(())
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "2014-07-01",
            "14-07-01 00:00:00",
            "2014-07/01 00:00:00",
            "2014-07-01 00",
            "2014-07-01 00:00:00:00",
            "2014-07-01 00:00:00.",
            "2014-13-01 00:00:00",
            "2014-02-30 00:00:00",
            "2014-07-01 24:00:00",
            "2014-07-01 00:00:00,5",
            "2014-07-01 00:00:0x",
        ] {
            assert!(parse_civil_timestamp(bad).is_err(), "{bad}");
        }
    }
}
