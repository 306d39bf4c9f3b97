//! The timestamp every change is stamped with, and its HTTP date forms.
//!
//! A [`Timestamp`] counts microseconds since the Unix epoch in UTC. On the wire
//! it is an IMF-fixdate extended with a six-digit fraction of a second, such as
//! `Wed, 26 Dec 2007 16:00:15.123456 GMT`, so that a client can echo the exact
//! stamp of the last change it saw and ask for everything after it.
//!
//! # The monotonic rule
//!
//! Stamps of successive changes to one resource must be strictly increasing, or
//! a client asking for "changes after T" could miss a change that was stamped T
//! as well. The wall clock does not guarantee that: two changes can land in the
//! same microsecond, and the clock can be stepped back (NTP, an operator). So a
//! new change is never stamped with the clock alone but with
//! [`Timestamp::next_after`]: the later of the current time and the previous
//! stamp plus one microsecond. While the clock runs normally the stamp is the
//! current time; when it stalls or steps back, stamps keep advancing by one
//! microsecond until the clock catches up again.
//!
//! # Parsing
//!
//! [`parse_http_date`] accepts the three date forms of RFC 9110 §5.6.7
//! (IMF-fixdate, the obsolete RFC 850 form and the asctime form), each with an
//! optional fraction of a second after the seconds. Dates before 1970 clamp to
//! [`Timestamp::ZERO`], which reads as "everything since the beginning".

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (UTC). Every change halley stores is stamped with one.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

const MICROS_PER_SECOND: u64 = 1_000_000;
const SECONDS_PER_DAY: u64 = 86_400;
const MICROS_PER_DAY: u64 = SECONDS_PER_DAY * MICROS_PER_SECOND;

/// The last instant that can be formatted: 9999-12-31 23:59:59.999999.
/// `2_932_897` is the number of days from 1970-01-01 to 10000-01-01.
const MAX_MICROS: u64 = 2_932_897 * MICROS_PER_DAY - 1;

/// The length of the fractional form, `Wed, 26 Dec 2007 16:00:15.123456 GMT`.
const HTTP_LEN: usize = 36;
/// The length of the date and time without fraction or zone, `Wed, 26 Dec 2007 16:00:15`.
const SECONDS_PREFIX_LEN: usize = 25;

const DAY_NAMES: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const LONG_DAY_NAMES: [&[u8]; 7] = [
    b"Sunday",
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
];
const MONTH_NAMES: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

impl Timestamp {
    /// The Unix epoch, 1970-01-01 00:00:00 UTC; as a lower bound it means "everything".
    pub const ZERO: Timestamp = Timestamp(0);

    /// Makes a timestamp from microseconds since the Unix epoch.
    #[must_use]
    pub const fn from_micros(micros: u64) -> Self {
        Timestamp(micros)
    }

    /// Returns the number of microseconds since the Unix epoch.
    #[must_use]
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Reads the system clock; a clock set before the epoch gives [`Timestamp::ZERO`].
    #[must_use]
    pub fn now() -> Timestamp {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(elapsed) => Timestamp(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)),
            Err(_) => Timestamp::ZERO,
        }
    }

    /// Returns the stamp for a new change when `self` is the previous change's stamp.
    ///
    /// The result is the later of `now` and `self` plus one microsecond (saturating),
    /// so stamps strictly increase even within one microsecond and across a step
    /// back of the wall clock.
    #[must_use]
    pub fn next_after(self, now: Timestamp) -> Timestamp {
        Timestamp(now.0.max(self.0.saturating_add(1)))
    }

    /// Drops the fraction of a second.
    #[must_use]
    pub fn truncate_to_seconds(self) -> Timestamp {
        Timestamp(self.0 - self.0 % MICROS_PER_SECOND)
    }

    /// Appends the IMF-fixdate with a six-digit fraction, such as
    /// `Wed, 26 Dec 2007 16:00:15.123456 GMT` (always 36 bytes).
    ///
    /// Instants after 9999-12-31 23:59:59.999999 are written as that instant.
    pub fn write_http(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.render());
    }

    /// Appends the plain IMF-fixdate without fraction, such as
    /// `Wed, 26 Dec 2007 16:00:15 GMT` (always 29 bytes), as used by the `Date` header.
    pub fn write_http_seconds(self, out: &mut Vec<u8>) {
        let buf = self.render();
        let (prefix, _) = buf.split_at(SECONDS_PREFIX_LEN);
        out.extend_from_slice(prefix);
        out.extend_from_slice(b" GMT");
    }

    /// Returns the IMF-fixdate with a six-digit fraction as a string.
    #[must_use]
    pub fn to_http(self) -> String {
        let buf = self.render();
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Formats the fractional IMF-fixdate into a fixed buffer.
    fn render(self) -> [u8; HTTP_LEN] {
        let micros = self.0.min(MAX_MICROS);
        let days = micros / MICROS_PER_DAY;
        let micros_of_day = micros % MICROS_PER_DAY;
        let seconds_of_day = micros_of_day / MICROS_PER_SECOND;
        let fraction = micros_of_day % MICROS_PER_SECOND;
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday.
        let weekday = DAY_NAMES[((days + 4) % 7) as usize];
        let month_name = MONTH_NAMES[((month + 11) % 12) as usize];

        let mut buf = *b"Thu, 01 Jan 1970 00:00:00.000000 GMT";
        buf[0..3].copy_from_slice(weekday);
        put_digits(&mut buf[5..7], day);
        buf[8..11].copy_from_slice(month_name);
        put_digits(&mut buf[12..16], year);
        put_digits(&mut buf[17..19], seconds_of_day / 3600);
        put_digits(&mut buf[20..22], seconds_of_day / 60 % 60);
        put_digits(&mut buf[23..25], seconds_of_day % 60);
        put_digits(&mut buf[26..32], fraction);
        buf
    }
}

