//! `Accept` negotiation never panics and keeps its promises.
//!
//! - `negotiate` on the raw input: no panic; a preferred digest stream is acceptable
//!   (`stream == Some(Digest)` implies `digest_acceptable`).
//! - Several `Accept` lines are one list, so `negotiate_all` is independent of the order
//!   of the lines and of repeating a line, and an empty line adds nothing: the input
//!   split at a point taken from its first byte gives the same answer as lines `[a, b]`
//!   and `[b, a]`, and `[x, x]` and `[x, ""]` answer as `[x]`.
//! - Whitespace around the whole value changes nothing.

#![no_main]

use halley::http::accept::{negotiate, negotiate_all, StreamForm};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let n = negotiate(Some(data));
    if n.stream == Some(StreamForm::Digest) {
        assert!(n.digest_acceptable, "{:?}", String::from_utf8_lossy(data));
    }
    assert_eq!(negotiate_all([data].into_iter()), n);
    assert_eq!(negotiate_all([data, data].into_iter()), n);
    assert_eq!(negotiate_all([data, &b""[..]].into_iter()), n);
    let padded = [b" \t", data, b"\t "].concat();
    assert_eq!(negotiate(Some(&padded)), n);

    let Some((&at, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = rest.split_at(usize::from(at) % (rest.len() + 1));
    let ab = negotiate_all([a, b].into_iter());
    assert_eq!(negotiate_all([b, a].into_iter()), ab, "{a:?} {b:?}");
    if ab.stream == Some(StreamForm::Digest) {
        assert!(ab.digest_acceptable);
    }
});
