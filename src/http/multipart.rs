//! `multipart/digest` request bodies, as sent to `POST /subscribe` and `POST /batch`:
//! the boundary from `Content-Type`, the parts of a body (RFC 2046 §5.1.1), and
//! the HTTP request each part carries.
//!
//! A part comes in one of two forms, and both are accepted:
//! - the bare form, with no MIME part headers: the part starts with a request
//!   line, usually without an HTTP version (`GET /weather`);
//! - the explicit form: MIME part headers such as
//!   `Content-Type: application/http; msgtype=request`, a blank line, then the
//!   request (`GET /news HTTP/1.1`, the version still optional).
//!
//! Everything here borrows from the body; nothing is copied.

use crate::http::accept::{is_tchar, media_type};
use crate::http::request::{parse_decimal, trim_ows};
use memchr::memmem;
use thiserror::Error;

/// Limits for a multipart request body.
#[derive(Clone, Copy, Debug)]
pub struct PartLimits {
    /// Most parts a body may hold; more is `413`.
    pub max_parts: usize,
}

/// Most header lines the request in one part may carry.
pub const MAX_SUBREQUEST_HEADERS: usize = 64;

/// Longest boundary RFC 2046 §5.1.1 allows.
const MAX_BOUNDARY_LEN: usize = 70;

/// Why a multipart request body was refused; the text is meant for the client.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MultipartError {
    /// The Content-Type is not `multipart/digest` or `multipart/mixed`.
    #[error("Content-Type must be multipart/digest with a boundary")]
    NotMultipart,
    /// The Content-Type parameters cannot be read.
    #[error("Content-Type parameters are malformed (expected '; name=value' pairs)")]
    BadContentType,
    /// The Content-Type has no `boundary` parameter.
    #[error("multipart Content-Type has no boundary parameter")]
    MissingBoundary,
    /// The boundary breaks RFC 2046; the message says how.
    #[error("invalid multipart boundary: {0}")]
    BadBoundary(&'static str),
    /// The body never contains a `--boundary` line.
    #[error("multipart body has no opening '--boundary' delimiter line")]
    NoOpeningDelimiter,
    /// The first delimiter is the close delimiter.
    #[error("multipart body holds no parts")]
    NoParts,
    /// The body holds more parts than allowed.
    #[error("multipart body holds more than {limit} parts")]
    TooManyParts {
        /// The limit that was exceeded.
        limit: usize,
    },
}

impl MultipartError {
    /// The status code this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            MultipartError::TooManyParts { .. } => 413,
            MultipartError::NotMultipart => 415,
            MultipartError::BadContentType
            | MultipartError::MissingBoundary
            | MultipartError::BadBoundary(_)
            | MultipartError::NoOpeningDelimiter
            | MultipartError::NoParts => 400,
        }
    }
}

/// The boundary of a `multipart/digest` (or `multipart/mixed`) Content-Type value.
///
/// The boundary is 1 to 70 characters from RFC 2046's `bchars`, given as a
/// quoted string or unquoted. A quoted boundary may contain spaces but not end
/// with one; quoted-pair escapes (`\`) are refused rather than unescaped, so
/// the boundary is always a slice of the input. Other parameters are skipped,
/// quoted values included. Type, subtype and parameter names are
/// case-insensitive.
///
/// # Errors
///
/// [`MultipartError::NotMultipart`] for any other media type,
/// [`MultipartError::BadContentType`] when the parameters cannot be read,
/// [`MultipartError::MissingBoundary`] without a `boundary` parameter, and
/// [`MultipartError::BadBoundary`] for a boundary RFC 2046 does not allow or
/// for a second `boundary` parameter.
pub fn boundary(content_type: &[u8]) -> Result<&[u8], MultipartError> {
    let (ty, subtype, params) =
        media_type(trim_ows(content_type)).ok_or(MultipartError::NotMultipart)?;
    let is_multipart = ty.eq_ignore_ascii_case(b"multipart")
        && (subtype.eq_ignore_ascii_case(b"digest") || subtype.eq_ignore_ascii_case(b"mixed"));
    if !is_multipart {
        return Err(MultipartError::NotMultipart);
    }
    let mut found = None;
    for param in params {
        let param = param.map_err(|_| MultipartError::BadContentType)?;
        if param.name.eq_ignore_ascii_case(b"boundary") {
            if found.is_some() {
                return Err(MultipartError::BadBoundary(
                    "Content-Type has more than one boundary parameter",
                ));
            }
            found = Some(param);
        }
    }
    let param = found.ok_or(MultipartError::MissingBoundary)?;
    if param.quoted && param.value.contains(&b'\\') {
        return Err(MultipartError::BadBoundary(
            "escapes ('\\') are not supported in a quoted boundary",
        ));
    }
    check_boundary(param.value)?;
    Ok(param.value)
}

/// Checks a boundary against RFC 2046: 1 to 70 `bchars`, not ending with a space.
fn check_boundary(boundary: &[u8]) -> Result<(), MultipartError> {
    if boundary.is_empty() {
        return Err(MultipartError::BadBoundary("boundary is empty"));
    }
    if boundary.len() > MAX_BOUNDARY_LEN {
        return Err(MultipartError::BadBoundary(
            "boundary is longer than 70 characters",
        ));
    }
    let is_bchar = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
    if !boundary.iter().all(|&b| is_bchar(b)) {
        return Err(MultipartError::BadBoundary(
            "boundary may only hold letters, digits, spaces and '()+_,-./:=?",
        ));
    }
    if boundary.ends_with(b" ") {
        return Err(MultipartError::BadBoundary("boundary ends with a space"));
    }
    Ok(())
}

