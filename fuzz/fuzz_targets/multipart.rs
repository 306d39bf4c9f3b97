//! `split_parts` and `parse_subrequest` over arbitrary bodies, plus a split/join round trip.
//!
//! Part 1, arbitrary bytes: the first byte picks a boundary and a part limit, the rest is
//! the body. `split_parts` must not panic and must agree exactly with a slow reference
//! splitter written from RFC 2046 and the leniencies the doc comment lists. Every part
//! is a sub-slice of the body, in order and without overlap, and holds no delimiter
//! line (a `--boundary` at the start of a line followed by `--`, padding and a line
//! ending, or the end of the body). `parse_subrequest` on each part must not panic,
//! and what it returns (method, target, header names and values, body) are sub-slices
//! of the part; a `Content-Length` body has exactly that length.
//!
//! Part 2, a round trip: a boundary, a preamble, parts, line endings and padding are
//! drawn from the input, with any delimiter line inside a part or the preamble broken
//! up; joining them with delimiter lines and splitting again gives the same parts.

#![no_main]

use halley::http::multipart::{parse_subrequest, split_parts, MultipartError, PartLimits};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;

const BOUNDARIES: [&[u8]; 6] = [b"s", b"sep", b"a b", b"-", b"--", b"=_Part_1'()+,./:?"];

fuzz_target!(|data: &[u8]| {
    split_arbitrary(data);
    let _ = round_trip(data);
});

fn split_arbitrary(data: &[u8]) {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let boundary = BOUNDARIES[usize::from(control & 7) % BOUNDARIES.len()];
    let limits = PartLimits {
        max_parts: usize::from(control >> 3) % 12,
    };
    let got = split_parts(body, boundary, limits);
    let expected = reference_split(body, boundary, limits.max_parts);
    let got_ranges = got.as_ref().map(|parts| {
        parts
            .iter()
            .map(|part| {
                let offset = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
                assert!(
                    offset <= body.len() && part.len() <= body.len() - offset,
                    "a part is not a sub-slice of the body"
                );
                (offset, offset + part.len())
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(got_ranges, expected.as_ref().cloned());
    let Ok(ranges) = got_ranges else { return };
    let Ok(parts) = got else { return };
    assert!(!parts.is_empty() && parts.len() <= limits.max_parts);
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "parts overlap or are out of order");
    }
    for (&(start, end), part) in ranges.iter().zip(&parts) {
        for at in start..end {
            assert!(
                !(body[at..end].starts_with(&dash(boundary))
                    && is_delimiter_line(body, at, boundary)),
                "part {start}..{end} holds a delimiter line at {at}"
            );
        }
        check_subrequest(part);
    }
}

fn dash(boundary: &[u8]) -> Vec<u8> {
    [b"--", boundary].concat()
}

/// Whether a `--boundary` at `at` starts a delimiter line; returns where the next part starts.
fn delimiter_at(body: &[u8], at: usize, boundary: &[u8]) -> Option<Option<usize>> {
    let dash = dash(boundary);
    if !body[at..].starts_with(&dash) || (at > 0 && body[at - 1] != b'\n') {
        return None;
    }
    let after = at + dash.len();
    let rest = &body[after..];
    if rest.starts_with(b"--") {
        return Some(None);
    }
    let padding = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    match &rest[padding..] {
        [] | [b'\r'] => Some(None),
        [b'\r', b'\n', ..] => Some(Some(after + padding + 2)),
        [b'\n', ..] => Some(Some(after + padding + 1)),
        _ => None,
    }
}

fn is_delimiter_line(body: &[u8], at: usize, boundary: &[u8]) -> bool {
    delimiter_at(body, at, boundary).is_some()
}

/// The slow reference: scan every position for a delimiter line.
fn reference_split(
    body: &[u8],
    boundary: &[u8],
    max_parts: usize,
) -> Result<Vec<(usize, usize)>, MultipartError> {
    let next = |from: usize| {
        (from..body.len()).find_map(|at| delimiter_at(body, at, boundary).map(|d| (at, d)))
    };
    let mut start = match next(0) {
        None => return Err(MultipartError::NoOpeningDelimiter),
        Some((_, None)) => return Err(MultipartError::NoParts),
        Some((_, Some(next_part))) => next_part,
    };
    let mut parts = Vec::new();
    loop {
        let found = next(start);
        if found.is_none() && start >= body.len() {
            break;
        }
        if parts.len() >= max_parts {
            return Err(MultipartError::TooManyParts { limit: max_parts });
        }
        let Some((line_start, delimiter)) = found else {
            parts.push((start, body.len()));
            break;
        };
        let mut end = line_start.max(start);
        if end > start && body[end - 1] == b'\n' {
            end -= 1;
        }
        if end > start && body[end - 1] == b'\r' {
            end -= 1;
        }
        parts.push((start, end));
        match delimiter {
            None => break,
            Some(next_part) => start = next_part,
        }
    }
    if parts.is_empty() {
        return Err(MultipartError::NoParts);
    }
    Ok(parts)
}

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    o.start <= i.start && i.end <= o.end
}

fn check_subrequest(part: &[u8]) {
    let Ok(request) = parse_subrequest(part) else {
        return;
    };
    assert!(within(part, request.method.as_bytes()) && !request.method.is_empty());
    assert!(within(part, request.target.as_bytes()) && !request.target.is_empty());
    assert!(request.target.bytes().all(|b| b.is_ascii_graphic()));
    assert!(
        within(part, request.body),
        "the body is not a sub-slice of the part"
    );
    assert!(request.headers.len() <= halley::http::multipart::MAX_SUBREQUEST_HEADERS);
    for (name, value) in &request.headers {
        assert!(within(part, name.as_bytes()) && within(part, value));
        assert!(!name.is_empty());
        assert!(!value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)));
    }
    if let Some(length) = request.header("content-length") {
        let length: usize = std::str::from_utf8(length).unwrap().trim().parse().unwrap();
        assert_eq!(request.body.len(), length);
    }
    assert!(request.header("transfer-encoding").is_none());
}

