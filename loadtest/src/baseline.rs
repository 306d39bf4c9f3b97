//! `halley-load baseline-server`: a minimal reference server, the *ceiling* of the
//! chunked-stream fan-out benchmark.
//!
//! It does nothing but write each pre-encoded frame once per subscriber. It speaks the
//! tiny subset of Nchan's protocol that `fanout --target nchan --mode stream
//! --nchan-stream chunked` uses, so the load generator drives it unchanged:
//!
//! - `GET /sub/<ch>`: answered at once with a `200` chunked head; the connection is
//!   registered as a subscriber of `<ch>` (before the head is sent) and receives every
//!   message published to `<ch>` afterwards as exactly one HTTP chunk.
//! - `POST /pub/<ch>` with a `Content-Length` body (keep-alive, pipelining): the chunk
//!   `<hex len>\r\n<body>\r\n` is encoded once into a [`Bytes`] shared by every
//!   subscriber on every thread, the publisher gets `202`, and the chunk is queued on
//!   every subscriber of `<ch>`.
//! - Anything else: `400`/`404`/`405`/`411`/`413` with `Connection: close`, then close.
//!
//! Shape: one thread per core, no async runtime. Each thread has its own io_uring and its
//! own `SO_REUSEPORT` listener; one `Accept` re-armed on completion, one `Recv` per
//! connection, `Send`/`SendMsg` (several queued frames in one iovec array) with
//! `MSG_NOSIGNAL`, everything a loop turn queued submitted by one `submit_and_wait(1)`. A
//! publish is fanned out by the thread that received it to its own subscribers and handed
//! to every other thread as `(channel, chunk)` over a crossbeam channel, with an eventfd
//! (read by an op in each ring) to wake it.
//!
//! What it deliberately does not do, so that it stays the cheapest possible server for
//! that scenario: no history or message buffer (a subscriber only gets what is published
//! after it subscribed), no `Last-Modified`/`Etag`/ids, no long polls, no multipart, no
//! multiplexed subscribers, no timeouts or keep-alive limits, no bound on a slow
//! subscriber's queue, no graceful shutdown (it runs until killed), no configuration
//! beyond the listen address and thread count. It parses nothing beyond the request line
//! and the `Content-Length`/`Transfer-Encoding` headers.

use bytes::{BufMut, Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// Largest publish body.
const MAX_BODY: usize = 1024 * 1024;
/// Read buffer of a new connection (grown for large publishes, up to head + body).
const INITIAL_BUF: usize = 4096;
/// Read buffer of a subscriber: it only has to notice the hang-up.
const SUB_BUF: usize = 64;
/// Frames per `SendMsg`.
const MAX_IOV: usize = 64;
/// Submission queue entries per ring (the completion queue is twice that).
const RING_ENTRIES: u32 = 4096;
/// Listen backlog.
const BACKLOG: i32 = 4096;

const SUB_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
const ACCEPTED: &[u8] = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const METHOD_NOT_ALLOWED: &[u8] =
    b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const LENGTH_REQUIRED: &[u8] =
    b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const TOO_LARGE: &[u8] =
    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

// Operation kinds, the low byte of an SQE's user_data.
const OP_ACCEPT: u8 = 1;
const OP_ACCEPT_RETRY: u8 = 2;
const OP_WAKE: u8 = 3;
const OP_RECV: u8 = 4;
const OP_SEND: u8 = 5;

/// Generations are 24 bits of the user_data.
const GEN_MASK: u32 = 0x00ff_ffff;

/// user_data: slab key (32 bits) | generation (24 bits) | op kind (8 bits).
fn user_data(key: usize, gen: u32, kind: u8) -> u64 {
    ((key as u64 & 0xffff_ffff) << 32) | (u64::from(gen & GEN_MASK) << 8) | u64::from(kind)
}

fn split_user_data(ud: u64) -> (usize, u32, u8) {
    ((ud >> 32) as usize, ((ud >> 8) as u32) & GEN_MASK, ud as u8)
}

/// A publish handed to the other threads: channel name and the encoded chunk.
type Msg = (Bytes, Bytes);

/// The server's threads; they run until the process is killed.
pub struct Server {
    addr: SocketAddr,
    threads: usize,
    exits: Receiver<io::Error>,
}

impl Server {
    /// The address the listeners are bound to (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until a worker thread stops (which only happens on a fatal error) and
    /// returns its error.
    pub fn wait(self) -> io::Error {
        self.exits
            .recv()
            .unwrap_or_else(|_| io::Error::other("every worker thread is gone"))
    }
}

/// Binds `threads` `SO_REUSEPORT` listeners on `listen` (port 0: a free port, the same
/// for all of them) and starts one worker thread per listener in the background.
pub fn start(listen: SocketAddr, threads: usize) -> io::Result<Server> {
    let threads = threads.max(1);
    let first = listener(listen)?;
    let addr = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has no IP address"))?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(listener(addr)?);
    }
    let mut wakes = Vec::with_capacity(threads);
    let mut rings = Vec::with_capacity(threads);
    let mut txs = Vec::with_capacity(threads);
    let mut rxs = Vec::with_capacity(threads);
    for _ in 0..threads {
        wakes.push(Arc::new(eventfd()?));
        rings.push(
            IoUring::builder()
                .setup_cqsize(RING_ENTRIES * 2)
                .build(RING_ENTRIES)?,
        );
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        txs.push(tx);
        rxs.push(rx);
    }
    let (exit_tx, exits) = crossbeam_channel::unbounded();
    for (i, ((listener, ring), inbox)) in listeners.into_iter().zip(rings).zip(rxs).enumerate() {
        let peers = (0..threads)
            .filter(|&j| j != i)
            .map(|j| Peer {
                tx: txs[j].clone(),
                wake: wakes[j].clone(),
                pending: false,
            })
            .collect();
        let wake = wakes[i].clone();
        let exit_tx = exit_tx.clone();
        std::thread::Builder::new()
            .name(format!("baseline-{i}"))
            .spawn(move || {
                let mut notice = ExitNotice {
                    tx: exit_tx,
                    err: None,
                };
                let worker = Worker::new(ring, listener, wake, inbox, peers);
                notice.err = Some(worker.run());
            })?;
    }
    Ok(Server {
        addr,
        threads,
        exits,
    })
}

