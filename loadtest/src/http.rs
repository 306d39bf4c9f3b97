//! A small HTTP/1.1 client layer over tokio's `TcpStream`: requests are written by hand,
//! responses parsed with `httparse`, bodies framed by `Content-Length`, `chunked` or
//! connection close. Keep-alive and pipelining are the caller's business: responses are
//! read in order from one buffer.
//!
//! Nothing here trusts the network: sizes are bounded, every parse failure is an error
//! value, never a panic.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest body accepted for a non-streaming response (bodies here are small; this
/// bounds memory against a misbehaving server).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Longest chunk-size line (with extensions) or trailer line.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug)]
pub enum HttpError {
    Io(io::Error),
    /// The peer closed the connection (before or in the middle of a response).
    Eof,
    Parse(String),
    TooLarge(&'static str),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Io(e) => write!(f, "i/o: {e}"),
            HttpError::Eof => write!(f, "connection closed by peer"),
            HttpError::Parse(m) => write!(f, "bad response: {m}"),
            HttpError::TooLarge(what) => write!(f, "{what} too large"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        HttpError::Io(e)
    }
}

pub type HResult<T> = Result<T, HttpError>;

fn perr<T>(m: impl Into<String>) -> HResult<T> {
    Err(HttpError::Parse(m.into()))
}

/// The parts of a response head this tool uses. Header values are `S`: owned
/// `String`s for a connection's own response, or `&str` borrowed from the bytes for
/// the embedded response of every stream part (no allocation per delivery).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head<S = String> {
    pub status: u16,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// `Connection: close`, or HTTP/1.0 without keep-alive.
    pub close: bool,
    pub content_type: Option<S>,
    pub last_modified: Option<S>,
    pub etag: Option<S>,
    pub content_range: Option<S>,
    pub content_location: Option<S>,
}

impl<S: AsRef<str>> Head<S> {
    /// Whether a body follows, given the request method.
    pub fn has_body(&self, head_request: bool) -> bool {
        !(head_request
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304)
    }

    /// The `boundary` parameter of a multipart `Content-Type`.
    pub fn boundary(&self) -> Option<String> {
        self.content_type
            .as_ref()
            .and_then(|ct| boundary_param(ct.as_ref()))
    }
}

/// Extracts `boundary=` from a Content-Type value (quoted or not).
pub fn boundary_param(ct: &str) -> Option<String> {
    for param in ct.split(';').skip(1) {
        let param = param.trim();
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("boundary") {
            let v = value.trim().trim_matches('"');
            if !v.is_empty() && v.len() <= 200 {
                return Some(v.to_string());
            }
        }
    }
    None
}

fn header_str(v: &[u8]) -> HResult<&str> {
    match std::str::from_utf8(v) {
        Ok(s) => Ok(s.trim()),
        Err(_) => perr("non-UTF-8 header value"),
    }
}

/// Parses a response head from `buf`. `Ok(None)` means incomplete.
pub fn parse_head(buf: &[u8]) -> HResult<Option<(Head, usize)>> {
    parse_head_as(buf)
}

