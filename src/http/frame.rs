//! Multipart framing for streams and multipart answers.
//!
//! A stream body is `--B` followed by frames. Every frame is one complete part *and the
//! delimiter that ends it*:
//!
//! ```text
//! CRLF <part headers> CRLF <content> CRLF "--" B
//! ```
//!
//! so the bytes on the wire are exactly RFC 2046's `dash-boundary CRLF part
//! (delimiter CRLF part)*`, cut so that a part is complete the moment its frame
//! arrives: an incremental MIME parser sees the delimiter right after the content and
//! can hand the part over without waiting for the next change. The stream (or a
//! complete multipart answer) ends with `--` CRLF, which turns the last delimiter into
//! the close delimiter.
//!
//! In a chunked response each frame is exactly one chunk, chunk header included, so a
//! frame is built once per change and shape and its bytes are shared by every
//! subscriber. For an HTTP/1.0 client or a complete (`Content-Length`) multipart
//! answer the same frame is written without its chunk header and trailer (sliced,
//! not copied).

use bytes::{Bytes, BytesMut};

use crate::body::Body;
use crate::http::response::{push_hex, push_u64};
use crate::time::Timestamp;

/// Frames whose whole encoding is at most this many bytes are flattened into one
/// buffer (one copy per change, shared by every subscriber, one iovec per write).
const FLATTEN_MAX: usize = 2048;

/// The multipart boundary of this server's streams and multipart answers.
///
/// It is random per process, so a client cannot know it before it sees it; writes
/// whose representation would contain it are refused (see `store`), so no payload can
/// ever forge a part.
#[derive(Clone, Debug)]
pub struct Boundary {
    text: Bytes,
    /// `CRLF "--" B CRLF`: the end of a large frame (delimiter, then chunk trailer).
    tail: Bytes,
}

impl Boundary {
    /// `halley-` followed by 32 random hex digits.
    pub fn random() -> Boundary {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // No entropy source: fall back to the clock and the process id, still unknown to clients in advance.
            let seed = Timestamp::now().as_micros() ^ (u64::from(std::process::id()) << 32);
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            bytes[8..].copy_from_slice(
                &seed
                    .rotate_left(29)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .to_le_bytes(),
            );
        }
        let mut text = String::from("halley-");
        for b in bytes {
            text.push_str(&format!("{b:02x}"));
        }
        Boundary::from_text(&text)
    }

    /// A fixed boundary (tests).
    pub fn from_text(text: &str) -> Boundary {
        let mut tail = Vec::with_capacity(text.len() + 6);
        tail.extend_from_slice(b"\r\n--");
        tail.extend_from_slice(text.as_bytes());
        tail.extend_from_slice(b"\r\n");
        Boundary {
            text: Bytes::copy_from_slice(text.as_bytes()),
            tail: Bytes::from(tail),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }

    /// `multipart/<subtype>; boundary=B`.
    pub fn content_type(&self, subtype: &str) -> Bytes {
        let mut v = Vec::with_capacity(40 + self.text.len());
        v.extend_from_slice(b"multipart/");
        v.extend_from_slice(subtype.as_bytes());
        v.extend_from_slice(b"; boundary=");
        v.extend_from_slice(&self.text);
        Bytes::from(v)
    }

    /// The opening of a multipart body: `--B` (as a chunk, or raw).
    pub fn opening(&self, chunked: bool) -> Bytes {
        let mut v = Vec::with_capacity(self.text.len() + 12);
        if chunked {
            push_hex(&mut v, self.text.len() as u64 + 2);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"--");
        v.extend_from_slice(&self.text);
        if chunked {
            v.extend_from_slice(b"\r\n");
        }
        Bytes::from(v)
    }

    /// The close of a multipart body (`--` CRLF after the last delimiter), and for a
    /// chunked stream the last chunk.
    pub fn closing(chunked: bool) -> Bytes {
        if chunked {
            Bytes::from_static(b"4\r\n--\r\n\r\n0\r\n\r\n")
        } else {
            Bytes::from_static(b"--\r\n")
        }
    }
}

/// One part (with the delimiter that ends it), encoded once and shared.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Chunk header, part, delimiter, chunk trailer.
    pieces: Vec<Bytes>,
    /// Bytes of the chunk header at the front of `pieces[0]`.
    chunk_header: usize,
    len: usize,
}

/// Chunk trailer at the end of the last piece.
const CHUNK_TRAILER: usize = 2;

impl Frame {
    /// Builds a frame from part headers (each line ending in CRLF) and content.
    fn build(part_headers: &[u8], content_head: &[u8], content: &Body, b: &Boundary) -> Frame {
        // CRLF part-headers CRLF content-head content CRLF "--" B
        let part_len = 2
            + part_headers.len()
            + 2
            + content_head.len()
            + content.len() as usize
            + 4
            + b.text.len();
        let mut head = Vec::with_capacity(20 + part_headers.len() + content_head.len() + 4);
        push_hex(&mut head, part_len as u64);
        head.extend_from_slice(b"\r\n");
        let chunk_header = head.len();
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(part_headers);
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(content_head);
        let total = chunk_header + part_len + CHUNK_TRAILER;
        let pieces = if total <= FLATTEN_MAX {
            let mut flat = BytesMut::with_capacity(total);
            flat.extend_from_slice(&head);
            for seg in content.segments() {
                flat.extend_from_slice(seg);
            }
            flat.extend_from_slice(&b.tail);
            vec![flat.freeze()]
        } else {
            let mut pieces = Vec::with_capacity(content.segments().len() + 2);
            pieces.push(Bytes::from(head));
            pieces.extend(content.segments().iter().cloned());
            pieces.push(b.tail.clone());
            pieces
        };
        Frame {
            pieces,
            chunk_header,
            len: total,
        }
    }

