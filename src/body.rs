//! Bodies as shared segments. A representation is never flattened to be sent: a
//! response writes the segments it references, so every subscriber of a change
//! shares the same allocations.

use bytes::{Bytes, BytesMut};

/// A representation, or part of one, as a list of shared segments. Cloning it costs one
/// reference-count increment per segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    segs: Vec<Bytes>,
    len: u64,
}

impl Body {
    pub fn new() -> Body {
        Body::default()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn segments(&self) -> &[Bytes] {
        &self.segs
    }

    pub fn into_segments(self) -> Vec<Bytes> {
        self.segs
    }

    /// Appends a segment (empty ones are dropped).
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len() as u64;
            self.segs.push(b);
        }
    }

    pub fn push_static(&mut self, s: &'static [u8]) {
        self.push(Bytes::from_static(s));
    }

    pub fn extend(&mut self, other: &Body) {
        for s in &other.segs {
            self.push(s.clone());
        }
    }

    /// Bytes `[from, to)` of the body, sharing the segments. Out-of-range bounds are clamped.
    pub fn slice(&self, from: u64, to: u64) -> Body {
        let to = to.min(self.len);
        let mut out = Body::new();
        if from >= to {
            return out;
        }
        let mut pos = 0u64;
        for seg in &self.segs {
            let end = pos + seg.len() as u64;
            if end > from && pos < to {
                let a = from.saturating_sub(pos) as usize;
                let b = (to.min(end) - pos) as usize;
                out.push(seg.slice(a..b));
            }
            pos = end;
            if pos >= to {
                break;
            }
        }
        out
    }

    /// A flat copy (tests, small bodies, validation).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len as usize);
        for s in &self.segs {
            v.extend_from_slice(s);
        }
        v
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        let mut body = Body::new();
        body.push(b);
        body
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Body {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

/// Segments are merged while both are small, so a log built from many small appends
/// keeps few segments (at most one per `MERGE_LIMIT / 2` bytes, plus a logarithmic
/// tail), while each byte is copied only a handful of times (~13 for 100-byte entries).
/// Few segments matter: every change event shares the whole representation, one
/// reference per segment.
pub const MERGE_LIMIT: usize = 1024 * 1024;

/// An append-friendly representation: appends push a segment; small trailing
/// segments are merged geometrically.
#[derive(Clone, Debug, Default)]
pub struct Rope {
    body: Body,
}

impl Rope {
    pub fn new() -> Rope {
        Rope::default()
    }

    pub fn from_bytes(b: Bytes) -> Rope {
        Rope {
            body: Body::from(b),
        }
    }

    pub fn len(&self) -> u64 {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    pub fn body(&self) -> &Body {
        &self.body
    }

    pub fn push(&mut self, b: Bytes) {
        self.body.push(b);
        self.merge_tail();
    }

    /// Merges the last two segments while the earlier one is no more than twice the
    /// later and the merged segment stays under [`MERGE_LIMIT`].
    fn merge_tail(&mut self) {
        let segs = &mut self.body.segs;
        while segs.len() >= 2 {
            let n = segs.len();
            let (a, b) = (segs[n - 2].len(), segs[n - 1].len());
            if a > 2 * b || a + b > MERGE_LIMIT {
                break;
            }
            let mut merged = BytesMut::with_capacity(a + b);
            merged.extend_from_slice(&segs[n - 2]);
            merged.extend_from_slice(&segs[n - 1]);
            segs.truncate(n - 2);
            segs.push(merged.freeze());
        }
    }

    /// The last `n` bytes (or fewer), flattened; used to check seams between appends.
    pub fn tail_bytes(&self, n: usize) -> Vec<u8> {
        let len = self.len();
        self.body.slice(len.saturating_sub(n as u64), len).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slicing_across_segments() {
        let mut b = Body::new();
        b.push(Bytes::from_static(b"hello "));
        b.push(Bytes::from_static(b""));
        b.push(Bytes::from_static(b"big "));
        b.push(Bytes::from_static(b"world"));
        assert_eq!(b.len(), 15);
        assert_eq!(b.segments().len(), 3);
        for from in 0..=16u64 {
            for to in 0..=16u64 {
                let want: Vec<u8> = b"hello big world"
                    .iter()
                    .copied()
                    .skip(from as usize)
                    .take(to.saturating_sub(from) as usize)
                    .collect();
                assert_eq!(b.slice(from, to).to_vec(), want, "{from}..{to}");
            }
        }
    }

    #[test]
    fn rope_keeps_few_segments_and_all_bytes() {
        let mut r = Rope::new();
        let mut want = Vec::new();
        for i in 0..10_000u32 {
            let entry = format!("entry {i}\n");
            want.extend_from_slice(entry.as_bytes());
            r.push(Bytes::from(entry));
        }
        assert_eq!(r.body().to_vec(), want);
        assert_eq!(r.len(), want.len() as u64);
        // ~110 KB of data: a few full-size segments plus a logarithmic tail.
        assert!(
            r.body().segments().len() < 40,
            "{} segments",
            r.body().segments().len()
        );
        assert_eq!(r.tail_bytes(5), b"9999\n");
    }
}
