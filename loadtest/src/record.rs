//! The record format published by `fanout` and `publish`:
//! `r=<resource> s=<seq> t=<mono_ns> ` padded with `.` to exactly `--msg-size` bytes, the
//! last of which is `\n`. One record per POST; a body may hold several (merged appends).

/// Smallest `--msg-size` that always fits a record (r ≤ 10 digits, s and t ≤ 20 each).
pub const MIN_RECORD_SIZE: usize = 64;

/// A parsed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub r: u64,
    pub s: u64,
    pub t: u64,
}

/// Appends one record of exactly `size` bytes (`size` ≥ [`MIN_RECORD_SIZE`]).
pub fn write_record(out: &mut Vec<u8>, r: u64, s: u64, t: u64, size: usize) {
    use std::io::Write;
    let start = out.len();
    let _ = write!(out, "r={r} s={s} t={t} ");
    let used = out.len() - start;
    // A record longer than `size` only happens if the caller skipped the size check;
    // it is still well-formed, just longer.
    let pad = size.saturating_sub(used + 1);
    out.resize(out.len() + pad, b'.');
    out.push(b'\n');
}

fn field(line: &[u8], at: usize, name: &[u8]) -> Option<(u64, usize)> {
    let rest = line.get(at..)?;
    if !rest.starts_with(name) {
        return None;
    }
    let digits = &rest[name.len()..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &d in &digits[..n] {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((v, at + name.len() + n))
}

/// Parses one line (without its `\n`).
pub fn parse_record(line: &[u8]) -> Option<Record> {
    let (r, at) = field(line, 0, b"r=")?;
    let (s, at) = field(line, at, b" s=")?;
    let (t, at) = field(line, at, b" t=")?;
    if line.get(at) != Some(&b' ') {
        return None;
    }
    // The padding must be dots only (it catches bytes spliced from another record).
    if !line[at + 1..].iter().all(|&b| b == b'.') {
        return None;
    }
    Some(Record { r, s, t })
}

/// Splits a body into records. Returns `(records, malformed)` via the callback; a
/// trailing fragment without `\n` is malformed (bodies always hold whole records).
pub fn for_each_record(body: &[u8], mut f: impl FnMut(Record)) -> u64 {
    let mut malformed = 0;
    let mut rest = body;
    while !rest.is_empty() {
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                match parse_record(&rest[..i]) {
                    Some(rec) => f(rec),
                    None => malformed += 1,
                }
                rest = &rest[i + 1..];
            }
            None => {
                malformed += 1;
                break;
            }
        }
    }
    malformed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_exact_size() {
        let mut v = Vec::new();
        write_record(&mut v, 42, 7, 123_456_789, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(*v.last().unwrap(), b'\n');
        assert!(v.starts_with(b"r=42 s=7 t=123456789 ..."));
        let rec = parse_record(&v[..99]).unwrap();
        assert_eq!(
            rec,
            Record {
                r: 42,
                s: 7,
                t: 123_456_789
            }
        );
    }

    #[test]
    fn worst_case_fits_min_size() {
        let mut v = Vec::new();
        write_record(&mut v, u32::MAX as u64, u64::MAX, u64::MAX, MIN_RECORD_SIZE);
        assert_eq!(v.len(), MIN_RECORD_SIZE);
        assert!(parse_record(&v[..v.len() - 1]).is_some());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b""[..],
            b"r= s=1 t=2 ",
            b"r=1 s=1 t=2",
            b"r=1 s=x t=2 ...",
            b"r=1 s=1 t=2 ..x.",
            b"r=1 s=99999999999999999999999 t=2 ",
            b"x=1 s=1 t=2 ",
        ] {
            assert_eq!(
                parse_record(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn splits_bodies() {
        let mut v = Vec::new();
        for s in 0..5 {
            write_record(&mut v, 3, s, 10 + s, 80);
        }
        let mut seen = Vec::new();
        assert_eq!(for_each_record(&v, |r| seen.push(r.s)), 0);
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        // A truncated last record is malformed, the others still count.
        seen.clear();
        assert_eq!(for_each_record(&v[..v.len() - 3], |r| seen.push(r.s)), 1);
        assert_eq!(seen, vec![0, 1, 2, 3]);
    }
}
