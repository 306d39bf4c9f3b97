//! A worker: one thread, one tokio-uring runtime, one `SO_REUSEPORT` listener, one shard
//! of the resource space, and the wait lists of the connections it accepted.
//!
//! Tasks on a worker (all on its one thread):
//! - the accept loop, which spawns a connection task per client ([`conn`]);
//! - the inbox loop, which handles messages from other workers ([`mailbox`]);
//! - the hang-up loop, which frees parked clients that disconnected ([`hangup`]);
//! - the deadline loop, which answers parked polls `304` at `--poll-timeout`.
//!
//! Invariants:
//! - A shard's store is only touched by its owner worker; other workers send messages.
//! - No `RefCell` borrow is held across an `.await`.
//! - Every path that takes a waiter out of the wait list also removes its hang-up poll.

pub mod conn;
pub mod group;
pub mod hangup;
pub mod limits;
pub mod mailbox;
pub mod route;
pub mod send;
pub mod watch;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Config;
use crate::http::frame::{Boundary, Frame};
use crate::http::response::{Persistence, Reply, Tails};
use crate::metrics::{Metrics, Rejection, WorkerMetrics};
use crate::store::{Answer, ChangeEvent, MemStore, Shaped, Store, WriteOp};
use crate::time::Timestamp;
use conn::Connection;
use group::{End, GroupId, Groups};
use hangup::HangupRing;
use mailbox::{Inbox, Mailbox, Msg};
use watch::{Holder, ParkedConn, WaitQuery, WaitState, WaiterId, WatchTable};

/// The most workers a server runs (the size of [`WorkerSet`]).
pub const MAX_WORKERS: usize = 256;

/// State every worker shares (read-only after start, or atomic).
pub struct Shared {
    pub config: Config,
    pub mailboxes: Vec<Mailbox>,
    pub metrics: Arc<Metrics>,
    pub max_connections: usize,
    /// The multipart boundary of every stream and multipart answer.
    pub boundary: Boundary,
    /// The per-client-IP connection cap, if any.
    pub per_ip: Option<limits::PerIp>,
    /// Per worker: signalled when its last connection closes (the end of a drain).
    pub drained: Vec<Notify>,
}

/// What a worker knows of a remotely owned resource it is registered for.
struct Known {
    /// Stamp of the newest change received (or of the state when we registered).
    last: Timestamp,
    /// That change, when we received it as an event.
    event: Option<Arc<ChangeEvent>>,
}

/// What a deadline expires.
#[derive(Clone, Copy, Debug)]
pub enum Expiry {
    Waiter(WaiterId),
    Group(GroupId),
}

/// Which shard owns `path`: a stable FNV-1a hash of the path, modulo the worker count.
pub fn shard_for(path: &str, workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % workers.max(1) as u64) as usize
}

/// A set of worker ids (the workers watching one resource).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct WorkerSet([u64; MAX_WORKERS / 64]);

impl WorkerSet {
    pub fn insert(&mut self, w: usize) {
        self.0[w / 64] |= 1 << (w % 64);
    }

    pub fn remove(&mut self, w: usize) {
        self.0[w / 64] &= !(1 << (w % 64));
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&x| x == 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &word)| {
            (0..64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| i * 64 + b)
        })
    }
}

pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    store: RefCell<Box<dyn Store>>,
    /// Owner side: for each resource of this shard, the workers that watch it.
    interest: RefCell<HashMap<Arc<str>, WorkerSet>>,
    /// Watcher side: the parked long polls and stream subscriptions of this worker's connections.
    watch: RefCell<WatchTable>,
    /// Streams and `/subscribe` groups of this worker's connections.
    groups: RefCell<Groups>,
    hangup: HangupRing,
    /// Poll deadlines in arrival order; every deadline is "park time + poll timeout",
    /// so the queue is sorted by construction and the front is the next to expire.
    deadlines: RefCell<VecDeque<(Instant, Expiry)>>,
    deadline_added: Notify,
    tails: RefCell<Tails>,
    /// Shutting down: answer everything parked, accept nothing, close when idle.
    draining: Cell<bool>,
    stop_accepting: Notify,
    /// Wakes connections idle between requests (so a drain can close them).
    wake_idle: Notify,
    /// Generation of the last accepted connection (descriptors are reused).
    conn_gen: Cell<u32>,
    /// Watcher side: remotely owned resources this worker is registered for (present
    /// from the owner's first "wait" answer or change until we send `Unwatch`).
    known: RefCell<HashMap<Arc<str>, Known>>,
    /// Stream writes waiting for or in the hands of the send driver.
    sends: RefCell<group::StreamSends>,
}

