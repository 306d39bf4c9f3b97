//! Slab-indexed wait lists: the parked long polls of one worker.
//!
//! A parked request is one [`Waiter`] in a slab, listed in the array of waiter ids of
//! the resource it waits on; the waiter knows its position there, so removal is O(1)
//! (swap with the last). A change walks the array, not the waiters: the ids are
//! contiguous, and the waiters they name are independent loads the CPU can overlap
//! (a linked list would make every cold waiter wait for the previous one's miss).
//! A waiter owns its connection while parked:
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

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use super::conn::Connection;
use super::group::GroupId;
use crate::http::range::RangeSpec;
use crate::http::response::Persistence;
use crate::time::Timestamp;

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

/// `repr(C)`, in this order: answering a change reads the fields at the front (the
/// generation, the state, the query, the holder), so a delivery touches as few of a
/// cold waiter's cache lines as it can.
#[repr(C)]
pub struct Waiter {
    gen: u32,
    /// Index of this waiter's id in its path's list.
    pos: u32,
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

/// Every waiter of one worker, grouped by resource.
#[derive(Default)]
pub struct WatchTable {
    waiters: Slab<Waiter>,
    lists: HashMap<Arc<str>, Vec<WaiterId>>,
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
        let entry = self.waiters.vacant_entry();
        let id = WaiterId {
            key: entry.key() as u32,
            gen,
        };
        // One shared key per path: every waiter of it holds the same `Arc`.
        let (path, list) = match self.lists.entry(path) {
            Entry::Occupied(o) => (o.key().clone(), o.into_mut()),
            Entry::Vacant(v) => (v.key().clone(), v.insert(Vec::new())),
        };
        let pos = list.len() as u32;
        list.push(id);
        entry.insert(Waiter {
            gen,
            pos,
            state,
            query,
            holder,
            path,
        });
        id
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
        if let Some(list) = self.lists.get_mut(&w.path) {
            let pos = w.pos as usize;
            if list.get(pos) == Some(&id) {
                list.swap_remove(pos);
                if let Some(moved) = list.get(pos) {
                    if let Some(m) = self.waiters.get_mut(moved.key as usize) {
                        m.pos = pos as u32;
                    }
                }
            }
            if list.is_empty() {
                self.lists.remove(&w.path);
            } else if list.capacity() > 64 && list.len() < list.capacity() / 4 {
                list.shrink_to(list.len() * 2);
            }
        }
        Some(w)
    }

    /// The waiters of `path`, in no particular order (`None` when nobody here watches
    /// it).
    pub fn ids_for(&self, path: &str) -> Option<Vec<WaiterId>> {
        self.lists.get(path).cloned()
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

    fn add(t: &mut WatchTable, path: &str, k: u32) -> WaiterId {
        t.insert(
            Arc::from(path),
            WaitState::Pending,
            WaitQuery {
                t: Timestamp::ZERO,
                range: None,
            },
            Holder::Group(GroupId::detached(k)),
        )
    }

    fn sorted(mut v: Vec<WaiterId>) -> Vec<(u32, u32)> {
        v.sort_by_key(|id| (id.key, id.gen));
        v.into_iter().map(|id| (id.key, id.gen)).collect()
    }

    /// Removing waiters in any order (first, middle, last of a list) keeps every list
    /// exactly the set of its remaining waiters, and a list goes when it empties.
    #[test]
    fn wait_lists_follow_inserts_and_removals() {
        let mut t = WatchTable::default();
        let a: Vec<WaiterId> = (0..6).map(|k| add(&mut t, "/a", k)).collect();
        let b: Vec<WaiterId> = (0..3).map(|k| add(&mut t, "/b", k)).collect();
        // Every waiter of a path shares one key.
        let key = t.get(a[0]).map(|w| w.path().clone());
        assert!(key.is_some_and(|k| Arc::ptr_eq(&k, t.get(a[5]).unwrap().path())));
        let mut left_a = a.clone();
        for victim in [a[2], a[0], a[5], a[3]] {
            assert!(t.remove(victim).is_some());
            assert!(t.remove(victim).is_none(), "removed twice");
            left_a.retain(|id| *id != victim);
            assert_eq!(
                sorted(t.ids_for("/a").unwrap_or_default()),
                sorted(left_a.clone())
            );
        }
        assert_eq!(
            sorted(t.ids_for("/b").unwrap_or_default()),
            sorted(b.clone())
        );
        // A new waiter reusing a freed slot joins the right list; stale ids miss.
        let c = add(&mut t, "/a", 9);
        assert!(t.get(a[2]).is_none());
        left_a.push(c);
        assert_eq!(
            sorted(t.ids_for("/a").unwrap_or_default()),
            sorted(left_a.clone())
        );
        for id in left_a {
            t.remove(id);
        }
        assert!(!t.watches("/a"));
        assert!(t.ids_for("/a").is_none());
        assert!(t.watches("/b"));
    }
}
