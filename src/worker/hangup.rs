//! Noticing that a parked client went away, without a task, a timer or a read buffer.
//!
//! Each worker owns a small io_uring of its own (beside tokio-uring's) on which a
//! connection gets one `POLL_ADD` for `POLLRDHUP` the first time it parks. That poll
//! ignores data (a client may pipeline its next request while parked) and completes only
//! when the peer closes or resets the connection, so a parked connection costs no
//! user-space memory here: the kernel holds the poll.
//!
//! The poll is *persistent*: it stays armed while the connection is answered, reads its
//! next request and parks again, so a long-poll cycle costs no poll syscall at all. (An
//! earlier version added and removed a poll per cycle; `POLL_REMOVE` looks the poll up
//! in a hash of at most 256 buckets, which with thousands of parked clients cost ~10% of
//! the server's CPU.) A slot table indexed by descriptor says who holds each connection
//! right now — a parked long poll, a group, or nobody (the connection is busy); a
//! completion for a busy connection is ignored (its task sees the end-of-file itself).
//!
//! Invariant: a poll holds a reference to the socket, so closing the descriptor alone
//! would not release it. Every connection is shut down when it is dropped
//! (`Connection::drop`), which completes its poll.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring};
use tokio::io::unix::AsyncFd;

use super::group::GroupId;
use super::watch::WaiterId;

/// Entries in the hang-up ring's submission queue; the completion queue is twice that
/// and the kernel keeps overflowed completions (IORING_FEAT_NODROP), so a burst of
/// hang-ups larger than this is delivered over a few wake-ups, never lost.
const RING_ENTRIES: u32 = 4096;

struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Who holds a connection while its hang-up matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Waiter(WaiterId),
    Group(GroupId),
}

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The connection generation this slot describes (descriptors are reused).
    gen: u32,
    armed: bool,
    holder: Option<Holder>,
}

pub struct HangupRing {
    // Field order matters: `readiness` is dropped (deregistered) before `ring` closes
    // the descriptor it watches.
    readiness: AsyncFd<RingFd>,
    ring: RefCell<IoUring>,
    /// Indexed by descriptor.
    slots: RefCell<Vec<Slot>>,
    /// SQEs pushed but not yet submitted.
    unsubmitted: Cell<u32>,
}

fn token(fd: RawFd, gen: u32) -> u64 {
    (u64::from(fd as u32) << 32) | u64::from(gen)
}

impl HangupRing {
    /// Creates the ring; must be called inside the worker's runtime (it registers with tokio's reactor).
    pub fn new() -> io::Result<HangupRing> {
        let ring = IoUring::builder().build(RING_ENTRIES)?;
        let fd = ring.as_raw_fd();
        // SAFETY: `fd` is the ring's open descriptor. The ring is owned by the same
        // `HangupRing` and declared after `readiness`, so it is closed only after the
        // `AsyncFd` has been dropped and deregistered; `RingFd` always returns that fd.
        let readiness =
            unsafe { AsyncFd::register_with_interest(RingFd(fd), tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        Ok(HangupRing {
            readiness,
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            unsubmitted: Cell::new(0),
        })
    }

    fn push(&self, entry: io_uring::squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: a POLL_ADD entry references no user memory (the fd is a number, the
        // user data an opaque token), so nothing must outlive the call.
        while unsafe { ring.submission().push(&entry) }.is_err() {
            // Queue full: hand what is queued to the kernel and retry.
            if let Err(e) = ring.submit() {
                tracing::warn!(error = %e, "hang-up ring submit failed");
                return;
            }
            self.unsubmitted.set(0);
        }
        self.unsubmitted.set(self.unsubmitted.get() + 1);
    }

    /// `holder` now holds connection (`fd`, `gen`): its hang-up frees `holder`. Arms the
    /// connection's poll the first time (submitted at once, so a client that leaves
    /// right away is noticed).
    pub fn attach(&self, fd: RawFd, gen: u32, holder: Holder) {
        let Ok(index) = usize::try_from(fd) else {
            return;
        };
        let arm = {
            let mut slots = self.slots.borrow_mut();
            if slots.len() <= index {
                slots.resize(index + 1, Slot::default());
            }
            let slot = &mut slots[index];
            if slot.gen != gen {
                *slot = Slot {
                    gen,
                    armed: false,
                    holder: None,
                };
            }
            slot.holder = Some(holder);
            !std::mem::replace(&mut slot.armed, true)
        };
        if arm {
            let events = (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as u32;
            self.push(
                opcode::PollAdd::new(types::Fd(fd), events)
                    .build()
                    .user_data(token(fd, gen)),
            );
            self.flush();
        }
    }

    /// Nobody holds connection (`fd`, `gen`) any more (it was answered): its poll stays
    /// armed for the next time it parks.
    pub fn detach(&self, fd: RawFd, gen: u32) {
        let Ok(index) = usize::try_from(fd) else {
            return;
        };
        if let Some(slot) = self.slots.borrow_mut().get_mut(index) {
            if slot.gen == gen {
                slot.holder = None;
            }
        }
    }

    /// Submits queued entries.
    pub fn flush(&self) {
        if self.unsubmitted.get() == 0 {
            return;
        }
        match self.ring.borrow_mut().submit() {
            Ok(_) => self.unsubmitted.set(0),
            Err(e) => tracing::warn!(error = %e, "hang-up ring submit failed"),
        }
    }

    /// Waits until some polls completed; moves the holders of connections whose peer
    /// hung up into `out` (and forgets them).
    pub async fn next_batch(&self, out: &mut Vec<Holder>) -> io::Result<()> {
        loop {
            let mut guard = self.readiness.readable().await?;
            let mut completed = 0;
            {
                let mut ring = self.ring.borrow_mut();
                let mut slots = self.slots.borrow_mut();
                for cqe in ring.completion() {
                    completed += 1;
                    let token = cqe.user_data();
                    let (fd, gen) = ((token >> 32) as usize, token as u32);
                    let Some(slot) = slots.get_mut(fd).filter(|s| s.gen == gen) else {
                        continue; // an earlier connection on a reused descriptor
                    };
                    slot.armed = false;
                    if cqe.result() > 0 {
                        out.extend(slot.holder.take());
                    }
                }
            }
            // The reactor runs on this thread, so no readiness event can be consumed
            // between the drain above and this clear: a completion posted meanwhile
            // raises a fresh edge that wakes us again.
            guard.clear_ready();
            if completed > 0 {
                return Ok(());
            }
        }
    }
}
