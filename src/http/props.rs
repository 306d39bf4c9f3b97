//! Property tests for the HTTP parsers: the invariants of the fuzz targets in `fuzz/`,
//! run by `cargo test` over generated valid inputs.
//!
//! Each property builds a valid input from parts it knows (a payload, a request, a list
//! of parts, an instant, a range), encodes it, and checks that parsing returns exactly
//! those parts however the bytes are split, and consumes exactly the encoding.

use crate::http::body::{BodyDecoder, BodyLimits, Progress, MAX_CHUNK_SIZE_DIGITS};
use crate::http::multipart::{split_parts, PartLimits};
use crate::http::range::{parse_range, ContentRange, RangeSpec};
use crate::http::request::{parse_head, Framing, HeadLimits, Method, Version};
use crate::time::{parse_http_date, Timestamp};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

/// 9999-12-31 23:59:59.999999, the last instant a `Timestamp` formats.
const MAX_MICROS: u64 = 2_932_897 * 86_400 * 1_000_000 - 1;

/// Bytes that follow a body or head and must be left alone.
const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n";

/// Every input of up to `max_len` bytes drawn from `alphabet`, for the exhaustive
/// never-panic tests of the small parsers.
pub(crate) fn all_inputs(alphabet: &[u8], max_len: usize) -> Vec<Vec<u8>> {
    let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
    let mut all = inputs.clone();
    for _ in 0..max_len {
        inputs = inputs
            .iter()
            .flat_map(|prefix| {
                alphabet
                    .iter()
                    .map(move |&b| [prefix.as_slice(), &[b]].concat())
            })
            .collect();
        all.extend(inputs.iter().cloned());
    }
    all
}

/// Cuts `input` at the sorted, clamped `points`.
fn pieces<'a>(input: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = points.iter().map(|&p| p % (input.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for at in points {
        out.push(&input[last..at]);
        last = at;
    }
    out.push(&input[last..]);
    out
}

// --- chunked ---------------------------------------------------------------------------

/// One chunk of an encoding: its data, how its size is written, what follows the size.
#[derive(Clone, Debug)]
struct Chunk {
    data: Vec<u8>,
    upper: bool,
    zeros: usize,
    extension: Vec<u8>,
}

fn chunk() -> impl Strategy<Value = Chunk> {
    let extension = prop_oneof![
        3 => Just(Vec::new()),
        1 => "[ \t]{0,2};[a-z]{1,6}(=[a-zA-Z0-9]{1,6}|=\"[a-z ;,]{0,6}\")?"
            .prop_map(String::into_bytes),
    ];
    (
        vec(any::<u8>(), 1..200),
        any::<bool>(),
        0..3usize,
        extension,
    )
        .prop_map(|(data, upper, zeros, extension)| Chunk {
            data,
            upper,
            zeros,
            extension,
        })
}

fn size_line(len: usize, upper: bool, zeros: usize, extension: &[u8]) -> Vec<u8> {
    let digits = if upper {
        format!("{len:X}")
    } else {
        format!("{len:x}")
    };
    let zeros = zeros.min(MAX_CHUNK_SIZE_DIGITS - digits.len());
    let mut line = vec![b'0'; zeros];
    line.extend_from_slice(digits.as_bytes());
    line.extend_from_slice(extension);
    line.extend_from_slice(b"\r\n");
    line
}

/// Feeds `pieces` to a fresh chunked decoder; returns the body and the bytes it took.
fn decode_chunked(pieces: &[&[u8]]) -> Option<(Vec<u8>, usize)> {
    let mut decoder = BodyDecoder::chunked(BodyLimits::default());
    let mut out = Vec::new();
    let mut offset = 0;
    for piece in pieces {
        let Progress { consumed, done } = decoder.decode(piece, &mut out).ok()?;
        if done {
            return Some((out, offset + consumed));
        }
        assert_eq!(
            consumed,
            piece.len(),
            "an unfinished decoder takes all input"
        );
        offset += consumed;
    }
    None
}

