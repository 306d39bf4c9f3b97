//! Per-resource sequence verification on the subscriber side.
//!
//! Every publisher numbers its records per resource from 0. A subscriber keeps, for each
//! resource it watches, the next sequence number it expects:
//! - `s == expected`: a delivery;
//! - `s > expected`: a delivery, and `expected..s` are counted lost (and remembered as a
//!   gap: if one of them shows up later it is counted out-of-order instead);
//! - `s < expected`: a duplicate, unless it fills a gap (out-of-order), or the answer is a
//!   full-state `200`, whose old records are simply the state the client already had.

use crate::record::{for_each_record, Record};
use crate::stats::{record_ns, Counters};
use hdrhistogram::Histogram;

/// Most gaps remembered per resource; older gaps are forgotten (a record filling a
/// forgotten gap then counts as a duplicate). Only matters when things already went wrong.
const MAX_GAPS: usize = 64;

#[derive(Debug, Clone)]
pub struct Tracker {
    pub resource: u64,
    pub expected: u64,
    /// Missing ranges `[start, end)`, oldest first.
    gaps: Vec<(u64, u64)>,
}

/// How an answer relates to the subscriber's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// New data only (a `206`, a stream part, an Nchan message).
    Delta,
    /// The whole state (a `200`): old records are expected and ignored.
    Full,
    /// Independent messages that happen to arrive together (Nchan messages of one read):
    /// like `Delta`, but several records are not a merged part.
    Messages,
}

/// What one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Duplicate,
    AlreadySeen,
}

impl Tracker {
    pub fn new(resource: u64) -> Tracker {
        Tracker {
            resource,
            expected: 0,
            gaps: Vec::new(),
        }
    }

    pub fn on_record(&mut self, s: u64, kind: BodyKind, c: &mut Counters) -> Outcome {
        use std::cmp::Ordering::*;
        match s.cmp(&self.expected) {
            Equal => {
                self.expected += 1;
                c.deliveries += 1;
                Outcome::Delivered
            }
            Greater => {
                c.lost += s - self.expected;
                if self.gaps.len() == MAX_GAPS {
                    self.gaps.remove(0);
                }
                self.gaps.push((self.expected, s));
                self.expected = s + 1;
                c.deliveries += 1;
                Outcome::Delivered
            }
            Less => {
                if let Some(i) = self.gaps.iter().position(|&(a, b)| a <= s && s < b) {
                    let (a, b) = self.gaps[i];
                    // Split the gap around `s`.
                    match (a == s, s + 1 == b) {
                        (true, true) => {
                            self.gaps.remove(i);
                        }
                        (true, false) => self.gaps[i] = (s + 1, b),
                        (false, true) => self.gaps[i] = (a, s),
                        (false, false) => {
                            self.gaps[i] = (a, s);
                            if self.gaps.len() < MAX_GAPS {
                                self.gaps.insert(i + 1, (s + 1, b));
                            }
                        }
                    }
                    c.out_of_order += 1;
                    c.deliveries += 1;
                    Outcome::Delivered
                } else if kind == BodyKind::Full {
                    Outcome::AlreadySeen
                } else {
                    c.duplicates += 1;
                    Outcome::Duplicate
                }
            }
        }
    }

    /// Records published (`published` = highest sequence + 1) but never delivered.
    pub fn missing(&self, published: u64) -> u64 {
        published.saturating_sub(self.expected)
    }

    pub fn caught_up(&self, published: u64) -> bool {
        self.expected >= published
    }
}

