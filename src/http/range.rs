//! The `Range` request header and the `Content-Range` response header.
//!
//! Besides the standard `bytes` unit (RFC 9110 §14), halley understands an
//! `updated` unit whose range is a date: `Range: updated Wed, 26 Dec 2007
//! 16:00:15.123456 GMT-` asks for the entries added after that instant, and the
//! answer carries `Content-Range: updated <from>-/<last>`, both dates written as
//! IMF-fixdates with a six-digit fraction.

use crate::time::{parse_http_date, DateError, Timestamp};

/// One range a client asked for in a `Range` header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=N-` or the seed's `bytes N-` (optionally followed by `/*`, as in the source doc's examples `bytes 12-/*`).
    BytesFrom(u64),
    /// `bytes=A-B` (inclusive).
    BytesClosed(u64, u64),
    /// `bytes=-N` (the last N bytes).
    ///
    /// `bytes=-0` is parsed too; the caller answers it as unsatisfiable.
    BytesSuffix(u64),
    /// `updated D-` (or `updated=D-`), optionally followed by `/*`: the entries added after date D.
    Updated(Timestamp),
}

/// Why a `Range` header was refused; the text is meant for the client that sent it.
///
/// Only an `updated` range is ever refused: a broken `bytes` range is ignored
/// instead, as RFC 9110 §14.2 allows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The date of an `updated` range could not be parsed; the message includes why.
    #[error("invalid date in 'updated' range: {0}")]
    BadUpdatedDate(DateError),
    /// An `updated` range is not a date followed by `-`.
    #[error(
        "'updated' range must be a date followed by '-', such as \
         'updated Wed, 26 Dec 2007 16:00:15.123456 GMT-'"
    )]
    MalformedUpdated,
}

/// Parses the value of a `Range` header.
///
/// Returns `Ok(None)` when the header is to be ignored and the whole
/// representation served, as RFC 9110 §14.2 allows: for an unknown unit, for a
/// `bytes` range that is syntactically broken (such as `bytes=abc`, `bytes=5-2`
/// or a number that does not fit in 64 bits), and for a set of several ranges
/// such as `bytes=0-1,5-6`, which halley chooses not to serve. Empty list
/// elements are skipped, so `bytes=0-1,` is a single range.
///
/// Unit names are case-insensitive. The unit is followed by `=` or by
/// whitespace, with optional SP/HTAB around the `=` and around the range. Any
/// range may end in `/*`.
///
/// An `updated` range is a date as [`parse_http_date`] reads it followed by a
/// final `-`. Since a client sending it clearly meant it, an `updated` range
/// that cannot be read is an error rather than ignored.
///
/// # Errors
///
/// Returns [`RangeError::BadUpdatedDate`] when the date of an `updated` range
/// cannot be parsed, and [`RangeError::MalformedUpdated`] when an `updated`
/// range is not a date followed by `-`.
pub fn parse_range(value: &[u8]) -> Result<Option<RangeSpec>, RangeError> {
    let value = trim_ows(value);
    let unit_len = value
        .iter()
        .position(|&b| matches!(b, b'=' | b' ' | b'\t'))
        .unwrap_or(value.len());
    let (unit, rest) = value.split_at(unit_len);
    let rest = match trim_ows(rest) {
        [b'=', after @ ..] => trim_ows(after),
        rest => rest,
    };
    if unit.eq_ignore_ascii_case(b"bytes") {
        Ok(parse_bytes(rest))
    } else if unit.eq_ignore_ascii_case(b"updated") {
        parse_updated(rest).map(Some)
    } else {
        Ok(None)
    }
}

/// Parses the range set after `bytes=`; `None` means "ignore the header".
fn parse_bytes(set: &[u8]) -> Option<RangeSpec> {
    let mut ranges = set
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|r| !r.is_empty());
    let range = ranges.next()?;
    if ranges.next().is_some() {
        return None;
    }
    let range = strip_star(range);
    if let Some(suffix) = range.strip_prefix(b"-") {
        return parse_u64(suffix).map(RangeSpec::BytesSuffix);
    }
    let dash = range.iter().position(|&b| b == b'-')?;
    let (first, last) = range.split_at(dash);
    let first = parse_u64(first)?;
    match last.strip_prefix(b"-")? {
        [] => Some(RangeSpec::BytesFrom(first)),
        last => {
            let last = parse_u64(last)?;
            (last >= first).then_some(RangeSpec::BytesClosed(first, last))
        }
    }
}

/// Parses the range after `updated`: a date, a final `-` and an optional `/*`.
fn parse_updated(range: &[u8]) -> Result<RangeSpec, RangeError> {
    let date = strip_star(trim_ows(range))
        .strip_suffix(b"-")
        .ok_or(RangeError::MalformedUpdated)?;
    parse_http_date(date)
        .map(RangeSpec::Updated)
        .map_err(RangeError::BadUpdatedDate)
}