proptest! {
    #[test]
    fn chunked_round_trip(
        chunks in vec(chunk(), 0..8),
        trailers in vec("[A-Za-z-]{1,8}:[ \t]?[ -~]{0,12}", 0..3),
        points in vec(any::<usize>(), 0..6),
    ) {
        let mut encoded = Vec::new();
        let mut payload = Vec::new();
        for c in &chunks {
            encoded.extend(size_line(c.data.len(), c.upper, c.zeros, &c.extension));
            encoded.extend_from_slice(&c.data);
            encoded.extend_from_slice(b"\r\n");
            payload.extend_from_slice(&c.data);
        }
        encoded.extend_from_slice(b"0\r\n");
        for t in &trailers {
            encoded.extend_from_slice(t.as_bytes());
            encoded.extend_from_slice(b"\r\n");
        }
        encoded.extend_from_slice(b"\r\n");
        let input = [&encoded[..], NEXT].concat();
        let expected = Some((payload, encoded.len()));
        prop_assert_eq!(&decode_chunked(&[&input]), &expected);
        prop_assert_eq!(&decode_chunked(&pieces(&input, &points)), &expected);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&decode_chunked(&bytes), &expected);
    }
}

// --- request heads ---------------------------------------------------------------------

/// A request the generator knows every part of.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    target: String,
    path: String,
    version: Version,
    headers: Vec<(String, String)>,
    framing: Framing,
    keep_alive: bool,
}

impl Request {
    fn encode(&self, crlf: bool) -> Vec<u8> {
        let eol = if crlf { "\r\n" } else { "\n" };
        let version = match self.version {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        };
        let mut out = format!("{} {} {version}{eol}", self.method, self.target);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}{eol}"));
        }
        out.push_str(eol);
        out.into_bytes()
    }
}