impl Worker {
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.shared.metrics.workers[self.id]
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// A waiter for the drain signal of idle connections.
    pub fn idle_wakeup(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake_idle.notified()
    }

    /// Graceful shutdown: stop accepting; answer every parked long poll `304` (with its
    /// stamp, so the client re-polls elsewhere) and every one-shot `/subscribe` `304`;
    /// end every stream with its close delimiter; close idle keep-alive connections.
    /// Connections in the middle of a request get their answer with `Connection: close`.
    fn begin_drain(self: &Rc<Self>) {
        if self.draining.replace(true) {
            return;
        }
        self.stop_accepting.notify_one();
        let waiters = self.watch.borrow().all_ids();
        for id in waiters {
            self.not_modified(id);
        }
        let groups = self.groups.borrow().ids();
        for gid in groups {
            self.drain_group(gid);
        }
        self.wake_idle.notify_waiters();
        self.hangup.flush();
    }

    /// The connection tail (`Date`, persistence, blank line) for a response sent now.
    pub fn tail(&self, p: Persistence) -> bytes::Bytes {
        let mut tails = self.tails.borrow_mut();
        tails.refresh(Timestamp::now());
        tails.get(p)
    }

    pub fn owner_of(&self, path: &str) -> usize {
        shard_for(path, self.shared.mailboxes.len())
    }

    pub(crate) fn send(&self, to: usize, msg: Msg) {
        self.metrics().messages_sent.fetch_add(1, Relaxed);
        self.shared.mailboxes[to].send(msg);
    }

    // ---- owner side -------------------------------------------------------------

    /// Applies a write to this worker's shard, publishes the change, returns the reply.
    pub fn apply_write(self: &Rc<Self>, path: &str, op: WriteOp) -> Reply {
        let (reply, event) = self.store_write(path, op);
        if let Some(event) = event {
            self.publish(event);
        }
        reply
    }

    /// Applies a write to the store without publishing its change (the caller
    /// publishes, after answering the writer when the writer is on another worker).
    fn store_write(&self, path: &str, op: WriteOp) -> (Reply, Option<Arc<ChangeEvent>>) {
        let applied = self.store.borrow_mut().write(path, op, Timestamp::now());
        if applied.reply.status == 507 {
            self.metrics().reject(Rejection::StorageFull);
        }
        (applied.reply, applied.event)
    }

    /// Applies a batch's writes for this shard, in order, then publishes their changes
    /// together (one message per watching worker), so a subscriber watching several of
    /// the changed resources gets all their parts in one write.
    pub fn apply_batch(self: &Rc<Self>, ops: Vec<(Box<str>, WriteOp)>) -> Vec<Reply> {
        let (replies, events) = self.store_batch(ops);
        self.publish_all(events);
        replies
    }

    /// [`Worker::apply_batch`] without publishing.
    fn store_batch(&self, ops: Vec<(Box<str>, WriteOp)>) -> (Vec<Reply>, Vec<Arc<ChangeEvent>>) {
        let mut events = Vec::new();
        let mut replies = Vec::with_capacity(ops.len());
        for (path, op) in ops {
            let applied = self.store.borrow_mut().write(&path, op, Timestamp::now());
            if applied.reply.status == 507 {
                self.metrics().reject(Rejection::StorageFull);
            }
            events.extend(applied.event);
            let mut reply = applied.reply;
            reply.content_location = Some(bytes::Bytes::copy_from_slice(path.as_bytes()));
            replies.push(reply);
        }
        (replies, events)
    }

