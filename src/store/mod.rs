//! Resource storage behind a narrow interface.
//!
//! A worker owns one shard of the resource space and talks to it only through
//! [`Store`]: apply a write (stamping it and producing the [`ChangeEvent`] watchers
//! get), answer a plain read, answer a long-poll query. Who watches what, where the
//! connections are and how changes travel between workers is not the store's business.
//! [`MemStore`] keeps everything in memory; a durable store (a log beside it) or a
//! cluster store (Redis holding the one ordered history) implements the same trait.

pub mod codec;
pub mod event;
pub mod quota;
pub mod resource;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

pub use event::{ChangeEvent, EventKind, Shaped};
pub use resource::{Answer, Resource};

use crate::body::Body;
use crate::http::range::RangeSpec;
use crate::http::response::Reply;
use crate::time::Timestamp;

/// A change a client asked for.
#[derive(Clone, Debug)]
pub enum WriteOp {
    Put {
        content_type: Option<Bytes>,
        body: Bytes,
    },
    Post {
        content_type: Option<Bytes>,
        body: Bytes,
    },
    Delete,
}

/// The outcome of a write: the reply for the writer and, if something changed, the event.
#[derive(Debug)]
pub struct Applied {
    pub reply: Reply,
    pub event: Option<Arc<ChangeEvent>>,
}

/// One shard's resources.
pub trait Store {
    /// Applies a write, stamping it with a time strictly after the resource's last change.
    fn write(&mut self, path: &str, op: WriteOp, now: Timestamp) -> Applied;
    /// A plain GET/HEAD.
    fn get(
        &self,
        path: &str,
        range: Option<&RangeSpec>,
        if_modified_since: Option<Timestamp>,
    ) -> Reply;
    /// A long poll: an answer now, or the stamp to wait from.
    fn poll(&self, path: &str, t: Timestamp, range: Option<&RangeSpec>) -> Answer;
}

/// Resources in memory, with `history` changes remembered per resource.
pub struct MemStore {
    resources: HashMap<Arc<str>, Slot>,
    history: usize,
    /// A byte string no representation may contain: the server's multipart boundary.
    forbidden: Option<Bytes>,
    /// Storage limits shared with the other shards.
    quota: Arc<quota::Quota>,
}

struct Slot {
    path: Arc<str>,
    res: Resource,
}

impl MemStore {
    pub fn new(history: usize) -> MemStore {
        MemStore {
            resources: HashMap::new(),
            history: history.max(1),
            forbidden: None,
            quota: Arc::new(quota::Quota::default()),
        }
    }

    /// Counts (and limits) stored resources and bytes in `quota`, shared by every shard.
    pub fn with_quota(mut self, quota: Arc<quota::Quota>) -> MemStore {
        self.quota = quota;
        self
    }

    /// Live length and liveness of a resource.
    fn footprint(&self, path: &str) -> (u64, bool) {
        match self.resources.get(path).and_then(|slot| slot.res.live()) {
            Some(live) => (live.rep.len(), true),
            None => (0, false),
        }
    }

    /// A store that refuses any write whose representation would contain `forbidden`
    /// (the multipart boundary), so no stored payload can ever forge a stream part.
    pub fn with_forbidden(history: usize, forbidden: Bytes) -> MemStore {
        MemStore {
            forbidden: Some(forbidden).filter(|f| !f.is_empty()),
            ..MemStore::new(history)
        }
    }

