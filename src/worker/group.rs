//! Groups: one connection watching one or more resources. A group is either a
//! *stream* (`multipart/digest` or `multipart/x-mixed-replace`, an unbounded response,
//! one part per change) or a *one-shot* `/subscribe` (answered once, with every
//! resource ready, or with the earliest one).
//!
//! A group owns its connection and has one waiter per watched resource in the same
//! per-resource wait lists long polls use, so a change reaches it through the same
//! [`Worker::handle_change`]. A stream keeps no task while idle: parts are queued on
//! the group, and when the queue becomes non-empty the group is handed to the worker's
//! *send driver*, one task for all of the worker's stream writes. It writes everything
//! a group has queued in one vectored send, every group's send in flight at once, and
//! books each completion (the next send of that group, if more was queued meanwhile);
//! it exits when no group has anything left. A send still pending after a few of the
//! driver's turns (a reader not keeping up) is awaited by a task of its own, so that a
//! turn only looks at sends that are about to complete.
//!
//! **Slow readers are summarised, not buffered.** A stream may hold at most
//! `--stream-buffer` bytes queued or in flight. A part that does not fit is not queued:
//! its waiter turns `Dirty`, keeping the stamp and range position it had, and ignores
//! further changes. When the reader has drained its queue, each dirty waiter asks the
//! owner for what changed since its stamp — exactly a long poll's resume — and gets one
//! catch-up part: the newest state for replacements, one `206` of the merged range for
//! consecutive appends, `410` for a delete. A fast reader never waits for a slow one:
//! every stream has its own queue and send, and frames are shared `Bytes`.

use std::borrow::Cow;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;

use super::conn::{self, Connection};
use super::mailbox::Msg;
use super::send::Sending;
use super::watch::{Holder, WaitQuery, WaitState, WaiterId};
use super::Worker;
use crate::body::Body;
use crate::http::accept::StreamForm;
use crate::http::frame::{Boundary, Frame};
use crate::http::range::{ContentRange, RangeSpec};
use crate::http::response::{Persistence, Reply};
use crate::metrics::{add_own, add_own_i64};
use crate::store::event::Replacement;
use crate::store::{Answer, ChangeEvent, Shaped};
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupId {
    key: u32,
    gen: u32,
}