impl fmt::Display for Timestamp {
    /// Prints the IMF-fixdate with a six-digit fraction, as [`Timestamp::write_http`] does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.render();
        let text = std::str::from_utf8(&buf).map_err(|_| fmt::Error)?;
        f.pad(text)
    }
}

/// Writes `value` as zero-padded decimal filling `out`; higher digits that do not fit are dropped.
fn put_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        // `value % 10` is below 10, so the cast cannot truncate.
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Converts days since 1970-01-01 into (year, month 1..=12, day 1..=31).
///
/// This is Howard Hinnant's `civil_from_days`, restricted to days on or after the
/// epoch so that every intermediate value is unsigned.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Converts a civil date on or after 1970-01-01 into days since the epoch.
///
/// This is Howard Hinnant's `days_from_civil`; callers guarantee `year >= 1970`,
/// `month` in 1..=12 and `day` in 1..=31.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = year - u64::from(month <= 2);
    let era = year / 400;
    let yoe = year - era * 400; // [0, 399]
    let mp = if month > 2 { month - 3 } else { month + 9 }; // [0, 11]
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Why a date could not be parsed; the text is meant for the client that sent it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    /// The input held nothing but whitespace.
    #[error("empty date")]
    Empty,
    /// The input does not have the shape of any HTTP date form.
    #[error(
        "unrecognised date format (expected IMF-fixdate such as 'Sun, 06 Nov 1994 08:49:37.123456 GMT')"
    )]
    Unrecognised,
    /// The day name is not one the date form allows.
    #[error(
        "invalid day name (expected 'Mon' to 'Sun', or 'Monday' to 'Sunday' in the RFC 850 form)"
    )]
    InvalidDayName,
    /// The day of the month is not a number, or that month does not have such a day.
    #[error("invalid day of month")]
    InvalidDay,
    /// The month is not one of `Jan` to `Dec`.
    #[error("invalid month name (expected 'Jan' to 'Dec')")]
    InvalidMonth,
    /// The year does not have the digits the date form requires.
    #[error("invalid year (expected four digits, or two in the RFC 850 form)")]
    InvalidYear,
    /// The year is later than 9999.
    #[error("year out of range (the latest year supported is 9999)")]
    YearOutOfRange,
    /// The time of day is not `HH:MM:SS` with hour 0-23, minute 0-59 and second 0-60.
    #[error("invalid time of day (expected HH:MM:SS with hour 0-23, minute 0-59, second 0-60)")]
    InvalidTime,
    /// A `.` after the seconds is not followed by digits only.
    #[error("invalid fraction of a second (expected '.' followed by digits)")]
    InvalidFraction,
    /// The fraction of a second has more than nine digits.
    #[error("fraction too long (at most 9 digits after the '.')")]
    FractionTooLong,
    /// The zone is absent or is not `GMT`.
    #[error("missing GMT zone (the date must end in 'GMT')")]
    MissingGmt,
    /// Something follows a complete date.
    #[error("trailing characters after date")]
    TrailingCharacters,
}

/// Parses an HTTP date (RFC 9110 §5.6.7) with an optional fraction of a second.
///
/// The three forms are accepted, with optional SP/HTAB around them:
/// - IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT` or `Sun, 06 Nov 1994 08:49:37.123456 GMT`;
/// - the obsolete RFC 850 form: `Sunday, 06-Nov-94 08:49:37 GMT`, whose two-digit
///   year is read relative to the current year (see [`parse_http_date_at`]);
/// - the asctime form: `Sun Nov  6 08:49:37 1994`.
///
/// A fraction is `.` and 1 to 9 digits; digits past the sixth are truncated. A
/// weekday that does not match the date is accepted. A leap second (`:60`) is
/// read as the last microsecond of second 59, whatever its fraction, so the order
/// of instants is kept. Dates before 1970 give [`Timestamp::ZERO`].
///
/// # Errors
///
/// Returns a [`DateError`] saying what is wrong when the input is not such a
/// date, names a day that does not exist, or has a year after 9999.
pub fn parse_http_date(input: &[u8]) -> Result<Timestamp, DateError> {
    parse_with(input, current_year)
}

/// Parses an HTTP date as [`parse_http_date`] does, taking `current_year` as the
/// current year for the two-digit years of the RFC 850 form.
///
/// As RFC 9110 §5.6.7 requires, a two-digit year is read in the current century
/// unless that puts it more than 50 years after `current_year`, in which case it is
/// the most recent past year with the same last two digits.
///
/// # Errors
///
/// Fails as [`parse_http_date`] does.
pub fn parse_http_date_at(input: &[u8], current_year: u32) -> Result<Timestamp, DateError> {
    parse_with(input, || current_year)
}