/// `halley-load baseline-server`: starts the server and blocks (until killed, or until a
/// worker thread fails).
pub fn run(args: &crate::cli::BaselineArgs) -> anyhow::Result<()> {
    let threads = match args.threads {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let server = start(args.listen, threads)
        .map_err(|e| anyhow::anyhow!("cannot start on {}: {e}", args.listen))?;
    eprintln!(
        "baseline-server listening on {}, {} threads",
        server.addr(),
        server.threads
    );
    Err(anyhow::anyhow!(
        "a baseline-server thread stopped: {}",
        server.wait()
    ))
}

/// Tells [`Server::wait`] that its thread ended, with its error, or that it panicked.
struct ExitNotice {
    tx: Sender<io::Error>,
    err: Option<io::Error>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let e = self
            .err
            .take()
            .unwrap_or_else(|| io::Error::other("worker thread panicked"));
        let _ = self.tx.send(e);
    }
}

/// A blocking listening socket with `SO_REUSEPORT` and `TCP_NODELAY` (inherited by the
/// accepted connections on Linux).
fn listener(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s)
}

/// A blocking eventfd (io_uring polls it; writers never block, the counter cannot
/// realistically reach its limit).
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd(2), is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What one request is, given the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Incomplete; the request's total length (head + body) once known.
    Partial(Option<usize>),
    /// `GET /sub/<ch>`; `len` bytes consumed.
    Subscribe { channel: Range<usize>, len: usize },
    /// `POST /pub/<ch>`; `len` bytes consumed (head + body).
    Publish {
        channel: Range<usize>,
        body: Range<usize>,
        len: usize,
    },
    /// Refused with this response; the connection closes after it.
    Refuse(&'static [u8]),
}

/// A `Content-Length` value: digits only (a value too long to parse counts as too large).
fn content_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if v.len() > 15 {
        return Some(usize::MAX);
    }
    Some(
        v.iter()
            .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0')),
    )
}

/// Parses the request at the start of `data`.
fn parse(data: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(data) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if data.len() < MAX_HEAD => return Parsed::Partial(None),
        _ => return Parsed::Refuse(BAD_REQUEST),
    };
    if req.version != Some(1) {
        return Parsed::Refuse(BAD_REQUEST);
    }
    let mut length: Option<usize> = None;
    let mut transfer_encoding = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match content_length(h.value) {
                Some(n) if length.is_none_or(|m| m == n) => length = Some(n),
                _ => return Parsed::Refuse(BAD_REQUEST),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        }
    }
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let (publish, channel) = if let Some(c) = path.strip_prefix("/pub/") {
        (true, c)
    } else if let Some(c) = path.strip_prefix("/sub/") {
        (false, c)
    } else {
        return Parsed::Refuse(NOT_FOUND);
    };
    if channel.is_empty() {
        return Parsed::Refuse(NOT_FOUND);
    }
    // `channel` is a slice of `data` (httparse borrows from its input).
    let start = channel.as_ptr() as usize - data.as_ptr() as usize;
    let channel = start..start + channel.len();
    match (publish, req.method.unwrap_or("")) {
        (false, "GET") => {
            if transfer_encoding || length.unwrap_or(0) != 0 {
                return Parsed::Refuse(BAD_REQUEST);
            }
            Parsed::Subscribe {
                channel,
                len: head_len,
            }
        }
        (true, "POST") => {
            let Some(n) = length.filter(|_| !transfer_encoding) else {
                return Parsed::Refuse(LENGTH_REQUIRED);
            };
            if n > MAX_BODY {
                return Parsed::Refuse(TOO_LARGE);
            }
            let len = head_len + n;
            if data.len() < len {
                return Parsed::Partial(Some(len));
            }
            Parsed::Publish {
                channel,
                body: head_len..len,
                len,
            }
        }
        _ => Parsed::Refuse(METHOD_NOT_ALLOWED),
    }
}