impl GroupId {
    /// A group id for benchmarks and tests of the wait lists (no group behind it).
    #[doc(hidden)]
    pub fn detached(key: u32) -> GroupId {
        GroupId { key, gen: 0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupMode {
    /// An unbounded response, one part per change.
    Stream(StreamForm),
    /// One answer: a complete `multipart/digest` of every ready resource, or (when the
    /// client does not accept multipart) the plain answer of the earliest one.
    Once { multipart: bool },
}

/// One resource a group watches: the path, the client's stamp, its `Range`.
#[derive(Clone, Debug)]
pub struct SubSpec {
    pub path: Arc<str>,
    pub t: Timestamp,
    pub range: Option<RangeSpec>,
}

/// How a group ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Finish the multipart body (close delimiter, last chunk) and close.
    Finish,
    /// The peer is gone or the socket failed: close at once.
    Abort,
    /// Like `Abort`, but the hang-up poll already completed (nothing to remove).
    HungUp,
}

/// `repr(C)`, fields in this order: what every delivery touches comes first, so that a
/// delivery to a stream reads one or two cache lines of its group (with thousands of
/// streams, a group is never in cache when its change arrives).
#[repr(C)]
pub struct Group {
    gen: u32,
    /// The connection's descriptor (`conn` owns it), read here without chasing `conn`.
    fd: RawFd,
    queued: usize,
    in_flight: usize,
    // Stream state.
    queue: Vec<Bytes>,
    /// A second reference to `conn` (streams), lent to each send in flight to keep the
    /// socket open and put back after: moving it touches no reference count, which
    /// would be a cache miss on the connection per delivery.
    spare: Option<Rc<Connection>>,
    mode: GroupMode,
    /// Chunked transfer (HTTP/1.1) or a raw body closed by the connection (HTTP/1.0).
    chunked: bool,
    writing: bool,
    /// No more parts: the connection closes once the queue is written.
    ending: bool,
    /// Something was queued since the last heartbeat tick.
    active: bool,
    head_only: bool,
    persistence: Persistence,
    dirty: Vec<WaiterId>,
    /// When the changes of the queued parts were stamped (latency metric).
    born: Vec<Instant>,
    conn: Rc<Connection>,
    subs: Vec<WaiterId>,
    last_replacement: Option<Frame>,
    // One-shot state.
    awaiting: usize,
    ready: Vec<Reply>,
    errors: Vec<Reply>,
}

/// A worker's stream sends: the groups waiting for one, and its driver task.
#[derive(Default)]
pub struct StreamSends {
    /// Groups whose queue is to be written (each marked `writing`).
    ready: Vec<GroupId>,
    /// The driver task is alive.
    running: bool,
    /// The driver's waker while it waits for completions.
    waker: Option<Waker>,
}

/// How many of the driver's turns a send may stay pending before it gets a task of its
/// own. A send to a reader that keeps up completes at once (at the ring's next
/// submission): it is polled once before and once after.
const SLOW_AFTER_POLLS: u8 = 3;

/// One stream send in flight.
struct Flight {
    gid: GroupId,
    /// Turns of the driver this send was found still pending.
    polls: u8,
    /// Queued bytes this send carries (counted off the buffered-bytes gauge when done).
    n: usize,
    /// The group was ending when the send started (no catch-up after it).
    ending: bool,
    /// When the changes of its parts were stamped (latency metric).
    born: Vec<Instant>,
    sending: Sending<Rc<Connection>>,
}

/// The groups of one worker.
#[derive(Default)]
pub struct Groups {
    slab: slab::Slab<Group>,
    next_gen: u32,
}

impl Groups {
    fn get_mut(&mut self, id: GroupId) -> Option<&mut Group> {
        self.slab
            .get_mut(id.key as usize)
            .filter(|g| g.gen == id.gen)
    }

    fn remove(&mut self, id: GroupId) -> Option<Group> {
        self.get_mut(id)?;
        Some(self.slab.remove(id.key as usize))
    }

    pub(super) fn ids(&self) -> Vec<GroupId> {
        self.slab
            .iter()
            .map(|(k, g)| GroupId {
                key: k as u32,
                gen: g.gen,
            })
            .collect()
    }
}

/// The encoded part for a reply (slow path: catch-ups, first parts, errors).
fn part_from_reply(
    form: StreamForm,
    path: &str,
    mut reply: Reply,
    boundary: &Boundary,
) -> Option<Frame> {
    match form {
        StreamForm::Digest => {
            if reply.content_location.is_none() {
                reply.content_location = Some(Bytes::copy_from_slice(path.as_bytes()));
            }
            Some(Frame::digest(&reply.encode_head(), &reply.body, boundary))
        }
        StreamForm::MixedReplace => match reply.status {
            200 => Some(Frame::replacement(
                reply
                    .content_type
                    .as_deref()
                    .unwrap_or(b"application/octet-stream"),
                reply.last_modified.unwrap_or(Timestamp::ZERO),
                &reply.body,
                boundary,
            )),
            _ => None,
        },
    }
}

/// The range position after a part: a `bytes` range moves to the new length, an
/// `updated` range to the newest entry's stamp.
fn advance_range(range: Option<RangeSpec>, reply: &Reply) -> Option<RangeSpec> {
    match range {
        Some(RangeSpec::BytesFrom(_)) => Some(RangeSpec::BytesFrom(match reply.content_range {
            Some(ContentRange::Bytes { complete_len, .. }) => complete_len,
            _ if reply.status == 200 => reply.body.len(),
            _ => 0,
        })),
        Some(RangeSpec::Updated(d)) => Some(RangeSpec::Updated(reply.last_modified.unwrap_or(d))),
        other => other,
    }
}

impl Worker {
    fn boundary(&self) -> &Boundary {
        &self.shared.boundary
    }

    /// Starts a group on `conn`. A stream's response head has already been written.
    /// `errors` are answers for sub-requests that failed on their own (bad request,
    /// forbidden): first parts of a stream, or parts of the one-shot answer.
    #[allow(clippy::too_many_arguments)]
    pub fn start_group(
        self: &Rc<Self>,
        conn: Connection,
        mode: GroupMode,
        chunked: bool,
        persistence: Persistence,
        head_only: bool,
        subs: Vec<SubSpec>,
        errors: Vec<Reply>,
    ) {
        let fd = conn.stream.as_raw_fd();
        if let GroupMode::Stream(_) = mode {
            if let Some(bytes) = self.config().stream_sndbuf {
                // SAFETY: `fd` is the connection's open socket, and `conn` (which owns it)
                // outlives this borrow, which ends with the statement.
                let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let _ = socket2::SockRef::from(&socket).set_send_buffer_size(bytes);
            }
            self.metrics().streams.fetch_add(1, Relaxed);
        }
        let id = {
            let mut groups = self.groups.borrow_mut();
            groups.next_gen = groups.next_gen.wrapping_add(1);
            let gen = groups.next_gen;
            let conn = Rc::new(conn);
            let key = groups.slab.insert(Group {
                gen,
                fd,
                // Not for one-shot groups, whose connection is unwrapped when answered.
                spare: matches!(mode, GroupMode::Stream(_)).then(|| conn.clone()),
                conn,
                mode,
                chunked,
                persistence,
                head_only,
                subs: Vec::with_capacity(subs.len()),
                queue: Vec::new(),
                born: Vec::new(),
                queued: 0,
                in_flight: 0,
                writing: false,
                ending: false,
                dirty: Vec::new(),
                last_replacement: None,
                active: false,
                awaiting: subs.len(),
                ready: Vec::new(),
                errors: Vec::new(),
            });
            GroupId {
                key: key as u32,
                gen,
            }
        };
        if let Some(g) = self.groups.borrow_mut().get_mut(id) {
            self.hangup
                .attach(fd, g.conn.gen(), super::hangup::Holder::Group(id));
        }
        match mode {
            GroupMode::Stream(form) => {
                for reply in errors {
                    let path =
                        String::from_utf8_lossy(reply.content_location.as_deref().unwrap_or(b""))
                            .into_owned();
                    if let Some(frame) = part_from_reply(form, &path, reply, self.boundary()) {
                        self.enqueue(id, &frame, true, None);
                    }
                }
                if subs.is_empty() {
                    return self.end_group(id, End::Finish);
                }
            }
            GroupMode::Once { .. } => {
                if let Some(g) = self.groups.borrow_mut().get_mut(id) {
                    g.errors = errors;
                }
                if subs.is_empty() {
                    return self.finish_once(id);
                }
                if let Some(timeout) = self.config().poll_timeout {
                    self.add_deadline(timeout, super::Expiry::Group(id));
                }
            }
        }
        let mut waiters = Vec::with_capacity(subs.len());
        for spec in subs {
            let query = WaitQuery {
                t: spec.t,
                range: spec.range,
            };
            let wid = self.watch.borrow_mut().insert(
                spec.path.clone(),
                WaitState::Pending,
                query,
                Holder::Group(id),
            );
            waiters.push((wid, spec.path, query));
        }
        if let Some(g) = self.groups.borrow_mut().get_mut(id) {
            g.subs = waiters.iter().map(|(w, _, _)| *w).collect();
        }
        for (wid, path, query) in waiters {
            self.ask_owner(wid, path, query);
        }
    }

    /// Sends a waiter's query to the owner of its resource (or answers it here).
    pub(super) fn ask_owner(self: &Rc<Self>, id: WaiterId, path: Arc<str>, query: WaitQuery) {
        // A stream keeps watching after each answer; a long poll or a one-shot
        // `/subscribe` only needs the owner's changes while it waits.
        let stay = match self.watch.borrow().get(id).map(|w| &w.holder) {
            Some(Holder::Group(gid)) => {
                let mut groups = self.groups.borrow_mut();
                groups
                    .get_mut(*gid)
                    .is_some_and(|g| matches!(g.mode, GroupMode::Stream(_)))
            }
            _ => false,
        };
        let owner = self.owner_of(&path);
        if owner == self.id {
            let answer = self.poll_for(&path, &query, self.id, stay);
            self.handle_poll_answer(id, answer);
        } else {
            self.send(
                owner,
                Msg::Poll {
                    path,
                    query,
                    from: self.id,
                    id,
                    stay,
                },
            );
        }
    }

    /// The owner's answer for one of a group's waiters.
    pub(super) fn group_answer(self: &Rc<Self>, wid: WaiterId, gid: GroupId, answer: Answer) {
        let Some(mode) = self.groups.borrow_mut().get_mut(gid).map(|g| g.mode) else {
            return;
        };
        let (path, range, first) = match self.watch.borrow().get(wid) {
            Some(w) => (
                w.path().clone(),
                w.query.range,
                w.state == WaitState::Pending,
            ),
            None => return,
        };
        match (mode, answer) {
            (GroupMode::Once { .. }, Answer::Wait { since }) => {
                self.set_state(wid, WaitState::Parked { since });
                self.once_progress(gid, first, None);
            }
            (GroupMode::Stream(_), Answer::Wait { since }) => {
                self.set_state(wid, WaitState::Parked { since });
            }
            (GroupMode::Stream(form), Answer::Now(reply)) => {
                let since = reply.last_modified.unwrap_or(Timestamp::ZERO);
                if form == StreamForm::MixedReplace && reply.status == 410 {
                    // A replacement stream shows states; a deleted resource has none.
                    // Before the first part, wait for the re-creation; after, the stream ends.
                    let started = self
                        .groups
                        .borrow_mut()
                        .get_mut(gid)
                        .is_some_and(|g| g.last_replacement.is_some());
                    if started {
                        return self.end_group(gid, End::Finish);
                    }
                    return self.set_state(wid, WaitState::Parked { since });
                }
                let next_range = advance_range(range, &reply);
                if let Some(frame) = part_from_reply(form, &path, reply, self.boundary()) {
                    self.enqueue(gid, &frame, true, None);
                    if form == StreamForm::MixedReplace {
                        if let Some(g) = self.groups.borrow_mut().get_mut(gid) {
                            g.last_replacement = Some(frame);
                        }
                    }
                }
                if let Some(w) = self.watch.borrow_mut().get_mut(wid) {
                    w.state = WaitState::Parked { since };
                    w.query.range = next_range;
                }
            }
            (GroupMode::Once { .. }, Answer::Now(mut reply)) => {
                // Answered: this resource's part is final, later changes do not touch it.
                reply.content_location = Some(Bytes::copy_from_slice(path.as_bytes()));
                self.watch.borrow_mut().remove(wid);
                self.once_progress(gid, first, Some(reply));
            }
        }
    }

    fn set_state(&self, wid: WaiterId, state: WaitState) {
        if let Some(w) = self.watch.borrow_mut().get_mut(wid) {
            w.state = state;
        }
    }

    /// Records an answer for one of a one-shot group's resources (`first`: its first
    /// answer); answers the client once every first answer is in and at least one
    /// resource is ready.
    fn once_progress(self: &Rc<Self>, gid: GroupId, first: bool, ready: Option<Reply>) {
        let finish = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(gid) else { return };
            if first {
                g.awaiting = g.awaiting.saturating_sub(1);
            }
            if let Some(r) = ready {
                g.ready.push(r);
            }
            g.awaiting == 0 && !g.ready.is_empty()
        };
        if finish {
            self.finish_once(gid);
        }
    }

    /// A change reaches one of a group's waiters (up to date with `since`).
    pub(super) fn group_change(
        self: &Rc<Self>,
        wid: WaiterId,
        gid: GroupId,
        since: Timestamp,
        range: Option<RangeSpec>,
        event: &Arc<ChangeEvent>,
    ) {
        let Some(mode) = self.groups.borrow_mut().get_mut(gid).map(|g| g.mode) else {
            return;
        };
        let form = match mode {
            GroupMode::Stream(form) => form,
            GroupMode::Once { .. } => {
                // One-shot groups are answered once: take the reply whole.
                return match event.reply_for_watcher(since, range.as_ref()) {
                    Some(reply) => self.group_answer(wid, gid, Answer::Now(reply)),
                    None => self.requery(wid, since),
                };
            }
        };
        let frame = match form {
            StreamForm::Digest => event.digest_frame(since, range.as_ref(), self.boundary()),
            StreamForm::MixedReplace => match event.replacement(self.boundary()) {
                Replacement::Part(frame) => Some(Cow::Borrowed(frame)),
                Replacement::End => return self.end_group(gid, End::Finish),
            },
        };
        let queued = match &frame {
            Some(frame) => self.enqueue(gid, frame, false, Some(event.born)),
            None => false,
        };
        if queued {
            if form == StreamForm::MixedReplace {
                if let Some(g) = self.groups.borrow_mut().get_mut(gid) {
                    g.last_replacement = frame.map(Cow::into_owned);
                }
            }
            if let Some(w) = self.watch.borrow_mut().get_mut(wid) {
                w.state = WaitState::Parked { since: event.ts };
                w.query.range = match range {
                    Some(RangeSpec::BytesFrom(_)) => Some(RangeSpec::BytesFrom(event.body.len())),
                    Some(RangeSpec::Updated(_)) => Some(RangeSpec::Updated(event.ts)),
                    other => other,
                };
            }
            return;
        }
        // Over budget (or not describable by this change alone): summarise.
        self.metrics().summarised.fetch_add(1, Relaxed);
        self.set_state(wid, WaitState::Dirty { since });
        let idle = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(gid) else { return };
            g.dirty.push(wid);
            !g.writing
        };
        if idle {
            self.catch_up(gid);
        }
    }

