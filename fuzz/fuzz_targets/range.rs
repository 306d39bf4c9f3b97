//! `Range` parsing never panics, and formatted ranges parse back.
//!
//! - `parse_range` on the raw input: no panic; a closed byte range is ordered.
//! - Numbers from the input (three u64s) and spelling choices: `bytes=N-`,
//!   `bytes N-`, `bytes=A-B`, `bytes=-N`, with unit case, whitespace around `=` and
//!   the range, and a trailing `/*` varied, parse back to the right variant (a
//!   reversed `A-B` is ignored); several ranges are ignored.
//! - `ContentRange::write_value` for `Updated`: both dates parse back through the
//!   date parser, and `updated <from>-` parses back to `RangeSpec::Updated(from)`.
//!   `Bytes` and `Unsatisfied` values read back as the numbers written.

#![no_main]

use halley::http::range::{parse_range, ContentRange, RangeSpec};
use halley::time::{parse_http_date, Timestamp};
use libfuzzer_sys::fuzz_target;

const MAX_MICROS: u64 = 2_932_897 * 86_400 * 1_000_000 - 1;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(RangeSpec::BytesClosed(a, b))) = parse_range(data) {
        assert!(a <= b);
    }
    if data.len() < 25 {
        return;
    }
    let number = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap());
    // Small numbers are more interesting than uniformly random ones.
    let shrink = |n: u64| match n & 3 {
        0 => n >> 2,
        1 => (n >> 2) % 1000,
        2 => u64::MAX - ((n >> 2) % 3),
        _ => (n >> 2) % 10,
    };
    let (n, a, b) = (shrink(number(0)), shrink(number(1)), shrink(number(2)));
    let style = data[24];
    let unit = ["bytes", "Bytes", "BYTES", "bYtEs"][usize::from(style & 3)];
    let sep = ["=", " ", " = ", "\t", "= ", " =", "  ", "=\t"][usize::from(style >> 2 & 7)];
    let star = if style & 0x20 != 0 { "/*" } else { "" };
    let ows = if style & 0x40 != 0 { " \t" } else { "" };
    let check = |range: String, expected: Option<RangeSpec>| {
        let value = format!("{ows}{unit}{sep}{range}{star}{ows}");
        assert_eq!(parse_range(value.as_bytes()), Ok(expected), "{value:?}");
    };
    check(format!("{n}-"), Some(RangeSpec::BytesFrom(n)));
    check(
        format!("{a}-{b}"),
        (a <= b).then_some(RangeSpec::BytesClosed(a, b)),
    );
    check(format!("-{n}"), Some(RangeSpec::BytesSuffix(n)));
    check(format!("{a}-{b}, {n}-"), None);
    // An empty list element after the range is skipped (the `/*` belongs to the range).
    let value = format!("{unit}{sep}{a}-{b}{star},");
    let expected = (a <= b).then_some(RangeSpec::BytesClosed(a, b));
    assert_eq!(parse_range(value.as_bytes()), Ok(expected), "{value:?}");
    // The seed's own spelling.
    assert_eq!(
        parse_range(format!("bytes {n}-").as_bytes()),
        Ok(Some(RangeSpec::BytesFrom(n)))
    );

    // Content-Range values read back.
    let (first, last) = (a.min(b), a.max(b));
    let mut out = Vec::new();
    ContentRange::Bytes {
        first,
        last,
        complete_len: n,
    }
    .write_value(&mut out);
    assert_eq!(out, format!("bytes {first}-{last}/{n}").as_bytes());
    out.clear();
    ContentRange::Unsatisfied { complete_len: n }.write_value(&mut out);
    assert_eq!(out, format!("bytes */{n}").as_bytes());

    let from = Timestamp::from_micros(number(0) % (MAX_MICROS + 1));
    let to = Timestamp::from_micros(number(1) % (MAX_MICROS + 1));
    out.clear();
    ContentRange::Updated { from, last: to }.write_value(&mut out);
    let text = std::str::from_utf8(&out).unwrap();
    let rest = text.strip_prefix("updated ").unwrap();
    let (from_text, last_text) = rest.split_once("-/").unwrap();
    assert_eq!(parse_http_date(from_text.as_bytes()), Ok(from), "{text}");
    assert_eq!(parse_http_date(last_text.as_bytes()), Ok(to), "{text}");
    let asked = format!("updated{sep}{from_text}-{star}");
    assert_eq!(
        parse_range(asked.as_bytes()),
        Ok(Some(RangeSpec::Updated(from))),
        "{asked:?}"
    );
});