/// One HTTP chunk holding `body` (non-empty: an empty chunk would end the stream).
fn encode_chunk(body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(body.len() + 12);
    let _ = std::fmt::Write::write_fmt(&mut b, format_args!("{:x}\r\n", body.len()));
    b.put_slice(body);
    b.put_slice(b"\r\n");
    b.freeze()
}

/// The io_uring with the entries that did not fit in its submission queue.
struct Ring {
    uring: IoUring,
    backlog: VecDeque<squeue::Entry>,
}

impl Ring {
    /// Queues `e` for the next submission (submitting at once if the queue is full).
    ///
    /// # Safety
    ///
    /// Every buffer, descriptor and structure `e` points to must stay valid (and not be
    /// moved or freed) until its completion has been reaped.
    unsafe fn push(&mut self, e: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: the caller guarantees what `e` points to outlives its completion.
            if unsafe { self.uring.submission().push(&e) }.is_ok() {
                return;
            }
            // Full: hand the queued entries to the kernel and retry once.
            let _ = self.uring.submit();
            // SAFETY: as above.
            if unsafe { self.uring.submission().push(&e) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(e);
    }

    /// Moves backlogged entries into the submission queue, as many as fit.
    fn flush_backlog(&mut self) {
        while let Some(e) = self.backlog.front() {
            // SAFETY: entries reach the backlog only through `push`, whose callers
            // guarantee that what they point to outlives their completion.
            if unsafe { self.uring.submission().push(e) }.is_err() {
                if self.uring.submit().is_err() {
                    return;
                }
                // SAFETY: as above.
                if unsafe { self.uring.submission().push(e) }.is_err() {
                    return;
                }
            }
            self.backlog.pop_front();
        }
    }
}

/// Another worker thread: where to hand publishes and how to wake it.
struct Peer {
    tx: Sender<Msg>,
    wake: Arc<OwnedFd>,
    /// Something was sent to it this turn; wake it before waiting.
    pending: bool,
}

/// One connection. Everything an in-flight op points to lives here, on the heap (the
/// entry itself moves when the slab grows): `buf` (Recv), the `Bytes` at the front of
/// `out` (Send/SendMsg), `iov` and `msg` (SendMsg).
struct Conn {
    fd: OwnedFd,
    gen: u32,
    buf: Box<[u8]>,
    filled: usize,
    recv_busy: bool,
    send_busy: bool,
    /// Frames at the front of `out` covered by the send in flight.
    in_flight: usize,
    /// Bytes of `out[0]` already sent.
    offset: usize,
    out: VecDeque<Bytes>,
    iov: Vec<libc::iovec>,
    msg: Option<Box<libc::msghdr>>,
    /// Channel and position in its subscriber list.
    sub: Option<(Bytes, usize)>,
    subscriber: bool,
    /// In the worker's `dirty` list (frames queued, send to start at the end of the turn).
    dirty: bool,
    /// Close once `out` is sent (a refusal was queued).
    close_after_flush: bool,
    /// Shut down; freed (and the descriptor closed) when no op is in flight.
    closing: bool,
}

impl Conn {
    fn new(fd: OwnedFd, gen: u32) -> Conn {
        Conn {
            fd,
            gen,
            buf: vec![0; INITIAL_BUF].into_boxed_slice(),
            filled: 0,
            recv_busy: false,
            send_busy: false,
            in_flight: 0,
            offset: 0,
            out: VecDeque::new(),
            iov: Vec::new(),
            msg: None,
            sub: None,
            subscriber: false,
            dirty: false,
            close_after_flush: false,
            closing: false,
        }
    }
}

/// One thread's event loop.
struct Worker {
    ring: Ring,
    listener: Socket,
    wake: Arc<OwnedFd>,
    /// Target of the eventfd `Read`.
    wake_buf: Box<u64>,
    /// Delay before re-arming `Accept` after a failure such as EMFILE.
    retry_ts: Box<types::Timespec>,
    inbox: Receiver<Msg>,
    peers: Vec<Peer>,
    conns: Slab<Conn>,
    channels: HashMap<Bytes, Vec<usize>>,
    dirty: Vec<usize>,
    next_gen: u32,
    cqes: Vec<(u64, i32)>,
}

impl Worker {
    fn new(
        uring: IoUring,
        listener: Socket,
        wake: Arc<OwnedFd>,
        inbox: Receiver<Msg>,
        peers: Vec<Peer>,
    ) -> Worker {
        Worker {
            ring: Ring {
                uring,
                backlog: VecDeque::new(),
            },
            listener,
            wake,
            wake_buf: Box::new(0),
            retry_ts: Box::new(types::Timespec::new().nsec(10_000_000)),
            inbox,
            peers,
            conns: Slab::new(),
            channels: HashMap::new(),
            dirty: Vec::new(),
            next_gen: 0,
            cqes: Vec::with_capacity(RING_ENTRIES as usize * 2),
        }
    }

