//! One resource: its representation, its bounded history of changes, and the rules
//! that turn a request (plain GET, or a `When-Modified-After` long poll with an
//! optional `Range`) into an answer. Everything here is pure: time comes in as an
//! argument, nothing touches a socket.
//!
//! History is what makes resumption exact. It holds the last `cap` changes; the
//! *horizon* is the stamp of the newest change that fell out of it, so every change
//! stamped after the horizon is known. A client resuming from `T ≥ horizon` can be
//! told exactly what happened since `T` (a `206` of the appended data when every
//! change was an append); one resuming from before the horizon gets the full state
//! (`200`), never a silent gap.

use std::collections::VecDeque;

use bytes::Bytes;

use super::codec::{Appended, CodecError, CodecKind, Representation};
use crate::http::range::{ContentRange, RangeSpec};
use crate::http::response::Reply;
use crate::time::Timestamp;

/// One remembered change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeRec {
    pub ts: Timestamp,
    pub kind: RecKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecKind {
    /// PUT, or a creation by POST: watchers see a replace.
    Replace,
    /// POST to a live resource. `offset` is the rope length before it (a `bytes`
    /// range's start), `entry_start` where the entry begins (an `updated` fragment's start).
    Append {
        offset: u64,
        entry_start: u64,
    },
    Delete,
}

/// A live resource's representation and its media type.
#[derive(Clone, Debug)]
pub struct Live {
    pub content_type: Bytes,
    pub kind: CodecKind,
    pub rep: Representation,
}

/// Why a write was refused (nothing changed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("Content-Type {given:?} does not match the resource's {stored:?}")]
    TypeMismatch { given: String, stored: String },
}

impl WriteError {
    pub fn status(&self) -> u16 {
        match self {
            WriteError::Codec(e) => e.status(),
            WriteError::TypeMismatch { .. } => 415,
        }
    }
}

/// The outcome of a long-poll query.
// An answer is built once and moved a couple of times; boxing the reply would cost
// an allocation per answer for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Answer {
    /// Answer now with this reply.
    Now(Reply),
    /// Nothing changed after the client's stamp: park until the change after `since`
    /// (the stamp of the state the client is known to have).
    Wait { since: Timestamp },
}

/// A resource that exists or existed. A deleted resource keeps its stamp and history
/// (a tombstone), so later changes still get greater stamps and watchers get `410`.
#[derive(Clone, Debug)]
pub struct Resource {
    last: Timestamp,
    live: Option<Live>,
    history: VecDeque<ChangeRec>,
    horizon: Timestamp,
    cap: usize,
}

const OCTET_STREAM: &[u8] = b"application/octet-stream";

impl Resource {
    /// A resource that has never existed, with room for `cap` (≥ 1) changes of history.
    pub fn new(cap: usize) -> Resource {
        Resource {
            last: Timestamp::ZERO,
            live: None,
            history: VecDeque::new(),
            horizon: Timestamp::ZERO,
            cap: cap.max(1),
        }
    }

    /// Stamp of the newest change (creation, replace, append or delete).
    pub fn last(&self) -> Timestamp {
        self.last
    }

