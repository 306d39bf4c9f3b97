//! A change as it travels to watchers. The owner builds one [`ChangeEvent`] per change;
//! every worker with watchers gets the same `Arc`. Response heads for the common
//! shapes are encoded lazily, once, by whichever worker needs them first, and then
//! shared with every other watcher of every worker (the body segments always are).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::body::Body;
use crate::http::frame::{Boundary, Frame};
use crate::http::range::{ContentRange, RangeSpec};
use crate::http::response::Reply;
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// PUT, or a creation (by PUT or POST).
    Replace,
    /// POST to a live resource; `offset` is the representation length before it.
    Append {
        offset: u64,
    },
    Delete,
}

/// A response ready to be written: a shareable head (no connection tail) and the body.
#[derive(Clone, Debug)]
pub struct Shaped {
    pub status: u16,
    pub head: Bytes,
    pub body: Body,
    /// When the change it carries was stamped (for the publish-to-write latency metric).
    pub born: Option<Instant>,
}

impl Shaped {
    pub fn from_reply(reply: Reply) -> Shaped {
        Shaped {
            status: reply.status,
            head: reply.encode_head(),
            body: reply.body,
            born: None,
        }
    }
}

/// One change of one resource.
#[derive(Debug)]
pub struct ChangeEvent {
    pub path: Arc<str>,
    /// The change's stamp.
    pub ts: Timestamp,
    /// The stamp of the change before it (`ZERO` if the resource never existed): a
    /// watcher that was up to date with `prev` needs exactly this change.
    pub prev: Timestamp,
    pub kind: EventKind,
    pub content_type: Bytes,
    /// The full representation after the change (empty after a delete).
    pub body: Body,
    /// The bytes an append added to the end of the representation (raw codec).
    pub appended: Body,
    /// The `updated`-range body holding just this entry.
    pub fragment: Body,
    /// Whether a `bytes` range describes this append.
    pub byte_ranges: bool,
    /// When the change was stamped. The only clock the store reads, and only for the
    /// publish-to-write latency metric.
    pub born: Instant,
    heads: Heads,
}

#[derive(Debug, Default)]
struct Heads {
    full: OnceLock<Bytes>,
    gone: OnceLock<Bytes>,
    appended: OnceLock<Bytes>,
    fragment: OnceLock<Bytes>,
    digest_full: OnceLock<Frame>,
    digest_gone: OnceLock<Frame>,
    digest_appended: OnceLock<Frame>,
    digest_fragment: OnceLock<Frame>,
    replacement: OnceLock<Frame>,
}

/// Which answer a watcher up to date with the previous change gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pick {
    Full,
    Gone,
    /// `206` of bytes `from..`; shared when `from` is where the append started.
    Bytes {
        from: u64,
        shared: bool,
    },
    /// `206` of this entry as an `updated` fragment from date `from`.
    Fragment {
        from: Timestamp,
        shared: bool,
    },
}

/// What a `multipart/x-mixed-replace` stream does with a change.
#[derive(Debug)]
pub enum Replacement<'a> {
    Part(&'a Frame),
    /// The resource was deleted: the stream ends.
    End,
}

/// Shared encodings built so far (process-wide): each is built once per change and
/// shape, however many watchers receive it. Exposed as a metric so tests can prove it.
pub static SHARED_ENCODINGS: AtomicU64 = AtomicU64::new(0);

fn counted<T>(f: impl FnOnce() -> T) -> impl FnOnce() -> T {
    move || {
        SHARED_ENCODINGS.fetch_add(1, Relaxed);
        f()
    }
}

/// The body of a `410` (shared by the slow and the fast path so both encode alike).
pub const GONE_TEXT: &str = "the resource was deleted";