/// [`parse_head`] with the header values as `S` (`&str`: borrowed from `buf`).
pub fn parse_head_as<'a, S: From<&'a str>>(buf: &'a [u8]) -> HResult<Option<(Head<S>, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(HttpError::TooLarge("response head"));
            }
            return Ok(None);
        }
        Err(e) => return perr(format!("head: {e}")),
    };
    let mut h = Head {
        status: resp.code.unwrap_or(0),
        content_length: None,
        chunked: false,
        close: resp.version == Some(0),
        content_type: None,
        last_modified: None,
        etag: None,
        content_range: None,
        content_location: None,
    };
    for hd in resp.headers.iter() {
        let name = hd.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = header_str(hd.value)?;
            let n: u64 = v
                .parse()
                .map_err(|_| HttpError::Parse(format!("bad Content-Length {v:?}")))?;
            if h.content_length.is_some_and(|old| old != n) {
                return perr("conflicting Content-Length");
            }
            h.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let v = header_str(hd.value)?.to_ascii_lowercase();
            if v.rsplit(',').next().map(str::trim) == Some("chunked") {
                h.chunked = true;
            } else {
                return perr(format!("unsupported Transfer-Encoding {v:?}"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            let v = header_str(hd.value)?.to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                h.close = true;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                h.close = false;
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            h.content_type = Some(header_str(hd.value)?.into());
        } else if name.eq_ignore_ascii_case("last-modified") {
            h.last_modified = Some(header_str(hd.value)?.into());
        } else if name.eq_ignore_ascii_case("etag") {
            h.etag = Some(header_str(hd.value)?.into());
        } else if name.eq_ignore_ascii_case("content-range") {
            h.content_range = Some(header_str(hd.value)?.into());
        } else if name.eq_ignore_ascii_case("content-location") {
            h.content_location = Some(header_str(hd.value)?.into());
        }
    }
    if h.chunked {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
        h.content_length = None;
    }
    Ok(Some((h, n)))
}

/// `Content-Range: bytes N-M/L` → `(N, M, L)` (`L` may be `*` → `None`).
pub fn parse_bytes_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.trim().split_once('-')?;
    let a = a.trim().parse().ok()?;
    let b = b.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (a <= b).then_some((a, b, total))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CState {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerEndLf,
    Done,
}

/// Incremental `chunked` decoder: feed it any slice of the wire bytes, it appends the
/// payload to `out` and stops after the last chunk and its trailers.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: CState,
    size: u64,
    digits: u32,
    line: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: CState::Size,
            size: 0,
            digits: 0,
            line: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == CState::Done
    }

    /// Decodes from `input`; returns how many bytes were consumed (less than
    /// `input.len()` only once the body is complete).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> HResult<usize> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                CState::Data => {
                    let take = (input.len() - i).min(self.size as usize);
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = CState::DataCr;
                    }
                    continue;
                }
                CState::Done => return Ok(i),
                _ => {}
            }
            let b = input[i];
            i += 1;
            match self.state {
                CState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        // 15 hex digits already exceed any sane chunk.
                        if self.digits == 15 {
                            return Err(HttpError::TooLarge("chunk size"));
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self.size * 16 + d;
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => {
                        self.state = CState::Ext;
                        self.line = 0;
                    }
                    b'\r' if self.digits > 0 => self.state = CState::SizeLf,
                    _ => return perr(format!("bad chunk size byte {b:#04x}")),
                },
                CState::Ext => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(HttpError::TooLarge("chunk extension"));
                    }
                    if b == b'\r' {
                        self.state = CState::SizeLf;
                    }
                }
                CState::SizeLf => {
                    if b != b'\n' {
                        return perr("chunk size line not ended by CRLF");
                    }
                    self.digits = 0;
                    if self.size == 0 {
                        self.state = CState::TrailerStart;
                    } else {
                        self.state = CState::Data;
                    }
                }
                CState::DataCr => {
                    if b != b'\r' {
                        return perr("chunk data not followed by CRLF");
                    }
                    self.state = CState::DataLf;
                }
                CState::DataLf => {
                    if b != b'\n' {
                        return perr("chunk data not followed by CRLF");
                    }
                    self.state = CState::Size;
                    self.size = 0;
                }
                CState::TrailerStart => {
                    if b == b'\r' {
                        self.state = CState::TrailerEndLf;
                    } else {
                        self.state = CState::TrailerLine;
                        self.line = 1;
                    }
                }
                CState::TrailerLine => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(HttpError::TooLarge("trailer"));
                    }
                    if b == b'\n' {
                        self.state = CState::TrailerStart;
                    }
                }
                CState::TrailerEndLf => {
                    if b != b'\n' {
                        return perr("trailer section not ended by CRLF");
                    }
                    self.state = CState::Done;
                    return Ok(i);
                }
                CState::Data | CState::Done => unreachable!("handled above"),
            }
        }
        Ok(i)
    }
}

/// A complete (non-streaming) response.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

