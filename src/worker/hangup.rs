//! Noticing that a parked client went away, without a task, a timer or a read buffer.
//!
//! A connection gets one `POLL_ADD` for `POLLRDHUP` on the worker's own ring
//! (`worker/ring.rs`) the first time it parks. That poll ignores data (a client may
//! pipeline its next request while parked) and completes only when the peer closes or
//! resets the connection, so a parked connection costs no user-space memory here: the
//! kernel holds the poll.
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

use std::cell::RefCell;
use std::os::fd::RawFd;

use io_uring::{opcode, types};

use super::group::GroupId;
use super::ring::Ring;
use super::watch::WaiterId;

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

/// The hang-up slots of one worker, indexed by descriptor.
#[derive(Default)]
pub struct Hangups {
    slots: RefCell<Vec<Slot>>,
}

fn token(fd: RawFd, gen: u32) -> u64 {
    (u64::from(fd as u32) << 32) | u64::from(gen)
}

impl Hangups {
    /// `holder` now holds connection (`fd`, `gen`): its hang-up frees `holder`. Arms the
    /// connection's poll the first time (submitted at once, so a client that leaves
    /// right away is noticed).
    pub fn attach(&self, ring: &Ring, fd: RawFd, gen: u32, holder: Holder) {
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
            let entry = opcode::PollAdd::new(types::Fd(fd), events)
                .build()
                .user_data(token(fd, gen));
            // SAFETY: a POLL_ADD references no memory; the descriptor is open (its
            // connection is alive) and the entry is submitted right below.
            unsafe { ring.push(&entry) };
            ring.flush();
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

    /// A poll completed: the holder to free if its peer hung up (and it is held).
    pub fn completed(&self, user_data: u64, result: i32) -> Option<Holder> {
        let (fd, gen) = ((user_data >> 32) as usize, user_data as u32);
        let mut slots = self.slots.borrow_mut();
        // A slot of another generation: an earlier connection on a reused descriptor.
        let slot = slots.get_mut(fd).filter(|s| s.gen == gen)?;
        slot.armed = false;
        if result > 0 {
            slot.holder.take()
        } else {
            None
        }
    }
}