    fn publish_all(self: &Rc<Self>, events: Vec<Arc<ChangeEvent>>) {
        let mut per_worker: Vec<Vec<Arc<ChangeEvent>>> =
            vec![Vec::new(); self.shared.mailboxes.len()];
        for event in events {
            self.metrics().changes_published.fetch_add(1, Relaxed);
            let set = self.interest.borrow().get(&event.path).copied();
            for w in set.iter().flat_map(WorkerSet::iter) {
                per_worker[w].push(event.clone());
            }
        }
        // Other workers first, so they fan out while this one does.
        let local = std::mem::take(&mut per_worker[self.id]);
        for (w, events) in per_worker.into_iter().enumerate() {
            if !events.is_empty() {
                self.send(w, Msg::ChangedMany(events));
            }
        }
        for event in &local {
            self.handle_change(event);
        }
    }

    /// Sends a change to every worker watching its resource (itself included, directly).
    fn publish(self: &Rc<Self>, event: Arc<ChangeEvent>) {
        self.metrics().changes_published.fetch_add(1, Relaxed);
        let set = self.interest.borrow().get(&event.path).copied();
        let mut local = false;
        // Other workers first, so they fan out while this one does.
        for w in set.iter().flat_map(WorkerSet::iter) {
            if w == self.id {
                local = true;
            } else {
                self.send(w, Msg::Changed(event.clone()));
            }
        }
        if local {
            self.handle_change(&event);
        }
    }

    pub fn get(
        &self,
        path: &str,
        range: Option<&crate::http::range::RangeSpec>,
        ims: Option<Timestamp>,
    ) -> Reply {
        self.store.borrow().get(path, range, ims)
    }

    /// Answers a long poll for worker `from`; registers `from` as a watcher if it must
    /// wait, or in any case when `stay` (a stream keeps watching after its answer).
    pub(crate) fn poll_for(
        &self,
        path: &Arc<str>,
        query: &WaitQuery,
        from: usize,
        stay: bool,
    ) -> Answer {
        let answer = self
            .store
            .borrow()
            .poll(path, query.t, query.range.as_ref());
        if stay || matches!(answer, Answer::Wait { .. }) {
            let mut interest = self.interest.borrow_mut();
            let set = interest.entry(path.clone()).or_insert_with(|| {
                self.metrics().watched.fetch_add(1, Relaxed);
                WorkerSet::default()
            });
            set.insert(from);
        }
        answer
    }

    fn unwatch(&self, path: &str, from: usize) {
        let mut interest = self.interest.borrow_mut();
        if let Some(set) = interest.get_mut(path) {
            set.remove(from);
            if set.is_empty() {
                interest.remove(path);
                self.metrics().watched.fetch_sub(1, Relaxed);
            }
        }
    }

    // ---- watcher side -----------------------------------------------------------

    /// Starts a long poll for a connection: answered at once, or parked.
    /// Returns the connection when the answer is immediate (the caller writes it).
    pub fn start_poll(
        self: &Rc<Self>,
        path: Arc<str>,
        query: WaitQuery,
        parked: ParkedConn,
    ) -> Option<(ParkedConn, Shaped)> {
        let owner = self.owner_of(&path);
        if owner == self.id {
            match self.poll_for(&path, &query, self.id, false) {
                Answer::Now(reply) => Some((parked, Shaped::from_reply(reply))),
                Answer::Wait { since } => {
                    self.park(path, WaitState::Parked { since }, query, parked);
                    None
                }
            }
        } else if let Some(known) = self.known_answer(&path, &query) {
            // Registered with the owner already, and what we know answers it.
            match known {
                Some(shaped) => Some((parked, shaped)),
                None => {
                    let since = query.t;
                    self.park(path, WaitState::Parked { since }, query, parked);
                    None
                }
            }
        } else {
            let id = self.park(path.clone(), WaitState::Pending, query, parked);
            self.ask_owner(id, path, query);
            None
        }
    }

    fn park(
        &self,
        path: Arc<str>,
        state: WaitState,
        query: WaitQuery,
        parked: ParkedConn,
    ) -> WaiterId {
        let (fd, gen) = (parked.conn.stream.as_raw_fd(), parked.conn.gen());
        let id = self
            .watch
            .borrow_mut()
            .insert(path, state, query, Holder::Poll(parked));
        self.hangup.attach(fd, gen, hangup::Holder::Waiter(id));
        if let Some(timeout) = self.config().poll_timeout {
            self.add_deadline(timeout, Expiry::Waiter(id));
        }
        let m = self.metrics();
        m.parked.fetch_add(1, Relaxed);
        m.parked_total.fetch_add(1, Relaxed);
        id
    }

