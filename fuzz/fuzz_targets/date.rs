//! HTTP dates: arbitrary input never panics, and formatting round-trips.
//!
//! - `parse_http_date` on the raw input: no panic; an accepted date is within the
//!   supported range and formats to a date that parses back to itself.
//! - A `Timestamp` built from the first eight bytes (reduced to 1970-01-01 ..
//!   9999-12-31 23:59:59.999999): `to_http` parses back to it, `write_http` writes the
//!   same text, `write_http_seconds` parses back to the truncated value, and the same
//!   instant written in the other accepted spellings (asctime, RFC 850 with four and
//!   two digit years, a shortened or nine-digit fraction, surrounding whitespace)
//!   parses to it too.

#![no_main]

use halley::time::{parse_http_date, parse_http_date_at, Timestamp};
use libfuzzer_sys::fuzz_target;

/// 9999-12-31 23:59:59.999999, the last instant that can be formatted.
const MAX_MICROS: u64 = 2_932_897 * 86_400 * 1_000_000 - 1;

const LONG_DAY_NAMES: [(&str, &str); 7] = [
    ("Sun", "Sunday"),
    ("Mon", "Monday"),
    ("Tue", "Tuesday"),
    ("Wed", "Wednesday"),
    ("Thu", "Thursday"),
    ("Fri", "Friday"),
    ("Sat", "Saturday"),
];

fuzz_target!(|data: &[u8]| {
    if let Ok(ts) = parse_http_date(data) {
        assert!(ts.as_micros() <= MAX_MICROS, "{ts:?}");
        assert_eq!(parse_http_date(ts.to_http().as_bytes()), Ok(ts));
        // The two-digit-year reading is the only place the clock matters.
        for year in [1970, 2026, 9999] {
            if let Ok(other) = parse_http_date_at(data, year) {
                assert!(other.as_micros() <= MAX_MICROS);
            }
        }
    }
    let Some(bytes) = data.get(..8) else { return };
    let raw = u64::from_le_bytes(bytes.try_into().unwrap());
    let ts = Timestamp::from_micros(raw % (MAX_MICROS + 1));
    check_round_trip(ts);
});

fn check_round_trip(ts: Timestamp) {
    let text = ts.to_http();
    assert_eq!(text.len(), 36, "{text}");
    assert_eq!(parse_http_date(text.as_bytes()), Ok(ts), "{text}");
    let mut written = Vec::new();
    ts.write_http(&mut written);
    assert_eq!(written, text.as_bytes());
    assert_eq!(ts.to_string(), text);

    let mut seconds = Vec::new();
    ts.write_http_seconds(&mut seconds);
    assert_eq!(seconds.len(), 29);
    assert_eq!(&seconds[..25], &text.as_bytes()[..25]);
    assert_eq!(parse_http_date(&seconds), Ok(ts.truncate_to_seconds()));

    // "Wed, 26 Dec 2007 16:00:15.123456 GMT"
    let (weekday, day, month, year) = (&text[0..3], &text[5..7], &text[8..11], &text[12..16]);
    let (time, fraction) = (&text[17..25], &text[26..32]);
    let long_day = LONG_DAY_NAMES
        .iter()
        .find(|(s, _)| *s == weekday)
        .unwrap()
        .1;
    let day_padded = day
        .strip_prefix('0')
        .map_or(day.to_string(), |d| format!(" {d}"));
    let trimmed = fraction.trim_end_matches('0');
    let short_fraction = if trimmed.is_empty() {
        String::new()
    } else {
        format!(".{trimmed}")
    };
    let spellings = [
        format!("{weekday} {month} {day_padded} {time}.{fraction} {year}"),
        format!("{weekday} {month} {day} {time}.{fraction} {year}"),
        format!("{long_day}, {day}-{month}-{year} {time}.{fraction} GMT"),
        format!("{weekday}, {day} {month} {year} {time}{short_fraction} GMT"),
        format!("{weekday}, {day} {month} {year} {time}.{fraction}999 GMT"),
        format!(" \t{text}\t "),
    ];
    for spelling in &spellings {
        assert_eq!(parse_http_date(spelling.as_bytes()), Ok(ts), "{spelling:?}");
    }
    // RFC 850 with a two-digit year, read in the year it names.
    let full_year: u32 = year.parse().unwrap();
    let two = format!(
        "{long_day}, {day}-{month}-{} {time}.{fraction} GMT",
        &year[2..]
    );
    assert_eq!(
        parse_http_date_at(two.as_bytes(), full_year),
        Ok(ts),
        "{two:?}"
    );
}