/// Tries to take one complete response from `buf`. `eof` tells whether the peer closed
/// (which completes a close-delimited body). Returns the response and the bytes used.
pub fn try_response(
    buf: &[u8],
    head_request: bool,
    eof: bool,
) -> HResult<Option<(Response, usize)>> {
    let Some((head, hlen)) = parse_head(buf)? else {
        return Ok(None);
    };
    let rest = &buf[hlen..];
    if !head.has_body(head_request) {
        return Ok(Some((
            Response {
                head,
                body: Vec::new(),
            },
            hlen,
        )));
    }
    if head.chunked {
        let mut dec = ChunkedDecoder::default();
        let mut body = Vec::new();
        let used = dec.decode(rest, &mut body)?;
        if body.len() > MAX_BODY {
            return Err(HttpError::TooLarge("response body"));
        }
        if dec.is_done() {
            return Ok(Some((Response { head, body }, hlen + used)));
        }
        return Ok(None);
    }
    if let Some(cl) = head.content_length {
        if cl > MAX_BODY as u64 {
            return Err(HttpError::TooLarge("response body"));
        }
        let cl = cl as usize;
        if rest.len() >= cl {
            let body = rest[..cl].to_vec();
            return Ok(Some((Response { head, body }, hlen + cl)));
        }
        return Ok(None);
    }
    // Close-delimited.
    if rest.len() > MAX_BODY {
        return Err(HttpError::TooLarge("response body"));
    }
    if eof {
        let body = rest.to_vec();
        return Ok(Some((Response { head, body }, buf.len())));
    }
    Ok(None)
}

/// A client connection with its read buffer.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    pub eof: bool,
    read_chunk: usize,
}

