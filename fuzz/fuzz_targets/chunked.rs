//! The chunked body decoder, fed the way the network delivers bytes.
//!
//! Part 1, arbitrary bytes: the first byte picks the `max_body` limit and how many
//! split points follow (two bytes each); the rest is the chunked input. It is fed
//! whole, split at those points, and a byte at a time, and every way must give the
//! identical outcome: the decoded bytes, how many bytes the body took, whether it
//! completed, or the same error. The consumption rules hold on every call (an
//! unfinished decoder takes all input; a finished one takes nothing more) and an error
//! is sticky.
//!
//! Part 2, a round trip: the same bytes drive an encoder (chunk sizes, hex case and
//! leading zeros, whitespace and extensions, trailers, the payload bytes themselves).
//! Decoding the encoding, followed by a pipelined request, must return the payload
//! exactly and consume exactly the encoding, however it is split.

#![no_main]

use halley::http::body::{
    BodyDecoder, BodyError, BodyLimits, Progress, DEFAULT_MAX_BODY_BYTES,
    MAX_CHUNK_EXTENSION_BYTES, MAX_CHUNK_SIZE_DIGITS, MAX_TRAILER_BYTES,
};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;

/// What feeding some input in pieces produced.
#[derive(Debug, PartialEq, Eq)]
enum Fed {
    /// The body completed after `consumed` bytes of the concatenated input.
    Done { body: Vec<u8>, consumed: usize },
    /// All input was consumed and the body is not complete yet.
    Pending { body: Vec<u8> },
    /// Decoding failed.
    Failed(BodyError),
}

/// Feeds `pieces` in order and checks the rules every call must keep.
fn feed(limits: BodyLimits, pieces: &[&[u8]]) -> Fed {
    let mut decoder = BodyDecoder::chunked(limits);
    let mut body = Vec::new();
    let mut offset = 0;
    for piece in pieces {
        let before = body.len();
        match decoder.decode(piece, &mut body) {
            Err(error) => {
                assert!(!decoder.is_done());
                // Sticky: every later call gives the same error.
                assert_eq!(decoder.decode(b"0\r\n\r\n", &mut body), Err(error.clone()));
                assert_eq!(decoder.decode(b"", &mut body), Err(error.clone()));
                return Fed::Failed(error);
            }
            Ok(Progress {
                consumed,
                done: true,
            }) => {
                assert!(consumed <= piece.len());
                assert!(decoder.is_done());
                assert!(body.len() - before <= consumed, "more out than in");
                assert_eq!(
                    decoder.decode(&piece[consumed..], &mut body),
                    Ok(Progress {
                        consumed: 0,
                        done: true
                    }),
                    "a finished decoder takes nothing more"
                );
                return Fed::Done {
                    body,
                    consumed: offset + consumed,
                };
            }
            Ok(Progress {
                consumed,
                done: false,
            }) => {
                assert_eq!(
                    consumed,
                    piece.len(),
                    "an unfinished decoder takes all input"
                );
                assert!(!decoder.is_done());
                assert!(body.len() - before <= consumed, "more out than in");
                offset += consumed;
            }
        }
    }
    assert_eq!(
        decoder.decode(&[], &mut body),
        Ok(Progress {
            consumed: 0,
            done: false
        })
    );
    Fed::Pending { body }
}

/// Feeds `input` whole, split at `points`, and a byte at a time; all must agree.
fn feed_every_way(limits: BodyLimits, input: &[u8], points: &[usize]) -> Fed {
    let whole = feed(limits, &[input]);
    let mut pieces = Vec::new();
    let mut last = 0;
    for &at in points {
        let at = at.clamp(last, input.len());
        pieces.push(&input[last..at]);
        last = at;
    }
    pieces.push(&input[last..]);
    assert_eq!(feed(limits, &pieces), whole, "split at {points:?}");
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(feed(limits, &bytes), whole, "a byte at a time");
    whole
}

fuzz_target!(|data: &[u8]| {
    decode_arbitrary(data);
    let _ = round_trip(data);
});

fn decode_arbitrary(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let max_body = match control & 3 {
        0 => DEFAULT_MAX_BODY_BYTES,
        1 => 16,
        2 => 0,
        _ => u64::MAX,
    };
    let split_count = usize::from(control >> 2) % 8;
    let (point_bytes, input) = rest.split_at((split_count * 2).min(rest.len()));
    let mut points: Vec<usize> = point_bytes
        .chunks(2)
        .map(|p| usize::from(u16::from_le_bytes([p[0], *p.get(1).unwrap_or(&0)])))
        .map(|p| p % (input.len() + 1))
        .collect();
    points.sort_unstable();
    let limits = BodyLimits { max_body };
    let fed = feed_every_way(limits, input, &points);
    match &fed {
        Fed::Done { body, consumed } => {
            assert!(*consumed <= input.len());
            assert!(body.len() as u64 <= max_body);
            assert!(input[..*consumed].ends_with(b"\r\n"));
            // The body ends where it ends: the same bytes alone give the same result.
            assert_eq!(feed(limits, &[&input[..*consumed]]), fed);
        }
        Fed::Pending { body } => assert!(body.len() as u64 <= max_body),
        Fed::Failed(_) => {}
    }
}

