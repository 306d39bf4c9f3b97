//! The `Accept` request header (RFC 9110 §12.5.1), read for the one question
//! halley asks of it: does the client want a stream, and in which form?
//!
//! Besides [`negotiate`], this module holds the media-type grammar shared with
//! [`crate::http::multipart`]: `type "/" subtype *( OWS ";" OWS [ parameter ] )`,
//! with parameter values given as tokens or quoted strings.

use crate::http::request::trim_ows;

/// A response form that keeps the connection open and sends one part per change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamForm {
    /// `multipart/digest`: each part is one complete embedded HTTP response.
    Digest,
    /// `multipart/x-mixed-replace` (also spelled `multipart/mixed-replace`): each part replaces the previous one.
    MixedReplace,
}

/// What an `Accept` header says about streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiation {
    /// The stream form the client prefers, if any.
    pub stream: Option<StreamForm>,
    /// Whether `multipart/digest` is acceptable at all (explicitly, via `multipart/*`, via `*/*`, or because there is no Accept header).
    pub digest_acceptable: bool,
}

/// Negotiates the stream form from the value of one `Accept` header, or from its absence.
///
/// The contract: "A stream form counts as preferred when the client names it
/// explicitly (not through `*/*` or `multipart/*`) with a q-value at least as
/// high as every other type it accepts." A preferred `multipart/digest` gives
/// [`StreamForm::Digest`]; a preferred `multipart/x-mixed-replace` (or
/// `multipart/mixed-replace`) gives [`StreamForm::MixedReplace`]; when both are
/// named at the top q-value, `Digest` wins. A range with `q=0` means "not
/// acceptable" and is not counted among the accepted types.
///
/// Whether `multipart/digest` is acceptable is decided by the most specific
/// range that matches it (`multipart/digest`, then `multipart/*`, then `*/*`),
/// as RFC 9110 §12.5.1 says. When one range is listed several times at the
/// same specificity, the highest q-value counts.
///
/// Parsing is lenient, as RFC 9110 allows: a malformed element (no `/`, a bad
/// q-value, a second `q` parameter, a broken quoted string) is ignored, and a
/// header with no usable element at all is treated as if it were absent.
/// Media types are compared case-insensitively and parameters other than `q`
/// are ignored. A missing header means every type is acceptable and none
/// preferred.
#[must_use]
pub fn negotiate(accept: Option<&[u8]>) -> Negotiation {
    negotiate_all(accept.into_iter())
}

/// Negotiates as [`negotiate`] does, over every `Accept` line of a request taken as one list.
#[must_use]
pub fn negotiate_all<'a>(values: impl Iterator<Item = &'a [u8]>) -> Negotiation {
    let mut tally = Tally::default();
    for value in values {
        for element in list_elements(value) {
            if let Some((range, q)) = parse_element(element) {
                tally.add(range, q);
            }
        }
    }
    tally.finish()
}

/// A q-value in thousandths: `0` (not acceptable) to `1000`.
type Q = u16;

/// What one media range of an `Accept` element applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Range {
    /// `*/*`.
    Any,
    /// `multipart/*`.
    AnyMultipart,
    /// `multipart/digest`.
    Digest,
    /// `multipart/x-mixed-replace` or `multipart/mixed-replace`.
    MixedReplace,
    /// Any other valid range, such as `text/html` or `text/*`.
    Other,
}

/// The q-values seen so far, kept per range that matters; `None` means "not listed".
#[derive(Default)]
struct Tally {
    /// Whether any element was valid at all.
    any_valid: bool,
    /// The highest q-value above zero among every range listed.
    top: Option<Q>,
    any: Option<Q>,
    any_multipart: Option<Q>,
    digest: Option<Q>,
    mixed_replace: Option<Q>,
}

impl Tally {
    fn add(&mut self, range: Range, q: Q) {
        self.any_valid = true;
        if q > 0 {
            self.top = self.top.max(Some(q));
        }
        let slot = match range {
            Range::Any => &mut self.any,
            Range::AnyMultipart => &mut self.any_multipart,
            Range::Digest => &mut self.digest,
            Range::MixedReplace => &mut self.mixed_replace,
            Range::Other => return,
        };
        *slot = (*slot).max(Some(q));
    }