    fn add_deadline(&self, timeout: Duration, what: Expiry) {
        let mut deadlines = self.deadlines.borrow_mut();
        deadlines.push_back((Instant::now() + timeout, what));
        if deadlines.len() == 1 {
            self.deadline_added.notify_one();
        }
    }

    /// Takes a long poll out of the wait list; returns its path and its connection
    /// (which no longer answers to the hang-up ring).
    fn unpark(&self, id: WaiterId) -> Option<(Arc<str>, ParkedConn)> {
        if !matches!(self.watch.borrow().get(id)?.holder, Holder::Poll(_)) {
            return None;
        }
        let (path, holder) = self.watch.borrow_mut().remove(id)?.into_parts();
        self.metrics().parked.fetch_sub(1, Relaxed);
        match holder {
            Holder::Poll(parked) => {
                self.hangup
                    .detach(parked.conn.stream.as_raw_fd(), parked.conn.gen());
                Some((path, parked))
            }
            Holder::Group(_) => None,
        }
    }

    /// Answers a long poll with a change and lets its connection carry on.
    fn release(self: &Rc<Self>, id: WaiterId, shaped: Shaped) {
        if let Some((_, parked)) = self.unpark(id) {
            self.metrics().deliveries.fetch_add(1, Relaxed);
            tokio_uring::spawn(conn::answer_parked(self.clone(), parked, shaped));
        }
    }

    /// Answers a long poll `304 Not Modified` (its timeout, or shutdown).
    fn not_modified(self: &Rc<Self>, id: WaiterId) {
        let Some(t) = self.watch.borrow().get(id).map(|w| w.query.t) else {
            return;
        };
        if let Some((path, parked)) = self.unpark(id) {
            let mut reply = Reply::new(304);
            reply.last_modified = Some(t);
            let shaped = Shaped::from_reply(reply);
            tokio_uring::spawn(conn::answer_parked(self.clone(), parked, shaped));
            self.forget_if_unwatched(&path);
        }
    }

    /// A long poll of a remotely owned resource answered from what this worker knows,
    /// without a message: `Some(None)` = park (the client is up to date with the newest
    /// change we received, and the owner will send us the next one); `Some(Some(..))` =
    /// answer now (the client is exactly one change behind); `None` = ask the owner.
    fn known_answer(&self, path: &str, query: &WaitQuery) -> Option<Option<Shaped>> {
        let known = self.known.borrow();
        let k = known.get(path)?;
        if query.t == k.last {
            return Some(None);
        }
        let event = k.event.as_ref().filter(|e| e.prev == query.t)?;
        event.answer_for(query.t, query.range.as_ref()).map(Some)
    }

    /// Records that this worker is registered with the remote owner of `path`, up to date
    /// with `last` (and `event`, the change stamped `last`, if we have it).
    fn learn(&self, path: &Arc<str>, last: Timestamp, event: Option<&Arc<ChangeEvent>>) {
        if self.owner_of(path) == self.id {
            return;
        }
        let mut known = self.known.borrow_mut();
        match known.get_mut(&**path) {
            Some(k) if k.last >= last => {}
            Some(k) => {
                *k = Known {
                    last,
                    event: event.cloned(),
                }
            }
            None => {
                known.insert(
                    path.clone(),
                    Known {
                        last,
                        event: event.cloned(),
                    },
                );
            }
        }
    }

    /// Stops this worker watching `path` unless one of its waiters still does: the
    /// owner forgets it and so does `known`.
    ///
    /// Called lazily after a change (the next change of a path nobody here waits on any
    /// more), so that a long poll re-polling right after its answer causes no message
    /// churn; and at once when a waiter leaves without a change (hang-up, timeout, its
    /// group ending), since a path that never changes would otherwise stay registered
    /// with its owner for good.
    fn forget_if_unwatched(&self, path: &Arc<str>) {
        if self.watch.borrow().watches(path) {
            return;
        }
        self.known.borrow_mut().remove(&**path);
        let owner = self.owner_of(path);
        if owner == self.id {
            self.unwatch(path, self.id);
        } else {
            self.send(
                owner,
                Msg::Unwatch {
                    path: path.clone(),
                    from: self.id,
                },
            );
        }
    }

