//! Response encoding. A response goes out as a vectored write of three kinds of
//! pieces: a *head* (status line and the headers that describe the representation,
//! shareable by every connection that gets the same answer), a *tail* (`Date`, the
//! connection's persistence header and the blank line, cached per worker and
//! re-rendered once a second), and the body as shared [`Bytes`] segments.

use bytes::Bytes;

use crate::body::Body;
use crate::http::range::ContentRange;
use crate::time::Timestamp;

/// A response as the store and router describe it, before it is encoded.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<Bytes>,
    pub last_modified: Option<Timestamp>,
    pub content_range: Option<ContentRange>,
    /// `Content-Location`: which resource an answer describes (multipart parts, `/subscribe`).
    pub content_location: Option<Bytes>,
    /// `Location` of a created resource.
    pub location: Option<Bytes>,
    /// `Allow`, for 405 and OPTIONS.
    pub allow: Option<&'static str>,
    /// Extra header lines, already encoded (`Name: value\r\n` each).
    pub extra: Option<Bytes>,
    pub body: Body,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            content_type: None,
            last_modified: None,
            content_range: None,
            content_location: None,
            location: None,
            allow: None,
            extra: None,
            body: Body::new(),
        }
    }

    /// A plain-text error (or notice) whose body says why.
    pub fn text(status: u16, message: impl std::fmt::Display) -> Reply {
        let mut r = Reply::new(status);
        r.content_type = Some(Bytes::from_static(b"text/plain; charset=utf-8"));
        r.body = Body::from(Bytes::from(format!("{message}\n")));
        r
    }

    pub fn with_last_modified(mut self, ts: Timestamp) -> Reply {
        self.last_modified = Some(ts);
        self
    }

    /// Encodes the status line and the representation headers, `Content-Length`
    /// included, without the connection tail: the result can be shared.
    pub fn encode_head(&self) -> Bytes {
        let mut h = HeadBuilder::new(self.status);
        self.write_headers(&mut h);
        h.finish()
    }

    /// Writes the headers of this reply after a status line already in `h`.
    pub fn write_headers(&self, h: &mut HeadBuilder) {
        if let Some(loc) = &self.content_location {
            h.header("Content-Location", loc);
        }
        if let Some(loc) = &self.location {
            h.header("Location", loc);
        }
        if let Some(ts) = self.last_modified {
            h.header_date("Last-Modified", ts);
        }
        if let Some(cr) = &self.content_range {
            h.header_with("Content-Range", |out| cr.write_value(out));
        }
        if let Some(ct) = &self.content_type {
            h.header("Content-Type", ct);
        }
        if let Some(allow) = self.allow {
            h.header("Allow", allow.as_bytes());
        }
        if let Some(extra) = &self.extra {
            h.as_vec().extend_from_slice(extra);
        }
        // RFC 9110 §8.6: no Content-Length in 1xx and 204 responses; 304 may omit it.
        if !matches!(self.status, 100..=199 | 204 | 304) {
            h.header_u64("Content-Length", self.body.len());
        }
    }
}

/// The reason phrase for the status codes halley sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// Builds a response head (or an embedded one, inside a multipart part) into one buffer.
pub struct HeadBuilder {
    buf: Vec<u8>,
}

impl HeadBuilder {
    /// Starts `HTTP/1.1 <status> <reason>`.
    pub fn new(status: u16) -> HeadBuilder {
        Self::with_capacity(status, 192)
    }

    pub fn with_capacity(status: u16, capacity: usize) -> HeadBuilder {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(b"HTTP/1.1 ");
        push_u64(&mut buf, u64::from(status));
        buf.push(b' ');
        buf.extend_from_slice(reason(status).as_bytes());
        buf.extend_from_slice(b"\r\n");
        HeadBuilder { buf }
    }