    fn finish(self) -> Negotiation {
        if !self.any_valid {
            return Negotiation {
                stream: None,
                digest_acceptable: true,
            };
        }
        // `top` is the maximum over every accepted range, explicit ones included,
        // so "at least as high as every other" is "equal to the top".
        let preferred = |q: Option<Q>| q.is_some_and(|q| q > 0 && Some(q) == self.top);
        let stream = if preferred(self.digest) {
            Some(StreamForm::Digest)
        } else if preferred(self.mixed_replace) {
            Some(StreamForm::MixedReplace)
        } else {
            None
        };
        let digest_q = self.digest.or(self.any_multipart).or(self.any).unwrap_or(0);
        Negotiation {
            stream,
            digest_acceptable: digest_q > 0,
        }
    }
}

/// Reads one `Accept` element: a media range with an optional weight.
///
/// Returns `None` for a malformed element, which the caller ignores.
fn parse_element(element: &[u8]) -> Option<(Range, Q)> {
    let (ty, subtype, params) = media_type(element)?;
    let range = if ty == b"*" {
        if subtype != b"*" {
            return None;
        }
        Range::Any
    } else if !ty.eq_ignore_ascii_case(b"multipart") {
        Range::Other
    } else if subtype == b"*" {
        Range::AnyMultipart
    } else if subtype.eq_ignore_ascii_case(b"digest") {
        Range::Digest
    } else if subtype.eq_ignore_ascii_case(b"x-mixed-replace")
        || subtype.eq_ignore_ascii_case(b"mixed-replace")
    {
        Range::MixedReplace
    } else {
        Range::Other
    };
    let mut q = None;
    for param in params {
        let param = param.ok()?;
        if param.name.eq_ignore_ascii_case(b"q") {
            if q.is_some() || param.quoted {
                return None;
            }
            q = Some(qvalue(param.value)?);
        }
    }
    Some((range, q.unwrap_or(1000)))
}

/// Reads a qvalue (`0`, `1`, `0.ddd`, `1.000`, with up to three decimals) in thousandths.
fn qvalue(value: &[u8]) -> Option<Q> {
    match value {
        [b'1'] => Some(1000),
        [b'1', b'.', zeros @ ..] if zeros.len() <= 3 && zeros.iter().all(|&b| b == b'0') => {
            Some(1000)
        }
        [b'0'] => Some(0),
        [b'0', b'.', digits @ ..] if digits.len() <= 3 && digits.iter().all(u8::is_ascii_digit) => {
            // Three positions, missing ones read as 0: at most 999.
            let mut thousandths: Q = 0;
            for position in 0..3 {
                let digit = digits.get(position).map_or(0, |&b| b - b'0');
                thousandths = thousandths * 10 + Q::from(digit);
            }
            Some(thousandths)
        }
        _ => None,
    }
}

/// Splits a header value into its comma-separated elements, trimmed, empty ones skipped.
///
/// A comma inside a quoted parameter value (a `"` right after `=`) does not split.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let end = element_end(rest);
        let (element, after) = rest.split_at_checked(end).unwrap_or((rest, &[]));
        rest = after.strip_prefix(b",").unwrap_or(after);
        let element = trim_ows(element);
        if !element.is_empty() {
            return Some(element);
        }
    })
}

/// The length of the first element of `s`: up to its first comma outside a quoted string.
fn element_end(s: &[u8]) -> usize {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut previous = 0u8;
    for (i, &b) in s.iter().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = false;
            }
        } else if b == b'"' && previous == b'=' {
            in_quotes = true;
        } else if b == b',' {
            return i;
        }
        previous = b;
    }
    s.len()
}

/// Whether `b` may appear in a token (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One parameter of a media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Param<'a> {
    /// The parameter name, a token (compare it case-insensitively).
    pub(crate) name: &'a [u8],
    /// The value; for a quoted string, the bytes between the quotes with any `\` escapes left in place.
    pub(crate) value: &'a [u8],
    /// Whether the value was a quoted string.
    pub(crate) quoted: bool,
}