/// Returns the current year by the system clock.
fn current_year() -> u32 {
    let days = Timestamp::now().0.min(MAX_MICROS) / MICROS_PER_DAY;
    let (year, _, _) = civil_from_days(days);
    u32::try_from(year).unwrap_or(9999)
}

/// The parts of a date, before validation.
struct Parts {
    year: i64,
    month: u32,
    day: u32,
    time: TimeOfDay,
}

struct TimeOfDay {
    hour: u32,
    minute: u32,
    second: u32,
    micros: u32,
}

/// Parses with the current year read lazily, only for the RFC 850 form.
fn parse_with(input: &[u8], current_year: impl FnOnce() -> u32) -> Result<Timestamp, DateError> {
    let input = trim_ows(input);
    if input.is_empty() {
        return Err(DateError::Empty);
    }
    let mut cur = Cursor { rest: input };
    let name = cur.take_while(|b| b.is_ascii_alphabetic());
    if name.is_empty() {
        return Err(DateError::Unrecognised);
    }
    let is_short = DAY_NAMES.iter().any(|d| d.as_slice() == name);
    let parts = if cur.eat(b',') {
        if is_short {
            imf_fixdate(&mut cur)?
        } else if LONG_DAY_NAMES.contains(&name) {
            rfc850_date(&mut cur, current_year)?
        } else {
            return Err(DateError::InvalidDayName);
        }
    } else if cur.peek() == Some(b' ') {
        if is_short {
            asctime_date(&mut cur)?
        } else {
            return Err(DateError::InvalidDayName);
        }
    } else {
        return Err(DateError::Unrecognised);
    };
    if !cur.rest.is_empty() {
        return Err(DateError::TrailingCharacters);
    }
    to_timestamp(&parts)
}

/// `SP day SP month SP year SP time SP GMT`, after `day-name ","`.
fn imf_fixdate(cur: &mut Cursor<'_>) -> Result<Parts, DateError> {
    cur.spaces(DateError::Unrecognised)?;
    let day = cur.number(1, 2, DateError::InvalidDay)?;
    cur.spaces(DateError::Unrecognised)?;
    let month = cur.month()?;
    cur.spaces(DateError::Unrecognised)?;
    let year = cur.number(4, 4, DateError::InvalidYear)?;
    cur.spaces(DateError::Unrecognised)?;
    let time = cur.time_of_day()?;
    cur.gmt()?;
    Ok(Parts {
        year: i64::from(year),
        month,
        day,
        time,
    })
}

/// `SP day "-" month "-" 2DIGIT SP time SP GMT`, after `day-name-l ","`.
///
/// A four-digit year is accepted too, as some senders write one.
fn rfc850_date(
    cur: &mut Cursor<'_>,
    current_year: impl FnOnce() -> u32,
) -> Result<Parts, DateError> {
    cur.spaces(DateError::Unrecognised)?;
    let day = cur.number(1, 2, DateError::InvalidDay)?;
    cur.expect(b'-', DateError::Unrecognised)?;
    let month = cur.month()?;
    cur.expect(b'-', DateError::Unrecognised)?;
    let digits = cur.take_while(|b| b.is_ascii_digit());
    let value = i64::from(digits_value(digits).ok_or(DateError::InvalidYear)?);
    let year = match digits.len() {
        2 => {
            let now = i64::from(current_year());
            let year = now - now % 100 + value;
            if year > now + 50 {
                year - 100
            } else {
                year
            }
        }
        4 => value,
        _ => return Err(DateError::InvalidYear),
    };
    cur.spaces(DateError::Unrecognised)?;
    let time = cur.time_of_day()?;
    cur.gmt()?;
    Ok(Parts {
        year,
        month,
        day,
        time,
    })
}

/// `SP month SP day SP time SP year`, after `day-name`; the day may be padded
/// with a space or a zero.
fn asctime_date(cur: &mut Cursor<'_>) -> Result<Parts, DateError> {
    cur.spaces(DateError::Unrecognised)?;
    let month = cur.month()?;
    cur.spaces(DateError::Unrecognised)?;
    let day = cur.number(1, 2, DateError::InvalidDay)?;
    cur.spaces(DateError::Unrecognised)?;
    let time = cur.time_of_day()?;
    cur.spaces(DateError::InvalidYear)?;
    let year = cur.number(4, 4, DateError::InvalidYear)?;
    Ok(Parts {
        year: i64::from(year),
        month,
        day,
        time,
    })
}

/// Validates the parts and converts them, clamping dates before 1970 to zero.
fn to_timestamp(parts: &Parts) -> Result<Timestamp, DateError> {
    let Parts {
        year,
        month,
        day,
        ref time,
    } = *parts;
    if year > 9999 {
        return Err(DateError::YearOutOfRange);
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(DateError::InvalidDay);
    }
    if time.hour > 23 || time.minute > 59 || time.second > 60 {
        return Err(DateError::InvalidTime);
    }
    let Ok(year) = u64::try_from(year) else {
        return Ok(Timestamp::ZERO);
    };
    if year < 1970 {
        return Ok(Timestamp::ZERO);
    }
    let (second, micros) = if time.second == 60 {
        (59, MICROS_PER_SECOND - 1)
    } else {
        (u64::from(time.second), u64::from(time.micros))
    };
    let days = days_from_civil(year, u64::from(month), u64::from(day));
    let seconds_of_day = u64::from(time.hour) * 3600 + u64::from(time.minute) * 60 + second;
    days.checked_mul(SECONDS_PER_DAY)
        .and_then(|s| s.checked_add(seconds_of_day))
        .and_then(|s| s.checked_mul(MICROS_PER_SECOND))
        .and_then(|m| m.checked_add(micros))
        .map(Timestamp)
        .ok_or(DateError::YearOutOfRange)
}