fn target() -> impl Strategy<Value = (String, String)> {
    let path = "(/[a-zA-Z0-9._~%!$&'()*+,;=:@-]{0,10}){1,4}";
    let query = "(\\?[a-zA-Z0-9=&/?%-]{0,12})?";
    prop_oneof![
        (path, query).prop_map(|(p, q)| (format!("{p}{q}"), p)),
        (
            "(http|HTTP|https)",
            "[a-z0-9.]{1,12}(:[0-9]{1,5})?",
            path,
            query
        )
            .prop_map(|(s, host, p, q)| (format!("{s}://{host}{p}{q}"), p)),
        ("http", "[a-z0-9.]{1,12}", query)
            .prop_map(|(s, host, q)| (format!("{s}://{host}{q}"), "/".to_string())),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let method = prop_oneof![
        select(vec![
            "GET",
            "HEAD",
            "PUT",
            "POST",
            "DELETE",
            "OPTIONS",
            "SUBSCRIBE"
        ])
        .prop_map(str::to_string),
        "[A-Z][A-Z_-]{0,10}",
    ];
    let extra = vec(("X-[A-Za-z0-9-]{1,10}", "[!-~]([ !-~]{0,20}[!-~])?"), 0..6);
    let framing = prop_oneof![
        Just(None),
        (0u64..100_000).prop_map(Some),
        Just(Some(u64::MAX)),
    ];
    let connection = select(vec![
        None,
        Some("close"),
        Some("keep-alive"),
        Some("Upgrade, Close"),
    ]);
    let asterisk = any::<bool>();
    (
        method,
        target(),
        asterisk,
        any::<bool>(),
        extra,
        framing,
        connection,
    )
        .prop_map(
            |(method, (target, path), asterisk, http11, extra, framing, connection)| {
                // OPTIONS may ask about the server as a whole.
                let (target, path) = if asterisk && method == "OPTIONS" {
                    ("*".to_string(), "*".to_string())
                } else {
                    (target, path)
                };
                let version = if http11 {
                    Version::Http11
                } else {
                    Version::Http10
                };
                let mut headers = vec![("Host".to_string(), "example.com:8080".to_string())];
                headers.extend(extra);
                let framing = match framing {
                    None => Framing::Length(0),
                    Some(u64::MAX) if http11 => {
                        headers.push(("Transfer-Encoding".into(), "chunked".into()));
                        Framing::Chunked
                    }
                    Some(u64::MAX) => Framing::Length(0),
                    Some(n) => {
                        headers.push(("Content-Length".into(), n.to_string()));
                        Framing::Length(n)
                    }
                };
                let keep_alive = match (connection, http11) {
                    (Some(c), _) if c.to_ascii_lowercase().contains("close") => false,
                    (Some("keep-alive"), false) => true,
                    (_, h) => h,
                };
                if let Some(c) = connection {
                    headers.push(("Connection".into(), c.into()));
                }
                Request {
                    method,
                    target,
                    path,
                    version,
                    headers,
                    framing,
                    keep_alive,
                }
            },
        )
}

fn expected_method(token: &str) -> Method {
    match token {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "SUBSCRIBE" => Method::Subscribe,
        _ => Method::Other,
    }
}

proptest! {
    #[test]
    fn head_split_point_agreement(
        req in request(),
        crlf in any::<bool>(),
        leading_crlf in any::<bool>(),
        cut in any::<usize>(),
    ) {
        let limits = HeadLimits::default();
        let mut head = if leading_crlf { b"\r\n".to_vec() } else { Vec::new() };
        head.extend(req.encode(crlf));
        let with_next = [&head[..], b"body bytes", NEXT].concat();
        let (parsed, n) = parse_head(&with_next, &limits).unwrap().unwrap();
        prop_assert_eq!(n, head.len());
        // The head alone, and every prefix of it: need more, never an error.
        let (alone, m) = parse_head(&head, &limits).unwrap().unwrap();
        prop_assert_eq!(m, n);
        prop_assert_eq!(format!("{alone:?}"), format!("{parsed:?}"));
        for k in 0..n {
            let outcome = parse_head(&head[..k], &limits);
            prop_assert!(matches!(outcome, Ok(None)), "prefix {}: {:?}", k, outcome);
        }
        // Any longer read gives the same head.
        let longer = &with_next[..n + cut % (with_next.len() - n + 1)];
        let (again, m) = parse_head(longer, &limits).unwrap().unwrap();
        prop_assert_eq!(m, n);
        prop_assert_eq!(format!("{again:?}"), format!("{parsed:?}"));

        prop_assert_eq!(parsed.method_token(), req.method.as_str());
        prop_assert_eq!(parsed.method, expected_method(&req.method));
        prop_assert_eq!(parsed.target(), req.target.as_str());
        prop_assert_eq!(parsed.path(), req.path.as_str());
        prop_assert_eq!(parsed.version, req.version);
        prop_assert_eq!(parsed.framing, req.framing);
        prop_assert_eq!(parsed.keep_alive, req.keep_alive);
        let lines: Vec<(String, Vec<u8>)> = parsed
            .header_lines()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        let sent: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
            .collect();
        prop_assert_eq!(lines, sent);
    }
}

// --- multipart -------------------------------------------------------------------------

/// A boundary of RFC 2046 `bchars`, not ending in a space.
fn mime_boundary() -> impl Strategy<Value = Vec<u8>> {
    "[a-zA-Z0-9'()+_,./:=?-]([a-zA-Z0-9'()+_,./:=? -]{0,68}[a-zA-Z0-9'()+_,./:=?-])?"
        .prop_map(String::into_bytes)
}

/// A part body over an alphabet rich in the bytes delimiters are made of.
fn part_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            4 => select(b"-\r\n ab".to_vec()),
            1 => any::<u8>(),
        ],
        0..80,
    )
}

/// Breaks every `--boundary` at the start of a line of `text` (its start counts).
fn break_delimiters(text: &mut [u8], boundary: &[u8]) {
    let dash = [b"--", boundary].concat();
    for at in 0..text.len() {
        if (at == 0 || text[at - 1] == b'\n') && text[at..].starts_with(&dash) {
            text[at] = b'x';
        }
    }
}

