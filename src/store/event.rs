//! A change as it travels to watchers. The owner builds one [`ChangeEvent`] per change;
//! every worker with watchers gets the same `Arc`. Response heads for the common
//! shapes are encoded lazily, once, by whichever worker needs them first, and then
//! shared with every other watcher of every worker (the body segments always are).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::body::Body;
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
}

impl Shaped {
    pub fn from_reply(reply: Reply) -> Shaped {
        Shaped {
            status: reply.status,
            head: reply.encode_head(),
            body: reply.body,
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
    heads: Heads,
}

#[derive(Debug, Default)]
struct Heads {
    full: OnceLock<Bytes>,
    gone: OnceLock<Bytes>,
    appended: OnceLock<Bytes>,
    fragment: OnceLock<Bytes>,
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

    fn full(&self) -> Shaped {
        let head = self
            .heads
            .full
            .get_or_init(|| self.reply(200, self.body.clone()).encode_head());
        Shaped {
            status: 200,
            head: head.clone(),
            body: self.body.clone(),
        }
    }

    fn gone(&self) -> Shaped {
        let reply = Reply::text(410, GONE_TEXT).with_last_modified(self.ts);
        let head = self.heads.gone.get_or_init(|| reply.encode_head());
        Shaped {
            status: 410,
            head: head.clone(),
            body: reply.body,
        }
    }

    fn byte_range(&self, from: u64, shared: bool) -> Shaped {
        let len = self.body.len();
        let body = if shared {
            self.appended.clone()
        } else {
            self.body.slice(from, len)
        };
        let encode = || {
            let mut r = self.reply(206, body.clone());
            r.content_range = Some(ContentRange::Bytes {
                first: from,
                last: len - 1,
                complete_len: len,
            });
            r.encode_head()
        };
        let head = if shared {
            self.heads.appended.get_or_init(encode).clone()
        } else {
            encode()
        };
        Shaped {
            status: 206,
            head,
            body,
        }
    }

    fn fragment(&self, from: Timestamp) -> Shaped {
        let encode = || {
            let mut r = self.reply(206, self.fragment.clone());
            r.content_range = Some(ContentRange::Updated {
                from,
                last: self.ts,
            });
            r.encode_head()
        };
        let head = if from == self.prev {
            self.heads.fragment.get_or_init(encode).clone()
        } else {
            encode()
        };
        Shaped {
            status: 206,
            head,
            body: self.fragment.clone(),
        }
    }

    /// The answer for a long poll that was up to date with `since` and asked for `range`,
    /// computed from this change alone. `None` when this change does not suffice (the
    /// watcher is behind, or its `updated` date reaches before this change): ask the owner.
    ///
    /// This must agree with [`super::resource::Resource::poll`]; a test checks it does.
    pub fn answer_for(&self, since: Timestamp, range: Option<&RangeSpec>) -> Option<Shaped> {
        if since != self.prev {
            return None;
        }
        match self.kind {
            EventKind::Delete => Some(self.gone()),
            EventKind::Replace => Some(self.full()),
            EventKind::Append { offset } => match range {
                Some(RangeSpec::BytesFrom(n)) => {
                    let len = self.body.len();
                    if self.byte_ranges && *n <= offset && *n < len {
                        Some(self.byte_range(*n, *n == offset))
                    } else {
                        Some(self.full())
                    }
                }
                Some(RangeSpec::Updated(d)) => {
                    if *d < self.prev {
                        None
                    } else if *d < self.ts {
                        Some(self.fragment(*d))
                    } else {
                        Some(self.full())
                    }
                }
                _ => Some(self.full()),
            },
        }
    }
}
