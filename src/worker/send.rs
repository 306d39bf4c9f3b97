//! Every write to a client: io_uring's `SEND`/`SENDMSG` (tokio-uring has no send for
//! TCP; its `writev` goes through the read/write file path, which measured ~4% more
//! server CPU per stream delivery, and allocates an iovec array per call).
//!
//! [`SendBufs`] lays a send out for the kernel: the shared `Bytes` pieces (never
//! copied), their iovecs and the message header. [`Sending`] submits it on
//! tokio-uring's ring through its escape hatch (`UnsubmittedOneshot`) and resubmits what
//! a short send left: the operation owns the buffers and a reference-counted owner of
//! the socket (the socket itself, or the connection holding it), so even if the
//! `Sending` is dropped the kernel never sees freed memory or a descriptor that was
//! closed and reused before the operation was issued. A connection task awaits one
//! ([`send_all`]); a worker's send driver polls all of its streams' (`group.rs`). The
//! descriptor number is passed alongside, so that a stream's send reads it from the
//! (hot) group instead of chasing the owner's pointers: with thousands of streams every
//! pointer hop per delivery is a cache miss.
//!
//! (Stream sends were also tried on the worker's own ring, completions handled without
//! a task each: the same CPU per delivery and 12% fewer deliveries/s, so reverted; see
//! docs/benchmarks.md, entry 5. Entry 13 is the driver that replaced a task per write.)

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use io_uring::{cqueue, opcode, squeue, types};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

/// Most iovecs handed to one `sendmsg` (the kernel's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// One send's buffers, laid out for the kernel. Moving a `SendBufs` does not move what
/// an entry built from it points to (all of it is on the heap).
pub struct SendBufs {
    pieces: Vec<Bytes>,
    /// Pieces beyond `IOV_MAX`, sent by a later entry.
    rest: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
    msg: Option<Box<libc::msghdr>>,
}

impl SendBufs {
    pub fn new(mut pieces: Vec<Bytes>) -> SendBufs {
        let rest = if pieces.len() > IOV_MAX {
            pieces.split_off(IOV_MAX)
        } else {
            Vec::new()
        };
        let mut bufs = SendBufs {
            pieces,
            rest,
            iovecs: Vec::new(),
            msg: None,
        };
        if bufs.pieces.len() > 1 {
            bufs.iovecs = bufs
                .pieces
                .iter()
                .map(|p| libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                })
                .collect();
            // SAFETY: an all-zero msghdr is a valid empty header (no name, no control data).
            let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
            msg.msg_iov = bufs.iovecs.as_mut_ptr();
            msg.msg_iovlen = bufs.iovecs.len() as _;
            bufs.msg = Some(msg);
        }
        bufs
    }

    /// Bytes this entry sends (not counting `rest`).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty() && self.rest.is_empty()
    }

    /// The entry sending these buffers on `fd`. It points into `self`: keep `self`
    /// alive (it may move) until the entry's completion.
    fn entry(&self, fd: RawFd) -> squeue::Entry {
        let fd = types::Fd(fd);
        let flags = libc::MSG_NOSIGNAL;
        match (&self.msg, self.pieces.as_slice()) {
            (Some(msg), _) => opcode::SendMsg::new(fd, &**msg as *const libc::msghdr)
                .flags(flags as u32)
                .build(),
            (None, [one]) => opcode::Send::new(fd, one.as_ptr(), one.len() as u32)
                .flags(flags)
                .build(),
            (None, _) => opcode::Send::new(fd, std::ptr::null(), 0)
                .flags(flags)
                .build(),
        }
    }

    /// After the kernel took `n` bytes: what is left to send, if anything.
    fn advance(self, mut n: usize) -> Option<SendBufs> {
        let mut pieces = self.pieces;
        let done = pieces
            .iter()
            .take_while(|p| {
                if n >= p.len() {
                    n -= p.len();
                    true
                } else {
                    false
                }
            })
            .count();
        pieces.drain(..done);
        if let Some(first) = pieces.first_mut() {
            first.advance(n);
        }
        pieces.extend(self.rest);
        (!pieces.is_empty()).then(|| SendBufs::new(pieces))
    }
}

/// What an in-flight send on tokio-uring's ring keeps alive: the buffers, and `K`, a
/// reference to what owns the socket.
struct OneshotSend<K> {
    owner: K,
    bufs: SendBufs,
}

struct SendDone<K>(PhantomData<K>);