/// Splits a body into its parts (the bytes between delimiters; the CRLF before each delimiter belongs to the delimiter).
///
/// RFC 2046 §5.1.1: the first dash-boundary (`--` and the boundary) may be at
/// the very start or after a CRLF, and a preamble before it is ignored; after a
/// boundary line come optional transport padding (SP/HTAB) then CRLF; the close
/// delimiter is `--boundary--`, and an epilogue after it is ignored. A line
/// that merely starts with the boundary (`--boundaryX`) is not a delimiter, and
/// neither is a boundary that is not at the start of a line.
///
/// Two leniencies: LF alone is accepted where CRLF is expected (hand-written
/// bodies from curl), and a missing close delimiter ends the last part at the
/// end of the body (a body ending in a delimiter line with nothing after it
/// does not add an empty part). Parts are returned as they are, so an empty
/// part (two delimiters in a row) is returned empty.
///
/// # Errors
///
/// [`MultipartError::BadBoundary`] for a boundary RFC 2046 does not allow,
/// [`MultipartError::NoOpeningDelimiter`] when no delimiter line is found,
/// [`MultipartError::NoParts`] when the first delimiter is the close
/// delimiter or nothing follows the opening one, and [`MultipartError::TooManyParts`] as soon as a part beyond
/// `limits.max_parts` is found.
pub fn split_parts<'a>(
    body: &'a [u8],
    boundary: &[u8],
    limits: PartLimits,
) -> Result<Vec<&'a [u8]>, MultipartError> {
    check_boundary(boundary)?;
    let dash_boundary = [b"--", boundary].concat();
    let finder = memmem::Finder::new(&dash_boundary);
    let mut start = match next_delimiter(body, 0, &finder) {
        None => return Err(MultipartError::NoOpeningDelimiter),
        Some((_, Delimiter::Close)) => return Err(MultipartError::NoParts),
        Some((_, Delimiter::Open { next_part })) => next_part,
    };
    let mut parts = Vec::new();
    loop {
        let found = next_delimiter(body, start, &finder);
        let rest = body.get(start..).unwrap_or_default();
        if found.is_none() && rest.is_empty() {
            break;
        }
        if parts.len() >= limits.max_parts {
            return Err(MultipartError::TooManyParts {
                limit: limits.max_parts,
            });
        }
        let Some((line_start, delimiter)) = found else {
            parts.push(rest);
            break;
        };
        parts.push(part_before(body, start, line_start));
        match delimiter {
            Delimiter::Close => break,
            Delimiter::Open { next_part } => start = next_part,
        }
    }
    if parts.is_empty() {
        // Only an opening delimiter line and nothing after it.
        return Err(MultipartError::NoParts);
    }
    Ok(parts)
}

/// A delimiter line found in a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delimiter {
    /// `--boundary`, padding and a line ending; the next part starts at `next_part`.
    Open { next_part: usize },
    /// `--boundary--`, or a `--boundary` line cut short by the end of the body.
    Close,
}

/// Finds the first delimiter line at or after `from`; returns where its `--` starts and what it is.
///
/// A delimiter line starts at the beginning of the body or right after an LF.
/// Since every part starts right after the LF of the line before it, a
/// delimiter at `from` itself (an empty part) is found too.
fn next_delimiter(
    body: &[u8],
    from: usize,
    finder: &memmem::Finder<'_>,
) -> Option<(usize, Delimiter)> {
    let mut search = from;
    loop {
        let haystack = body.get(search..)?;
        let at = search.checked_add(finder.find(haystack)?)?;
        let at_line_start = match at.checked_sub(1) {
            None => true,
            Some(before) => body.get(before) == Some(&b'\n'),
        };
        if at_line_start {
            let after = at.checked_add(finder.needle().len())?;
            if let Some(delimiter) = delimiter_line(body, after) {
                return Some((at, delimiter));
            }
        }
        search = at.checked_add(1)?;
    }
}

/// Reads what follows a dash-boundary at `after`: `--` (close), or padding and a line ending (open).
///
/// Returns `None` if the line goes on with anything else, so it is not a delimiter.
fn delimiter_line(body: &[u8], after: usize) -> Option<Delimiter> {
    let rest = body.get(after..)?;
    if rest.starts_with(b"--") {
        return Some(Delimiter::Close);
    }
    let padding = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len());
    let line_end = rest.get(padding..)?;
    let ending_len = match line_end {
        [] | [b'\r'] => return Some(Delimiter::Close),
        [b'\r', b'\n', ..] => 2,
        [b'\n', ..] => 1,
        _ => return None,
    };
    let next_part = after.checked_add(padding)?.checked_add(ending_len)?;
    Some(Delimiter::Open { next_part })
}

/// The part from `start` up to a delimiter line at `line_start`, without the line ending before it.
///
/// An empty part is the empty slice at `start`, so that it too points into the body.
fn part_before(body: &[u8], start: usize, line_start: usize) -> &[u8] {
    let part = body.get(start..line_start.max(start)).unwrap_or_default();
    let part = part.strip_suffix(b"\n").unwrap_or(part);
    part.strip_suffix(b"\r").unwrap_or(part)
}

/// One HTTP request carried by a part.
#[derive(Debug, PartialEq, Eq)]
pub struct SubRequest<'a> {
    /// The method token, such as `GET`.
    pub method: &'a str,
    /// The request target, such as `/weather`.
    pub target: &'a str,
    /// Header lines of the request itself (not the MIME part headers), in order, values trimmed.
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The body: `Content-Length` bytes after the head if that header is present (error if fewer are available), else everything after the blank line (possibly empty; with no blank line at all, empty).
    pub body: &'a [u8],
}