/// Strips leading and trailing SP and HTAB.
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// The decimal value of a run of at most nine ASCII digits.
fn digits_value(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &b| {
        acc.checked_mul(10)?
            .checked_add(u32::from(b.checked_sub(b'0')?))
    })
}

/// A read position in the date being parsed.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Consumes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        match self.rest {
            [first, rest @ ..] if *first == byte => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, byte: u8, err: DateError) -> Result<(), DateError> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(err)
        }
    }

    /// Consumes the longest prefix whose bytes satisfy `pred`.
    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a [u8] {
        let len = self
            .rest
            .iter()
            .position(|&b| !pred(b))
            .unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        taken
    }

    /// Consumes one or more SP, or fails with `err`.
    fn spaces(&mut self, err: DateError) -> Result<(), DateError> {
        if self.take_while(|b| b == b' ').is_empty() {
            Err(err)
        } else {
            Ok(())
        }
    }

    /// Consumes a run of `min..=max` digits and returns its value, or fails with `err`.
    fn number(&mut self, min: usize, max: usize, err: DateError) -> Result<u32, DateError> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.len() < min || digits.len() > max {
            return Err(err);
        }
        digits_value(digits).ok_or(err)
    }

    /// Consumes a month name and returns its number, 1 to 12.
    fn month(&mut self) -> Result<u32, DateError> {
        let name = self.take_while(|b| b.is_ascii_alphabetic());
        MONTH_NAMES
            .iter()
            .zip(1..)
            .find(|(m, _)| m.as_slice() == name)
            .map(|(_, number)| number)
            .ok_or(DateError::InvalidMonth)
    }

    /// Consumes `HH:MM:SS` and an optional fraction; ranges are checked later.
    fn time_of_day(&mut self) -> Result<TimeOfDay, DateError> {
        let hour = self.number(2, 2, DateError::InvalidTime)?;
        self.expect(b':', DateError::InvalidTime)?;
        let minute = self.number(2, 2, DateError::InvalidTime)?;
        self.expect(b':', DateError::InvalidTime)?;
        let second = self.number(2, 2, DateError::InvalidTime)?;
        let mut micros = 0;
        let mut after_error = DateError::InvalidTime;
        if self.eat(b'.') {
            let digits = self.take_while(|b| b.is_ascii_digit());
            if digits.is_empty() {
                return Err(DateError::InvalidFraction);
            }
            if digits.len() > 9 {
                return Err(DateError::FractionTooLong);
            }
            // The first six digits, padded with zeros: `.1` is 100000 µs.
            micros = (0..6).fold(0, |acc, i| {
                let digit = digits.get(i).and_then(|b| b.checked_sub(b'0'));
                acc * 10 + digit.map_or(0, u32::from)
            });
            after_error = DateError::InvalidFraction;
        }
        match self.peek() {
            None | Some(b' ') => Ok(TimeOfDay {
                hour,
                minute,
                second,
                micros,
            }),
            Some(_) => Err(after_error),
        }
    }

    /// Consumes `SP GMT`.
    fn gmt(&mut self) -> Result<(), DateError> {
        self.spaces(DateError::MissingGmt)?;
        if self.take_while(|b| b.is_ascii_alphabetic()) == b"GMT" {
            Ok(())
        } else {
            Err(DateError::MissingGmt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = MICROS_PER_SECOND;

    /// Parses `input` as the network would deliver it and compares with the
    /// expected fractional IMF-fixdate, or the expected error.
    fn check(input: &str, expected: Result<&str, DateError>) {
        let got = parse_http_date_at(input.as_bytes(), 2026).map(Timestamp::to_http);
        assert_eq!(got.as_deref().map_err(|e| *e), expected, "input: {input:?}");
    }

    /// Formats `micros` and compares with the expected text.
    fn check_fmt(micros: u64, expected: &str) {
        let ts = Timestamp::from_micros(micros);
        assert_eq!(ts.to_http(), expected, "micros: {micros}");
        assert_eq!(ts.to_string(), expected, "micros: {micros}");
        let mut out = b"x".to_vec();
        ts.write_http(&mut out);
        assert_eq!(out.len(), 1 + HTTP_LEN);
        assert_eq!(&out[1..], expected.as_bytes());
        let mut plain = Vec::new();
        ts.write_http_seconds(&mut plain);
        let expected_plain = format!("{} GMT", &expected[..SECONDS_PREFIX_LEN]);
        assert_eq!(plain, expected_plain.as_bytes(), "micros: {micros}");
        assert_eq!(plain.len(), 29);
    }

    #[test]
    fn formats_known_instants() {
        check_fmt(0, "Thu, 01 Jan 1970 00:00:00.000000 GMT");
        check_fmt(1, "Thu, 01 Jan 1970 00:00:00.000001 GMT");
        check_fmt(784_111_777 * SECOND, "Sun, 06 Nov 1994 08:49:37.000000 GMT");
        check_fmt(
            1_198_684_815 * SECOND + 123_456,
            "Wed, 26 Dec 2007 16:00:15.123456 GMT",
        );
        check_fmt(951_782_400 * SECOND, "Tue, 29 Feb 2000 00:00:00.000000 GMT");
        check_fmt(
            1_709_164_800 * SECOND,
            "Thu, 29 Feb 2024 00:00:00.000000 GMT",
        );
        check_fmt(
            1_735_689_599 * SECOND + 999_999,
            "Tue, 31 Dec 2024 23:59:59.999999 GMT",
        );
        check_fmt(
            4_102_444_800 * SECOND,
            "Fri, 01 Jan 2100 00:00:00.000000 GMT",
        );
        check_fmt(MAX_MICROS, "Fri, 31 Dec 9999 23:59:59.999999 GMT");
        check_fmt(MAX_MICROS + 1, "Fri, 31 Dec 9999 23:59:59.999999 GMT");
        check_fmt(u64::MAX, "Fri, 31 Dec 9999 23:59:59.999999 GMT");
    }

    #[test]
    fn max_micros_is_the_end_of_9999() {
        assert_eq!(days_from_civil(10_000, 1, 1), 2_932_897);
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }

    #[test]
    fn display_honours_width() {
        let ts = Timestamp::ZERO;
        assert_eq!(
            format!("[{ts:>38}]"),
            "[  Thu, 01 Jan 1970 00:00:00.000000 GMT]"
        );
    }

    #[test]
    fn parses_known_vectors() {
        let p = |s: &str| parse_http_date_at(s.as_bytes(), 2026).map(Timestamp::as_micros);
        assert_eq!(p("Sun, 06 Nov 1994 08:49:37 GMT"), Ok(784_111_777 * SECOND));
        assert_eq!(
            p("Wed, 26 Dec 2007 16:00:15 GMT"),
            Ok(1_198_684_815 * SECOND)
        );
        assert_eq!(
            p("Wed, 26 Dec 2007 16:00:15.123456 GMT"),
            Ok(1_198_684_815 * SECOND + 123_456)
        );
        assert_eq!(
            p("Sunday, 06-Nov-94 08:49:37 GMT"),
            Ok(784_111_777 * SECOND)
        );
        assert_eq!(p("Sun Nov  6 08:49:37 1994"), Ok(784_111_777 * SECOND));
        assert_eq!(p("Thu, 01 Jan 1970 00:00:00 GMT"), Ok(0));
    }

    #[test]
    #[rustfmt::skip]
    fn parses_imf_fixdate() {
        let t = "Sun, 06 Nov 1994 08:49:37.000000 GMT";
        check("Sun, 06 Nov 1994 08:49:37 GMT", Ok(t));
        check("  \tSun, 06 Nov 1994 08:49:37 GMT \t ", Ok(t));
        check("Sun, 6 Nov 1994 08:49:37 GMT", Ok(t));
        check("Sun,  06  Nov  1994  08:49:37  GMT", Ok(t));
        check("Sun, 06 Nov 1994 08:49:37.0 GMT", Ok(t));
        check("Sun, 06 Nov 1994 08:49:37.000000000 GMT", Ok(t));
        check("Sun, 06 Nov 1994 08:49:37.1 GMT", Ok("Sun, 06 Nov 1994 08:49:37.100000 GMT"));
        check("Sun, 06 Nov 1994 08:49:37.12 GMT", Ok("Sun, 06 Nov 1994 08:49:37.120000 GMT"));
        check("Sun, 06 Nov 1994 08:49:37.123456 GMT", Ok("Sun, 06 Nov 1994 08:49:37.123456 GMT"));
        check("Sun, 06 Nov 1994 08:49:37.1234567 GMT", Ok("Sun, 06 Nov 1994 08:49:37.123456 GMT"));
        check("Sun, 06 Nov 1994 08:49:37.999999999 GMT", Ok("Sun, 06 Nov 1994 08:49:37.999999 GMT"));
        check("Sun, 06 Nov 1994 08:49:37.000001 GMT", Ok("Sun, 06 Nov 1994 08:49:37.000001 GMT"));
        // A weekday that does not match the date is accepted.
        check("Mon, 06 Nov 1994 08:49:37 GMT", Ok(t));
        check("Fri, 31 Dec 9999 23:59:59.999999 GMT", Ok("Fri, 31 Dec 9999 23:59:59.999999 GMT"));
        check("Tue, 29 Feb 2000 12:00:00 GMT", Ok("Tue, 29 Feb 2000 12:00:00.000000 GMT"));
        check("Thu, 29 Feb 2024 23:59:59 GMT", Ok("Thu, 29 Feb 2024 23:59:59.000000 GMT"));
        check("Thu, 30 Apr 2020 00:00:00 GMT", Ok("Thu, 30 Apr 2020 00:00:00.000000 GMT"));
    }

    #[test]
    #[rustfmt::skip]
    fn parses_rfc850() {
        let t = "Sun, 06 Nov 1994 08:49:37.000000 GMT";
        check("Sunday, 06-Nov-94 08:49:37 GMT", Ok(t));
        check("Sunday, 6-Nov-94 08:49:37 GMT", Ok(t));
        check("Sunday, 06-Nov-1994 08:49:37 GMT", Ok(t));
        check("Sunday, 06-Nov-94 08:49:37.5 GMT", Ok("Sun, 06 Nov 1994 08:49:37.500000 GMT"));
        check("Wednesday, 26-Dec-07 16:00:15 GMT", Ok("Wed, 26 Dec 2007 16:00:15.000000 GMT"));
        check("Monday, 01-Jan-76 00:00:00 GMT", Ok("Wed, 01 Jan 2076 00:00:00.000000 GMT"));
        check("Monday, 01-Jan-77 00:00:00 GMT", Ok("Sat, 01 Jan 1977 00:00:00.000000 GMT"));
        check("Monday, 01-Jan-00 00:00:00 GMT", Ok("Sat, 01 Jan 2000 00:00:00.000000 GMT"));
        check("Monday, 01-Jan-69 00:00:00 GMT", Ok("Tue, 01 Jan 2069 00:00:00.000000 GMT"));
        check("Thursday, 29-Feb-24 00:00:00 GMT", Ok("Thu, 29 Feb 2024 00:00:00.000000 GMT"));
        check("Sunday, 29-Feb-23 00:00:00 GMT", Err(DateError::InvalidDay));
        check("Sunday, 06-Nov-994 08:49:37 GMT", Err(DateError::InvalidYear));
        check("Sunday, 06-Nov-4 08:49:37 GMT", Err(DateError::InvalidYear));
        check("Sunday, 06 Nov 94 08:49:37 GMT", Err(DateError::Unrecognised));
        check("Sunday, 06-Nov-94 08:49:37", Err(DateError::MissingGmt));
        check("Sun, 06-Nov-94 08:49:37 GMT", Err(DateError::Unrecognised));
    }

    #[test]
    fn two_digit_years_follow_the_fifty_year_rule() {
        let year = |yy: &str, now: u32| {
            let input = format!("Monday, 01-Jan-{yy} 00:00:00 GMT");
            parse_http_date_at(input.as_bytes(), now).map(|t| t.to_http()[12..16].to_string())
        };
        assert_eq!(year("76", 2026).as_deref(), Ok("2076"));
        assert_eq!(year("77", 2026).as_deref(), Ok("1977"));
        assert_eq!(year("99", 2049).as_deref(), Ok("2099"));
        assert_eq!(year("00", 2051).as_deref(), Ok("2000"));
        assert_eq!(year("10", 2090).as_deref(), Ok("2010"));
        assert_eq!(year("40", 2090).as_deref(), Ok("2040"));
        assert_eq!(year("99", 1999).as_deref(), Ok("1999"));
        // Before 1970 is clamped to the epoch.
        assert_eq!(year("69", 2018).as_deref(), Ok("1970"));
        // A silly clock cannot make it panic or overflow.
        assert_eq!(year("99", 0).as_deref(), Ok("1970"));
        assert_eq!(year("10", 9999).as_deref(), Ok("9910"));
        assert_eq!(year("10", 10_000), Err(DateError::YearOutOfRange));
        assert_eq!(year("10", u32::MAX), Err(DateError::YearOutOfRange));
    }

    #[test]
    #[rustfmt::skip]
    fn parses_asctime() {
        let t = "Sun, 06 Nov 1994 08:49:37.000000 GMT";
        check("Sun Nov  6 08:49:37 1994", Ok(t));
        check("Sun Nov 06 08:49:37 1994", Ok(t));
        check("Sun Nov 6 08:49:37 1994", Ok(t));
        check(" Sun Nov  6 08:49:37 1994 ", Ok(t));
        check("Sun Nov  6 08:49:37.25 1994", Ok("Sun, 06 Nov 1994 08:49:37.250000 GMT"));
        check("Wed Dec 26 16:00:15.123456 2007", Ok("Wed, 26 Dec 2007 16:00:15.123456 GMT"));
        check("Sun Nov  6 08:49:37 1994 GMT", Err(DateError::TrailingCharacters));
        check("Sun Nov  6 08:49:37", Err(DateError::InvalidYear));
        check("Sun Nov  6 08:49:37 94", Err(DateError::InvalidYear));
        check("Sunday Nov  6 08:49:37 1994", Err(DateError::InvalidDayName));
        check("Sun Nov 31 08:49:37 1994", Err(DateError::InvalidDay));
    }

    #[test]
    #[rustfmt::skip]
    fn clamps_dates_before_1970() {
        let zero = "Thu, 01 Jan 1970 00:00:00.000000 GMT";
        check("Wed, 31 Dec 1969 23:59:59.999999 GMT", Ok(zero));
        check("Sat, 01 Jan 0000 00:00:00 GMT", Ok(zero));
        check("Tue, 29 Feb 0000 00:00:00 GMT", Ok(zero));
        check("Sat, 29 Feb 1968 00:00:00 GMT", Ok(zero));
        check("Sat, 29 Feb 1900 00:00:00 GMT", Err(DateError::InvalidDay));
        check("Sun Nov  6 08:49:37 1066", Ok(zero));
    }

    #[test]
    #[rustfmt::skip]
    fn leap_second_is_the_last_microsecond_of_59() {
        let last = "Sat, 31 Dec 2016 23:59:59.999999 GMT";
        check("Sat, 31 Dec 2016 23:59:60 GMT", Ok(last));
        check("Sat, 31 Dec 2016 23:59:60.5 GMT", Ok(last));
        check("Sat, 31 Dec 2016 23:59:61 GMT", Err(DateError::InvalidTime));
    }

    #[test]
    #[rustfmt::skip]
    fn rejects_bad_dates() {
        use DateError::*;
        check("", Err(Empty));
        check(" \t ", Err(Empty));
        check("784111777", Err(Unrecognised));
        check("yesterday", Err(Unrecognised));
        check("Sun", Err(Unrecognised));
        check("Sun;", Err(Unrecognised));
        check(",", Err(Unrecognised));
        check("Sun,", Err(Unrecognised));
        check("Sun,06 Nov 1994 08:49:37 GMT", Err(Unrecognised));
        check("Sun, 06-Nov-1994 08:49:37 GMT", Err(Unrecognised));
        check("sun, 06 Nov 1994 08:49:37 GMT", Err(InvalidDayName));
        check("SUN, 06 Nov 1994 08:49:37 GMT", Err(InvalidDayName));
        check("Dim, 06 Nov 1994 08:49:37 GMT", Err(InvalidDayName));
        check("sunday, 06-Nov-94 08:49:37 GMT", Err(InvalidDayName));
        check("Sund, 06-Nov-94 08:49:37 GMT", Err(InvalidDayName));
        check("Sun, 00 Nov 1994 08:49:37 GMT", Err(InvalidDay));
        check("Sun, 31 Nov 1994 08:49:37 GMT", Err(InvalidDay));
        check("Sun, 32 Dec 1994 08:49:37 GMT", Err(InvalidDay));
        check("Sun, 29 Feb 1994 08:49:37 GMT", Err(InvalidDay));
        check("Sun, 29 Feb 2100 08:49:37 GMT", Err(InvalidDay));
        check("Sun, 006 Nov 1994 08:49:37 GMT", Err(InvalidDay));
        check("Sun, xx Nov 1994 08:49:37 GMT", Err(InvalidDay));
        check("Sun, 06 nov 1994 08:49:37 GMT", Err(InvalidMonth));
        check("Sun, 06 NOV 1994 08:49:37 GMT", Err(InvalidMonth));
        check("Sun, 06 November 1994 08:49:37 GMT", Err(InvalidMonth));
        check("Sun, 06 11 1994 08:49:37 GMT", Err(InvalidMonth));
        check("Sun, 06 Nov 94 08:49:37 GMT", Err(InvalidYear));
        check("Sun, 06 Nov 19944 08:49:37 GMT", Err(InvalidYear));
        check("Sun, 06 Nov 1994 24:00:00 GMT", Err(InvalidTime));
        check("Sun, 06 Nov 1994 08:60:37 GMT", Err(InvalidTime));
        check("Sun, 06 Nov 1994 8:49:37 GMT", Err(InvalidTime));
        check("Sun, 06 Nov 1994 08:49 GMT", Err(InvalidTime));
        check("Sun, 06 Nov 1994 08-49-37 GMT", Err(InvalidTime));
        check("Sun, 06 Nov 1994 08:49:377 GMT", Err(InvalidTime));
        check("Sun, 06 Nov 1994 08:49:37, GMT", Err(InvalidTime));
        check("Sun, 06 Nov 1994 08:49:37. GMT", Err(InvalidFraction));
        check("Sun, 06 Nov 1994 08:49:37.x GMT", Err(InvalidFraction));
        check("Sun, 06 Nov 1994 08:49:37.12a GMT", Err(InvalidFraction));
        check("Sun, 06 Nov 1994 08:49:37.1.2 GMT", Err(InvalidFraction));
        check("Sun, 06 Nov 1994 08:49:37,123 GMT", Err(InvalidTime));
        check("Sun, 06 Nov 1994 08:49:37.1234567890 GMT", Err(FractionTooLong));
        check("Sun, 06 Nov 1994 08:49:37.99999999999999999999999 GMT", Err(FractionTooLong));
        check("Sun, 06 Nov 1994 08:49:37", Err(MissingGmt));
        check("Sun, 06 Nov 1994 08:49:37 ", Err(MissingGmt));
        check("Sun, 06 Nov 1994 08:49:37 UTC", Err(MissingGmt));
        check("Sun, 06 Nov 1994 08:49:37 gmt", Err(MissingGmt));
        check("Sun, 06 Nov 1994 08:49:37 +0000", Err(MissingGmt));
        check("Sun, 06 Nov 1994 08:49:37 GMTX", Err(MissingGmt));
        check("Sun, 06 Nov 1994 08:49:37 GMT+1", Err(TrailingCharacters));
        check("Sun, 06 Nov 1994 08:49:37 GMT x", Err(TrailingCharacters));
        check("Sun, 06 Nov 1994 08:49:37 GMT-", Err(TrailingCharacters));
        check("Sun, 06 Nov 1994 08:49:37 GMT\r\n", Err(TrailingCharacters));
        check("Sun, 06 Nov 1994 08:49:37 GMT\0", Err(TrailingCharacters));
        check("Sun, 06 Nov 1994\t08:49:37 GMT", Err(Unrecognised));
        check("Sun, 06 Nov 1994 08:49:37 G\u{e9}T", Err(MissingGmt));
    }

    #[test]
    fn error_messages_explain_why() {
        assert_eq!(DateError::Empty.to_string(), "empty date");
        assert_eq!(
            DateError::Unrecognised.to_string(),
            "unrecognised date format (expected IMF-fixdate such as \
             'Sun, 06 Nov 1994 08:49:37.123456 GMT')"
        );
        assert_eq!(
            DateError::FractionTooLong.to_string(),
            "fraction too long (at most 9 digits after the '.')"
        );
        assert!(DateError::MissingGmt
            .to_string()
            .starts_with("missing GMT zone"));
        assert!(DateError::InvalidDay
            .to_string()
            .starts_with("invalid day of month"));
    }

    #[test]
    fn format_then_parse_is_identity() {
        let values = [
            0,
            1,
            999_999,
            SECOND,
            784_111_777 * SECOND,
            1_198_684_815 * SECOND + 123_456,
            951_782_400 * SECOND,             // 2000-02-29
            951_868_799 * SECOND + 999_999,   // end of 2000-02-29
            1_709_164_800 * SECOND + 1,       // 2024-02-29
            946_684_799 * SECOND + 999_999,   // end of 1999
            1_735_689_599 * SECOND + 999_999, // end of 2024
            4_102_444_799 * SECOND + 500_000, // end of 2099
            253_402_214_400 * SECOND,         // 9999-12-31
            MAX_MICROS,
        ];
        for micros in values {
            let ts = Timestamp::from_micros(micros);
            assert_eq!(
                parse_http_date(ts.to_http().as_bytes()),
                Ok(ts),
                "micros: {micros}"
            );
        }
        // Beyond the cap, formatting saturates and parsing gives the cap.
        let capped = Timestamp::from_micros(u64::MAX).to_http();
        assert_eq!(
            parse_http_date(capped.as_bytes()),
            Ok(Timestamp::from_micros(MAX_MICROS))
        );
    }

    #[test]
    fn every_day_from_1970_to_2400_formats_and_parses_back() {
        // An independent calendar: count days, months and years by hand.
        let (mut year, mut month, mut day, mut weekday) = (1970u64, 1u32, 1u32, 4usize);
        let mut days = 0u64;
        while year < 2400 {
            let micros = days * MICROS_PER_DAY + (days % 86_400) * SECOND + days % 1_000_000;
            let ts = Timestamp::from_micros(micros);
            let text = ts.to_http();
            let expected = format!(
                "{}, {:02} {} {:04}",
                std::str::from_utf8(DAY_NAMES[weekday]).unwrap(),
                day,
                std::str::from_utf8(MONTH_NAMES[month as usize - 1]).unwrap(),
                year
            );
            assert_eq!(&text[..16], expected, "days: {days}");
            assert_eq!(parse_http_date(text.as_bytes()), Ok(ts), "{text}");
            let mut plain = Vec::new();
            ts.write_http_seconds(&mut plain);
            assert_eq!(
                parse_http_date(&plain),
                Ok(ts.truncate_to_seconds()),
                "{text}"
            );

            days += 1;
            weekday = (weekday + 1) % 7;
            day += 1;
            if day > days_in_month(year as i64, month) {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

    #[test]
    fn next_after_is_strictly_increasing() {
        let t = Timestamp::from_micros;
        // Normal: the clock has moved on.
        assert_eq!(t(100).next_after(t(250)), t(250));
        // Same microsecond: one more than the previous stamp.
        assert_eq!(t(100).next_after(t(100)), t(101));
        // The clock stepped back: still one more than the previous stamp.
        assert_eq!(t(100).next_after(t(7)), t(101));
        assert_eq!(t(100).next_after(Timestamp::ZERO), t(101));
        // Saturates instead of overflowing.
        assert_eq!(t(u64::MAX).next_after(t(5)), t(u64::MAX));
        // A burst within one microsecond keeps increasing.
        let now = t(1_000);
        let mut last = t(1_000);
        for expected in 1_001..1_100 {
            last = last.next_after(now);
            assert_eq!(last, t(expected));
        }
    }

    #[test]
    fn small_helpers() {
        assert_eq!(
            Timestamp::from_micros(1_234_567).truncate_to_seconds(),
            Timestamp::from_micros(1_000_000)
        );
        assert_eq!(Timestamp::from_micros(42).as_micros(), 42);
        assert_eq!(Timestamp::default(), Timestamp::ZERO);
        assert!(Timestamp::now() > Timestamp::from_micros(1_600_000_000 * SECOND));
        assert!((2024..=9999).contains(&current_year()));
    }

    #[test]
    fn random_inputs_never_panic() {
        // A deterministic xorshift drives mutations of valid dates and random strings.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"SunMonTueWedThuFriSatdayJanFebNovDecGMTUTC0123456789 ,-:.\t";
        let seeds: [&[u8]; 3] = [
            b"Sun, 06 Nov 1994 08:49:37.123456 GMT",
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
        ];
        for round in 0..60_000 {
            let r = next();
            let mut input = seeds[(r % 3) as usize].to_vec();
            if round % 4 == 0 {
                input = (0..(r % 40))
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
            } else {
                for _ in 0..=(r >> 8) % 3 {
                    let pos = (next() % (input.len() as u64 + 1)) as usize;
                    let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                    match next() % 3 {
                        0 if pos < input.len() => input[pos] = byte,
                        1 if pos < input.len() => {
                            input.remove(pos);
                        }
                        _ => input.insert(pos, byte),
                    }
                }
            }
            if let Ok(ts) = parse_http_date_at(&input, (next() % 10_000) as u32) {
                assert!(
                    ts.as_micros() <= MAX_MICROS,
                    "{:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}
