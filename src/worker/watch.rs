//! Slab-indexed wait lists: the parked long polls of one worker.
//!
//! A parked request is one [`Waiter`] in a slab, linked into the doubly linked list of
//! the resource it waits on (links are slab keys, so unlinking is O(1) and a resource
//! with waiters costs one small list head). A waiter owns its connection while parked:
//! no task, no timer, no read buffer; the connection's task ended when it parked and a
//! new one is spawned when the waiter is answered.
//!
//! A waiter is held either by a single long poll ([`Holder::Poll`], which owns its
//! connection) or by a group ([`Holder::Group`]: a stream or a `/subscribe`, which owns
//! the connection and has one waiter per resource it watches).
//!
//! A waiter is `Pending` while the owning worker of its resource has not yet said
//! whether to answer now or to wait (`Refreshing` when it asked again after an
//! answer); it is `Parked` once it waits for a change after `since`; a stream's waiter is `Dirty` while its reader is behind and its changes are
//! being summarised into one catch-up part.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use super::conn::Connection;
use super::group::GroupId;
use crate::http::range::RangeSpec;
use crate::http::response::Persistence;
use crate::time::Timestamp;

const NIL: u32 = u32::MAX;

/// A waiter's identity: slab key plus generation, so stale references (a hang-up or a
/// deadline for a waiter already answered) never touch the waiter that reused the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WaiterId {
    key: u32,
    gen: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitState {
    /// Asked the owner for its first answer, which is on the way.
    Pending,
    /// Asked the owner again (one change did not describe the answer, or a summarised
    /// stream caught up); the answer is on the way.
    Refreshing,
    /// Up to date with the state stamped `since`; answered by the next change.
    Parked { since: Timestamp },
    /// A stream's reader fell behind after `since`: changes are not queued but
    /// summarised by one catch-up part once the reader drains its queue.
    Dirty { since: Timestamp },
}

/// What the client asked: the `When-Modified-After` stamp as sent and its `Range`
/// (for a stream, the range position, moved forward with every part sent).
#[derive(Clone, Copy, Debug)]
pub struct WaitQuery {
    pub t: Timestamp,
    pub range: Option<RangeSpec>,
}

/// How to answer the connection once the waiter is released.
pub struct ParkedConn {
    pub conn: Connection,
    pub persistence: Persistence,
    pub head_only: bool,
}

/// Who a waiter answers to.
pub enum Holder {
    /// A single long poll, which owns its connection.
    Poll(ParkedConn),
    /// A stream or a `/subscribe` group.
    Group(GroupId),
}

/// `repr(C)`, in this order: walking a wait list and answering a change read the
/// fields at the front (the identity and links, the state, the query, the holder), so
/// a delivery touches as few of a cold waiter's cache lines as it can.
#[repr(C)]
pub struct Waiter {
    gen: u32,
    next: u32,
    prev: u32,
    pub state: WaitState,
    pub query: WaitQuery,
    pub holder: Holder,
    path: Arc<str>,
}

impl Waiter {
    pub fn path(&self) -> &Arc<str> {
        &self.path
    }

    pub fn into_parts(self) -> (Arc<str>, Holder) {
        (self.path, self.holder)
    }
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    len: u32,
}

/// Every waiter of one worker, grouped by resource.
#[derive(Default)]
pub struct WatchTable {
    waiters: Slab<Waiter>,
    lists: HashMap<Arc<str>, List>,
    next_gen: u32,
}

impl WatchTable {
    /// Whether any waiter watches `path`.
    pub fn watches(&self, path: &str) -> bool {
        self.lists.contains_key(path)
    }

    /// Adds a waiter for `path`. `path` should be the shared key when one exists.
    pub fn insert(
        &mut self,
        path: Arc<str>,
        state: WaitState,
        query: WaitQuery,
        holder: Holder,
    ) -> WaiterId {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let list = self.lists.get(&path).copied();
        let (path, old_head) = match list {
            Some(l) => (self.waiters[l.head as usize].path.clone(), l.head),
            None => (path, NIL),
        };
        let key = self.waiters.insert(Waiter {
            gen,
            path: path.clone(),
            prev: NIL,
            next: old_head,
            state,
            query,
            holder,
        }) as u32;
        if old_head != NIL {
            self.waiters[old_head as usize].prev = key;
        }
        let len = list.map_or(0, |l| l.len) + 1;
        self.lists.insert(path, List { head: key, len });
        WaiterId { key, gen }
    }

    pub fn get(&self, id: WaiterId) -> Option<&Waiter> {
        self.waiters
            .get(id.key as usize)
            .filter(|w| w.gen == id.gen)
    }

    pub fn get_mut(&mut self, id: WaiterId) -> Option<&mut Waiter> {
        self.waiters
            .get_mut(id.key as usize)
            .filter(|w| w.gen == id.gen)
    }

    /// Removes a waiter, unlinking it from its resource's list.
    pub fn remove(&mut self, id: WaiterId) -> Option<Waiter> {
        self.get(id)?;
        let w = self.waiters.remove(id.key as usize);
        if w.prev != NIL {
            self.waiters[w.prev as usize].next = w.next;
        }
        if w.next != NIL {
            self.waiters[w.next as usize].prev = w.prev;
        }
        if let Some(list) = self.lists.get_mut(&w.path) {
            list.len -= 1;
            if list.head == id.key {
                list.head = w.next;
            }
            if list.len == 0 {
                self.lists.remove(&w.path);
            }
        }
        Some(w)
    }

    /// The waiters of `path`, newest first (`None` when nobody here watches it).
    pub fn ids_for(&self, path: &str) -> Option<Vec<WaiterId>> {
        let list = self.lists.get(path)?;
        let mut ids = Vec::with_capacity(list.len as usize);
        let mut k = list.head;
        while k != NIL {
            let w = &self.waiters[k as usize];
            ids.push(WaiterId { key: k, gen: w.gen });
            k = w.next;
        }
        Some(ids)
    }

    /// Every waiter id (shutdown).
    pub fn all_ids(&self) -> Vec<WaiterId> {
        self.waiters
            .iter()
            .map(|(k, w)| WaiterId {
                key: k as u32,
                gen: w.gen,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-parked-poll figure in `docs/architecture.md` ("Memory of a parked long
    /// poll"): a waiter, its connection inline, stays within 152 bytes.
    #[test]
    fn a_waiter_stays_small() {
        let size = std::mem::size_of::<Waiter>();
        assert!(size <= 152, "Waiter is {size} bytes");
    }
}