impl ChangeEvent {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: Arc<str>,
        ts: Timestamp,
        prev: Timestamp,
        kind: EventKind,
        content_type: Bytes,
        body: Body,
        appended: Body,
        fragment: Body,
        byte_ranges: bool,
    ) -> ChangeEvent {
        ChangeEvent {
            path,
            ts,
            prev,
            kind,
            content_type,
            body,
            appended,
            fragment,
            byte_ranges,
            born: Instant::now(),
            heads: Heads::default(),
        }
    }

    fn reply(&self, status: u16, body: Body) -> Reply {
        let mut r = Reply::new(status);
        r.content_type = Some(self.content_type.clone());
        r.last_modified = Some(self.ts);
        r.body = body;
        r
    }

    /// The reply for a pick, whole (not shared).
    fn reply_for(&self, pick: Pick) -> Reply {
        match pick {
            Pick::Full => self.reply(200, self.body.clone()),
            Pick::Gone => Reply::text(410, GONE_TEXT).with_last_modified(self.ts),
            Pick::Bytes { from, shared } => {
                let len = self.body.len();
                let body = if shared {
                    self.appended.clone()
                } else {
                    self.body.slice(from, len)
                };
                let mut r = self.reply(206, body);
                r.content_range = Some(ContentRange::Bytes {
                    first: from,
                    last: len - 1,
                    complete_len: len,
                });
                r
            }
            Pick::Fragment { from, .. } => {
                let mut r = self.reply(206, self.fragment.clone());
                r.content_range = Some(ContentRange::Updated {
                    from,
                    last: self.ts,
                });
                r
            }
        }
    }

    /// The cache slot of a shape every up-to-date watcher shares, if it is one.
    fn shared_slot<'a, T>(
        &self,
        pick: Pick,
        slots: [&'a OnceLock<T>; 4],
    ) -> Option<&'a OnceLock<T>> {
        let [full, gone, appended, fragment] = slots;
        match pick {
            Pick::Full => Some(full),
            Pick::Gone => Some(gone),
            Pick::Bytes { shared: true, .. } => Some(appended),
            Pick::Fragment { shared: true, .. } => Some(fragment),
            _ => None,
        }
    }

    /// Chooses the answer for a watcher up to date with `since` that asked for `range`.
    /// `None` when this change alone cannot answer it (the watcher is behind, or its
    /// `updated` date reaches before this change): ask the owner.
    ///
    /// This must agree with [`super::resource::Resource::poll`]; a test checks it does.
    fn pick(&self, since: Timestamp, range: Option<&RangeSpec>) -> Option<Pick> {
        if since != self.prev {
            return None;
        }
        Some(match self.kind {
            EventKind::Delete => Pick::Gone,
            EventKind::Replace => Pick::Full,
            EventKind::Append { offset } => match range {
                Some(RangeSpec::BytesFrom(n)) => {
                    if self.byte_ranges && *n <= offset && *n < self.body.len() {
                        Pick::Bytes {
                            from: *n,
                            shared: *n == offset,
                        }
                    } else {
                        Pick::Full
                    }
                }
                Some(RangeSpec::Updated(d)) => {
                    if *d < self.prev {
                        return None;
                    } else if *d < self.ts {
                        Pick::Fragment {
                            from: *d,
                            shared: *d == self.prev,
                        }
                    } else {
                        Pick::Full
                    }
                }
                _ => Pick::Full,
            },
        })
    }

    /// The whole reply for a watcher up to date with `since` (not shared: one-shot groups).
    pub fn reply_for_watcher(&self, since: Timestamp, range: Option<&RangeSpec>) -> Option<Reply> {
        self.pick(since, range).map(|p| self.reply_for(p))
    }

    /// The long-poll answer (head without the connection tail, and body) for a watcher
    /// up to date with `since`; `None` means "ask the owner".
    pub fn answer_for(&self, since: Timestamp, range: Option<&RangeSpec>) -> Option<Shaped> {
        let pick = self.pick(since, range)?;
        let reply = self.reply_for(pick);
        let h = &self.heads;
        let head = match self.shared_slot(pick, [&h.full, &h.gone, &h.appended, &h.fragment]) {
            Some(slot) => slot.get_or_init(counted(|| reply.encode_head())).clone(),
            None => reply.encode_head(),
        };
        Some(Shaped {
            status: reply.status,
            head,
            body: reply.body,
            born: Some(self.born),
        })
    }

    /// The `multipart/digest` part for a stream watcher up to date with `since`;
    /// `None` means "ask the owner".
    pub fn digest_frame(
        &self,
        since: Timestamp,
        range: Option<&RangeSpec>,
        boundary: &Boundary,
    ) -> Option<Cow<'_, Frame>> {
        let pick = self.pick(since, range)?;
        let encode = || {
            let mut reply = self.reply_for(pick);
            reply.content_location = Some(Bytes::copy_from_slice(self.path.as_bytes()));
            Frame::digest(&reply.encode_head(), &reply.body, boundary)
        };
        let h = &self.heads;
        Some(
            match self.shared_slot(
                pick,
                [
                    &h.digest_full,
                    &h.digest_gone,
                    &h.digest_appended,
                    &h.digest_fragment,
                ],
            ) {
                // Lent, not cloned: a subscriber copies the pieces it queues.
                Some(slot) => Cow::Borrowed(slot.get_or_init(counted(encode))),
                None => Cow::Owned(encode()),
            },
        )
    }

    /// The `multipart/x-mixed-replace` step for this change: the new full state, or the end.
    pub fn replacement(&self, boundary: &Boundary) -> Replacement<'_> {
        match self.kind {
            EventKind::Delete => Replacement::End,
            _ => Replacement::Part(self.heads.replacement.get_or_init(counted(|| {
                Frame::replacement(&self.content_type, self.ts, &self.body, boundary)
            }))),
        }
    }

    /// How many shared encodings this event holds (each built once, whatever the
    /// number of watchers).
    pub fn encodings(&self) -> usize {
        let h = &self.heads;
        [
            h.full.get().is_some(),
            h.gone.get().is_some(),
            h.appended.get().is_some(),
            h.fragment.get().is_some(),
        ]
        .into_iter()
        .chain([
            h.digest_full.get().is_some(),
            h.digest_gone.get().is_some(),
            h.digest_appended.get().is_some(),
            h.digest_fragment.get().is_some(),
            h.replacement.get().is_some(),
        ])
        .filter(|&b| b)
        .count()
    }
}