    /// Runs the loop; returns only on a fatal ring error (or a panic).
    fn run(mut self) -> io::Error {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.arm_accept();
            self.arm_wake();
            loop {
                if let Err(e) = self.turn() {
                    return e;
                }
            }
        }));
        // Ops still in flight point into this worker's buffers, and the kernel may
        // complete them after the ring is dropped: leak everything instead.
        std::mem::forget(self);
        result.unwrap_or_else(|_| io::Error::other("worker thread panicked"))
    }

    /// One loop turn: start queued sends, submit everything, wait for and handle
    /// completions.
    fn turn(&mut self) -> io::Result<()> {
        self.flush_dirty();
        self.ring.flush_backlog();
        self.flush_wakes();
        match self.ring.uring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .uring
                .completion()
                .map(|c| (c.user_data(), c.result())),
        );
        for &(ud, res) in &cqes {
            self.complete(ud, res);
        }
        self.cqes = cqes;
        Ok(())
    }

    fn complete(&mut self, ud: u64, res: i32) {
        let (key, gen, kind) = split_user_data(ud);
        match kind {
            OP_ACCEPT => self.on_accept(res),
            OP_ACCEPT_RETRY => self.arm_accept(),
            OP_WAKE => self.on_wake(),
            OP_RECV | OP_SEND => {
                // A completion for a slot that was freed and reused is stale.
                if self.conns.get(key).is_none_or(|c| c.gen != gen) {
                    return;
                }
                if kind == OP_RECV {
                    self.on_recv(key, res);
                } else {
                    self.on_send(key, res);
                }
            }
            _ => {}
        }
    }

    fn arm_accept(&mut self) {
        let e = opcode::Accept::new(
            types::Fd(self.listener.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(user_data(0, 0, OP_ACCEPT));
        // SAFETY: no address buffers (null is allowed); the listener is owned by the
        // worker, which lives (or is leaked) as long as the ring.
        unsafe { self.ring.push(e) };
    }

    fn on_accept(&mut self, res: i32) {
        if res < 0 {
            if matches!(-res, libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) {
                self.arm_accept();
            } else {
                // EMFILE, ENFILE, ENOBUFS…: do not spin, try again a little later.
                let e = opcode::Timeout::new(&*self.retry_ts as *const types::Timespec)
                    .build()
                    .user_data(user_data(0, 0, OP_ACCEPT_RETRY));
                // SAFETY: `retry_ts` is a Box owned by the worker, never modified, and
                // lives (or is leaked) as long as the ring.
                unsafe { self.ring.push(e) };
            }
            return;
        }
        // SAFETY: a non-negative Accept result is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        let gen = self.next_gen;
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        let key = self.conns.insert(Conn::new(fd, gen));
        self.arm_recv(key);
        self.arm_accept();
    }

    fn arm_wake(&mut self) {
        let e = opcode::Read::new(
            types::Fd(self.wake.as_raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast::<u8>(),
            8,
        )
        .build()
        .user_data(user_data(0, 0, OP_WAKE));
        // SAFETY: `wake_buf` is an 8-byte Box owned by the worker and only written by
        // this op (one at a time: re-armed after its completion); the eventfd is kept
        // open by the worker's Arc. Both live (or are leaked) as long as the ring.
        unsafe { self.ring.push(e) };
    }

    /// Another thread published: fan its messages out to our subscribers.
    fn on_wake(&mut self) {
        while let Ok((channel, chunk)) = self.inbox.try_recv() {
            self.fanout(&channel, &chunk);
        }
        self.arm_wake();
    }

    /// Writes to the eventfd of every peer that was handed a message this turn.
    fn flush_wakes(&mut self) {
        for p in self.peers.iter_mut().filter(|p| p.pending) {
            p.pending = false;
            let one: u64 = 1;
            // SAFETY: the eventfd is kept open by the Arc; `one` is a valid 8-byte
            // buffer for the duration of the call.
            unsafe {
                libc::write(
                    p.wake.as_raw_fd(),
                    (&one as *const u64).cast::<libc::c_void>(),
                    8,
                )
            };
        }
    }

    fn arm_recv(&mut self, key: usize) {
        let c = &mut self.conns[key];
        debug_assert!(!c.recv_busy && c.filled < c.buf.len());
        let free = &mut c.buf[c.filled..];
        let e = opcode::Recv::new(
            types::Fd(c.fd.as_raw_fd()),
            free.as_mut_ptr(),
            free.len() as u32,
        )
        .build()
        .user_data(user_data(key, c.gen, OP_RECV));
        c.recv_busy = true;
        // SAFETY: `buf` is a heap slice owned by the connection; it is neither replaced
        // nor freed while `recv_busy` is set (cleared by this op's completion), and the
        // entry (hence the descriptor) is only freed once no op is in flight.
        unsafe { self.ring.push(e) };
    }

    fn on_recv(&mut self, key: usize, res: i32) {
        self.conns[key].recv_busy = false;
        if !self.carries_on(key, res) {
            return;
        }
        let c = &mut self.conns[key];
        c.filled += res as usize;
        if c.subscriber {
            // A subscriber has nothing more to say: discard.
            c.filled = 0;
            self.arm_recv(key);
            return;
        }
        self.process(key);
    }

    /// Handles every complete request received on a (non-subscriber) connection.
    fn process(&mut self, key: usize) {
        // No Recv is in flight: the buffer can be taken out and replaced.
        let mut buf = std::mem::take(&mut self.conns[key].buf);
        let filled = self.conns[key].filled;
        let mut start = 0;
        let mut need = None;
        let mut end = None;
        while start < filled {
            let data = &buf[start..filled];
            match parse(data) {
                Parsed::Partial(total) => {
                    need = total;
                    break;
                }
                Parsed::Publish { channel, body, len } => {
                    self.publish(&data[channel], &data[body]);
                    self.queue(key, Bytes::from_static(ACCEPTED));
                    start += len;
                }
                Parsed::Subscribe { channel, .. } => {
                    self.subscribe(key, &data[channel]);
                    self.queue(key, Bytes::from_static(SUB_HEAD));
                    end = Some(true);
                    break;
                }
                Parsed::Refuse(answer) => {
                    self.queue(key, Bytes::from_static(answer));
                    end = Some(false);
                    break;
                }
            }
        }
        let c = &mut self.conns[key];
        match end {
            Some(true) => {
                // Whatever follows the subscribe request is ignored.
                c.subscriber = true;
                c.buf = vec![0; SUB_BUF].into_boxed_slice();
                c.filled = 0;
                self.arm_recv(key);
            }
            Some(false) => {
                // No more reads: close once the refusal (and earlier answers) are sent.
                c.close_after_flush = true;
                c.filled = 0;
            }
            None => {
                buf.copy_within(start..filled, 0);
                c.filled = filled - start;
                let want = need.unwrap_or(0).max(if c.filled == buf.len() {
                    buf.len() * 2
                } else {
                    0
                });
                if want > buf.len() {
                    let mut bigger = vec![0; want.min(MAX_HEAD + MAX_BODY)].into_boxed_slice();
                    bigger[..c.filled].copy_from_slice(&buf[..c.filled]);
                    buf = bigger;
                }
                c.buf = buf;
                self.arm_recv(key);
            }
        }
    }

    fn subscribe(&mut self, key: usize, channel: &[u8]) {
        let name = match self.channels.get_key_value(channel) {
            Some((k, _)) => k.clone(),
            None => Bytes::copy_from_slice(channel),
        };
        let subs = self.channels.entry(name.clone()).or_default();
        subs.push(key);
        self.conns[key].sub = Some((name, subs.len() - 1));
    }

    fn unsubscribe(&mut self, channel: &[u8], idx: usize) {
        let Some(subs) = self.channels.get_mut(channel) else {
            return;
        };
        if idx >= subs.len() {
            return;
        }
        subs.swap_remove(idx);
        if let Some(&moved) = subs.get(idx) {
            if let Some((_, i)) = self.conns.get_mut(moved).and_then(|c| c.sub.as_mut()) {
                *i = idx;
            }
        }
        if subs.is_empty() {
            self.channels.remove(channel);
        }
    }

    /// Encodes the chunk once, queues it on our subscribers, hands it to the other
    /// threads.
    fn publish(&mut self, channel: &[u8], body: &[u8]) {
        if body.is_empty() {
            // An empty chunk would end the subscribers' streams.
            return;
        }
        let chunk = encode_chunk(body);
        self.fanout(channel, &chunk);
        if !self.peers.is_empty() {
            let name = Bytes::copy_from_slice(channel);
            for p in &mut self.peers {
                if p.tx.send((name.clone(), chunk.clone())).is_ok() {
                    p.pending = true;
                }
            }
        }
    }

    /// Queues `chunk` on every subscriber of `channel` on this thread.
    fn fanout(&mut self, channel: &[u8], chunk: &Bytes) {
        let Some(subs) = self.channels.get(channel) else {
            return;
        };
        for &k in subs {
            let Some(c) = self.conns.get_mut(k) else {
                continue;
            };
            c.out.push_back(chunk.clone());
            if !c.send_busy && !c.dirty {
                c.dirty = true;
                self.dirty.push(k);
            }
        }
    }

    /// Queues an answer on a connection.
    fn queue(&mut self, key: usize, frame: Bytes) {
        let c = &mut self.conns[key];
        c.out.push_back(frame);
        if !c.send_busy && !c.dirty {
            c.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Starts a send on every connection that got frames this turn and has none in
    /// flight: all queued frames go in one SQE.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &k in &dirty {
            if let Some(c) = self.conns.get_mut(k) {
                c.dirty = false;
                self.start_send(k);
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    fn start_send(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.send_busy || c.closing || c.out.is_empty() {
            return;
        }
        let fd = types::Fd(c.fd.as_raw_fd());
        let ud = user_data(key, c.gen, OP_SEND);
        let e = if c.out.len() == 1 {
            let rest = &c.out[0][c.offset..];
            c.in_flight = 1;
            opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ud)
        } else {
            let n = c.out.len().min(MAX_IOV);
            c.iov.clear();
            for (i, f) in c.out.iter().take(n).enumerate() {
                let s = if i == 0 { &f[c.offset..] } else { &f[..] };
                c.iov.push(libc::iovec {
                    iov_base: s.as_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                });
            }
            let msg = c.msg.get_or_insert_with(|| {
                // SAFETY: msghdr is plain data; all zeroes is a valid empty header (null
                // pointers, zero lengths and flags).
                Box::new(unsafe { std::mem::zeroed::<libc::msghdr>() })
            });
            msg.msg_iov = c.iov.as_mut_ptr();
            msg.msg_iovlen = n as _;
            c.in_flight = n;
            opcode::SendMsg::new(fd, &**msg as *const libc::msghdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(ud)
        };
        c.send_busy = true;
        // SAFETY: the frames sent are `Bytes` at the front of `out` (their data is on the
        // heap or static, so it does not move with the handles); `iov` (heap) and `msg`
        // (a Box) belong to the connection. None of them is popped, modified or dropped
        // while `send_busy` is set (cleared by this op's completion; `close` keeps the
        // first `in_flight` frames), and the entry is only freed when no op is in flight.
        unsafe { self.ring.push(e) };
    }

    fn on_send(&mut self, key: usize, res: i32) {
        let c = &mut self.conns[key];
        c.send_busy = false;
        c.in_flight = 0;
        if !self.carries_on(key, res) {
            return;
        }
        let c = &mut self.conns[key];
        // Drop what was sent; a short send leaves the rest at the front.
        let mut n = res as usize;
        while n > 0 {
            let Some(f) = c.out.front() else {
                break;
            };
            let rest = f.len() - c.offset;
            if n >= rest {
                n -= rest;
                c.out.pop_front();
                c.offset = 0;
            } else {
                c.offset += n;
                n = 0;
            }
        }
        if !c.out.is_empty() {
            self.start_send(key);
        } else if c.close_after_flush {
            self.close(key);
        }
    }

    /// After an op on `key` completed with `res`: whether the connection carries on.
    /// Not if it was closing (freed now if nothing else is in flight), nor if the op
    /// failed or the peer hung up (`res <= 0`: EOF, EPIPE, ECONNRESET…; a non-empty
    /// send never returns 0), which closes it.
    fn carries_on(&mut self, key: usize, res: i32) -> bool {
        if self.conns[key].closing {
            self.maybe_free(key);
            return false;
        }
        if res <= 0 {
            self.close(key);
            return false;
        }
        true
    }

    /// Unsubscribes and shuts the connection down; it is freed once no op is in flight.
    fn close(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.closing {
            return;
        }
        c.closing = true;
        // Frames not covered by a send in flight can go now.
        c.out.truncate(c.in_flight);
        if c.recv_busy || c.send_busy {
            // SAFETY: plain shutdown(2) on the connection's own open descriptor; it makes
            // the pending Recv/Send complete, so the entry can then be freed.
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Some((channel, idx)) = c.sub.take() {
            self.unsubscribe(&channel, idx);
        }
        self.maybe_free(key);
    }

    /// Frees a closing connection (closing its descriptor) once no op is in flight.
    fn maybe_free(&mut self, key: usize) {
        let c = &self.conns[key];
        if c.closing && !c.recv_busy && !c.send_busy {
            drop(self.conns.remove(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    fn server() -> SocketAddr {
        start("127.0.0.1:0".parse().unwrap(), 2)
            .expect("start the server")
            .addr()
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Reads a response head, byte by byte so that nothing after it is consumed.
    fn read_head(s: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).expect("read a response head");
            head.push(b[0]);
        }
        String::from_utf8(head).unwrap()
    }

    fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        s.read_exact(&mut v).expect("read");
        v
    }

    /// Subscribes to `ch`; the head says the subscription is registered.
    fn subscribe(addr: SocketAddr, ch: &str) -> TcpStream {
        let mut s = connect(addr);
        write!(
            s,
            "GET /sub/{ch} HTTP/1.1\r\nHost: test\r\nTE: chunked\r\n\r\n"
        )
        .unwrap();
        assert_eq!(read_head(&mut s).as_bytes(), SUB_HEAD);
        s
    }

    fn post(ch: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "POST /pub/{ch} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    /// The chunk a subscriber must read for `body` (written out independently of
    /// `encode_chunk`).
    fn chunk(body: &[u8]) -> Vec<u8> {
        let mut c = format!("{:x}\r\n", body.len()).into_bytes();
        c.extend_from_slice(body);
        c.extend_from_slice(b"\r\n");
        c
    }

    /// Publishes on a fresh connection and checks the 202.
    fn publish(addr: SocketAddr, ch: &str, body: &[u8]) {
        let mut p = connect(addr);
        p.write_all(&post(ch, body)).unwrap();
        assert_eq!(read_n(&mut p, ACCEPTED.len()), ACCEPTED);
    }

    #[test]
    fn pipelined_publishes_reach_every_subscriber_in_order() {
        let addr = server();
        // 20 subscribers: with SO_REUSEPORT both threads all but surely have some, so the
        // cross-thread hand-off is exercised whichever thread gets the publisher.
        let mut subs: Vec<TcpStream> = (0..20).map(|_| subscribe(addr, "news")).collect();
        let bodies: [&[u8]; 3] = [b"first\n", &[b'x'; 300], b"third message\n"];
        let mut p = connect(addr);
        let req: Vec<u8> = bodies.iter().flat_map(|b| post("news", b)).collect();
        p.write_all(&req).unwrap();
        assert_eq!(read_n(&mut p, 3 * ACCEPTED.len()), ACCEPTED.repeat(3));
        let want: Vec<u8> = bodies.iter().flat_map(|b| chunk(b)).collect();
        for s in &mut subs {
            assert_eq!(read_n(s, want.len()), want);
        }
        // Nothing else came in between: the next chunk is the next message.
        p.write_all(&post("news", b"marker\n")).unwrap();
        assert_eq!(read_n(&mut p, ACCEPTED.len()), ACCEPTED);
        for s in &mut subs {
            assert_eq!(read_n(s, chunk(b"marker\n").len()), chunk(b"marker\n"));
        }
    }

    #[test]
    fn other_channels_get_nothing() {
        let addr = server();
        let mut others: Vec<TcpStream> = (0..10).map(|_| subscribe(addr, "b")).collect();
        let mut a: Vec<TcpStream> = (0..10).map(|_| subscribe(addr, "a")).collect();
        let mut p = connect(addr);
        let req: Vec<u8> = (0..3)
            .flat_map(|i| post("a", format!("a{i}\n").as_bytes()))
            .collect();
        p.write_all(&req).unwrap();
        assert_eq!(read_n(&mut p, 3 * ACCEPTED.len()), ACCEPTED.repeat(3));
        let want: Vec<u8> = (0..3)
            .flat_map(|i| chunk(format!("a{i}\n").as_bytes()))
            .collect();
        for s in &mut a {
            assert_eq!(read_n(s, want.len()), want);
        }
        // Published after the "a" messages on the same connection (so handed to every
        // thread after them): if any "a" message had reached a "b" subscriber, it would
        // come first.
        p.write_all(&post("b", b"for b\n")).unwrap();
        assert_eq!(read_n(&mut p, ACCEPTED.len()), ACCEPTED);
        for s in &mut others {
            assert_eq!(read_n(s, chunk(b"for b\n").len()), chunk(b"for b\n"));
        }
    }

    /// Sends `req` and reads the answer until the server closes.
    fn refused(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = connect(addr);
        s.write_all(req).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .expect("the server answers and closes");
        String::from_utf8(answer).unwrap()
    }

    #[test]
    fn bad_requests_are_refused_and_closed() {
        let addr = server();
        let mut huge_head = b"GET /sub/x HTTP/1.1\r\nX-Filler: ".to_vec();
        huge_head.resize(MAX_HEAD, b'a');
        let cases: [(&[u8], &str); 8] = [
            (b"this is not http\r\n\r\n", "400 "),
            (b"POST /pub/x HTTP/1.1\r\nHost: t\r\n\r\n", "411 "),
            (
                b"POST /pub/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "411 ",
            ),
            (b"POST /pub/x HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", "413 "),
            (b"GET /elsewhere HTTP/1.1\r\n\r\n", "404 "),
            (b"PUT /pub/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405 "),
            (b"GET /sub/x HTTP/1.0\r\n\r\n", "400 "),
            (&huge_head, "400 "),
        ];
        for (req, status) in cases {
            let answer = refused(addr, req);
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{:?} answered {answer:?}",
                String::from_utf8_lossy(&req[..req.len().min(60)])
            );
            assert!(answer.contains("\r\nConnection: close\r\n"), "{answer:?}");
            assert!(answer.ends_with("\r\n\r\n"), "{answer:?}");
        }
        // Earlier pipelined requests are answered before the refusal.
        let mut req = post("x", b"ok\n");
        req.extend_from_slice(b"garbage\r\n\r\n");
        let answer = refused(addr, &req);
        let (first, second) = answer.split_at(ACCEPTED.len());
        assert_eq!(first.as_bytes(), ACCEPTED);
        assert!(second.starts_with("HTTP/1.1 400 "), "{answer:?}");
        // Still serving.
        let mut s = subscribe(addr, "after");
        publish(addr, "after", b"still here\n");
        assert_eq!(
            read_n(&mut s, chunk(b"still here\n").len()),
            chunk(b"still here\n")
        );
    }

    #[test]
    fn disconnected_subscriber_is_dropped() {
        let addr = server();
        let mut subs: Vec<TcpStream> = (0..12).map(|_| subscribe(addr, "d")).collect();
        // Every other one hangs up.
        let gone: Vec<TcpStream> = (0..6).map(|i| subs.remove(i)).collect();
        drop(gone);
        // Several messages (each from a fresh connection), so that a send to a closed
        // peer fails (RST) if the hang-up was not noticed first.
        for i in 0..5 {
            publish(addr, "d", format!("m{i}\n").as_bytes());
        }
        let want: Vec<u8> = (0..5)
            .flat_map(|i| chunk(format!("m{i}\n").as_bytes()))
            .collect();
        for s in &mut subs {
            assert_eq!(read_n(s, want.len()), want);
        }
        // New subscribers (in freed slots, as the slab reuses them) and the old ones get
        // each later message exactly once: a stale registration would deliver twice.
        subs.extend((0..12).map(|_| subscribe(addr, "d")));
        publish(addr, "d", b"later\n");
        publish(addr, "d", b"last\n");
        let want = [chunk(b"later\n"), chunk(b"last\n")].concat();
        for s in &mut subs {
            assert_eq!(read_n(s, want.len()), want);
        }
    }

    /// A subscriber that does not read while megabytes are published: the server's sends
    /// come back short and several frames go per `SendMsg`; every byte must still arrive
    /// once, in order.
    #[test]
    fn slow_subscriber_gets_everything_after_short_sends() {
        let addr = server();
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&addr.into()).unwrap();
        let mut slow: TcpStream = sock.into();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        slow.write_all(b"GET /sub/slow HTTP/1.1\r\nTE: chunked\r\n\r\n")
            .unwrap();
        assert_eq!(read_head(&mut slow).as_bytes(), SUB_HEAD);
        let bodies: Vec<Vec<u8>> = (0..64u8)
            .map(|i| {
                (0..128 * 1024)
                    .map(|j| i.wrapping_mul(31) ^ (j as u8))
                    .collect()
            })
            .collect();
        let mut p = connect(addr);
        for b in &bodies {
            p.write_all(&post("slow", b)).unwrap();
            assert_eq!(read_n(&mut p, ACCEPTED.len()), ACCEPTED);
        }
        for b in &bodies {
            let c = chunk(b);
            assert!(read_n(&mut slow, c.len()) == c, "a chunk differs");
        }
        p.write_all(&post("slow", b"end\n")).unwrap();
        assert_eq!(read_n(&mut slow, chunk(b"end\n").len()), chunk(b"end\n"));
    }

    #[test]
    fn parse_cases() {
        let req = post("ch", b"body");
        let head = req.len() - 4;
        assert_eq!(
            parse(&req),
            Parsed::Publish {
                channel: 10..12,
                body: head..req.len(),
                len: req.len()
            }
        );
        assert_eq!(parse(&req[..head + 2]), Parsed::Partial(Some(req.len())));
        assert_eq!(parse(&req[..5]), Parsed::Partial(None));
        assert_eq!(
            parse(b"GET /sub/abc?x=1 HTTP/1.1\r\n\r\nextra"),
            Parsed::Subscribe {
                channel: 9..12,
                len: 29
            }
        );
        assert_eq!(
            parse(b"GET /sub/ HTTP/1.1\r\n\r\n"),
            Parsed::Refuse(NOT_FOUND)
        );
        assert_eq!(
            parse(b"POST /pub/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Parsed::Refuse(BAD_REQUEST)
        );
        assert_eq!(
            parse(b"POST /pub/a HTTP/1.1\r\nContent-Length: +1\r\n\r\n"),
            Parsed::Refuse(BAD_REQUEST)
        );
        assert_eq!(
            parse(b"POST /pub/a HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            Parsed::Refuse(TOO_LARGE)
        );
        assert_eq!(&encode_chunk(&[b'y'; 300])[..5], b"12c\r\n");
        assert_eq!(
            split_user_data(user_data(77, 0x1234567, OP_SEND)),
            (77, 0x234567, OP_SEND)
        );
    }
}