    pub fn header(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    pub fn header_u64(&mut self, name: &str, value: u64) -> &mut Self {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        push_u64(&mut self.buf, value);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    pub fn header_date(&mut self, name: &str, ts: Timestamp) -> &mut Self {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        ts.write_http(&mut self.buf);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// Appends a header whose value is written by `f`.
    pub fn header_with(&mut self, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        f(&mut self.buf);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// The head without its tail: ready to be shared.
    pub fn finish(self) -> Bytes {
        Bytes::from(self.buf)
    }

    /// The head closed by a blank line, for embedded responses that carry no `Date`.
    pub fn finish_closed(mut self) -> Bytes {
        self.buf.extend_from_slice(b"\r\n");
        Bytes::from(self.buf)
    }

    pub fn as_vec(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

/// Appends the decimal digits of `n`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `n` in lower-case hex (chunk sizes).
pub fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// How the connection continues after a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 default: nothing to say.
    KeepAlive,
    /// `Connection: close`: the server closes after this response.
    Close,
    /// An HTTP/1.0 client that asked for keep-alive gets it confirmed.
    KeepAlive10,
}

/// The per-worker cache of response tails. `Date` has a one-second resolution, so the
/// three tails are rendered once a second and shared by every response in between.
pub struct Tails {
    second: u64,
    keep_alive: Bytes,
    close: Bytes,
    keep_alive_10: Bytes,
}

impl Tails {
    pub fn new(now: Timestamp) -> Tails {
        let mut t = Tails {
            second: u64::MAX,
            keep_alive: Bytes::new(),
            close: Bytes::new(),
            keep_alive_10: Bytes::new(),
        };
        t.refresh(now);
        t
    }

    /// Re-renders the tails when the second changed.
    pub fn refresh(&mut self, now: Timestamp) {
        let second = now.as_micros() / 1_000_000;
        if second == self.second {
            return;
        }
        self.second = second;
        let mut date = Vec::with_capacity(40);
        date.extend_from_slice(b"Date: ");
        now.write_http_seconds(&mut date);
        date.extend_from_slice(b"\r\n");
        let render = |extra: &[u8]| {
            let mut v = Vec::with_capacity(date.len() + extra.len() + 2);
            v.extend_from_slice(&date);
            v.extend_from_slice(extra);
            v.extend_from_slice(b"\r\n");
            Bytes::from(v)
        };
        self.keep_alive = render(b"");
        self.close = render(b"Connection: close\r\n");
        self.keep_alive_10 = render(b"Connection: keep-alive\r\n");
    }

    pub fn get(&self, p: Persistence) -> Bytes {
        match p {
            Persistence::KeepAlive => self.keep_alive.clone(),
            Persistence::Close => self.close.clone(),
            Persistence::KeepAlive10 => self.keep_alive_10.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        for (n, s) in [
            (0u64, "0"),
            (7, "7"),
            (10, "10"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let mut v = Vec::new();
            push_u64(&mut v, n);
            assert_eq!(v, s.as_bytes());
        }
        for (n, s) in [
            (0u64, "0"),
            (255, "ff"),
            (4096, "1000"),
            (u64::MAX, "ffffffffffffffff"),
        ] {
            let mut v = Vec::new();
            push_hex(&mut v, n);
            assert_eq!(v, s.as_bytes());
        }
    }

    #[test]
    fn head_and_tails() {
        let mut h = HeadBuilder::new(206);
        h.header("Content-Type", b"text/plain")
            .header_u64("Content-Length", 12);
        let head = h.finish();
        assert_eq!(
            &head[..],
            b"HTTP/1.1 206 Partial Content\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
        );
        let ts = Timestamp::from_micros(1_198_684_815_123_456);
        let tails = Tails::new(ts);
        assert_eq!(
            &tails.get(Persistence::KeepAlive)[..],
            b"Date: Wed, 26 Dec 2007 16:00:15 GMT\r\n\r\n"
        );
        assert_eq!(
            &tails.get(Persistence::Close)[..],
            b"Date: Wed, 26 Dec 2007 16:00:15 GMT\r\nConnection: close\r\n\r\n"
        );
    }
}
