//! Registered ("fixed") descriptors for stream sends.
//!
//! Every `SEND` names its socket by descriptor, and the kernel looks the descriptor up in
//! the process's table and takes a reference on the file for the duration of the
//! operation (`fget`, 3–4% of the server's CPU in the stream profile). A descriptor
//! registered with the ring is looked up in the ring's own table with no reference
//! taken. Each worker registers a sparse table on its tokio-uring ring and gives a slot
//! to every stream's socket, for the stream's life ([`FixedSlot`] clears it when the
//! stream's group is dropped, so the socket is released with its connection).
//!
//! tokio-uring does not expose its ring, so the worker finds it: ring creation is
//! serialised by [`RING_SETUP`], and the one io_uring descriptor that appears in
//! `/proc/self/fd` while the worker builds its runtime is that runtime's ring. Then a
//! probe (a write to an eventfd named by slot, submitted through tokio-uring) proves the
//! table is on the ring tokio-uring submits to; anything unexpected turns registration
//! off for the worker and streams use plain descriptors, as with `--registered-streams 0`.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};

use io_uring::{cqueue, opcode, types};
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

/// Held by a thread while it creates an io_uring (a worker's runtime or its hang-up
/// ring), so a worker can tell its runtime's ring from the others.
static RING_SETUP: Mutex<()> = Mutex::new(());

/// Serialises io_uring creation in this process (see the module documentation).
pub fn ring_setup_lock() -> MutexGuard<'static, ()> {
    RING_SETUP.lock().unwrap_or_else(|e| e.into_inner())
}

// From linux/io_uring.h.
const IORING_REGISTER_FILES_UPDATE: libc::c_uint = 6;
const IORING_REGISTER_FILES2: libc::c_uint = 13;
const IORING_RSRC_REGISTER_SPARSE: u32 = 1;

#[repr(C)]
struct RsrcRegister {
    nr: u32,
    flags: u32,
    resv2: u64,
    data: u64,
    tags: u64,
}

#[repr(C)]
struct FilesUpdate {
    offset: u32,
    resv: u32,
    fds: u64,
}

fn io_uring_register(ring: RawFd, op: libc::c_uint, arg: *const libc::c_void, n: u32) -> i64 {
    // SAFETY: `arg` points to a live value of the layout the kernel expects for `op`
    // (checked by each caller), which the kernel only reads during the call.
    unsafe { libc::syscall(libc::SYS_io_uring_register, ring, op, arg, n) }
}

/// The io_uring descriptors open in this process.
pub fn io_uring_fds() -> io::Result<HashSet<RawFd>> {
    let mut fds = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if std::fs::read_link(entry.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[io_uring]")
        {
            fds.insert(fd);
        }
    }
    Ok(fds)
}

/// A worker's table of registered descriptors.
pub struct FixedFiles {
    ring: RawFd,
    size: u32,
    /// Slots never handed out start here.
    next: Cell<u32>,
    /// Slots handed back.
    free: RefCell<Vec<u32>>,
}

impl FixedFiles {
    /// Registers a sparse table of `size` slots on `ring`, which must be the current
    /// thread's tokio-uring ring with nothing registered yet.
    pub fn register(ring: RawFd, size: u32) -> io::Result<FixedFiles> {
        let reg = RsrcRegister {
            nr: size,
            flags: IORING_RSRC_REGISTER_SPARSE,
            resv2: 0,
            data: 0,
            tags: 0,
        };
        let size_of = std::mem::size_of::<RsrcRegister>() as u32;
        if io_uring_register(
            ring,
            IORING_REGISTER_FILES2,
            (&reg as *const RsrcRegister).cast(),
            size_of,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(FixedFiles {
            ring,
            size,
            next: Cell::new(0),
            free: RefCell::new(Vec::new()),
        })
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// Puts `fd` (or nothing, for -1) in `slot`.
    fn set(&self, slot: u32, fd: RawFd) -> io::Result<()> {
        let fds = [fd];
        let update = FilesUpdate {
            offset: slot,
            resv: 0,
            fds: fds.as_ptr() as u64,
        };
        match io_uring_register(
            self.ring,
            IORING_REGISTER_FILES_UPDATE,
            (&update as *const FilesUpdate).cast(),
            1,
        ) {
            1 => Ok(()),
            n if n < 0 => Err(io::Error::last_os_error()),
            _ => Err(io::ErrorKind::Other.into()),
        }
    }

    /// Registers `fd` in a free slot, if one is left.
    pub fn claim(self: &Rc<Self>, fd: RawFd) -> Option<FixedSlot> {
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None if self.next.get() < self.size => {
                self.next.set(self.next.get() + 1);
                self.next.get() - 1
            }
            None => return None,
        };
        if let Err(e) = self.set(slot, fd) {
            tracing::debug!(error = %e, slot, "registering a stream's socket failed");
            self.free.borrow_mut().push(slot);
            return None;
        }
        Some(FixedSlot {
            files: self.clone(),
            slot,
        })
    }

    /// Proves that the table is on the ring tokio-uring submits to: an eventfd put in a
    /// slot is written through that slot. Must run inside the worker's runtime.
    pub async fn probe(self: &Rc<Self>) -> io::Result<()> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just created and owned by nothing else.
        let event = unsafe { OwnedFd::from_raw_fd(raw) };
        let slot = self
            .claim(event.as_raw_fd())
            .ok_or_else(|| io::Error::other("no slot for the probe"))?;
        let value: Box<u64> = Box::new(1);
        let entry =
            opcode::Write::new(types::Fixed(slot.slot), (&*value as *const u64).cast(), 8).build();
        // The entry points into `value`, which the operation owns until it completes.
        let res = UnsubmittedOneshot::new(value, ProbeDone, entry)
            .submit()
            .await;
        drop(slot);
        match res {
            8 => Ok(()),
            n if n < 0 => Err(io::Error::from_raw_os_error(-n)),
            n => Err(io::Error::other(format!("probe wrote {n} bytes"))),
        }
    }
}

struct ProbeDone;

impl OneshotOutputTransform for ProbeDone {
    type Output = i32;
    type StoredData = Box<u64>;

    fn transform_oneshot_output(self, _: Box<u64>, cqe: cqueue::Entry) -> i32 {
        cqe.result()
    }
}

/// A stream socket's slot in its worker's table, cleared when dropped (the table holds
/// a reference to the socket: until the slot is cleared, closing the descriptor would
/// not close the connection). Operations in flight keep their own reference, so
/// clearing a slot under them is safe.
pub struct FixedSlot {
    files: Rc<FixedFiles>,
    slot: u32,
}

impl FixedSlot {
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Drop for FixedSlot {
    fn drop(&mut self) {
        match self.files.set(self.slot, -1) {
            Ok(()) => self.files.free.borrow_mut().push(self.slot),
            // Not reused: the slot may still hold the socket.
            Err(e) => {
                tracing::warn!(error = %e, slot = self.slot, "clearing a registered socket failed")
            }
        }
    }
}