/// Strips a trailing `/*` and the whitespace before it.
fn strip_star(range: &[u8]) -> &[u8] {
    match range.strip_suffix(b"/*") {
        Some(before) => trim_ows(before),
        None => range,
    }
}

/// Reads a non-empty run of decimal digits, or `None` if it is not one or overflows.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
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

/// The value of a `Content-Range` response header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/complete_len`, the inclusive byte range being sent.
    Bytes {
        /// The offset of the first byte sent.
        first: u64,
        /// The offset of the last byte sent (inclusive).
        last: u64,
        /// The length of the whole representation.
        complete_len: u64,
    },
    /// `bytes */complete_len`, sent with 416 when no requested byte is available.
    Unsatisfied {
        /// The length of the whole representation.
        complete_len: u64,
    },
    /// `updated <from>-/<last>`: the entries added after `from`, the latest stamped `last`.
    Updated {
        /// The date the client asked from, echoed back.
        from: Timestamp,
        /// The stamp of the latest entry sent; the client asks from it next time.
        last: Timestamp,
    },
}

impl ContentRange {
    /// Appends the header value, such as `bytes 12-23/24`, `bytes */24` or
    /// `updated Wed, 26 Dec 2007 16:00:15.000000 GMT-/Wed, 26 Dec 2007 20:00:25.000000 GMT`.
    ///
    /// The values are written as given; the caller keeps `first <= last < complete_len`.
    pub fn write_value(&self, out: &mut Vec<u8>) {
        match *self {
            ContentRange::Bytes {
                first,
                last,
                complete_len,
            } => {
                out.extend_from_slice(b"bytes ");
                write_u64(out, first);
                out.push(b'-');
                write_u64(out, last);
                out.push(b'/');
                write_u64(out, complete_len);
            }
            ContentRange::Unsatisfied { complete_len } => {
                out.extend_from_slice(b"bytes */");
                write_u64(out, complete_len);
            }
            ContentRange::Updated { from, last } => {
                out.extend_from_slice(b"updated ");
                from.write_http(out);
                out.extend_from_slice(b"-/");
                last.write_http(out);
            }
        }
    }
}

/// Appends `value` in decimal.
fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    // u64::MAX has 20 digits.
    let mut buf = [0u8; 20];
    let mut len = 0;
    for slot in buf.iter_mut().rev() {
        // `value % 10` is below 10, so the cast cannot truncate.
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
        len += 1;
        if value == 0 {
            break;
        }
    }
    let (_, digits) = buf.split_at(buf.len().saturating_sub(len));
    out.extend_from_slice(digits);
}

#[cfg(test)]
mod tests {
    use super::RangeSpec::*;
    use super::*;

    const SECOND: u64 = 1_000_000;
    /// `Wed, 26 Dec 2007 16:00:15 GMT`.
    const DEC_26: u64 = 1_198_684_815 * SECOND;

    fn check(input: &str, expected: Result<Option<RangeSpec>, RangeError>) {
        assert_eq!(parse_range(input.as_bytes()), expected, "input: {input:?}");
    }

    fn updated(micros: u64) -> Result<Option<RangeSpec>, RangeError> {
        Ok(Some(Updated(Timestamp::from_micros(micros))))
    }

    fn check_value(range: ContentRange, expected: &str) {
        let mut out = b"Content-Range: ".to_vec();
        range.write_value(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("Content-Range: {expected}")
        );
    }

    #[test]
    #[rustfmt::skip]
    fn bytes_spellings() {
        check("bytes=12-", Ok(Some(BytesFrom(12))));
        check("bytes 12-", Ok(Some(BytesFrom(12))));
        check("bytes  12-", Ok(Some(BytesFrom(12))));
        check("bytes\t12-", Ok(Some(BytesFrom(12))));
        check("bytes 12-/*", Ok(Some(BytesFrom(12))));
        check("bytes 12- /*", Ok(Some(BytesFrom(12))));
        check("bytes=12-/*", Ok(Some(BytesFrom(12))));
        check("bytes = 12-", Ok(Some(BytesFrom(12))));
        check("bytes= 12-", Ok(Some(BytesFrom(12))));
        check("bytes =12-", Ok(Some(BytesFrom(12))));
        check("  bytes=12-  ", Ok(Some(BytesFrom(12))));
        check("\tbytes=12-\t", Ok(Some(BytesFrom(12))));
        check("Bytes=12-", Ok(Some(BytesFrom(12))));
        check("BYTES 12-", Ok(Some(BytesFrom(12))));
        check("bytes=0-", Ok(Some(BytesFrom(0))));
        check("bytes=007-", Ok(Some(BytesFrom(7))));
        check("bytes=0-0", Ok(Some(BytesClosed(0, 0))));
        check("bytes=12-23", Ok(Some(BytesClosed(12, 23))));
        check("bytes 12-23/*", Ok(Some(BytesClosed(12, 23))));
        check("bytes=5-5", Ok(Some(BytesClosed(5, 5))));
        check("bytes=-5", Ok(Some(BytesSuffix(5))));
        check("bytes -5", Ok(Some(BytesSuffix(5))));
        check("bytes=-0", Ok(Some(BytesSuffix(0))));
        check("bytes=0-18446744073709551615", Ok(Some(BytesClosed(0, u64::MAX))));
        check("bytes=18446744073709551615-", Ok(Some(BytesFrom(u64::MAX))));
        check("bytes=-18446744073709551615", Ok(Some(BytesSuffix(u64::MAX))));
        // Empty list elements are skipped.
        check("bytes=0-1,", Ok(Some(BytesClosed(0, 1))));
        check("bytes=, 0-1 ,,", Ok(Some(BytesClosed(0, 1))));
    }