/// The parameters of a media type are malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MalformedParams;

/// Splits a trimmed media type into its type, its subtype and its parameters.
///
/// Type and subtype are tokens (so `*` is accepted; the caller decides where it
/// may appear). Returns `None` when there is no `token "/" token` at the start.
pub(crate) fn media_type(s: &[u8]) -> Option<(&[u8], &[u8], Params<'_>)> {
    let ty_len = s.iter().position(|&b| !is_tchar(b)).unwrap_or(s.len());
    let (ty, rest) = s.split_at_checked(ty_len)?;
    let rest = rest.strip_prefix(b"/")?;
    let sub_len = rest
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(rest.len());
    let (subtype, rest) = rest.split_at_checked(sub_len)?;
    if ty.is_empty() || subtype.is_empty() {
        return None;
    }
    Some((ty, subtype, Params { rest }))
}

/// The parameters after a media type, in order; an `Err` item ends the iteration.
pub(crate) struct Params<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Params<'a> {
    type Item = Result<Param<'a>, MalformedParams>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rest = trim_ows_start(self.rest);
            if rest.is_empty() {
                self.rest = rest;
                return None;
            }
            let Some(after_semicolon) = rest.strip_prefix(b";") else {
                self.rest = &[];
                return Some(Err(MalformedParams));
            };
            let rest = trim_ows_start(after_semicolon);
            // RFC 9110 §5.6.6 lets a parameter be empty: `text/plain;;a=b` and a trailing `;`.
            if rest.is_empty() || rest.starts_with(b";") {
                self.rest = rest;
                continue;
            }
            return match parameter(rest) {
                Some((param, after)) => {
                    self.rest = after;
                    Some(Ok(param))
                }
                None => {
                    self.rest = &[];
                    Some(Err(MalformedParams))
                }
            };
        }
    }
}

/// Reads `token "=" ( token / quoted-string )` at the start of `s`; returns it and what follows.
///
/// An unquoted value is read leniently as any run of visible ASCII other than
/// `;` and `"`, so that a boundary such as `----=_Part_1` is accepted.
fn parameter(s: &[u8]) -> Option<(Param<'_>, &[u8])> {
    let name_len = s.iter().position(|&b| !is_tchar(b)).unwrap_or(s.len());
    let (name, rest) = s.split_at_checked(name_len)?;
    let rest = rest.strip_prefix(b"=")?;
    if name.is_empty() {
        return None;
    }
    if let Some(quoted) = rest.strip_prefix(b"\"") {
        let end = quoted_end(quoted)?;
        let (value, after) = quoted.split_at_checked(end)?;
        let after = after.strip_prefix(b"\"")?;
        return Some((
            Param {
                name,
                value,
                quoted: true,
            },
            after,
        ));
    }
    let is_value_byte = |b: u8| b.is_ascii_graphic() && b != b';' && b != b'"';
    let value_len = rest
        .iter()
        .position(|&b| !is_value_byte(b))
        .unwrap_or(rest.len());
    let (value, after) = rest.split_at_checked(value_len)?;
    if value.is_empty() {
        return None;
    }
    Some((
        Param {
            name,
            value,
            quoted: false,
        },
        after,
    ))
}

/// The position of the closing `"` of a quoted string whose opening quote is already consumed.
///
/// Returns `None` if the string is unterminated or holds a control character
/// other than HTAB (RFC 9110 §5.6.4).
fn quoted_end(s: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        if (b.is_ascii_control() && b != b'\t') || b == 0x7f {
            return None;
        }
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return Some(i);
        }
    }
    None
}

