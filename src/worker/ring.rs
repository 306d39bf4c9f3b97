//! The worker's own io_uring, beside tokio-uring's: operations whose completions are
//! handled directly, without a future, a waker or a task each.
//!
//! Two kinds live here, told apart by the top bits of the user data:
//! - hang-up polls of parked connections (`worker/hangup.rs`);
//! - stream sends (`worker/group.rs`): a change fanned out to ten thousand streams is
//!   ten thousand SQEs pushed here and submitted together, and their completions are
//!   processed in one loop.
//!
//! The ring's descriptor is registered with tokio's reactor and becomes readable when
//! completions are waiting. Submission is batched: entries are pushed during a unit of
//! work (a change's fan-out, an inbox drain, a completion batch) and submitted by
//! [`Ring::flush`] at its end, before the thread can go to sleep.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{squeue, IoUring};
use tokio::io::unix::AsyncFd;

/// Submission queue entries; the completion queue is twice that, and the kernel keeps
/// overflowed completions (IORING_FEAT_NODROP), so a larger burst is delivered over a
/// few wake-ups, never lost.
const RING_ENTRIES: u32 = 4096;

/// User-data tag of stream sends (hang-up polls have the top two bits clear).
pub const SEND_TAG: u64 = 1 << 62;

struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One completion.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
}

pub struct Ring {
    // Field order matters: `readiness` is dropped (deregistered) before `ring` closes
    // the descriptor it watches.
    readiness: AsyncFd<RingFd>,
    ring: RefCell<IoUring>,
    /// Entries pushed but not yet submitted.
    unsubmitted: Cell<u32>,
}

impl Ring {
    /// Creates the ring; must be called inside the worker's runtime (it registers with
    /// tokio's reactor).
    pub fn new() -> io::Result<Ring> {
        let ring = IoUring::builder().build(RING_ENTRIES)?;
        let fd = ring.as_raw_fd();
        // SAFETY: `fd` is the ring's open descriptor. The ring is owned by the same
        // `Ring` and declared after `readiness`, so it is closed only after the
        // `AsyncFd` has been dropped and deregistered; `RingFd` always returns that fd.
        let readiness =
            unsafe { AsyncFd::register_with_interest(RingFd(fd), tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        Ok(Ring {
            readiness,
            ring: RefCell::new(ring),
            unsubmitted: Cell::new(0),
        })
    }

    /// Queues an entry (submitted by the next [`Ring::flush`], or at once if the queue
    /// is full).
    ///
    /// # Safety
    ///
    /// Every buffer, iovec and header the entry points to must stay valid and unmoved
    /// until its completion has been returned by [`Ring::next_batch`], and its
    /// descriptor must stay open until the entry is submitted.
    pub unsafe fn push(&self, entry: &squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the caller keeps what the entry points to alive (this fn's contract).
        while unsafe { ring.submission().push(entry) }.is_err() {
            // Queue full: hand what is queued to the kernel and retry.
            if let Err(e) = ring.submit() {
                tracing::warn!(error = %e, "worker ring submit failed");
                return;
            }
            self.unsubmitted.set(0);
        }
        self.unsubmitted.set(self.unsubmitted.get() + 1);
    }

    /// Submits queued entries.
    pub fn flush(&self) {
        if self.unsubmitted.get() == 0 {
            return;
        }
        match self.ring.borrow_mut().submit() {
            Ok(_) => self.unsubmitted.set(0),
            Err(e) => tracing::warn!(error = %e, "worker ring submit failed"),
        }
    }

    /// Waits until completions are available and moves them into `out`.
    pub async fn next_batch(&self, out: &mut Vec<Completion>) -> io::Result<()> {
        loop {
            let mut guard = self.readiness.readable().await?;
            let before = out.len();
            out.extend(self.ring.borrow_mut().completion().map(|cqe| Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
            }));
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