proptest! {
    #[test]
    fn multipart_split_join_round_trip(
        boundary in mime_boundary(),
        mut parts in vec(part_bytes(), 1..6),
        mut preamble in proptest::option::of(part_bytes()),
        epilogue in part_bytes(),
        crlf in any::<bool>(),
        padding in select(vec!["", " ", "\t \t"]),
    ) {
        let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut body = Vec::new();
        if let Some(preamble) = &mut preamble {
            break_delimiters(preamble, &boundary);
            body.extend_from_slice(preamble);
            body.extend_from_slice(eol);
        }
        for part in &mut parts {
            break_delimiters(part, &boundary);
            // With LF line endings, a part ending in CR would read as ended by CRLF.
            while !crlf && part.last() == Some(&b'\r') {
                part.pop();
            }
            body.extend_from_slice(b"--");
            body.extend_from_slice(&boundary);
            body.extend_from_slice(padding.as_bytes());
            body.extend_from_slice(eol);
            body.extend_from_slice(part);
            body.extend_from_slice(eol);
        }
        body.extend_from_slice(b"--");
        body.extend_from_slice(&boundary);
        body.extend_from_slice(b"--");
        body.extend_from_slice(&epilogue);
        let split = split_parts(&body, &boundary, PartLimits { max_parts: 8 });
        let expected: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(split, Ok(expected));
    }
}

// --- dates and ranges ------------------------------------------------------------------

proptest! {
    #[test]
    fn date_format_parse_round_trip(micros in 0..=MAX_MICROS) {
        let ts = Timestamp::from_micros(micros);
        let text = ts.to_http();
        prop_assert_eq!(parse_http_date(text.as_bytes()), Ok(ts));
        let mut seconds = Vec::new();
        ts.write_http_seconds(&mut seconds);
        prop_assert_eq!(parse_http_date(&seconds), Ok(ts.truncate_to_seconds()));
    }

    #[test]
    fn range_format_parse_round_trip(
        n in prop_oneof![0u64..1000, any::<u64>()],
        a in prop_oneof![0u64..1000, any::<u64>()],
        b in prop_oneof![0u64..1000, any::<u64>()],
        unit in select(vec!["bytes", "Bytes", "BYTES"]),
        sep in select(vec!["=", " ", " = ", "\t"]),
        star in select(vec!["", "/*", " /*"]),
        micros in 0..=MAX_MICROS,
    ) {
        let parse = |range: String| parse_range(format!("{unit}{sep}{range}{star}").as_bytes());
        prop_assert_eq!(parse(format!("{n}-")), Ok(Some(RangeSpec::BytesFrom(n))));
        prop_assert_eq!(parse(format!("-{n}")), Ok(Some(RangeSpec::BytesSuffix(n))));
        prop_assert_eq!(
            parse(format!("{a}-{b}")),
            Ok((a <= b).then_some(RangeSpec::BytesClosed(a, b)))
        );
        prop_assert_eq!(
            parse_range(format!("bytes {n}-").as_bytes()),
            Ok(Some(RangeSpec::BytesFrom(n)))
        );
        // An `updated` Content-Range: both dates parse back, and the first asks again.
        let from = Timestamp::from_micros(micros);
        let last = Timestamp::from_micros(micros.saturating_add(n % 1_000_000_000).min(MAX_MICROS));
        let mut value = Vec::new();
        ContentRange::Updated { from, last }.write_value(&mut value);
        let text = String::from_utf8(value).unwrap();
        let (from_text, last_text) = text
            .strip_prefix("updated ")
            .and_then(|rest| rest.split_once("-/"))
            .unwrap();
        prop_assert_eq!(parse_http_date(from_text.as_bytes()), Ok(from));
        prop_assert_eq!(parse_http_date(last_text.as_bytes()), Ok(last));
        prop_assert_eq!(
            parse_range(format!("updated {from_text}-{star}").as_bytes()),
            Ok(Some(RangeSpec::Updated(from)))
        );
    }
}
