//! `parse_head` over arbitrary bytes, checked the way the network delivers them.
//!
//! Invariants, for every input:
//! - no panic, and the same input always gives the same result;
//! - the result does not depend on how the bytes were split into reads: take the
//!   outcome of every prefix `&data[..k]`, in order. It is "need more" (`Ok(None)`)
//!   up to some point; from there on it is final: once a prefix is a complete head of
//!   `n` bytes, every longer prefix is that same head with the same `n` (the parser
//!   never looks past the head), and once a prefix is refused, every longer prefix is
//!   refused (the server has closed the connection by then, so a longer read that
//!   would have been accepted means a valid request was refused only because of where
//!   TCP split it), with the same status code unless the first refusal was a limit
//!   (414, 431), which is checked on partial input by design;
//! - a complete head: `0 < n <= data.len()`, the head ends at an LF, the path is a
//!   view into the target (or `/` for an absolute-form target with no path) holding
//!   no `?` or `#`, and framing, keep-alive and Host follow RFC 9112.

#![no_main]

use halley::http::request::{
    parse_head, Framing, Head, HeadError, HeadLimits, Method, Version, MAX_HEADERS,
};
use libfuzzer_sys::fuzz_target;

/// Small limits, so the limit paths are reached with short inputs.
const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 384,
    max_target_bytes: 48,
};

/// Longest input looked at: every prefix is parsed, so the work is quadratic.
const MAX_INPUT: usize = 1024;

type Outcome = Result<Option<(Head, usize)>, HeadError>;

/// A comparable rendering of an outcome (`Head` has no `PartialEq`).
fn render(outcome: &Outcome) -> String {
    format!("{outcome:?}")
}

fn parse(data: &[u8]) -> Outcome {
    parse_head(data, &LIMITS)
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let whole = parse(data);
    assert_eq!(render(&whole), render(&parse(data)), "not deterministic");

    // Walk the prefixes: need-more, then final.
    let mut first_final: Option<(usize, Outcome)> = None;
    for k in 0..=data.len() {
        let outcome = parse(&data[..k]);
        match (&first_final, &outcome) {
            (None, Ok(None)) => {}
            (None, _) => first_final = Some((k, outcome)),
            (Some((at, Ok(Some((_, n))))), Ok(Some((_, m)))) => {
                assert_eq!(
                    n, m,
                    "head of prefix {at} is {n} bytes, of prefix {k} is {m}"
                );
                let (_, earlier) = first_final.as_ref().unwrap();
                assert_eq!(render(earlier), render(&outcome), "prefixes {at} and {k}");
            }
            (Some((at, Err(e))), Err(f)) => {
                // A limit is enforced on partial input by design (414, 431), before
                // the rest of the head could show another fault; otherwise the first
                // fault found decides, wherever the input was cut.
                assert!(
                    e.status() == f.status() || matches!(e.status(), 414 | 431),
                    "prefix {at} refused with {e:?}, prefix {k} with {f:?}"
                );
            }
            (Some((at, earlier)), _) => panic!(
                "prefix {at} gave {}, longer prefix {k} gave {}",
                render(earlier),
                render(&outcome)
            ),
        }
    }

    if let Ok(Some((head, n))) = &whole {
        let n = *n;
        assert!(n > 0 && n <= data.len());
        assert_eq!(data[n - 1], b'\n', "a head ends with a line ending");
        assert!(n <= LIMITS.max_header_bytes);
        assert_eq!(render(&parse(&data[..n])), render(&whole));
        check_head(head);
    }
    if let Err(e) = &whole {
        assert!(matches!(e.status(), 400 | 414 | 431 | 501 | 505), "{e:?}");
    }
});

fn check_head(head: &Head) {
    let token = head.method_token();
    assert!(!token.is_empty());
    let expected = match token {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "SUBSCRIBE" => Method::Subscribe,
        _ => Method::Other,
    };
    assert_eq!(head.method, expected);

    let target = head.target();
    assert!(!target.is_empty() && target.len() <= LIMITS.max_target_bytes);
    assert!(target.bytes().all(|b| b.is_ascii_graphic()), "{target:?}");
    assert!(!target.contains('#'), "fragment in {target:?}");
    let path = head.path();
    let t = target.as_bytes().as_ptr_range();
    let p = path.as_bytes().as_ptr_range();
    let inside = t.start <= p.start && p.end <= t.end;
    if target.starts_with('/') {
        assert!(
            inside && p.start == t.start,
            "{path:?} is not the front of {target:?}"
        );
        assert!(!path.contains('?'), "{path:?}");
        assert_eq!(
            target.as_bytes().get(path.len()).copied().unwrap_or(b'?'),
            b'?'
        );
    } else if target == "*" {
        assert_eq!(head.method, Method::Options);
        assert!(inside && path == "*");
    } else {
        let lower = target.to_ascii_lowercase();
        let scheme_len = if lower.starts_with("http://") {
            7
        } else if lower.starts_with("https://") {
            8
        } else {
            panic!("target {target:?} is neither a path nor absolute");
        };
        let rest = &target[scheme_len..];
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => {
                let offset = scheme_len + i;
                assert!(inside, "{path:?} is not a view into {target:?}");
                assert_eq!(p.start as usize - t.start as usize, offset, "{target:?}");
                let after = &target[offset + path.len()..];
                assert!(after.is_empty() || after.starts_with('?'), "{target:?}");
            }
            _ => assert_eq!(path, "/", "an empty absolute path means /"),
        }
        assert!(!path.contains('?'));
    }

    // Host: exactly one for HTTP/1.1, at most one for HTTP/1.0.
    let hosts = head.headers_named("host").count();
    match head.version {
        Version::Http11 => assert_eq!(hosts, 1),
        Version::Http10 => assert!(hosts <= 1),
    }
    assert!(head.header_lines().count() <= MAX_HEADERS);

    // Framing.
    let has_te = head.header("transfer-encoding").is_some();
    let has_cl = head.header("content-length").is_some();
    match head.framing {
        Framing::Chunked => {
            assert!(has_te && !has_cl);
            assert_eq!(head.version, Version::Http11);
        }
        Framing::Length(n) => {
            assert!(!has_te);
            if n > 0 {
                assert!(has_cl);
            }
        }
    }
    assert_eq!(head.has_body(), head.framing != Framing::Length(0));

    // Keep-alive: HTTP/1.1 unless `close`, HTTP/1.0 only with `keep-alive`.
    let tokens: Vec<Vec<u8>> = head
        .headers_named("connection")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| trim_ows(t).to_ascii_lowercase())
        .collect();
    let close = tokens.iter().any(|t| t == b"close");
    let keep = tokens.iter().any(|t| t == b"keep-alive");
    let expected = match head.version {
        Version::Http11 => !close,
        Version::Http10 => keep && !close,
    };
    assert_eq!(head.keep_alive, expected);
}

/// Strips SP and HTAB at both ends, as RFC 9110 OWS.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