const BCHARS: &[u8] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ";

/// Breaks up every delimiter-line candidate: a `--boundary` at the start of `text` or after an LF.
fn break_delimiters(text: &mut [u8], boundary: &[u8]) {
    let dash = dash(boundary);
    for at in 0..text.len() {
        if (at == 0 || text[at - 1] == b'\n') && text[at..].starts_with(&dash) {
            text[at] = b'x';
        }
    }
}

fn round_trip(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let len = u.int_in_range(1..=70usize)?;
    let mut boundary: Vec<u8> = (0..len)
        .map(|_| u.choose(BCHARS).copied())
        .collect::<ArbResult<_>>()?;
    while boundary.last() == Some(&b' ') {
        boundary.pop();
    }
    if boundary.is_empty() {
        boundary.push(b'b');
    }
    let crlf: bool = u.arbitrary()?;
    let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let padding: &[u8] = match u.int_in_range(0..=2)? {
        0 => b"",
        1 => b" ",
        _ => b" \t ",
    };
    let mut body = Vec::new();
    if u.ratio(1, 4)? {
        let take = u.int_in_range(0..=40)?.min(u.len());
        let mut preamble = u.bytes(take)?.to_vec();
        break_delimiters(&mut preamble, &boundary);
        body.extend(preamble);
        body.extend_from_slice(eol);
    }
    let count = u.int_in_range(1..=8usize)?;
    let mut parts = Vec::new();
    for _ in 0..count {
        let take = u.int_in_range(0..=200)?.min(u.len());
        let mut part = u.bytes(take)?.to_vec();
        break_delimiters(&mut part, &boundary);
        // With LF line endings, a part ending in CR would read as ended by CRLF.
        if !crlf && part.last() == Some(&b'\r') {
            *part.last_mut().unwrap() = b'x';
        }
        parts.push(part);
    }
    for part in &parts {
        body.extend_from_slice(b"--");
        body.extend_from_slice(&boundary);
        body.extend_from_slice(padding);
        body.extend_from_slice(eol);
        body.extend_from_slice(part);
        body.extend_from_slice(eol);
    }
    body.extend_from_slice(b"--");
    body.extend_from_slice(&boundary);
    body.extend_from_slice(b"--");
    // An epilogue: anything at all.
    body.extend_from_slice(u.take_rest());

    let limits = PartLimits { max_parts: 8 };
    let split = split_parts(&body, &boundary, limits)
        .unwrap_or_else(|e| panic!("{e:?} for {:?}", String::from_utf8_lossy(&body)));
    let expected: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    assert_eq!(
        split,
        expected,
        "boundary {:?}",
        String::from_utf8_lossy(&boundary)
    );
    for part in split {
        check_subrequest(part);
    }
    Ok(())
}