fn trim_ows_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::StreamForm::*;
    use super::*;
    use crate::http::props::all_inputs;

    fn check(accept: &str, stream: Option<StreamForm>, digest_acceptable: bool) {
        let expected = Negotiation {
            stream,
            digest_acceptable,
        };
        assert_eq!(
            negotiate(Some(accept.as_bytes())),
            expected,
            "accept: {accept:?}"
        );
    }

    fn check_lines(lines: &[&str], stream: Option<StreamForm>, digest_acceptable: bool) {
        let expected = Negotiation {
            stream,
            digest_acceptable,
        };
        let values = lines.iter().map(|l| l.as_bytes());
        assert_eq!(negotiate_all(values), expected, "lines: {lines:?}");
    }

    #[test]
    fn absent_header_accepts_everything_and_prefers_nothing() {
        let expected = Negotiation {
            stream: None,
            digest_acceptable: true,
        };
        assert_eq!(negotiate(None), expected);
        assert_eq!(negotiate_all(std::iter::empty()), expected);
    }

    #[test]
    #[rustfmt::skip]
    fn preferred_forms() {
        check("multipart/digest", Some(Digest), true);
        check("multipart/digest, multipart/mixed-replace;q=0.7, */*;q=0.5", Some(Digest), true);
        check("multipart/x-mixed-replace", Some(MixedReplace), false);
        check("multipart/mixed-replace", Some(MixedReplace), false);
        check("multipart/mixed-replace, */*;q=0.1", Some(MixedReplace), true);
        check("multipart/digest;q=0.5, text/html;q=0.5", Some(Digest), true);
        check("multipart/x-mixed-replace, multipart/digest", Some(Digest), true);
        check("multipart/x-mixed-replace;q=0.9, multipart/digest;q=0.8", Some(MixedReplace), true);
        check("MULTIPART/DIGEST", Some(Digest), true);
        check("Multipart/X-Mixed-Replace", Some(MixedReplace), false);
        check("multipart/digest;q=0.001", Some(Digest), true);
        check("multipart/digest;q=0.5, text/plain;q=0", Some(Digest), true);
        check("multipart/digest;q=0.5, multipart/digest;q=1, text/plain;q=0.9", Some(Digest), true);
    }

    #[test]
    #[rustfmt::skip]
    fn acceptable_but_not_preferred() {
        check("*/*, multipart/digest;q=0.5", None, true);
        check("*/*", None, true);
        check("multipart/*", None, true);
        check("multipart/*, multipart/digest;q=0.9", None, true);
        check("text/html, multipart/digest;q=0.9", None, true);
        check("text/html;q=0.9, multipart/*", None, true);
        check("text/html, */*;q=0.1", None, true);
        check("multipart/x-mixed-replace;q=0.5, text/html", None, false);
    }

    #[test]
    #[rustfmt::skip]
    fn not_acceptable() {
        check("text/plain", None, false);
        check("multipart/digest;q=0", None, false);
        check("multipart/digest;q=0.000", None, false);
        check("text/plain, */*;q=0", None, false);
        check("multipart/digest;q=0, */*", None, false);
        check("multipart/digest;q=0, multipart/*", None, false);
        check("multipart/*;q=0, */*", None, false);
        check("multipart/mixed", None, false);
        check("multipart/digestx", None, false);
    }

    #[test]
    #[rustfmt::skip]
    fn most_specific_range_decides_acceptability() {
        check("multipart/*;q=0, multipart/digest;q=0.2, text/html", None, true);
        check("*/*;q=0, multipart/*;q=0.3, text/html", None, true);
        check("*/*;q=0.3, multipart/*;q=0", None, false);
    }

    #[test]
    #[rustfmt::skip]
    fn parameters() {
        check("multipart/digest;foo=\"a,b;c\";q=1, text/plain;q=0.2", Some(Digest), true);
        check("text/plain;foo=\"a,b;c\", multipart/digest;q=0.9", None, true);
        check("multipart/digest;foo=\"x\\\"y,z\", text/plain;q=0.2", Some(Digest), true);
        check("multipart/digest ; q=1", Some(Digest), true);
        check("multipart/digest\t;\tq=0.5 , text/plain;q=0.4", Some(Digest), true);
        check("multipart/digest;Q=0", None, false);
        check("multipart/digest;;q=0", None, false);
        check("multipart/digest;", Some(Digest), true);
        check("multipart/digest;level=1;q=0.5, text/plain;q=0.5", Some(Digest), true);
        check("multipart/digest;q=0.5;level=1, text/plain;q=0.6", None, true);
        check("multipart/digest;q=1.", Some(Digest), true);
        check("multipart/digest;q=1.000, */*", Some(Digest), true);
        check("multipart/digest;q=0., */*", None, false);
    }

    #[test]
    #[rustfmt::skip]
    fn malformed_elements_are_ignored() {
        check("text, multipart/digest;q=0.5", Some(Digest), true);
        check("multipart/digest;q=2, text/plain", None, false);
        check("multipart/digest;q=1.001, text/plain;q=0.5", None, false);
        check("multipart/digest;q=0.5000, text/plain;q=0.1", None, false);
        check("multipart/digest;q=.5, text/plain;q=0.1", None, false);
        check("multipart/digest;q=-1, text/plain;q=0.1", None, false);
        check("multipart/digest;q=\"1\", text/plain;q=0.1", None, false);
        check("multipart/digest;q=0.5;q=1, text/plain;q=0.6", None, false);
        check("multipart/digest;q, text/plain", None, false);
        check("multipart/digest;q=, text/plain", None, false);
        check("multipart/digest q=1, text/plain", None, false);
        check("multipart/digest;a=\"unterminated, text/plain", None, true);
        check("*/digest, text/plain", None, false);
        check("/digest, text/plain", None, false);
        check("multipart/, text/plain", None, false);
        check("te\"xt/plain, multipart/digest", Some(Digest), true);
        check("text/plain;q=0.9, multipart/digest;q=1;x=\"a\"b", None, false);
    }

    #[test]
    #[rustfmt::skip]
    fn empty_or_unusable_header_counts_as_absent() {
        check("", None, true);
        check(" , ,\t", None, true);
        check("garbage", None, true);
        check("multipart/digest;q=7", None, true);
    }

    #[test]
    #[rustfmt::skip]
    fn several_lines_are_one_list() {
        check_lines(&["text/html", "multipart/digest"], Some(Digest), true);
        check_lines(&["*/*", "multipart/digest;q=0.5"], None, true);
        check_lines(&["text/plain", ""], None, false);
        check_lines(&["", ""], None, true);
        check_lines(&["multipart/digest;a=\"x,", "text/plain"], None, false);
    }

    #[test]
    #[rustfmt::skip]
    fn qvalues() {
        assert_eq!(qvalue(b"0"), Some(0));
        assert_eq!(qvalue(b"0.5"), Some(500));
        assert_eq!(qvalue(b"0.05"), Some(50));
        assert_eq!(qvalue(b"0.123"), Some(123));
        assert_eq!(qvalue(b"0.999"), Some(999));
        assert_eq!(qvalue(b"1"), Some(1000));
        assert_eq!(qvalue(b"1.0"), Some(1000));
        assert_eq!(qvalue(b"1.01"), None);
        assert_eq!(qvalue(b"0.1234"), None);
        assert_eq!(qvalue(b"0.a"), None);
        assert_eq!(qvalue(b"00"), None);
        assert_eq!(qvalue(b""), None);
    }

    #[test]
    fn exhaustive_short_inputs_never_panic() {
        let alphabet = b"m/*;q=0.1,\"\\";
        let short = all_inputs(alphabet, 4);
        assert_eq!(short.len(), 1 + 12 + 144 + 1728 + 20736);
        let mut inputs = all_inputs(alphabet, 5);
        // The same tails after ranges that matter, so the multipart paths are reached too.
        for prefix in [
            &b"multipart/digest"[..],
            b"multipart/x-mixed-replace",
            b"*/*",
        ] {
            inputs.extend(short.iter().map(|tail| [prefix, tail].concat()));
        }
        for input in &inputs {
            let n = negotiate(Some(input));
            // A preferred digest stream is always an acceptable one.
            if n.stream == Some(Digest) {
                assert!(n.digest_acceptable, "{input:?}");
            }
            let (a, b) = input.split_at(input.len() / 2);
            let _ = negotiate_all([a, b].into_iter());
        }
    }
}