/// Hex digits of `n`, in upper or lower case, with `zeros` leading zeros (within the digit limit).
fn hex(n: usize, upper: bool, zeros: usize) -> Vec<u8> {
    let digits = if upper {
        format!("{n:X}")
    } else {
        format!("{n:x}")
    };
    let zeros = zeros.min(MAX_CHUNK_SIZE_DIGITS - digits.len());
    let mut out = vec![b'0'; zeros];
    out.extend_from_slice(digits.as_bytes());
    out
}

/// Bytes drawn from `alphabet`, at most `max` of them.
fn pick(u: &mut Unstructured<'_>, alphabet: &[u8], max: usize) -> ArbResult<Vec<u8>> {
    let len = u.int_in_range(1..=max)?;
    (0..len)
        .map(|_| u.choose(alphabet).copied())
        .collect::<ArbResult<Vec<u8>>>()
}

const TCHARS: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const VALUE_BYTES: &[u8] = b" \t!\"#,;=abcXYZ019~\x80\xfe\xff";

/// Optional whitespace and chunk extensions after a chunk size, within `budget` bytes.
fn extensions(u: &mut Unstructured<'_>, budget: &mut usize) -> ArbResult<Vec<u8>> {
    let mut ext = Vec::new();
    if u.ratio(1, 3)? {
        ext.extend(pick(u, b" \t", 3)?);
        for _ in 0..u.int_in_range(1..=3)? {
            ext.push(b';');
            ext.extend(pick(u, TCHARS, 8)?);
            if u.ratio(1, 2)? {
                ext.push(b'=');
                if u.ratio(1, 2)? {
                    ext.push(b'"');
                    ext.extend(pick(u, b"ab ;,=\\\t\x80", 8)?);
                    ext.push(b'"');
                } else {
                    ext.extend(pick(u, TCHARS, 8)?);
                }
            }
        }
    }
    if ext.len() > *budget {
        return Ok(Vec::new());
    }
    *budget -= ext.len();
    Ok(ext)
}

fn round_trip(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let mut encoded = Vec::new();
    let mut payload = Vec::new();
    let mut ext_budget = MAX_CHUNK_EXTENSION_BYTES;
    let mut chunk_count = 0;
    while !u.is_empty() && chunk_count < 64 {
        let size = u.int_in_range(1..=600usize)?;
        let bytes = u.bytes(size.min(u.len()))?;
        if bytes.is_empty() {
            break;
        }
        let upper = u.arbitrary()?;
        let zeros = u.int_in_range(0..=3)?;
        encoded.extend(hex(bytes.len(), upper, zeros));
        encoded.extend(extensions(&mut u, &mut ext_budget)?);
        encoded.extend_from_slice(b"\r\n");
        encoded.extend_from_slice(bytes);
        encoded.extend_from_slice(b"\r\n");
        payload.extend_from_slice(bytes);
        chunk_count += 1;
    }
    let zeros = u.int_in_range(0..=2).unwrap_or(0);
    encoded.extend(hex(0, false, zeros));
    encoded.extend(extensions(&mut u, &mut ext_budget).unwrap_or_default());
    encoded.extend_from_slice(b"\r\n");
    let mut trailer_bytes = 0;
    for _ in 0..u.int_in_range(0..=3).unwrap_or(0) {
        let (Ok(name), Ok(value)) = (pick(&mut u, TCHARS, 12), pick(&mut u, VALUE_BYTES, 20))
        else {
            break;
        };
        let line = [&name[..], b":", &value, b"\r\n"].concat();
        if trailer_bytes + line.len() + 2 > MAX_TRAILER_BYTES {
            break;
        }
        trailer_bytes += line.len();
        encoded.extend(line);
    }
    encoded.extend_from_slice(b"\r\n");

    let input = [&encoded[..], b"GET /next HTTP/1.1\r\n\r\n"].concat();
    let points: Vec<usize> = [1, 2, 3, 5, 8, 13, 21, 34]
        .iter()
        .map(|&d| encoded.len().saturating_sub(d))
        .rev()
        .chain([encoded.len()])
        .collect();
    let expected = Fed::Done {
        body: payload,
        consumed: encoded.len(),
    };
    let limits = BodyLimits::default();
    assert_eq!(feed_every_way(limits, &input, &points), expected);
    let exact = BodyLimits {
        max_body: u64::try_from(match &expected {
            Fed::Done { body, .. } => body.len(),
            _ => unreachable!(),
        })
        .unwrap(),
    };
    assert_eq!(
        feed(exact, &[&input]),
        expected,
        "a body of exactly max_body"
    );
    Ok(())
}