    #[test]
    #[rustfmt::skip]
    fn ignored_ranges() {
        // Unknown units.
        check("", Ok(None));
        check("   ", Ok(None));
        check("items=0-5", Ok(None));
        check("byte=0-5", Ok(None));
        check("bytesx=0-5", Ok(None));
        check("bytes5-", Ok(None));
        check("=0-5", Ok(None));
        check("none", Ok(None));
        // Several ranges, which halley does not serve.
        check("bytes=0-1,5-6", Ok(None));
        check("bytes=0-1, 5-", Ok(None));
        check("bytes=-1,-2", Ok(None));
        // Broken byte ranges.
        check("bytes", Ok(None));
        check("bytes=", Ok(None));
        check("bytes ", Ok(None));
        check("bytes=,", Ok(None));
        check("bytes=abc", Ok(None));
        check("bytes=12", Ok(None));
        check("bytes=-", Ok(None));
        check("bytes=--5", Ok(None));
        check("bytes=5--", Ok(None));
        check("bytes=5-2", Ok(None));
        check("bytes=5-x", Ok(None));
        check("bytes=x-5", Ok(None));
        check("bytes=1 - 2", Ok(None));
        check("bytes=+1-2", Ok(None));
        check("bytes==1-2", Ok(None));
        check("bytes=1-2-3", Ok(None));
        check("bytes=1-2/24", Ok(None));
        check("bytes=1-2/**", Ok(None));
        check("bytes=/*", Ok(None));
        check("bytes=18446744073709551616-", Ok(None));
        check("bytes=0-18446744073709551616", Ok(None));
        check("bytes=-99999999999999999999999", Ok(None));
        check("bytes=\u{661}-", Ok(None));
    }

    #[test]
    #[rustfmt::skip]
    fn updated_spellings() {
        check("updated Wed, 26 Dec 2007 16:00:15 GMT-", updated(DEC_26));
        check("updated Wed, 26 Dec 2007 16:00:15.123456 GMT-/*", updated(DEC_26 + 123_456));
        check("updated Wed, 26 Dec 2007 16:00:15.123456 GMT- /* ", updated(DEC_26 + 123_456));
        check("updated=Wed, 26 Dec 2007 16:00:15 GMT-", updated(DEC_26));
        check("updated = Wed, 26 Dec 2007 16:00:15 GMT-", updated(DEC_26));
        check("updated  Wed, 26 Dec 2007 16:00:15 GMT -", updated(DEC_26));
        check("\tupdated\tWed, 26 Dec 2007 16:00:15 GMT-\t", updated(DEC_26));
        check("UPDATED Wed, 26 Dec 2007 16:00:15 GMT-", updated(DEC_26));
        check("Updated=Wed, 26 Dec 2007 16:00:15 GMT-/*", updated(DEC_26));
        check("updated Wednesday, 26-Dec-07 16:00:15 GMT-", updated(DEC_26));
        check("updated Wed Dec 26 16:00:15 2007-", updated(DEC_26));
        check("updated Thu, 01 Jan 1970 00:00:00 GMT-", updated(0));
        check("updated Mon, 01 Jan 1900 00:00:00 GMT-", updated(0));
    }