impl SubRequest<'_> {
    /// The value of the first header line with this name, compared case-insensitively.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }
}

/// Why the request in a part was refused; the text is meant for the client.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubRequestError {
    /// The part is empty, or holds only MIME part headers.
    #[error("part holds no request line")]
    EmptyPart,
    /// A MIME part header line is not `name: value`, or the part headers are not ended by a blank line.
    #[error(
        "malformed MIME part header (part headers are 'Name: value' lines ended by a blank line)"
    )]
    BadPartHeader,
    /// The request line is not `METHOD SP target [SP version]`.
    #[error(
        "malformed request line in part (expected 'METHOD /target' or 'METHOD /target HTTP/1.1')"
    )]
    BadRequestLine,
    /// The request line names an HTTP version other than 1.0 and 1.1.
    #[error("HTTP version not supported in part (only HTTP/1.0 and HTTP/1.1)")]
    UnsupportedVersion,
    /// A header line of the request is malformed; the message says how.
    #[error("malformed header line in part: {0}")]
    BadHeader(&'static str),
    /// The request has more header lines than [`MAX_SUBREQUEST_HEADERS`].
    #[error("request in part has more than {MAX_SUBREQUEST_HEADERS} header lines")]
    TooManyHeaders,
    /// A `Content-Length` is not a decimal number, or two disagree.
    #[error("invalid Content-Length in part")]
    BadContentLength,
    /// The part ends before the `Content-Length` bytes of the body.
    #[error("part body is shorter than its Content-Length")]
    BodyShorterThanContentLength,
    /// The request has a `Transfer-Encoding`, which a part cannot use.
    #[error("Transfer-Encoding is not supported in a part (give a Content-Length or nothing)")]
    TransferEncoding,
}

/// Parses one part into the request it carries.
///
/// The explicit form is detected when the first line of the part is a MIME
/// header line (a token followed by `:`, such as `Content-Type:`): those part
/// headers (folded lines allowed) are skipped up to the blank line that must
/// follow them. A first line such as `GET /weather` has no colon after its
/// first token, so the part is in the bare form and that line is the request
/// line, whatever header lines come after it.
///
/// The request line is `METHOD SP target [SP HTTP/1.0|HTTP/1.1]`: the method a
/// token, the target non-empty visible ASCII, single spaces. Header lines
/// follow until a blank line or the end of the part; the last one may lack its
/// line ending. Lines end in CRLF or LF. Header names are tokens with no
/// whitespace before the `:`; values have OWS trimmed and may not contain CR,
/// LF or NUL; obs-fold is refused. Empty lines before the request line are
/// skipped.
///
/// The body is the `Content-Length` bytes after the head when that header is
/// present (bytes beyond them are ignored), else the rest of the part.
///
/// # Errors
///
/// A [`SubRequestError`] naming the first rule the part breaks.
pub fn parse_subrequest(part: &[u8]) -> Result<SubRequest<'_>, SubRequestError> {
    let mut lines = Lines { rest: part };
    let mut line = lines.next_non_empty().ok_or(SubRequestError::EmptyPart)?;
    if starts_with_header_name(line) {
        skip_part_headers(&mut lines)?;
        line = lines.next_non_empty().ok_or(SubRequestError::EmptyPart)?;
    }
    let (method, target) = request_line(line)?;
    let mut headers = Vec::new();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_SUBREQUEST_HEADERS {
            return Err(SubRequestError::TooManyHeaders);
        }
        headers.push(header_line(line)?);
    }
    let mut request = SubRequest {
        method,
        target,
        headers,
        body: lines.rest,
    };
    request.body = body(&request, lines.rest)?;
    Ok(request)
}

/// The lines of a part, each without its CRLF or LF; the last may have no line ending.
struct Lines<'a> {
    /// What follows the lines read so far.
    rest: &'a [u8],
}

impl<'a> Lines<'a> {
    /// The next line, or `None` at the end of the part.
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match memchr::memchr(b'\n', self.rest) {
            Some(lf) => (
                self.rest.get(..lf).unwrap_or_default(),
                self.rest.get(lf.checked_add(1)?..).unwrap_or_default(),
            ),
            // The empty rest at the end of the part, so that it too points into the part.
            None => (
                self.rest,
                self.rest.get(self.rest.len()..).unwrap_or_default(),
            ),
        };
        self.rest = rest;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }

    /// The next line that is not empty, or `None` at the end of the part.
    fn next_non_empty(&mut self) -> Option<&'a [u8]> {
        loop {
            match self.next() {
                Some([]) => {}
                other => return other,
            }
        }
    }
}

/// Whether a line starts with a token directly followed by `:`, as a header line does.
fn starts_with_header_name(line: &[u8]) -> bool {
    let name_len = line
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(line.len());
    name_len > 0 && line.get(name_len) == Some(&b':')
}

/// Skips MIME part headers (the first one already read) up to and including the blank line after them.
fn skip_part_headers(lines: &mut Lines<'_>) -> Result<(), SubRequestError> {
    loop {
        match lines.next() {
            None => return Err(SubRequestError::EmptyPart),
            Some([]) => return Ok(()),
            Some([b' ' | b'\t', ..]) => {} // A folded continuation line, allowed in MIME.
            Some(line) if starts_with_header_name(line) => {}
            Some(_) => return Err(SubRequestError::BadPartHeader),
        }
    }
}