    /// Whether writing `data` (appended after `tail`) would put the forbidden string
    /// into a representation, inside `data` or across the seam with what precedes it.
    fn would_forge(&self, tail: &[u8], data: &[u8]) -> bool {
        let Some(f) = &self.forbidden else {
            return false;
        };
        if memchr::memmem::find(data, f).is_some() {
            return true;
        }
        let mut seam = tail.to_vec();
        seam.extend_from_slice(&data[..data.len().min(f.len() - 1)]);
        memchr::memmem::find(&seam, f).is_some()
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

fn write_reply(status: u16, ts: Timestamp, path: &str) -> Reply {
    let mut r = Reply::new(status).with_last_modified(ts);
    if status == 201 {
        r.location = Some(Bytes::copy_from_slice(path.as_bytes()));
    }
    r
}

impl Store for MemStore {
    fn write(&mut self, path: &str, op: WriteOp, now: Timestamp) -> Applied {
        if let Some(refusal) = self.forge_check(path, &op) {
            return refusal;
        }
        // Reserve what the write may add; settle to what it did.
        let (old_len, was_live) = self.footprint(path);
        let (bytes, creates) = match &op {
            WriteOp::Put { body, .. } => ((body.len() as u64).saturating_sub(old_len), !was_live),
            // Codecs add at most a separator and, on creation, a small wrapper.
            WriteOp::Post { body, .. } => (body.len() as u64 + 128, !was_live),
            WriteOp::Delete => (0, false),
        };
        let reservation = match self.quota.reserve(bytes, creates) {
            Ok(r) => r,
            Err(e) => {
                return Applied {
                    reply: Reply::text(507, e),
                    event: None,
                }
            }
        };
        let applied = self.apply(path, op, now);
        let (new_len, is_live) = self.footprint(path);
        self.quota.settle(
            reservation,
            new_len as i64 - old_len as i64,
            i64::from(is_live) - i64::from(was_live),
        );
        applied
    }

    fn get(
        &self,
        path: &str,
        range: Option<&RangeSpec>,
        if_modified_since: Option<Timestamp>,
    ) -> Reply {
        match self.resources.get(path) {
            Some(slot) => slot.res.get(range, if_modified_since),
            None => Reply::text(404, "no such resource"),
        }
    }

    fn poll(&self, path: &str, t: Timestamp, range: Option<&RangeSpec>) -> Answer {
        match self.resources.get(path) {
            Some(slot) => slot.res.poll(t, range),
            // Never existed: wait for its creation.
            None => Answer::Wait {
                since: Timestamp::ZERO,
            },
        }
    }
}

impl MemStore {
    /// The refusal of a write whose representation would contain the boundary.
    fn forge_check(&self, path: &str, op: &WriteOp) -> Option<Applied> {
        if let Some(f) = &self.forbidden {
            let (tail, data): (Vec<u8>, &[u8]) = match op {
                WriteOp::Put { body, .. } => (Vec::new(), body),
                WriteOp::Post { body, .. } => {
                    let tail = self
                        .resources
                        .get(path)
                        .and_then(|slot| slot.res.live())
                        .map(|live| live.rep.rope_tail(f.len() - 1))
                        .unwrap_or_default();
                    (tail, body)
                }
                WriteOp::Delete => (Vec::new(), &[][..]),
            };
            if self.would_forge(&tail, data) {
                return Some(Applied {
                    reply: Reply::text(
                        400,
                        "the payload contains this server's multipart boundary, which would forge stream parts; it was not stored",
                    ),
                    event: None,
                });
            }
        }
        None
    }

    /// Applies a write to its resource (the checks are done).
    fn apply(&mut self, path: &str, op: WriteOp, now: Timestamp) -> Applied {
        let existed = self.resources.contains_key(path);
        let history = self.history;
        let key: Arc<str> = Arc::from(path);
        let slot = self.resources.entry(key).or_insert_with_key(|k| Slot {
            path: k.clone(),
            res: Resource::new(history),
        });
        let (key, res) = (slot.path.clone(), &mut slot.res);
        let prev = res.last();
        let outcome = match op {
            WriteOp::Put { content_type, body } => res
                .put(content_type, body, now)
                .map(|(ts, created)| (ts, created, EventKind::Replace, Body::new())),
            WriteOp::Post { content_type, body } => {
                res.post(content_type, body, now)
                    .map(|(ts, created, appended)| {
                        let kind = if created {
                            EventKind::Replace
                        } else {
                            EventKind::Append {
                                offset: appended.offset,
                            }
                        };
                        (ts, created, kind, Body::from(appended.pushed))
                    })
            }
            WriteOp::Delete => match res.delete(now) {
                Some(ts) => Ok((ts, false, EventKind::Delete, Body::new())),
                None => {
                    let reply = if res.last() == Timestamp::ZERO {
                        Reply::text(404, "no such resource")
                    } else {
                        Reply::text(410, event::GONE_TEXT).with_last_modified(res.last())
                    };
                    if !existed {
                        self.resources.remove(path);
                    }
                    return Applied { reply, event: None };
                }
            },
        };
        match outcome {
            Err(e) => {
                let reply = Reply::text(e.status(), &e);
                if !existed {
                    self.resources.remove(path);
                }
                Applied { reply, event: None }
            }
            Ok((ts, created, kind, appended)) => {
                let status = if created { 201 } else { 204 };
                let reply = write_reply(status, ts, path);
                let event = match res.live() {
                    Some(live) => {
                        let fragment = match res.history().last().map(|c| c.kind) {
                            Some(resource::RecKind::Append { entry_start, .. }) => {
                                live.rep.fragment(entry_start)
                            }
                            _ => Body::new(),
                        };
                        ChangeEvent::new(
                            key,
                            ts,
                            prev,
                            kind,
                            live.content_type.clone(),
                            live.rep.body(),
                            appended,
                            fragment,
                            live.rep.byte_ranges_describe_appends(),
                        )
                    }
                    None => ChangeEvent::new(
                        key,
                        ts,
                        prev,
                        kind,
                        Bytes::new(),
                        Body::new(),
                        Body::new(),
                        Body::new(),
                        false,
                    ),
                };
                Applied {
                    reply,
                    event: Some(Arc::new(event)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