/// Processes a body of records for a subscriber watching `trackers`. Delivered records'
/// latency (`now_ns - t`) goes into `lat`. Returns the number of records in the body.
pub fn process_body(
    body: &[u8],
    kind: BodyKind,
    trackers: &mut [Tracker],
    c: &mut Counters,
    lat: &mut Histogram<u64>,
    now_ns: u64,
) -> u64 {
    let mut n = 0u64;
    let mut foreign = 0u64;
    let malformed = for_each_record(body, |rec: Record| {
        n += 1;
        // Subscribers watch few resources (≤ 256): a linear search beats hashing.
        match trackers.iter_mut().find(|t| t.resource == rec.r) {
            Some(t) => {
                if t.on_record(rec.s, kind, c) == Outcome::Delivered {
                    record_ns(lat, now_ns.saturating_sub(rec.t));
                }
            }
            None => foreign += 1,
        }
    });
    c.malformed += malformed;
    c.foreign += foreign;
    if kind == BodyKind::Delta && n > 1 {
        c.merged_parts += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::write_record;
    use crate::stats::new_hist;

    fn body(r: u64, seqs: &[u64]) -> Vec<u8> {
        let mut v = Vec::new();
        for &s in seqs {
            write_record(&mut v, r, s, 1, 64);
        }
        v
    }

    #[test]
    fn in_order() {
        let mut t = [Tracker::new(1)];
        let mut c = Counters::default();
        let mut h = new_hist();
        for s in 0..10 {
            process_body(
                &body(1, &[s]),
                BodyKind::Delta,
                &mut t,
                &mut c,
                &mut h,
                1_000_000,
            );
        }
        assert_eq!(c.deliveries, 10);
        assert_eq!(
            (c.lost, c.duplicates, c.out_of_order, c.merged_parts),
            (0, 0, 0, 0)
        );
        assert_eq!(h.len(), 10);
        assert!(t[0].caught_up(10));
        assert_eq!(t[0].missing(12), 2);
    }

    #[test]
    fn merged_is_not_loss() {
        let mut t = [Tracker::new(1)];
        let mut c = Counters::default();
        let mut h = new_hist();
        process_body(
            &body(1, &[0, 1, 2]),
            BodyKind::Delta,
            &mut t,
            &mut c,
            &mut h,
            5,
        );
        assert_eq!((c.deliveries, c.merged_parts, c.lost), (3, 1, 0));
    }

    #[test]
    fn loss_duplicates_and_out_of_order() {
        let mut t = [Tracker::new(1)];
        let mut c = Counters::default();
        let mut h = new_hist();
        process_body(
            &body(1, &[0, 1, 5]),
            BodyKind::Delta,
            &mut t,
            &mut c,
            &mut h,
            5,
        );
        assert_eq!(c.lost, 3); // 2, 3, 4
        process_body(&body(1, &[3]), BodyKind::Delta, &mut t, &mut c, &mut h, 5);
        assert_eq!(c.out_of_order, 1);
        process_body(&body(1, &[3]), BodyKind::Delta, &mut t, &mut c, &mut h, 5);
        assert_eq!(c.duplicates, 1);
        process_body(&body(1, &[1]), BodyKind::Delta, &mut t, &mut c, &mut h, 5);
        assert_eq!(c.duplicates, 2);
        process_body(
            &body(1, &[2, 4]),
            BodyKind::Delta,
            &mut t,
            &mut c,
            &mut h,
            5,
        );
        assert_eq!(c.out_of_order, 3);
        assert_eq!(c.net_lost(), 0);
        assert_eq!(c.deliveries, 6);
        assert!(t[0].gaps.is_empty());
    }

    #[test]
    fn full_state_resync() {
        let mut t = [Tracker::new(1)];
        let mut c = Counters::default();
        let mut h = new_hist();
        process_body(
            &body(1, &[0, 1]),
            BodyKind::Delta,
            &mut t,
            &mut c,
            &mut h,
            5,
        );
        // A 200 with the whole log: 0 and 1 are old state, 2 and 3 are new.
        process_body(
            &body(1, &[0, 1, 2, 3]),
            BodyKind::Full,
            &mut t,
            &mut c,
            &mut h,
            5,
        );
        assert_eq!((c.deliveries, c.duplicates, c.lost), (4, 0, 0));
        // A full body never counts as merged.
        assert_eq!(c.merged_parts, 1);
    }

    #[test]
    fn foreign_and_malformed() {
        let mut t = [Tracker::new(1), Tracker::new(2)];
        let mut c = Counters::default();
        let mut h = new_hist();
        let mut b = body(2, &[0]);
        b.extend(body(9, &[0]));
        b.extend(b"junk\n");
        process_body(&b, BodyKind::Delta, &mut t, &mut c, &mut h, 5);
        assert_eq!((c.deliveries, c.foreign, c.malformed), (1, 1, 1));
        assert_eq!(t[1].expected, 1);
        assert_eq!(t[0].expected, 0);
    }

    #[test]
    fn gap_split_in_middle() {
        let mut t = Tracker::new(0);
        let mut c = Counters::default();
        t.on_record(0, BodyKind::Delta, &mut c);
        t.on_record(10, BodyKind::Delta, &mut c);
        assert_eq!(c.lost, 9);
        t.on_record(5, BodyKind::Delta, &mut c);
        assert_eq!(t.gaps, vec![(1, 5), (6, 10)]);
        for s in [1, 2, 3, 4, 6, 7, 8, 9] {
            assert_eq!(t.on_record(s, BodyKind::Delta, &mut c), Outcome::Delivered);
        }
        assert_eq!(c.net_lost(), 0);
        assert_eq!(t.on_record(7, BodyKind::Full, &mut c), Outcome::AlreadySeen);
    }
}