impl Conn {
    pub fn new(stream: TcpStream, read_chunk: usize) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            read_chunk: read_chunk.max(512),
        }
    }

    /// Unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// One read into the buffer; `Ok(0)` at EOF. Cancel-safe (usable in `select!`).
    pub async fn fill(&mut self) -> HResult<usize> {
        if self.pos > 0 && (self.pos > self.buf.len() / 2 || self.pos > 64 * 1024) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < self.read_chunk / 2 {
            self.buf.reserve(self.read_chunk);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    pub async fn write_all(&mut self, b: &[u8]) -> HResult<()> {
        self.stream.write_all(b).await?;
        Ok(())
    }

    /// A complete response already in the buffer, if any.
    pub fn take_response(&mut self, head_request: bool) -> HResult<Option<Response>> {
        match try_response(self.data(), head_request, self.eof)? {
            Some((r, used)) => {
                self.consume(used);
                Ok(Some(r))
            }
            None => Ok(None),
        }
    }

    /// Reads one complete response.
    pub async fn read_response(&mut self, head_request: bool) -> HResult<Response> {
        loop {
            if let Some(r) = self.take_response(head_request)? {
                return Ok(r);
            }
            if self.eof {
                return Err(HttpError::Eof);
            }
            self.fill().await?;
        }
    }

    /// Reads a response head only (the body, e.g. a stream, is read by the caller).
    pub async fn read_head(&mut self) -> HResult<Head> {
        loop {
            if let Some((h, n)) = parse_head(self.data())? {
                self.consume(n);
                return Ok(h);
            }
            if self.eof {
                return Err(HttpError::Eof);
            }
            self.fill().await?;
        }
    }
}

/// Writes a request. `headers` are `(name, value)`; `Host` and `Content-Length` (when a
/// body is given or the method needs one) are added here.
pub fn write_request(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) {
    use std::io::Write;
    let _ = write!(out, "{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    if let Some(b) = body {
        let _ = write!(out, "Content-Length: {}\r\n\r\n", b.len());
        out.extend_from_slice(b);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// One request/response on a fresh connection (setup, metrics scraping).
pub async fn simple_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: std::time::Duration,
) -> anyhow::Result<Response> {
    let fut = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut c = Conn::new(stream, 16 * 1024);
        let mut req = Vec::new();
        let mut hs: Vec<(&str, &str)> = headers.to_vec();
        hs.push(("Connection", "close"));
        write_request(&mut req, method, target, &addr.to_string(), &hs, body);
        c.write_all(&req).await?;
        c.read_response(method == "HEAD").await
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(anyhow::anyhow!("{method} {target}: {e}")),
        Err(_) => Err(anyhow::anyhow!("{method} {target}: timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn chunk_encode(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend(format!("{:x}\r\n", p.len()).as_bytes());
            v.extend(*p);
            v.extend(b"\r\n");
        }
        v.extend(b"0\r\n\r\n");
        v
    }

    #[test]
    fn head_fields() {
        let raw = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 5-9/10\r\nLast-Modified: Wed, 25 Nov 2026 18:41:21.625456 GMT\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
        let (h, n) = parse_head(raw).unwrap().unwrap();
        assert_eq!(h.status, 206);
        assert_eq!(h.content_length, Some(5));
        assert_eq!(&raw[n..], b"hello");
        assert_eq!(
            parse_bytes_range(h.content_range.as_deref().unwrap()),
            Some((5, 9, Some(10)))
        );
        assert!(!h.close);
        assert_eq!(parse_head(&raw[..20]).unwrap(), None);
    }

    #[test]
    fn head_errors() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        let big = vec![b'a'; MAX_HEAD + 10];
        assert!(parse_head(&big).is_err());
    }

    #[test]
    fn boundary() {
        assert_eq!(
            boundary_param("multipart/digest; boundary=halley-1"),
            Some("halley-1".into())
        );
        assert_eq!(
            boundary_param("multipart/mixed; charset=x; boundary=\"a b\""),
            Some("a b".into())
        );
        assert_eq!(boundary_param("text/plain"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_bytes_range("bytes 0-99/100"),
            Some((0, 99, Some(100)))
        );
        assert_eq!(parse_bytes_range("bytes 0-99/*"), Some((0, 99, None)));
        assert_eq!(parse_bytes_range("bytes 9-3/100"), None);
        assert_eq!(parse_bytes_range("updated x-/y"), None);
    }

    #[test]
    fn chunked_every_split() {
        let wire = chunk_encode(&[b"hello ", b"world", &[b'x'; 300]]);
        let mut want = b"hello world".to_vec();
        want.extend([b'x'; 300]);
        for cut in 0..=wire.len() {
            let mut dec = ChunkedDecoder::default();
            let mut out = Vec::new();
            let a = dec.decode(&wire[..cut], &mut out).unwrap();
            assert_eq!(a, cut);
            let b = dec.decode(&wire[cut..], &mut out).unwrap();
            assert_eq!(a + b, wire.len());
            assert!(dec.is_done());
            assert_eq!(out, want);
        }
        // Byte by byte.
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        for b in &wire {
            dec.decode(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert!(dec.is_done());
        assert_eq!(out, want);
    }

    #[test]
    fn chunked_extensions_trailers_and_errors() {
        let wire = b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        let used = dec.decode(wire, &mut out).unwrap();
        assert_eq!(out, b"hello");
        assert_eq!(&wire[used..], b"NEXT");
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\nhello",
            b"ffffffffffffffff\r\n",
        ] {
            let mut dec = ChunkedDecoder::default();
            assert!(dec.decode(bad, &mut Vec::new()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn full_responses() {
        let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        wire.extend(chunk_encode(&[b"abc"]));
        wire.extend(
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        );
        let (r, n) = try_response(&wire, false, false).unwrap().unwrap();
        assert_eq!(r.body, b"abc");
        let (r, m) = try_response(&wire[n..], false, false).unwrap().unwrap();
        assert_eq!(r.head.status, 204);
        let (r, k) = try_response(&wire[n + m..], false, false).unwrap().unwrap();
        assert_eq!(r.body, b"ok");
        assert_eq!(n + m + k, wire.len());
        // Incomplete.
        assert!(try_response(&wire[..wire.len() - 1], false, false)
            .unwrap()
            .is_some());
        assert!(try_response(&wire[n + m..wire.len() - 1], false, false)
            .unwrap()
            .is_none());
        // Close-delimited completes at EOF only.
        let close = b"HTTP/1.1 200 OK\r\n\r\nrest";
        assert!(try_response(close, false, false).unwrap().is_none());
        assert_eq!(
            try_response(close, false, true).unwrap().unwrap().0.body,
            b"rest"
        );
        // HEAD has no body.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert!(try_response(head, true, false).unwrap().is_some());
    }

    #[test]
    fn request_format() {
        let mut v = Vec::new();
        write_request(
            &mut v,
            "POST",
            "/r/1",
            "h",
            &[("Content-Type", "text/plain")],
            Some(b"xy"),
        );
        assert_eq!(
            v,
            b"POST /r/1 HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nxy"
        );
    }
}
