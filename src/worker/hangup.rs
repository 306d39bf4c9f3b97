//! Noticing that a parked client went away, without a task, a timer or a read buffer.
//!
//! Each worker owns a small io_uring of its own (beside tokio-uring's) on which every
//! parked socket has one `POLL_ADD` for `POLLRDHUP`. That poll ignores data (a client
//! may pipeline its next request while parked) and completes only when the peer closes
//! or resets the connection, so a parked connection costs no user-space memory here:
//! the kernel holds the poll. The ring's descriptor is registered with tokio's reactor
//! and becomes readable when completions are waiting.
//!
//! Tokens are [`WaiterId`](super::watch::WaiterId)s packed into the SQE's user data; a
//! completion for a waiter that is already gone (answered, re-parked with a new
//! generation) is ignored by the caller.
//!
//! Invariant: a poll holds a reference to the socket's file, so closing the descriptor
//! does not release it. Every poll is removed ([`HangupRing::unwatch`]) when its waiter
//! leaves the wait list for any reason other than the poll itself completing, and the
//! removal is submitted ([`HangupRing::flush`]) before the worker goes back to sleep.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring};
use tokio::io::unix::AsyncFd;

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

pub struct HangupRing {
    // Field order matters: `readiness` is dropped (deregistered) before `ring` closes
    // the descriptor it watches.
    readiness: AsyncFd<RingFd>,
    ring: RefCell<IoUring>,
    /// SQEs pushed but not yet submitted.
    unsubmitted: Cell<u32>,
}

/// What a completion says about the watched socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hangup {
    /// The peer closed or reset the connection.
    Closed(u64),
    /// The poll was removed by us (or failed): nothing to do.
    Removed(u64),
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
            unsubmitted: Cell::new(0),
        })
    }

    fn push(&self, entry: io_uring::squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: a POLL_ADD or POLL_REMOVE entry references no user memory (the fd is
        // a number, the user data an opaque token), so nothing must outlive the call.
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

    /// Starts watching `fd` for a hang-up; submitted at once so a parked client that
    /// leaves right away is noticed.
    pub fn watch(&self, fd: RawFd, token: u64) {
        let events = (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as u32;
        self.push(
            opcode::PollAdd::new(types::Fd(fd), events)
                .build()
                .user_data(token),
        );
        self.flush();
    }

    /// Stops watching the poll with `token`; batched until the next [`HangupRing::flush`].
    pub fn unwatch(&self, token: u64) {
        self.push(
            opcode::PollRemove::new(token)
                .build()
                .user_data(REMOVE_TOKEN),
        );
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

    /// Waits until completions are available and moves them into `out`.
    pub async fn next_batch(&self, out: &mut Vec<Hangup>) -> io::Result<()> {
        loop {
            let mut guard = self.readiness.readable().await?;
            let before = out.len();
            {
                let mut ring = self.ring.borrow_mut();
                for cqe in ring.completion() {
                    let token = cqe.user_data();
                    if token == REMOVE_TOKEN {
                        continue;
                    }
                    out.push(if cqe.result() > 0 {
                        Hangup::Closed(token)
                    } else {
                        Hangup::Removed(token)
                    });
                }
            }
            // The reactor runs on this thread, so no readiness event can be consumed
            // between the drain above and this clear: a completion posted meanwhile
            // raises a fresh edge that wakes us again.
            guard.clear_ready();
            if out.len() > before {
                return Ok(());
            }
        }
    }
}

/// User data of POLL_REMOVE entries themselves (their completions are ignored).
const REMOVE_TOKEN: u64 = u64::MAX;