    /// Takes a waiter out of the wait lists because it leaves without a change
    /// answering it (see [`Worker::forget_if_unwatched`]).
    pub(super) fn drop_waiter(&self, id: WaiterId) {
        let removed = self.watch.borrow_mut().remove(id);
        if let Some(w) = removed {
            self.forget_if_unwatched(w.path());
        }
    }

    fn handle_change(self: &Rc<Self>, event: &Arc<ChangeEvent>) {
        let Some(ids) = self.watch.borrow().ids_for(&event.path) else {
            return self.forget_if_unwatched(&event.path);
        };
        self.learn(&event.path, event.ts, Some(event));
        for id in ids {
            let (since, range, group) = match self.watch.borrow().get(id) {
                Some(w) => match w.state {
                    WaitState::Parked { since } if since < event.ts => (
                        since,
                        w.query.range,
                        match w.holder {
                            Holder::Poll(_) => None,
                            Holder::Group(g) => Some(g),
                        },
                    ),
                    // Pending: the owner's answer (sent after this change) covers it.
                    // Dirty: a catch-up part will.
                    _ => continue,
                },
                None => continue,
            };
            match group {
                Some(gid) => self.group_change(id, gid, since, range, event),
                None => match event.answer_for(since, range.as_ref()) {
                    Some(shaped) => self.release(id, shaped),
                    None => self.requery(id, since),
                },
            }
        }
        self.hangup.flush();
    }

    /// Asks the owner for the full answer of a waiter that one change does not
    /// describe (or, for a stream, that was summarised).
    fn requery(self: &Rc<Self>, id: WaiterId, since: Timestamp) {
        let (path, query) = {
            let mut watch = self.watch.borrow_mut();
            let Some(w) = watch.get_mut(id) else { return };
            w.state = WaitState::Refreshing;
            // From the state the client has, not the stamp it sent (which may be ahead
            // of our clock): a change is after `since`, so the answer is immediate.
            (
                w.path().clone(),
                WaitQuery {
                    t: since,
                    range: w.query.range,
                },
            )
        };
        self.ask_owner(id, path, query);
    }

    fn handle_poll_answer(self: &Rc<Self>, id: WaiterId, answer: Answer) {
        let group = match self.watch.borrow().get(id).map(|w| &w.holder) {
            Some(Holder::Poll(_)) => None,
            Some(Holder::Group(g)) => Some(*g),
            None => return,
        };
        if let Some(gid) = group {
            return self.group_answer(id, gid, answer);
        }
        match answer {
            Answer::Now(reply) => self.release(id, Shaped::from_reply(reply)),
            Answer::Wait { since } => {
                let path = match self.watch.borrow_mut().get_mut(id) {
                    Some(w) => {
                        w.state = WaitState::Parked { since };
                        w.path().clone()
                    }
                    None => return,
                };
                // The owner registered us: later re-polls from `since` can park here.
                self.learn(&path, since, None);
            }
        }
    }

    fn handle_msg(self: &Rc<Self>, msg: Msg) {
        match msg {
            // The writer is answered before its change fans out: a publisher's next
            // request does not wait behind every subscriber's write.
            Msg::Write { path, op, reply } => {
                let (r, event) = self.store_write(&path, op);
                let _ = reply.send(r);
                if let Some(event) = event {
                    self.publish(event);
                }
            }
            Msg::Get {
                path,
                range,
                if_modified_since,
                reply,
            } => {
                let _ = reply.send(self.get(&path, range.as_ref(), if_modified_since));
            }
            Msg::Poll {
                path,
                query,
                from,
                id,
                stay,
            } => {
                let answer = self.poll_for(&path, &query, from, stay);
                self.send(from, Msg::PollAnswer { id, answer });
            }
            Msg::Unwatch { path, from } => self.unwatch(&path, from),
            Msg::PollAnswer { id, answer } => self.handle_poll_answer(id, answer),
            Msg::Changed(event) => self.handle_change(&event),
            Msg::ChangedMany(events) => {
                for event in &events {
                    self.handle_change(event);
                }
            }
            Msg::Batch { ops, reply } => {
                let (replies, events) = self.store_batch(ops);
                let _ = reply.send(replies);
                self.publish_all(events);
            }
            Msg::Shutdown => self.begin_drain(),
        }
    }