    pub fn live(&self) -> Option<&Live> {
        self.live.as_ref()
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    pub fn history(&self) -> impl Iterator<Item = &ChangeRec> {
        self.history.iter()
    }

    /// Every change stamped after this is in [`Resource::history`].
    pub fn horizon(&self) -> Timestamp {
        self.horizon
    }

    fn stamp(&mut self, now: Timestamp, kind: RecKind) -> Timestamp {
        let ts = self.last.next_after(now);
        self.last = ts;
        self.history.push_back(ChangeRec { ts, kind });
        while self.history.len() > self.cap {
            if let Some(old) = self.history.pop_front() {
                self.horizon = old.ts;
            }
        }
        ts
    }

    /// Replaces (or creates) the representation. Returns the stamp and whether it created.
    pub fn put(
        &mut self,
        content_type: Option<Bytes>,
        body: Bytes,
        now: Timestamp,
    ) -> Result<(Timestamp, bool), WriteError> {
        let content_type = content_type.unwrap_or_else(|| Bytes::from_static(OCTET_STREAM));
        let kind = CodecKind::for_media_type(&content_type);
        let rep = Representation::from_put(kind, body)?;
        let created = self.live.is_none();
        self.live = Some(Live {
            content_type,
            kind,
            rep,
        });
        Ok((self.stamp(now, RecKind::Replace), created))
    }

    /// Appends one entry, creating the resource if it is absent or deleted.
    /// Returns the stamp, whether it created, and what was appended.
    pub fn post(
        &mut self,
        content_type: Option<Bytes>,
        entry: Bytes,
        now: Timestamp,
    ) -> Result<(Timestamp, bool, Appended), WriteError> {
        match &mut self.live {
            Some(live) => {
                if let Some(given) = &content_type {
                    let a = super::codec::media_type_essence(given);
                    let b = super::codec::media_type_essence(&live.content_type);
                    if !a.eq_ignore_ascii_case(b) {
                        return Err(WriteError::TypeMismatch {
                            given: String::from_utf8_lossy(given).into_owned(),
                            stored: String::from_utf8_lossy(&live.content_type).into_owned(),
                        });
                    }
                }
                let appended = live.rep.append(entry)?;
                let kind = RecKind::Append {
                    offset: appended.offset,
                    entry_start: appended.entry_start,
                };
                Ok((self.stamp(now, kind), false, appended))
            }
            None => {
                let content_type = content_type.unwrap_or_else(|| Bytes::from_static(OCTET_STREAM));
                let kind = CodecKind::for_media_type(&content_type);
                let (rep, appended) = Representation::from_first_entry(kind, entry)?;
                self.live = Some(Live {
                    content_type,
                    kind,
                    rep,
                });
                Ok((self.stamp(now, RecKind::Replace), true, appended))
            }
        }
    }

    /// Deletes a live resource; `None` if it is not live.
    pub fn delete(&mut self, now: Timestamp) -> Option<Timestamp> {
        self.live.take()?;
        Some(self.stamp(now, RecKind::Delete))
    }

    /// Changes stamped after `t`, oldest first; `None` when history no longer reaches `t`.
    fn changes_after(&self, t: Timestamp) -> Option<impl Iterator<Item = &ChangeRec> + Clone> {
        if t < self.horizon {
            return None;
        }
        let first = self.history.partition_point(|c| c.ts <= t);
        Some(self.history.range(first..))
    }

    fn full(&self, live: &Live) -> Reply {
        let mut r = Reply::new(200);
        r.content_type = Some(live.content_type.clone());
        r.last_modified = Some(self.last);
        r.body = live.rep.body();
        r
    }

    fn gone(&self) -> Reply {
        Reply::text(410, "the resource was deleted").with_last_modified(self.last)
    }

    /// `206` with the entries appended after `d`, if every change after `min(t, d)` is an
    /// append, history covers it and at least one entry is newer than `d`.
    fn updated_fragment(&self, live: &Live, t: Timestamp, d: Timestamp) -> Option<Reply> {
        let all_appends = self
            .changes_after(t.min(d))?
            .all(|c| matches!(c.kind, RecKind::Append { .. }));
        if !all_appends {
            return None;
        }
        let first = self.changes_after(d)?.next()?;
        let RecKind::Append { entry_start, .. } = first.kind else {
            return None;
        };
        let mut r = Reply::new(206);
        r.content_type = Some(live.content_type.clone());
        r.last_modified = Some(self.last);
        r.content_range = Some(ContentRange::Updated {
            from: d,
            last: self.last,
        });
        r.body = live.rep.fragment(entry_start);
        Some(r)
    }

    /// `206` of bytes `n..` when every change after `t` was an append that a byte
    /// range describes, history covers `t`, `n` ≤ the length at `t` and `n` < the length.
    fn appended_bytes(&self, live: &Live, t: Timestamp, n: u64) -> Option<Reply> {
        if !live.rep.byte_ranges_describe_appends() {
            return None;
        }
        let mut after = self.changes_after(t)?;
        let first = after.clone().next()?;
        let RecKind::Append {
            offset: len_at_t, ..
        } = first.kind
        else {
            return None;
        };
        if !after.all(|c| matches!(c.kind, RecKind::Append { .. })) {
            return None;
        }
        let len = live.rep.len();
        if n > len_at_t || n >= len {
            return None;
        }
        Some(byte_range(live, self.last, n, len - 1))
    }

    /// The long poll: answer now if the resource changed after `t`, else wait.
    pub fn poll(&self, t: Timestamp, range: Option<&RangeSpec>) -> Answer {
        if self.last <= t {
            // Nothing after `t`. The client is up to date with the state stamped `last`.
            return Answer::Wait { since: self.last };
        }
        let Some(live) = &self.live else {
            return Answer::Now(self.gone());
        };
        let partial = match range {
            Some(RangeSpec::BytesFrom(n)) => self.appended_bytes(live, t, *n),
            Some(RangeSpec::Updated(d)) => self.updated_fragment(live, t, *d),
            _ => None,
        };
        Answer::Now(partial.unwrap_or_else(|| self.full(live)))
    }

    /// A plain GET/HEAD (no `When-Modified-After`).
    pub fn get(&self, range: Option<&RangeSpec>, if_modified_since: Option<Timestamp>) -> Reply {
        let Some(live) = &self.live else {
            return self.gone();
        };
        if let Some(ims) = if_modified_since {
            if self.last <= ims {
                let mut r = Reply::new(304);
                r.last_modified = Some(self.last);
                return r;
            }
        }
        let len = live.rep.len();
        let unsatisfiable = || {
            let mut r = Reply::text(416, "range not satisfiable");
            r.content_range = Some(ContentRange::Unsatisfied { complete_len: len });
            r.last_modified = Some(self.last);
            r
        };
        match range {
            None => self.full(live),
            Some(RangeSpec::BytesFrom(n)) => {
                if *n < len {
                    byte_range(live, self.last, *n, len - 1)
                } else {
                    unsatisfiable()
                }
            }
            Some(RangeSpec::BytesClosed(a, b)) => {
                if a <= b && *a < len {
                    byte_range(live, self.last, *a, (*b).min(len - 1))
                } else {
                    unsatisfiable()
                }
            }
            Some(RangeSpec::BytesSuffix(n)) => {
                if *n > 0 && len > 0 {
                    byte_range(live, self.last, len - (*n).min(len), len - 1)
                } else {
                    unsatisfiable()
                }
            }
            Some(RangeSpec::Updated(d)) => {
                if self.last <= *d {
                    let mut r = Reply::text(416, "no entries after the requested date");
                    r.last_modified = Some(self.last);
                    r
                } else {
                    self.updated_fragment(live, *d, *d)
                        .unwrap_or_else(|| self.full(live))
                }
            }
        }
    }
}

fn byte_range(live: &Live, last: Timestamp, first: u64, last_byte: u64) -> Reply {
    let len = live.rep.len();
    let mut r = Reply::new(206);
    r.content_type = Some(live.content_type.clone());
    r.last_modified = Some(last);
    r.content_range = Some(ContentRange::Bytes {
        first,
        last: last_byte,
        complete_len: len,
    });
    r.body = live.rep.body().slice(first, last_byte + 1);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(us: u64) -> Timestamp {
        Timestamp::from_micros(us)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn text() -> Option<Bytes> {
        Some(b("text/plain"))
    }

    fn now_reply(a: Answer) -> Reply {
        match a {
            Answer::Now(r) => r,
            Answer::Wait { since } => panic!("expected an answer, got Wait since {since:?}"),
        }
    }

    fn body(r: &Reply) -> String {
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    #[test]
    fn stamps_strictly_increase_even_when_the_clock_stands_still_or_steps_back() {
        let mut r = Resource::new(8);
        let (t1, created) = r.put(text(), b("a"), ts(1000)).unwrap();
        assert!(created);
        let (t2, created) = r.put(text(), b("b"), ts(1000)).unwrap();
        assert!(!created);
        let (t3, _, _) = r.post(text(), b("c"), ts(500)).unwrap();
        let t4 = r.delete(ts(10)).unwrap();
        let (t5, created) = r.put(text(), b("d"), ts(1003)).unwrap();
        assert!(created, "re-creation after delete");
        assert_eq!(
            [t1, t2, t3, t4, t5],
            [ts(1000), ts(1001), ts(1002), ts(1003), ts(1004)]
        );
    }

    #[test]
    fn poll_waits_then_answers() {
        let mut r = Resource::new(8);
        assert!(matches!(r.poll(ts(5), None), Answer::Wait { since } if since == Timestamp::ZERO));
        let (t1, _) = r.put(text(), b("Hello World!"), ts(100)).unwrap();
        let reply = now_reply(r.poll(ts(5), None));
        assert_eq!((reply.status, body(&reply)), (200, "Hello World!".into()));
        assert_eq!(reply.last_modified, Some(t1));
        assert!(matches!(r.poll(t1, None), Answer::Wait { since } if since == t1));
        // A stamp in the future: nothing after it, the client is up to date with t1.
        assert!(matches!(r.poll(ts(10_000), None), Answer::Wait { since } if since == t1));
    }

    #[test]
    fn appends_give_206_with_a_byte_range() {
        let mut r = Resource::new(8);
        let (t1, _) = r.put(text(), b("Hello World!"), ts(100)).unwrap();
        r.post(text(), b("How are you?"), ts(200)).unwrap();
        let reply = now_reply(r.poll(t1, Some(&RangeSpec::BytesFrom(12))));
        assert_eq!(reply.status, 206);
        assert_eq!(body(&reply), "How are you?");
        assert_eq!(
            reply.content_range,
            Some(ContentRange::Bytes {
                first: 12,
                last: 23,
                complete_len: 24
            })
        );
        // Resume from an earlier offset within the window still works.
        let reply = now_reply(r.poll(t1, Some(&RangeSpec::BytesFrom(6))));
        assert_eq!(
            (reply.status, body(&reply).as_str()),
            (206, "World!How are you?")
        );
        // N beyond the length at T: can't be described → full body.
        assert_eq!(
            now_reply(r.poll(t1, Some(&RangeSpec::BytesFrom(13)))).status,
            200
        );
    }

    #[test]
    fn resume_collects_every_append_since_t() {
        let mut r = Resource::new(100);
        let (t1, _) = r.put(text(), b("0"), ts(1)).unwrap();
        for i in 1..=20 {
            r.post(text(), b(&i.to_string()), ts(1 + i)).unwrap();
        }
        let reply = now_reply(r.poll(t1, Some(&RangeSpec::BytesFrom(1))));
        assert_eq!(reply.status, 206);
        assert_eq!(
            body(&reply),
            (1..=20).map(|i| i.to_string()).collect::<String>()
        );
    }

    #[test]
    fn a_replace_since_t_gives_200() {
        let mut r = Resource::new(8);
        let (t1, _) = r.put(text(), b("abc"), ts(1)).unwrap();
        r.post(text(), b("d"), ts(2)).unwrap();
        r.put(text(), b("xyz"), ts(3)).unwrap();
        let reply = now_reply(r.poll(t1, Some(&RangeSpec::BytesFrom(3))));
        assert_eq!((reply.status, body(&reply).as_str()), (200, "xyz"));
    }

    #[test]
    fn history_horizon_gives_full_state_never_a_gap() {
        let mut r = Resource::new(3);
        let (t1, _) = r.put(text(), b("a"), ts(1)).unwrap();
        for i in 0..5 {
            r.post(text(), b("b"), ts(10 + i)).unwrap();
        }
        assert!(r.horizon() > t1);
        let reply = now_reply(r.poll(t1, Some(&RangeSpec::BytesFrom(1))));
        assert_eq!((reply.status, body(&reply).as_str()), (200, "abbbbb"));
        // Within the horizon it is still a 206.
        let recent = r.history().next().unwrap().ts;
        let reply = now_reply(r.poll(recent, Some(&RangeSpec::BytesFrom(4))));
        assert_eq!((reply.status, body(&reply).as_str()), (206, "bb"));
    }

    #[test]
    fn delete_gives_410_and_absent_waits() {
        let mut r = Resource::new(8);
        let (t1, _) = r.put(text(), b("a"), ts(1)).unwrap();
        let td = r.delete(ts(2)).unwrap();
        let reply = now_reply(r.poll(t1, None));
        assert_eq!((reply.status, reply.last_modified), (410, Some(td)));
        assert!(matches!(r.poll(td, None), Answer::Wait { since } if since == td));
        assert_eq!(r.get(None, None).status, 410);
        assert!(
            r.delete(ts(3)).is_none(),
            "deleting a tombstone changes nothing"
        );
        // Re-created after T: the full new state.
        r.post(text(), b("new"), ts(4)).unwrap();
        let reply = now_reply(r.poll(t1, Some(&RangeSpec::BytesFrom(1))));
        assert_eq!((reply.status, body(&reply).as_str()), (200, "new"));
    }

    #[test]
    fn json_updated_ranges() {
        let json = Some(b("application/json"));
        let mut r = Resource::new(8);
        let (t1, _) = r.put(json.clone(), b("[1,2]"), ts(1)).unwrap();
        let (t2, _, _) = r.post(json.clone(), b("3"), ts(2)).unwrap();
        let (t3, _, _) = r.post(json.clone(), b("{\"x\":4}"), ts(3)).unwrap();
        let reply = now_reply(r.poll(t1, Some(&RangeSpec::Updated(t1))));
        assert_eq!(
            (reply.status, body(&reply).as_str()),
            (206, "[3,{\"x\":4}]")
        );
        assert_eq!(
            reply.content_range,
            Some(ContentRange::Updated { from: t1, last: t3 })
        );
        let reply = now_reply(r.poll(t2, Some(&RangeSpec::Updated(t2))));
        assert_eq!(body(&reply), "[{\"x\":4}]");
        // A byte range cannot describe a JSON element append.
        assert_eq!(
            now_reply(r.poll(t2, Some(&RangeSpec::BytesFrom(5)))).status,
            200
        );
        // Updated range on a plain GET.
        assert_eq!(
            body(&r.get(Some(&RangeSpec::Updated(t2)), None)),
            "[{\"x\":4}]"
        );
        assert_eq!(r.get(Some(&RangeSpec::Updated(t3)), None).status, 416);
        // The PUT is after D: can't be described as entries → full.
        assert_eq!(r.get(Some(&RangeSpec::Updated(ts(0))), None).status, 200);
    }

    #[test]
    fn ordinary_ranges_and_conditionals() {
        let mut r = Resource::new(8);
        let (t1, _) = r.put(text(), b("0123456789"), ts(1)).unwrap();
        let g = |range| r.get(Some(&range), None);
        assert_eq!(body(&g(RangeSpec::BytesClosed(2, 4))), "234");
        assert_eq!(body(&g(RangeSpec::BytesClosed(8, 100))), "89");
        assert_eq!(body(&g(RangeSpec::BytesSuffix(3))), "789");
        assert_eq!(body(&g(RangeSpec::BytesSuffix(30))), "0123456789");
        assert_eq!(g(RangeSpec::BytesFrom(10)).status, 416);
        assert_eq!(g(RangeSpec::BytesClosed(5, 4)).status, 416);
        assert_eq!(g(RangeSpec::BytesSuffix(0)).status, 416);
        assert_eq!(r.get(None, Some(t1)).status, 304);
        assert_eq!(r.get(None, Some(ts(0))).status, 200);
    }

    #[test]
    fn post_type_rules() {
        let mut r = Resource::new(8);
        r.put(Some(b("application/json")), b("[]"), ts(1)).unwrap();
        let e = r.post(Some(b("text/plain")), b("x"), ts(2)).unwrap_err();
        assert_eq!(e.status(), 415);
        let e = r
            .post(Some(b("application/json")), b("{"), ts(2))
            .unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(r.last(), ts(1), "refused writes change nothing");
        r.post(Some(b("Application/JSON; charset=utf-8")), b("1"), ts(3))
            .unwrap();
        r.post(None, b("2"), ts(4)).unwrap();
        assert_eq!(body(&r.get(None, None)), "[1,2]");
    }
}