    /// A `multipart/digest` part holding an embedded HTTP response: `head` is its
    /// status line and headers (each line ending in CRLF, `Content-Length` included,
    /// no blank line), `body` its content.
    pub fn digest(head: &[u8], body: &Body, b: &Boundary) -> Frame {
        let mut content_head = Vec::with_capacity(head.len() + 2);
        content_head.extend_from_slice(head);
        content_head.extend_from_slice(b"\r\n");
        Frame::build(
            b"Content-Type: application/http; msgtype=response\r\n",
            &content_head,
            body,
            b,
        )
    }

    /// A `multipart/x-mixed-replace` part: the full representation with its type.
    pub fn replacement(
        content_type: &[u8],
        last_modified: Timestamp,
        body: &Body,
        b: &Boundary,
    ) -> Frame {
        let mut h = Vec::with_capacity(128);
        h.extend_from_slice(b"Content-Type: ");
        h.extend_from_slice(content_type);
        h.extend_from_slice(b"\r\nContent-Length: ");
        push_u64(&mut h, body.len());
        h.extend_from_slice(b"\r\nLast-Modified: ");
        last_modified.write_http(&mut h);
        h.extend_from_slice(b"\r\n");
        Frame::build(&h, b"", body, b)
    }

    /// The heartbeat of a `multipart/digest` stream: an empty `text/plain` part.
    pub fn heartbeat(b: &Boundary) -> Frame {
        Frame::build(b"Content-Type: text/plain\r\n", b"", &Body::new(), b)
    }

    /// Bytes on the wire in a chunked stream.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the frame's pieces for a chunked body.
    pub fn push_chunked(&self, out: &mut Vec<Bytes>) {
        out.extend(self.pieces.iter().cloned());
    }

    /// Appends the frame's pieces for a raw (un-chunked) body.
    pub fn push_raw(&self, out: &mut Vec<Bytes>) {
        let n = self.pieces.len();
        for (i, p) in self.pieces.iter().enumerate() {
            let start = if i == 0 { self.chunk_header } else { 0 };
            let end = if i == n - 1 {
                p.len() - CHUNK_TRAILER
            } else {
                p.len()
            };
            out.push(p.slice(start..end));
        }
    }

    pub fn raw_len(&self) -> usize {
        self.len - self.chunk_header - CHUNK_TRAILER
    }

    /// Appends the frame for a chunked or raw body.
    pub fn push(&self, chunked: bool, out: &mut Vec<Bytes>) {
        if chunked {
            self.push_chunked(out)
        } else {
            self.push_raw(out)
        }
    }

    /// The frame's bytes flattened (tests).
    pub fn to_vec(&self, chunked: bool) -> Vec<u8> {
        let mut pieces = Vec::new();
        self.push(chunked, &mut pieces);
        pieces.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Boundary {
        Boundary::from_text("BND")
    }

    #[test]
    fn digest_part_bytes() {
        let f = Frame::digest(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
            &Body::from("hi"),
            &b(),
        );
        let raw = f.to_vec(false);
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            "\r\nContent-Type: application/http; msgtype=response\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi\r\n--BND"
        );
        let chunked = String::from_utf8(f.to_vec(true)).unwrap();
        let (size, rest) = chunked.split_once("\r\n").unwrap();
        assert_eq!(usize::from_str_radix(size, 16).unwrap(), f.raw_len());
        assert_eq!(rest.len(), f.raw_len() + 2);
        assert!(rest.ends_with("--BND\r\n"));
        assert_eq!(f.len(), chunked.len());
    }

    #[test]
    fn large_frames_share_the_body() {
        let payload = Bytes::from(vec![b'x'; 10_000]);
        let f = Frame::digest(b"HTTP/1.1 200 OK\r\n", &Body::from(payload.clone()), &b());
        let mut pieces = Vec::new();
        f.push_chunked(&mut pieces);
        assert_eq!(pieces.len(), 3);
        assert_eq!(
            pieces[1].as_ptr(),
            payload.as_ptr(),
            "the body is the shared payload, not a copy"
        );
        let raw = f.to_vec(false);
        assert!(raw.starts_with(b"\r\nContent-Type: application/http"));
        assert!(raw.ends_with(b"x\r\n--BND"));
    }

    #[test]
    fn a_whole_stream_is_well_formed_multipart() {
        let bd = b();
        let mut wire = Vec::new();
        wire.extend_from_slice(&bd.opening(false));
        wire.extend(
            Frame::replacement(b"text/plain", Timestamp::ZERO, &Body::from("one"), &bd)
                .to_vec(false),
        );
        wire.extend(Frame::heartbeat(&bd).to_vec(false));
        wire.extend_from_slice(&Boundary::closing(false));
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "--BND\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nLast-Modified: Thu, 01 Jan 1970 00:00:00.000000 GMT\r\n\r\none\r\n--BND\r\nContent-Type: text/plain\r\n\r\n\r\n--BND--\r\n"
        );
        assert_eq!(&bd.opening(true)[..], b"5\r\n--BND\r\n");
    }

    #[test]
    fn random_boundaries_differ() {
        let a = Boundary::random();
        let c = Boundary::random();
        assert_ne!(a.as_bytes(), c.as_bytes());
        assert_eq!(a.as_bytes().len(), "halley-".len() + 32);
    }
}