/// Reads `METHOD SP target [SP HTTP/1.0|HTTP/1.1]`.
fn request_line(line: &[u8]) -> Result<(&str, &str), SubRequestError> {
    let mut fields = line.split(|&b| b == b' ');
    let method = fields.next().unwrap_or_default();
    let target = fields.next().ok_or(SubRequestError::BadRequestLine)?;
    let version = fields.next();
    if fields.next().is_some()
        || method.is_empty()
        || !method.iter().all(|&b| is_tchar(b))
        || target.is_empty()
        || !target.iter().all(u8::is_ascii_graphic)
    {
        return Err(SubRequestError::BadRequestLine);
    }
    match version {
        None | Some(b"HTTP/1.0" | b"HTTP/1.1") => {}
        Some(v) if v.starts_with(b"HTTP/") => return Err(SubRequestError::UnsupportedVersion),
        Some(_) => return Err(SubRequestError::BadRequestLine),
    }
    let method = std::str::from_utf8(method).map_err(|_| SubRequestError::BadRequestLine)?;
    let target = std::str::from_utf8(target).map_err(|_| SubRequestError::BadRequestLine)?;
    Ok((method, target))
}

/// Reads one header line of the request: `name ":" OWS value OWS`.
fn header_line(line: &[u8]) -> Result<(&str, &[u8]), SubRequestError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(SubRequestError::BadHeader(
            "obsolete line folding is not allowed",
        ));
    }
    let colon = memchr::memchr(b':', line).ok_or(SubRequestError::BadHeader("no colon"))?;
    let (name, value) = line.split_at_checked(colon).unwrap_or((line, &[]));
    let value = trim_ows(value.get(1..).unwrap_or_default());
    if name.is_empty() {
        return Err(SubRequestError::BadHeader("empty header name"));
    }
    if name.ends_with(b" ") || name.ends_with(b"\t") {
        return Err(SubRequestError::BadHeader(
            "whitespace before the colon is not allowed",
        ));
    }
    if !name.iter().all(|&b| is_tchar(b)) {
        return Err(SubRequestError::BadHeader("header name is not a token"));
    }
    if value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(SubRequestError::BadHeader(
            "header value contains CR, LF or NUL",
        ));
    }
    let name = std::str::from_utf8(name)
        .map_err(|_| SubRequestError::BadHeader("header name is not a token"))?;
    Ok((name, value))
}