    /// Queues a part. Refuses (returns false) when it would take the stream past its
    /// budget, unless `force` (first parts and catch-ups always go) or nothing is
    /// queued at all (a single part larger than the budget still goes, alone).
    fn enqueue(
        self: &Rc<Self>,
        gid: GroupId,
        frame: &Frame,
        force: bool,
        born: Option<Instant>,
    ) -> bool {
        let budget = self.config().stream_buffer_bytes;
        let spawn = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(gid) else {
                return true;
            };
            if g.ending {
                return true;
            }
            let held = g.queued + g.in_flight;
            if !force && held > 0 && held + frame.len() > budget {
                return false;
            }
            frame.push(g.chunked, &mut g.queue);
            g.born.extend(born);
            let len = if g.chunked {
                frame.len()
            } else {
                frame.raw_len()
            };
            g.queued += len;
            g.active = true;
            let m = self.metrics();
            add_own_i64(&m.stream_buffered_bytes, len as i64);
            add_own(&m.stream_parts, 1);
            !std::mem::replace(&mut g.writing, true)
        };
        if spawn {
            self.want_send(gid);
        }
        true
    }

    /// Has the worker's send driver write a group's queue (the group is marked
    /// `writing`, so this happens once until the queue has been written out).
    fn want_send(self: &Rc<Self>, gid: GroupId) {
        let mut sends = self.sends.borrow_mut();
        sends.ready.push(gid);
        if !std::mem::replace(&mut sends.running, true) {
            tokio_uring::spawn(self.clone().send_driver());
        } else if let Some(waker) = sends.waker.take() {
            waker.wake();
        }
    }

    /// Writes the queues of the groups that want it, every group's sends in flight at
    /// once, until none is left; then exits (the next [`Worker::want_send`] starts it
    /// again). One task for all of a worker's stream writes instead of one per write.
    async fn send_driver(self: Rc<Self>) {
        let mut flights: Vec<Flight> = Vec::new();
        loop {
            let ready = std::mem::take(&mut self.sends.borrow_mut().ready);
            flights.extend(ready.into_iter().filter_map(|gid| self.start_send(gid)));
            if flights.is_empty() {
                let mut sends = self.sends.borrow_mut();
                if sends.ready.is_empty() {
                    sends.running = false;
                    return;
                }
                continue;
            }
            let (done, slow) = std::future::poll_fn(|cx| {
                let (mut done, mut slow) = (Vec::new(), Vec::new());
                let mut i = 0;
                while i < flights.len() {
                    match flights[i].sending.poll_sent(cx) {
                        Poll::Ready(out) => done.push((flights.swap_remove(i), out)),
                        Poll::Pending if flights[i].polls >= SLOW_AFTER_POLLS => {
                            slow.push(flights.swap_remove(i));
                        }
                        Poll::Pending => {
                            flights[i].polls += 1;
                            i += 1;
                        }
                    }
                }
                let mut sends = self.sends.borrow_mut();
                if done.is_empty() && slow.is_empty() && sends.ready.is_empty() {
                    sends.waker = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    sends.waker = None;
                    Poll::Ready((done, slow))
                }
            })
            .await;
            for (flight, (result, keep)) in done {
                let gid = flight.gid;
                if self.send_done(flight, result, keep) {
                    flights.extend(self.start_send(gid));
                }
            }
            for flight in slow {
                tokio_uring::spawn(self.clone().slow_send(flight));
            }
        }
    }

    /// A send that outlived a few of the driver's turns (a reader not keeping up):
    /// awaited by a task of its own, so that the driver's turns stay short.
    async fn slow_send(self: Rc<Self>, mut flight: Flight) {
        let (result, keep) = std::future::poll_fn(|cx| flight.sending.poll_sent(cx)).await;
        let gid = flight.gid;
        if self.send_done(flight, result, keep) {
            self.want_send(gid);
        }
    }

    /// Hands a group's whole queue to one send; `None` when the queue is empty (the
    /// group stops writing, and closes if it was ending).
    fn start_send(self: &Rc<Self>, gid: GroupId) -> Option<Flight> {
        let mut groups = self.groups.borrow_mut();
        let g = groups.get_mut(gid)?;
        if g.queue.is_empty() {
            g.writing = false;
            if g.ending {
                drop(groups);
                self.close_group(gid, End::Finish);
            }
            return None;
        }
        let n = std::mem::take(&mut g.queued);
        g.in_flight = n;
        let keep = g.spare.take().unwrap_or_else(|| g.conn.clone());
        let flight = Flight {
            gid,
            polls: 0,
            n,
            ending: g.ending,
            born: std::mem::take(&mut g.born),
            sending: Sending::start(g.fd, keep, std::mem::take(&mut g.queue)),
        };
        add_own(&self.metrics().stream_writes, 1);
        Some(flight)
    }

    /// Books a finished send; whether the group carries on (its queue is to be
    /// written next).
    fn send_done(
        self: &Rc<Self>,
        flight: Flight,
        result: std::io::Result<u64>,
        keep: Rc<Connection>,
    ) -> bool {
        let gid = flight.gid;
        add_own_i64(&self.metrics().stream_buffered_bytes, -(flight.n as i64));
        let catch_up = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(gid) else {
                return false;
            };
            g.in_flight = 0;
            g.spare = Some(keep);
            !g.dirty.is_empty() && g.queued < self.config().stream_buffer_bytes / 2
        };
        match result {
            Ok(written) => {
                let m = self.metrics();
                add_own(&m.bytes_written, written);
                for b in flight.born {
                    m.latency.observe(b.elapsed());
                }
            }
            Err(_) => {
                self.end_group(gid, End::Abort);
                return false;
            }
        }
        if catch_up && !flight.ending {
            self.catch_up(gid);
        }
        true
    }

    /// Asks for one summarising part per dirty waiter of a group.
    fn catch_up(self: &Rc<Self>, gid: GroupId) {
        let dirty = match self.groups.borrow_mut().get_mut(gid) {
            Some(g) => std::mem::take(&mut g.dirty),
            None => return,
        };
        for wid in dirty {
            let since = match self.watch.borrow().get(wid).map(|w| w.state) {
                Some(WaitState::Dirty { since }) => since,
                _ => continue,
            };
            self.requery(wid, since);
        }
    }

    /// Ends a group: its waiters leave the wait lists and its connection closes, after
    /// the close delimiter for [`End::Finish`].
    pub(super) fn end_group(self: &Rc<Self>, gid: GroupId, how: End) {
        let subs = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(gid) else { return };
            if g.ending {
                // Already finishing; a failed write or a hang-up closes it now (no send
                // is in flight, or the one in flight fails on the shutdown).
                drop(groups);
                if how != End::Finish {
                    self.close_group(gid, how);
                }
                return;
            }
            std::mem::take(&mut g.subs)
        };
        for wid in subs {
            self.drop_waiter(wid);
        }
        if how == End::Finish {
            let spawn = {
                let mut groups = self.groups.borrow_mut();
                let Some(g) = groups.get_mut(gid) else { return };
                g.ending = true;
                g.queue.push(Boundary::closing(g.chunked));
                !std::mem::replace(&mut g.writing, true)
            };
            if spawn {
                self.want_send(gid);
            }
            return;
        }
        self.close_group(gid, how);
    }

    /// Removes a group and closes its connection (any write still in flight fails and
    /// releases the last reference).
    fn close_group(self: &Rc<Self>, gid: GroupId, how: End) {
        let Some(g) = self.groups.borrow_mut().remove(gid) else {
            return;
        };
        for wid in &g.subs {
            self.drop_waiter(*wid);
        }
        if how != End::HungUp {
            self.hangup.detach(g.conn.stream.as_raw_fd(), g.conn.gen());
        }
        if let GroupMode::Stream(_) = g.mode {
            let m = self.metrics();
            m.streams.fetch_sub(1, Relaxed);
            // Bytes queued but never handed to a send (those in flight are counted
            // off when their send returns).
            m.stream_buffered_bytes.fetch_sub(g.queued as i64, Relaxed);
        }
        let _ = g.conn.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Answers a one-shot group and hands its connection back to a connection task.
    pub(super) fn finish_once(self: &Rc<Self>, gid: GroupId) {
        let Some(g) = self.groups.borrow_mut().remove(gid) else {
            return;
        };
        self.hangup.detach(g.conn.stream.as_raw_fd(), g.conn.gen());
        for wid in &g.subs {
            self.drop_waiter(*wid);
        }
        let GroupMode::Once { multipart } = g.mode else {
            return;
        };
        let reply = if multipart {
            self.multipart_answer(g.ready.into_iter().chain(g.errors).collect())
        } else {
            let mut all: Vec<Reply> = g.ready;
            all.sort_by_key(|r| r.last_modified.unwrap_or(Timestamp::ZERO));
            all.into_iter()
                .next()
                .or_else(|| g.errors.into_iter().next())
                .unwrap_or_else(|| Reply::text(400, "no sub-request to answer"))
        };
        let Ok(conn) = Rc::try_unwrap(g.conn) else {
            return;
        };
        let parked = super::watch::ParkedConn {
            conn,
            persistence: g.persistence,
            head_only: g.head_only,
        };
        tokio_uring::spawn(conn::answer_parked(
            self.clone(),
            parked,
            Shaped::from_reply(reply),
        ));
    }

    /// Shutdown: a stream ends with its close delimiter, a one-shot group answers `304`.
    pub(super) fn drain_group(self: &Rc<Self>, gid: GroupId) {
        let mode = self.groups.borrow_mut().get_mut(gid).map(|g| g.mode);
        match mode {
            Some(GroupMode::Stream(_)) => self.end_group(gid, End::Finish),
            Some(GroupMode::Once { .. }) => self.expire_group(gid),
            None => {}
        }
    }

    /// A one-shot group timed out with nothing ready: `304`.
    pub(super) fn expire_group(self: &Rc<Self>, gid: GroupId) {
        let expired = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(gid) else { return };
            if !matches!(g.mode, GroupMode::Once { .. }) {
                return;
            }
            g.ready.clear();
            g.errors.clear();
            g.errors.push(Reply::new(304));
            true
        };
        if expired {
            self.metrics().poll_timeouts.fetch_add(1, Relaxed);
            self.finish_once(gid);
        }
    }

    /// A complete `multipart/digest` answer holding `parts`.
    pub(super) fn multipart_answer(&self, parts: Vec<Reply>) -> Reply {
        if parts.len() == 1 && parts[0].status == 304 {
            return parts.into_iter().next().unwrap_or_else(|| Reply::new(304));
        }
        let b = self.boundary();
        let mut body = Body::from(b.opening(false));
        let mut pieces = Vec::new();
        for part in parts {
            let path = String::from_utf8_lossy(part.content_location.as_deref().unwrap_or(b""))
                .into_owned();
            if let Some(frame) = part_from_reply(StreamForm::Digest, &path, part, b) {
                frame.push_raw(&mut pieces);
            }
        }
        for p in pieces {
            body.push(p);
        }
        body.push(Boundary::closing(false));
        let mut reply = Reply::new(200);
        reply.content_type = Some(b.content_type("digest"));
        reply.body = body;
        reply
    }

    /// Queues a heartbeat on every stream that was idle since the last tick.
    pub(super) fn heartbeat_tick(self: &Rc<Self>, digest_heartbeat: &Frame) {
        let ids = self.groups.borrow().ids();
        for gid in ids {
            let beat = {
                let mut groups = self.groups.borrow_mut();
                let Some(g) = groups.get_mut(gid) else {
                    continue;
                };
                let was_active = std::mem::replace(&mut g.active, false);
                match g.mode {
                    _ if was_active || g.writing || g.ending => None,
                    GroupMode::Stream(StreamForm::Digest) => Some(digest_heartbeat.clone()),
                    GroupMode::Stream(StreamForm::MixedReplace) => g.last_replacement.clone(),
                    GroupMode::Once { .. } => None,
                }
            };
            if let Some(frame) = beat {
                self.enqueue(gid, &frame, true, None);
                if let Some(g) = self.groups.borrow_mut().get_mut(gid) {
                    g.active = false;
                }
            }
        }
    }
}