    #[test]
    #[rustfmt::skip]
    fn updated_errors() {
        use DateError::*;
        use RangeError::*;
        check("updated", Err(MalformedUpdated));
        check("updated ", Err(MalformedUpdated));
        check("updated Wed, 26 Dec 2007 16:00:15 GMT", Err(MalformedUpdated));
        check("updated Wed, 26 Dec 2007 16:00:15 GMT/*", Err(MalformedUpdated));
        check("updated Wed, 26 Dec 2007 16:00:15 GMT-Wed, 26 Dec 2007 20:00:25 GMT", Err(MalformedUpdated));
        check("updated -", Err(BadUpdatedDate(Empty)));
        check("updated=-/*", Err(BadUpdatedDate(Empty)));
        check("updated 1198684815-", Err(BadUpdatedDate(Unrecognised)));
        check("updated Wed, 26 Dec 2007 16:00:15-", Err(BadUpdatedDate(MissingGmt)));
        check("updated Wed, 26 Dec 2007 16:00:15 UTC-", Err(BadUpdatedDate(MissingGmt)));
        check("updated Wed, 32 Dec 2007 16:00:15 GMT-", Err(BadUpdatedDate(InvalidDay)));
        check("updated Wed, 26 Dez 2007 16:00:15 GMT-", Err(BadUpdatedDate(InvalidMonth)));
        check("updated Wed, 26 Dec 2007 25:00:15 GMT-", Err(BadUpdatedDate(InvalidTime)));
        check("updated Wed, 26 Dec 2007 16:00:15.1234567890 GMT-", Err(BadUpdatedDate(FractionTooLong)));
        check("updated Wed, 26 Dec 2007 16:00:15 GMT--", Err(BadUpdatedDate(TrailingCharacters)));
        check("updated Wed, 26 Dec 2007 16:00:15 GMT-, Thu, 27 Dec 2007 16:00:15 GMT-", Err(BadUpdatedDate(TrailingCharacters)));
    }

    #[test]
    fn updated_error_messages_say_why() {
        let err = parse_range(b"updated Wed, 26 Dec 2007 16:00:15 UTC-").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid date in 'updated' range: missing GMT zone (the date must end in 'GMT')"
        );
        let err = parse_range(b"updated Wed, 26 Dec 2007 16:00:15 GMT").unwrap_err();
        assert_eq!(
            err.to_string(),
            "'updated' range must be a date followed by '-', such as \
             'updated Wed, 26 Dec 2007 16:00:15.123456 GMT-'"
        );
    }

    #[test]
    fn content_range_values() {
        let bytes = |first, last, complete_len| ContentRange::Bytes {
            first,
            last,
            complete_len,
        };
        check_value(bytes(12, 23, 24), "bytes 12-23/24");
        check_value(bytes(0, 0, 1), "bytes 0-0/1");
        check_value(
            bytes(0, u64::MAX - 1, u64::MAX),
            "bytes 0-18446744073709551614/18446744073709551615",
        );
        check_value(ContentRange::Unsatisfied { complete_len: 24 }, "bytes */24");
        check_value(ContentRange::Unsatisfied { complete_len: 0 }, "bytes */0");
        check_value(
            ContentRange::Updated {
                from: Timestamp::from_micros(DEC_26),
                last: Timestamp::from_micros(DEC_26 + (4 * 3600 + 10) * SECOND),
            },
            "updated Wed, 26 Dec 2007 16:00:15.000000 GMT-/Wed, 26 Dec 2007 20:00:25.000000 GMT",
        );
        check_value(
            ContentRange::Updated {
                from: Timestamp::ZERO,
                last: Timestamp::from_micros(DEC_26 + 123_456),
            },
            "updated Thu, 01 Jan 1970 00:00:00.000000 GMT-/Wed, 26 Dec 2007 16:00:15.123456 GMT",
        );
    }

    #[test]
    fn updated_content_range_parses_back_as_a_range() {
        let from = Timestamp::from_micros(DEC_26 + 1);
        let mut value = b"updated ".to_vec();
        from.write_http(&mut value);
        value.extend_from_slice(b"-/*");
        assert_eq!(parse_range(&value), Ok(Some(Updated(from))));
    }

    #[test]
    fn write_u64_digits() {
        for (value, expected) in [
            (0, "0"),
            (9, "9"),
            (10, "10"),
            (1_000_000, "1000000"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let mut out = Vec::new();
            write_u64(&mut out, value);
            assert_eq!(out, expected.as_bytes());
        }
    }

    #[test]
    fn short_inputs_never_panic() {
        let alphabet = b"bytes=updated 0123456789-,/* GMTWedDec";
        let mut inputs = vec![Vec::new()];
        for &a in alphabet {
            inputs.push(vec![a]);
            for &b in alphabet {
                inputs.push(vec![a, b]);
                for &c in alphabet {
                    inputs.push(vec![a, b, c]);
                }
            }
        }
        for input in &inputs {
            // Also behind each unit, so the range parsers see every short tail.
            for prefix in [&b""[..], b"bytes=", b"bytes ", b"updated ", b"updated="] {
                let value = [prefix, input.as_slice()].concat();
                let _ = parse_range(&value);
            }
        }
    }
}