/// The body of a request whose head ended before `rest`.
fn body<'a>(request: &SubRequest<'a>, rest: &'a [u8]) -> Result<&'a [u8], SubRequestError> {
    if request.header("transfer-encoding").is_some() {
        return Err(SubRequestError::TransferEncoding);
    }
    let mut length: Option<u64> = None;
    for (_, value) in request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let n = parse_decimal(value).ok_or(SubRequestError::BadContentLength)?;
        if length.is_some_and(|previous| previous != n) {
            return Err(SubRequestError::BadContentLength);
        }
        length = Some(n);
    }
    match length {
        None => Ok(rest),
        Some(n) => usize::try_from(n)
            .ok()
            .and_then(|n| rest.get(..n))
            .ok_or(SubRequestError::BodyShorterThanContentLength),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::props::all_inputs;
    use std::fmt::Write as _;

    const LIMITS: PartLimits = PartLimits { max_parts: 8 };

    fn check_boundary_of(content_type: &str, expected: Result<&str, MultipartError>) {
        let got = boundary(content_type.as_bytes());
        assert_eq!(
            got,
            expected.map(str::as_bytes),
            "content type: {content_type:?}"
        );
    }

    fn check(body: &str, boundary: &str, expected: Result<&[&str], MultipartError>) {
        let got = split_parts(body.as_bytes(), boundary.as_bytes(), LIMITS);
        let expected = expected.map(|parts| parts.iter().map(|p| p.as_bytes()).collect::<Vec<_>>());
        assert_eq!(got, expected, "body: {body:?}");
    }

    fn req<'a>(
        method: &'a str,
        target: &'a str,
        headers: &[(&'a str, &'a str)],
        body: &'a str,
    ) -> SubRequest<'a> {
        SubRequest {
            method,
            target,
            headers: headers.iter().map(|&(n, v)| (n, v.as_bytes())).collect(),
            body: body.as_bytes(),
        }
    }

    fn check_part(part: &str, expected: Result<SubRequest<'_>, SubRequestError>) {
        assert_eq!(
            parse_subrequest(part.as_bytes()),
            expected,
            "part: {part:?}"
        );
    }

    const RANGE: &str = "updated Wed, 26 Dec 2007 16:00:15 GMT-";

    #[test]
    fn both_forms_in_one_body() {
        let body = "--separation\r\n\
                    GET /weather\r\n\
                    Range: updated Wed, 26 Dec 2007 16:00:15 GMT-\r\n\
                    \r\n\
                    --separation\r\n\
                    Content-Type: application/http; msgtype=request\r\n\
                    \r\n\
                    PUT /news HTTP/1.1\r\n\
                    Content-Type: text/plain\r\n\
                    Content-Length: 5\r\n\
                    \r\n\
                    hello\r\n\
                    --separation--\r\n";
        let content_type = b"multipart/digest; boundary=separation";
        let b = boundary(content_type).unwrap();
        let parts = split_parts(body.as_bytes(), b, LIMITS).unwrap();
        assert_eq!(parts.len(), 2);
        let weather = parse_subrequest(parts[0]).unwrap();
        assert_eq!(weather, req("GET", "/weather", &[("Range", RANGE)], ""));
        let news = parse_subrequest(parts[1]).unwrap();
        let headers = [("Content-Type", "text/plain"), ("Content-Length", "5")];
        assert_eq!(news, req("PUT", "/news", &headers, "hello"));
        assert_eq!(news.header("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(news.header("CONTENT-LENGTH"), Some(&b"5"[..]));
        assert_eq!(news.header("range"), None);
    }

    #[test]
    fn protocol_doc_example() {
        // docs: PROTOCOL.md §5, with the CRLFs a client sends.
        let body = "--separation\r\n\
                    GET /weather\r\n\
                    Range: updated Wed, 26 Dec 2007 16:00:15 GMT-\r\n\
                    \r\n\
                    --separation\r\n\
                    GET /news\r\n\
                    Range: updated Wed, 26 Dec 2007 16:00:15 GMT-\r\n\
                    --separation--";
        let first = "GET /weather\r\nRange: updated Wed, 26 Dec 2007 16:00:15 GMT-\r\n";
        let second = "GET /news\r\nRange: updated Wed, 26 Dec 2007 16:00:15 GMT-";
        check(body, "separation", Ok(&[first, second]));
        check_part(first, Ok(req("GET", "/weather", &[("Range", RANGE)], "")));
        check_part(second, Ok(req("GET", "/news", &[("Range", RANGE)], "")));
        // The same body typed with LF alone, as curl --data-binary sends a Unix file.
        let lf = body.replace("\r\n", "\n");
        let parts = split_parts(lf.as_bytes(), b"separation", LIMITS).unwrap();
        assert_eq!(parts.len(), 2);
        let news = parse_subrequest(parts[1]).unwrap();
        assert_eq!(news, req("GET", "/news", &[("Range", RANGE)], ""));
    }

    #[test]
    #[rustfmt::skip]
    fn boundaries() {
        check_boundary_of("multipart/digest; boundary=separation", Ok("separation"));
        check_boundary_of("multipart/digest;boundary=separation", Ok("separation"));
        check_boundary_of("  Multipart/Digest ; BOUNDARY=sep  ", Ok("sep"));
        check_boundary_of("multipart/mixed; boundary=sep", Ok("sep"));
        check_boundary_of("multipart/digest; boundary=\"a b\"", Ok("a b"));
        check_boundary_of("multipart/digest; boundary=----=_Part_1", Ok("----=_Part_1"));
        check_boundary_of("multipart/digest; boundary=\"sep\"; charset=\"x;y\"", Ok("sep"));
        check_boundary_of("multipart/digest; a=\"boundary=no; \\\"q\"; boundary=yes", Ok("yes"));
        check_boundary_of("multipart/digest; boundary=sep;", Ok("sep"));
        check_boundary_of(&format!("multipart/digest; boundary={}", "x".repeat(70)), Ok(&"x".repeat(70)));
        check_boundary_of("text/plain; boundary=sep", Err(MultipartError::NotMultipart));
        check_boundary_of("multipart/form-data; boundary=sep", Err(MultipartError::NotMultipart));
        check_boundary_of("multipart", Err(MultipartError::NotMultipart));
        check_boundary_of("", Err(MultipartError::NotMultipart));
        check_boundary_of("multipart/digest", Err(MultipartError::MissingBoundary));
        check_boundary_of("multipart/digest; charset=utf-8", Err(MultipartError::MissingBoundary));
        check_boundary_of("multipart/digest; boundary", Err(MultipartError::BadContentType));
        check_boundary_of("multipart/digest boundary=sep", Err(MultipartError::BadContentType));
        check_boundary_of("multipart/digest; boundary=\"sep", Err(MultipartError::BadContentType));
        check_boundary_of("multipart/digest; boundary=a b", Err(MultipartError::BadContentType));
        check_boundary_of("multipart/digest; boundary=\"\"", Err(MultipartError::BadBoundary("boundary is empty")));
        check_boundary_of("multipart/digest; boundary=\"a \"", Err(MultipartError::BadBoundary("boundary ends with a space")));
        check_boundary_of("multipart/digest; boundary=a<b", Err(MultipartError::BadBoundary("boundary may only hold letters, digits, spaces and '()+_,-./:=?")));
        check_boundary_of("multipart/digest; boundary=\"a\\b\"", Err(MultipartError::BadBoundary("escapes ('\\') are not supported in a quoted boundary")));
        check_boundary_of(&format!("multipart/digest; boundary={}", "x".repeat(71)), Err(MultipartError::BadBoundary("boundary is longer than 70 characters")));
        check_boundary_of("multipart/digest; boundary=a; boundary=b", Err(MultipartError::BadBoundary("Content-Type has more than one boundary parameter")));
    }

    #[test]
    #[rustfmt::skip]
    fn splitting() {
        check("--s\r\nA\r\n--s\r\nB\r\n--s--\r\n", "s", Ok(&["A", "B"]));
        check("--s\r\nA\r\n--s--", "s", Ok(&["A"]));
        // Preamble and epilogue are ignored.
        check("preamble\r\n--s\r\nA\r\n--s--\r\nepilogue --s\r\n", "s", Ok(&["A"]));
        check("pre --s\r\n--s\r\nA\r\n--s--", "s", Ok(&["A"]));
        check("\r\n--s\r\nA\r\n--s--", "s", Ok(&["A"]));
        // LF alone.
        check("--s\nA\n--s\nB\n--s--\n", "s", Ok(&["A", "B"]));
        check("--s\nA\r\n--s\r\nB\n--s--", "s", Ok(&["A", "B"]));
        // Transport padding after the boundary.
        check("--s \t\r\nA\r\n--s  \r\nB\r\n--s--  \r\n", "s", Ok(&["A", "B"]));
        // A missing close delimiter ends the last part at the end of the body.
        check("--s\r\nA\r\n--s\r\nB\r\n", "s", Ok(&["A", "B\r\n"]));
        check("--s\r\nA\r\n--s\r\n", "s", Ok(&["A"]));
        check("--s\r\nA\r\n--s", "s", Ok(&["A"]));
        check("--s\r\nA\r\n--s \r", "s", Ok(&["A"]));
        check("--s\r\nA", "s", Ok(&["A"]));
        // Empty parts are kept, to be refused by the part parser.
        check("--s\r\n\r\n--s\r\nB\r\n--s--", "s", Ok(&["", "B"]));
        check("--s\r\n--s\r\nB\r\n--s--", "s", Ok(&["", "B"]));
        check("--s\r\nA\r\n--s\r\n--s--", "s", Ok(&["A", ""]));
        // Blank lines inside a part belong to it.
        check("--s\r\nA\r\n\r\n\r\n--s--", "s", Ok(&["A\r\n\r\n"]));
        // Boundary-like text that is not a delimiter line.
        check("--s\r\nA --s\r\n--sX\r\n--s-\r\n---s\r\nB\r\n--s--", "s", Ok(&["A --s\r\n--sX\r\n--s-\r\n---s\r\nB"]));
        check("--sep\r\nhello --sep\r\n--sep--", "sep", Ok(&["hello --sep"]));
        // A quoted boundary with a space.
        check("--a b\r\nA\r\n--a b--", "a b", Ok(&["A"]));
        // Errors.
        check("", "s", Err(MultipartError::NoOpeningDelimiter));
        check("A\r\nB", "s", Err(MultipartError::NoOpeningDelimiter));
        check("x--s\r\nA", "s", Err(MultipartError::NoOpeningDelimiter));
        check("--sX\r\nA", "s", Err(MultipartError::NoOpeningDelimiter));
        check("--t\r\nA\r\n--t--", "s", Err(MultipartError::NoOpeningDelimiter));
        check("--s--\r\n", "s", Err(MultipartError::NoParts));
        check("--s\r\n", "s", Err(MultipartError::NoParts));
        check("--s", "s", Err(MultipartError::NoParts));
        check("--s\r\nA", "", Err(MultipartError::BadBoundary("boundary is empty")));
        check("--s\r\nA", "s\r", Err(MultipartError::BadBoundary("boundary may only hold letters, digits, spaces and '()+_,-./:=?")));
    }

    #[test]
    fn the_payload_of_a_part_is_not_split_mid_line() {
        let body = "--separation\r\n\
                    POST /chat HTTP/1.1\r\n\
                    \r\n\
                    say --separation\r\n\
                    and --separation-- too\r\n\
                    --separation--\r\n";
        let parts = split_parts(body.as_bytes(), b"separation", LIMITS).unwrap();
        assert_eq!(parts.len(), 1);
        let chat = parse_subrequest(parts[0]).unwrap();
        let payload = "say --separation\r\nand --separation-- too";
        assert_eq!(chat, req("POST", "/chat", &[], payload));
    }

    #[test]
    fn too_many_parts() {
        let limits = PartLimits { max_parts: 2 };
        let two = b"--s\r\nA\r\n--s\r\nB\r\n--s--";
        assert_eq!(split_parts(two, b"s", limits).map(|p| p.len()), Ok(2));
        let three = b"--s\r\nA\r\n--s\r\nB\r\n--s\r\nC\r\n--s--";
        let err = split_parts(three, b"s", limits).unwrap_err();
        assert_eq!(err, MultipartError::TooManyParts { limit: 2 });
        assert_eq!(err.status(), 413);
        assert_eq!(err.to_string(), "multipart body holds more than 2 parts");
        // An unterminated last part counts too.
        let unterminated = b"--s\r\nA\r\n--s\r\nB\r\n--s\r\nC";
        assert_eq!(split_parts(unterminated, b"s", limits), Err(err));
        let none = PartLimits { max_parts: 0 };
        let one = split_parts(b"--s\r\nA\r\n--s--", b"s", none);
        assert_eq!(one, Err(MultipartError::TooManyParts { limit: 0 }));
    }

    #[test]
    fn statuses() {
        assert_eq!(MultipartError::NotMultipart.status(), 415);
        assert_eq!(MultipartError::MissingBoundary.status(), 400);
        assert_eq!(MultipartError::NoParts.status(), 400);
        assert_eq!(MultipartError::NoOpeningDelimiter.status(), 400);
        assert_eq!(MultipartError::BadBoundary("x").status(), 400);
        assert_eq!(MultipartError::BadContentType.status(), 400);
        let text = MultipartError::NotMultipart.to_string();
        assert_eq!(
            text,
            "Content-Type must be multipart/digest with a boundary"
        );
    }

    #[test]
    #[rustfmt::skip]
    fn bare_form() {
        check_part("GET /weather", Ok(req("GET", "/weather", &[], "")));
        check_part("GET /weather\r\n", Ok(req("GET", "/weather", &[], "")));
        check_part("GET /weather\n", Ok(req("GET", "/weather", &[], "")));
        check_part("\r\n\r\nGET /weather\r\n", Ok(req("GET", "/weather", &[], "")));
        check_part("\n\nGET /weather", Ok(req("GET", "/weather", &[], "")));
        check_part("GET /w\r\nA: 1\r\nB:2", Ok(req("GET", "/w", &[("A", "1"), ("B", "2")], "")));
        check_part("GET /w\nA: 1\nB:  2 \t\n", Ok(req("GET", "/w", &[("A", "1"), ("B", "2")], "")));
        check_part("GET /w\r\nA: 1\r", Ok(req("GET", "/w", &[("A", "1")], "")));
        check_part("GET /w\r\nA:\r\n", Ok(req("GET", "/w", &[("A", "")], "")));
        // A later `Content-Type:` line does not make it the explicit form.
        check_part("GET /w\r\nContent-Type: x\r\n\r\nGET /v", Ok(req("GET", "/w", &[("Content-Type", "x")], "GET /v")));
        check_part("GET /w HTTP/1.1\r\n", Ok(req("GET", "/w", &[], "")));
        check_part("GET /w HTTP/1.0", Ok(req("GET", "/w", &[], "")));
        check_part("GET http://h/w?q=1 HTTP/1.1", Ok(req("GET", "http://h/w?q=1", &[], "")));
        check_part("custom-METHOD *", Ok(req("custom-METHOD", "*", &[], "")));
    }

    #[test]
    #[rustfmt::skip]
    fn explicit_form() {
        check_part("Content-Type: application/http; msgtype=request\r\n\r\nGET /news HTTP/1.1\r\nRange: a\r\n\r\n", Ok(req("GET", "/news", &[("Range", "a")], "")));
        check_part("Content-Type: application/http\r\n\r\nGET /news", Ok(req("GET", "/news", &[], "")));
        check_part("Content-Type: application/http\n\nGET /news\nA: b", Ok(req("GET", "/news", &[("A", "b")], "")));
        check_part("Content-Type: application/http;\r\n msgtype=request\r\nContent-ID: <1>\r\n\r\n\r\nGET /n", Ok(req("GET", "/n", &[], "")));
        check_part("content-type:x\r\n\r\nGET /n", Ok(req("GET", "/n", &[], "")));
        // With no MIME headers a part starts with a blank line (RFC 2046), which is skipped.
        check_part("\r\nGET /n HTTP/1.1\r\n\r\n", Ok(req("GET", "/n", &[], "")));
        check_part("Content-Type: application/http\r\n", Err(SubRequestError::EmptyPart));
        check_part("Content-Type: application/http\r\n\r\n", Err(SubRequestError::EmptyPart));
        check_part("Content-Type: application/http\r\n\r\n\r\n", Err(SubRequestError::EmptyPart));
        check_part("Content-Type: application/http\r\nGET /n\r\n", Err(SubRequestError::BadPartHeader));
        check_part("Content-Type: x\r\nBad Header: y\r\n\r\nGET /n", Err(SubRequestError::BadPartHeader));
    }

    #[test]
    #[rustfmt::skip]
    fn bodies() {
        check_part("PUT /n\r\nContent-Length: 5\r\n\r\nhello", Ok(req("PUT", "/n", &[("Content-Length", "5")], "hello")));
        check_part("PUT /n\r\nContent-Length: 5\r\n\r\nhello\r\n", Ok(req("PUT", "/n", &[("Content-Length", "5")], "hello")));
        check_part("PUT /n\r\ncontent-length: 0\r\n\r\nhello", Ok(req("PUT", "/n", &[("content-length", "0")], "")));
        check_part("PUT /n\r\nContent-Length: 0", Ok(req("PUT", "/n", &[("Content-Length", "0")], "")));
        check_part("PUT /n\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi", Ok(req("PUT", "/n", &[("Content-Length", "2"), ("Content-Length", "2")], "hi")));
        // Without Content-Length the body is the rest of the part, blank lines and all.
        check_part("POST /n\r\nContent-Type: text/plain\r\n\r\nline 1\r\n\r\nline 2", Ok(req("POST", "/n", &[("Content-Type", "text/plain")], "line 1\r\n\r\nline 2")));
        check_part("POST /n\n\nx\n", Ok(req("POST", "/n", &[], "x\n")));
        check_part("POST /n\r\n\r\n", Ok(req("POST", "/n", &[], "")));
        check_part("PUT /n\r\nContent-Length: 6\r\n\r\nhello", Err(SubRequestError::BodyShorterThanContentLength));
        check_part("PUT /n\r\nContent-Length: 1", Err(SubRequestError::BodyShorterThanContentLength));
        check_part("PUT /n\r\nContent-Length: 99999999999999999999\r\n\r\nx", Err(SubRequestError::BadContentLength));
        check_part("PUT /n\r\nContent-Length: -1\r\n\r\nx", Err(SubRequestError::BadContentLength));
        check_part("PUT /n\r\nContent-Length: 1, 1\r\n\r\nx", Err(SubRequestError::BadContentLength));
        check_part("PUT /n\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy", Err(SubRequestError::BadContentLength));
        check_part("PUT /n\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", Err(SubRequestError::TransferEncoding));
    }

    #[test]
    #[rustfmt::skip]
    fn bad_parts() {
        check_part("", Err(SubRequestError::EmptyPart));
        check_part("\r\n\r\n", Err(SubRequestError::EmptyPart));
        check_part("GET", Err(SubRequestError::BadRequestLine));
        check_part("GET  /x", Err(SubRequestError::BadRequestLine));
        check_part("/x GET", Err(SubRequestError::BadRequestLine));
        check_part("GET /x ", Err(SubRequestError::BadRequestLine));
        check_part(" GET /x", Err(SubRequestError::BadRequestLine));
        check_part("GET\t/x", Err(SubRequestError::BadRequestLine));
        check_part("GET /x\tHTTP/1.1", Err(SubRequestError::BadRequestLine));
        check_part("GET /x HTTP/1.1 extra", Err(SubRequestError::BadRequestLine));
        check_part("GET /x http/1.1", Err(SubRequestError::BadRequestLine));
        check_part("GET /\u{e9}", Err(SubRequestError::BadRequestLine));
        check_part("GET /x\rY", Err(SubRequestError::BadRequestLine));
        check_part("GET /x HTTP/2.0", Err(SubRequestError::UnsupportedVersion));
        check_part("GET /x HTTP/1.2", Err(SubRequestError::UnsupportedVersion));
        check_part("GET /x\r\nA: 1\r\n  folded", Err(SubRequestError::BadHeader("obsolete line folding is not allowed")));
        check_part("GET /x\r\nA: 1\r\n\tfolded\r\n", Err(SubRequestError::BadHeader("obsolete line folding is not allowed")));
        check_part("GET /x\r\nNo colon\r\n", Err(SubRequestError::BadHeader("no colon")));
        check_part("GET /x\r\n: v\r\n", Err(SubRequestError::BadHeader("empty header name")));
        check_part("GET /x\r\nA : v\r\n", Err(SubRequestError::BadHeader("whitespace before the colon is not allowed")));
        check_part("GET /x\r\nA(b): v\r\n", Err(SubRequestError::BadHeader("header name is not a token")));
        check_part("GET /x\r\nA: v\0w\r\n", Err(SubRequestError::BadHeader("header value contains CR, LF or NUL")));
        check_part("GET /x\r\nA: v\rw\r\n", Err(SubRequestError::BadHeader("header value contains CR, LF or NUL")));
    }

    #[test]
    fn header_count_is_bounded() {
        let mut part = String::from("GET /x\r\n");
        for i in 0..MAX_SUBREQUEST_HEADERS {
            writeln!(part, "H{i}: v\r").unwrap();
        }
        let ok = parse_subrequest(part.as_bytes()).map(|r| r.headers.len());
        assert_eq!(ok, Ok(MAX_SUBREQUEST_HEADERS));
        part.push_str("One-Too-Many: v\r\n");
        let err = parse_subrequest(part.as_bytes()).unwrap_err();
        assert_eq!(err, SubRequestError::TooManyHeaders);
        assert_eq!(
            err.to_string(),
            "request in part has more than 64 header lines"
        );
    }

    /// Where `inner` starts within `outer`, if it is a sub-slice of it.
    fn offset_in(outer: &[u8], inner: &[u8]) -> Option<usize> {
        let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
        (o.start <= i.start && i.end <= o.end).then(|| i.start as usize - o.start as usize)
    }

    #[test]
    fn regression_fuzz_empty_part_points_into_the_body() {
        // An empty part was a static `&[]`, not a slice of the body, breaking "everything
        // here borrows from the body" (a caller taking its offset got garbage).
        let body = b"--s\r\n--s\r\nB\r\n--s--";
        let parts = split_parts(body, b"s", LIMITS).unwrap();
        assert_eq!(parts, [&b""[..], b"B"]);
        assert_eq!(offset_in(body, parts[0]), Some(5));
        // The fuzzer's input: boundary `--`, whose close delimiter is `------`.
        let body = b"----\r\n------\r\nx\r\n------\r\n";
        let parts = split_parts(body, b"--", LIMITS).unwrap();
        assert_eq!(parts, [&b""[..]]);
        assert_eq!(offset_in(body, parts[0]), Some(6));
    }

    #[test]
    fn regression_fuzz_subrequest_body_points_into_the_part() {
        // With no line ending after the last line, the body was a static `&[]`.
        for part in [
            &b"GET /weather"[..],
            b"GET /w\r\nA: 1",
            b"\n\nGET /w HTTP/1.1",
        ] {
            let request = parse_subrequest(part).unwrap();
            assert!(request.body.is_empty());
            assert_eq!(offset_in(part, request.body), Some(part.len()), "{part:?}");
        }
        let part = b"PUT /n\r\nContent-Length: 0";
        let request = parse_subrequest(part).unwrap();
        assert_eq!(offset_in(part, request.body), Some(part.len()));
    }

    #[test]
    fn exhaustive_short_inputs_never_panic() {
        let inputs = all_inputs(b"-a\r\n:G /", 4);
        assert_eq!(inputs.len(), 1 + 8 + 64 + 512 + 4096);
        let limits = PartLimits { max_parts: 3 };
        for input in &inputs {
            if let Ok(parts) = split_parts(input, b"a", limits) {
                assert!(!parts.is_empty() && parts.len() <= 3, "{input:?}");
                for part in parts {
                    // Every part is a slice of the body, and parsing it does not panic.
                    let (whole, slice) = (input.as_ptr_range(), part.as_ptr_range());
                    assert!(whole.start <= slice.start && slice.end <= whole.end);
                    let _ = parse_subrequest(part);
                }
            }
            if let Ok(request) = parse_subrequest(input) {
                assert!(
                    !request.method.is_empty() && !request.target.is_empty(),
                    "{input:?}"
                );
            }
            let _ = boundary(input);
        }
        // Longer bodies built from a valid opening, so the part loop runs with odd tails.
        for tail in &inputs {
            let body = [b"--a\r\n".as_slice(), tail, b"\r\n--a\n", tail].concat();
            let _ = split_parts(&body, b"a", limits)
                .map(|parts| parts.into_iter().map(parse_subrequest).count());
        }
    }
}