    // ---- loops ------------------------------------------------------------------

    async fn inbox_loop(self: Rc<Self>, inbox: Inbox) {
        loop {
            inbox.notify.notified().await;
            while let Ok(msg) = inbox.rx.try_recv() {
                self.handle_msg(msg);
            }
            self.hangup.flush();
        }
    }

    async fn hangup_loop(self: Rc<Self>) {
        let mut batch = Vec::new();
        loop {
            if let Err(e) = self.hangup.next_batch(&mut batch).await {
                tracing::error!(error = %e, "hang-up ring failed; parked clients that leave are no longer noticed");
                return;
            }
            // Dropping the waiter (or ending the group) closes its connection.
            for holder in batch.drain(..) {
                let freed = match holder {
                    hangup::Holder::Waiter(id) => match self.unpark(id) {
                        Some((path, _)) => {
                            self.forget_if_unwatched(&path);
                            true
                        }
                        None => false,
                    },
                    hangup::Holder::Group(gid) => {
                        self.end_group(gid, End::HungUp);
                        true
                    }
                };
                if freed {
                    self.metrics().hangups.fetch_add(1, Relaxed);
                }
            }
        }
    }

    async fn deadline_loop(self: Rc<Self>) {
        loop {
            let front = self.deadlines.borrow().front().copied();
            let Some((at, id)) = front else {
                self.deadline_added.notified().await;
                continue;
            };
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
                continue;
            }
            self.deadlines.borrow_mut().pop_front();
            match id {
                Expiry::Waiter(id) => {
                    if self.watch.borrow().get(id).is_some() {
                        self.metrics().poll_timeouts.fetch_add(1, Relaxed);
                        self.not_modified(id);
                    }
                }
                Expiry::Group(gid) => self.expire_group(gid),
            }
            self.hangup.flush();
        }
    }

    /// After a burst of connections, hands the memory their short-lived buffers and tasks
    /// used back to the operating system (the allocator otherwise keeps freed pages until
    /// this thread allocates again, which an idle worker full of parked polls never does).
    async fn housekeeping_loop(self: Rc<Self>) {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = 0;
        let mut burst = false;
        loop {
            ticks.tick().await;
            let accepted = self.metrics().connections_accepted.load(Relaxed);
            // During a burst, a light collection; once it has gone quiet, one forced
            // collection (pages freed at the very end of the burst are not purged by a
            // light one yet, and an idle worker would keep them until the next burst).
            let force = match (accepted != seen, burst) {
                (true, _) => {
                    seen = accepted;
                    burst = true;
                    false
                }
                (false, true) => {
                    burst = false;
                    true
                }
                (false, false) => continue,
            };
            // SAFETY: `mi_collect` only walks and releases this thread's own mimalloc
            // heap (the global allocator); it takes no pointers from us.
            unsafe { libmimalloc_sys::mi_collect(force) };
        }
    }

    async fn heartbeat_loop(self: Rc<Self>, every: Duration) {
        let heartbeat = Frame::heartbeat(&self.shared.boundary);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.heartbeat_tick(&heartbeat);
        }
    }

    async fn accept_loop(self: Rc<Self>, listener: tokio_uring::net::TcpListener) {
        let mut backoff = Duration::from_millis(5);
        let metrics = &self.shared.metrics;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = self.stop_accepting.notified() => {
                    // Shutting the listening socket down completes the accept still in
                    // flight, so no connection is accepted into the void.
                    // SAFETY: the listener owns this descriptor and outlives the borrow.
                    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(listener.as_raw_fd()) };
                    let _ = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Read);
                    return;
                }
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    self.metrics().connections_accepted.fetch_add(1, Relaxed);
                    let gen = self.conn_gen.get().wrapping_add(1);
                    self.conn_gen.set(gen);
                    let mut conn = Connection::new(stream, self.shared.clone(), self.id, gen);
                    let open = metrics.open_connections.load(Relaxed);
                    let refusal = if open as usize > self.shared.max_connections {
                        Some((503, Rejection::ConnectionLimit))
                    } else if !conn.admit_ip(peer.ip()) {
                        Some((429, Rejection::PerIpLimit))
                    } else {
                        None
                    };
                    if let Some((status, why)) = refusal {
                        self.metrics().connections_refused.fetch_add(1, Relaxed);
                        self.metrics().reject(why);
                        tokio_uring::spawn(conn::refuse(self.clone(), conn, status));
                        continue;
                    }
                    let _ = conn.stream.set_nodelay(true);
                    tokio_uring::spawn(conn::serve(self.clone(), conn));
                }
                Err(e) => {
                    self.metrics().accept_errors.fetch_add(1, Relaxed);
                    if is_resource_exhaustion(&e) {
                        // Out of descriptors or memory: the pending connections stay in
                        // the backlog; retry later instead of spinning on the error.
                        tracing::warn!(error = %e, retry_in = ?backoff, "accept failed: out of resources");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    } else {
                        tracing::debug!(error = %e, "accept failed");
                    }
                }
            }
        }
    }

    /// After accepting stops: waits until every connection of this worker is closed.
    async fn drain(&self) {
        let open = &self.shared.metrics.workers[self.id].open;
        while open.load(Relaxed) > 0 {
            self.shared.drained[self.id].notified().await;
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Runs worker `id` on the current thread until it has drained after a shutdown.
pub fn run(
    id: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    inbox: Inbox,
) -> io::Result<()> {
    new_runtime()?.block_on(async move {
        let listener = tokio_uring::net::TcpListener::from_std(listener);
        let worker = Rc::new(Worker {
            id,
            store: RefCell::new(Box::new(
                MemStore::with_forbidden(
                    shared.config.history,
                    bytes::Bytes::copy_from_slice(shared.boundary.as_bytes()),
                )
                .with_quota(shared.metrics.storage.clone()),
            )),
            interest: RefCell::new(HashMap::new()),
            watch: RefCell::new(WatchTable::default()),
            groups: RefCell::new(Groups::default()),
            hangup: HangupRing::new()?,
            deadlines: RefCell::new(VecDeque::new()),
            deadline_added: Notify::new(),
            tails: RefCell::new(Tails::new(Timestamp::now())),
            draining: Cell::new(false),
            stop_accepting: Notify::new(),
            wake_idle: Notify::new(),
            conn_gen: Cell::new(0),
            known: RefCell::new(HashMap::new()),
            sends: RefCell::new(group::StreamSends::default()),
            shared,
        });
        tokio_uring::spawn(worker.clone().inbox_loop(inbox));
        tokio_uring::spawn(worker.clone().hangup_loop());
        tokio_uring::spawn(worker.clone().deadline_loop());
        tokio_uring::spawn(worker.clone().housekeeping_loop());
        if let Some(every) = worker.config().heartbeat {
            tokio_uring::spawn(worker.clone().heartbeat_loop(every));
        }
        worker.clone().accept_loop(listener).await;
        worker.drain().await;
        Ok(())
    })
}

/// The worker's tokio-uring runtime. Its ring is used by this thread alone
/// (`SINGLE_ISSUER`) and need not interrupt it to post completions (`COOP_TASKRUN`:
/// they are posted at its next system call; it makes one at least every loop). Kernels
/// older than 6.0 lack these flags and get a plain ring. (`DEFER_TASKRUN` was tried:
/// completions then wait for an `io_uring_enter` asking for events, which tokio-uring,
/// waiting on the ring through epoll, does not make; connections stall.)
fn new_runtime() -> io::Result<tokio_uring::Runtime> {
    let mut ring = io_uring::IoUring::builder();
    ring.setup_coop_taskrun().setup_single_issuer();
    // Asked of a throwaway ring first: a runtime that fails half-built is not freed.
    if let Err(e) = ring.build(1) {
        tracing::debug!(error = %e, "io_uring without COOP_TASKRUN/SINGLE_ISSUER");
        ring = io_uring::IoUring::builder();
    }
    tokio_uring::Runtime::new(tokio_uring::builder().entries(4096).uring_builder(&ring))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_sets() {
        let mut s = WorkerSet::default();
        assert!(s.is_empty());
        for w in [0, 1, 63, 64, 200, 255] {
            s.insert(w);
        }
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 1, 63, 64, 200, 255]);
        s.remove(64);
        s.remove(0);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1, 63, 200, 255]);
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_for("/a", 1), 0);
        assert_eq!(shard_for("/quotes/ACME", 4), shard_for("/quotes/ACME", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_for(&format!("/r/{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