impl<K> OneshotOutputTransform for SendDone<K> {
    type Output = (io::Result<usize>, SendBufs, K);
    type StoredData = OneshotSend<K>;

    fn transform_oneshot_output(self, data: OneshotSend<K>, cqe: cqueue::Entry) -> Self::Output {
        let res = cqe.result();
        let out = if res >= 0 {
            Ok(res as usize)
        } else {
            Err(io::Error::from_raw_os_error(-res))
        };
        (out, data.bufs, data.owner)
    }
}

/// Submits one send of `bufs` on `fd`.
fn submit<K: Unpin + 'static>(fd: RawFd, owner: K, bufs: SendBufs) -> Op<K> {
    let entry = bufs.entry(fd);
    // The entry points into `bufs`, which the operation owns (with the socket's owner)
    // until the kernel completes it, even if the operation is dropped first.
    UnsubmittedOneshot::new(OneshotSend { owner, bufs }, SendDone(PhantomData), entry).submit()
}

type Op<K> = InFlightOneshot<OneshotSend<K>, SendDone<K>>;

/// Every piece sent on socket `fd`, short sends handled, as a state machine a caller
/// polls ([`send_all`] awaits one; a worker's stream sends are many of them polled by
/// one task). `owner` keeps the socket open: the operation in flight holds it until
/// the kernel completes it (so even a dropped `Sending` never leaves the kernel a closed
/// descriptor), and it is handed back with the result.
pub struct Sending<K: Unpin + 'static> {
    fd: RawFd,
    total: u64,
    op: Op<K>,
}

impl<K: Unpin + 'static> Sending<K> {
    /// Starts sending `pieces` (at least one).
    pub fn start(fd: RawFd, owner: K, pieces: Vec<Bytes>) -> Sending<K> {
        Sending {
            fd,
            total: 0,
            op: submit(fd, owner, SendBufs::new(pieces)),
        }
    }

    /// `Ready` once everything is sent (the byte count) or a send failed. Not to be
    /// polled again after that.
    pub fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<(io::Result<u64>, K)> {
        loop {
            let (res, bufs, owner) = ready!(Pin::new(&mut self.op).poll(cx));
            let n = match res {
                Ok(n) => n,
                Err(e) => return Poll::Ready((Err(e), owner)),
            };
            if n == 0 && !bufs.is_empty() {
                return Poll::Ready((Err(io::ErrorKind::WriteZero.into()), owner));
            }
            self.total += n as u64;
            match bufs.advance(n) {
                Some(rest) => self.op = submit(self.fd, owner, rest),
                None => return Poll::Ready((Ok(self.total), owner)),
            }
        }
    }
}

/// Sends every piece on socket `fd` (see [`Sending`]).
pub async fn send_all<K: Unpin + 'static>(
    fd: RawFd,
    owner: K,
    pieces: Vec<Bytes>,
) -> (io::Result<u64>, K) {
    if pieces.is_empty() {
        return (Ok(0), owner);
    }
    let mut sending = Sending::start(fd, owner, pieces);
    std::future::poll_fn(|cx| sending.poll_sent(cx)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(v: &[&'static str]) -> Vec<Bytes> {
        v.iter().map(|s| Bytes::from_static(s.as_bytes())).collect()
    }

    fn flat(b: &SendBufs) -> Vec<u8> {
        b.pieces
            .iter()
            .chain(&b.rest)
            .flat_map(|p| p.iter().copied())
            .collect()
    }

    #[test]
    fn advancing_past_short_sends() {
        let b = SendBufs::new(pieces(&["abc", "de", "fgh"]));
        assert_eq!(b.len(), 8);
        assert!(b.msg.is_some(), "several pieces: SENDMSG");
        let b = b.advance(4).unwrap();
        assert_eq!(flat(&b), b"efgh");
        let b = b.advance(1).unwrap();
        assert_eq!(flat(&b), b"fgh");
        assert!(b.msg.is_none(), "one piece left: SEND");
        assert!(b.advance(3).is_none());
    }

    #[test]
    fn more_pieces_than_iov_max_go_in_several_entries() {
        let many: Vec<Bytes> = (0..IOV_MAX + 5).map(|_| Bytes::from_static(b"x")).collect();
        let b = SendBufs::new(many);
        assert_eq!(b.len(), IOV_MAX);
        let b = b.advance(IOV_MAX).unwrap();
        assert_eq!(b.len(), 5);
    }
}
