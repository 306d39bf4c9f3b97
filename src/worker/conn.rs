//! The connection task: read, parse, route, write, repeat.
//!
//! Responses are queued as `Bytes` pieces and written with one vectored write when no
//! further complete request is waiting in the read buffer, so a pipelining client gets
//! all its answers in one syscall. A request that must wait (a long poll with nothing
//! new) *parks*: the queued answers are written, the connection moves into the
//! worker's wait list, and this task ends. When the waiter is answered,
//! [`answer_parked`] starts a fresh task that writes the answer and continues with any
//! pipelined bytes the client sent meanwhile, so answers always leave in request order.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::group::GroupMode;
use super::route::Step;
use super::watch::ParkedConn;
use super::{Shared, Worker};
use crate::http::accept::StreamForm;
use crate::http::body::{BodyDecoder, BodyError, BodyLimits};
use crate::http::request::{parse_head, Expect, Framing, Head, HeadError, Method, Version};
use crate::http::response::{HeadBuilder, Persistence, Reply};
use crate::metrics::Rejection;
use crate::store::Shaped;

/// A connection's first read buffer: a typical request (a long poll is ~300 bytes)
/// fits, and a burst of connections that have not sent anything yet costs little.
const FIRST_READ: usize = 512;
/// Later reads get at least this much room (and the buffer doubles for large heads
/// or bodies).
const READ_CHUNK: usize = 4096;
/// A read buffer grown past this is released once it is empty again.
const KEEP_BUFFER_MAX: usize = 64 * 1024;

/// The most a request body buffer reserves before the body arrives.
const INITIAL_BODY_CAPACITY: u64 = 64 * 1024;
/// How long a closing connection keeps reading (and discarding) what the client still
/// sends, so that our last response is not destroyed by a reset (RFC 9112 §9.6).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// A client connection. Counted in the server's open-connection gauge for as long as it lives.
pub struct Connection {
    /// Shared with every send in flight, so the descriptor outlives them (see `send`).
    pub stream: Rc<TcpStream>,
    /// Bytes read but not yet parsed (pipelined requests). Empty when parked without
    /// pipelined data, so a parked connection holds no read buffer.
    pub buf: Vec<u8>,
    shared: Arc<Shared>,
    worker: u16,
    /// Which connection this is among those its worker accepted (its descriptor number
    /// may be reused by a later one).
    gen: u32,
    /// The client address, when the per-IP cap counts it.
    ip: Option<IpAddr>,
}

impl Connection {
    /// Counts a connection accepted by `worker` (it is uncounted when dropped).
    pub fn new(stream: TcpStream, shared: Arc<Shared>, worker: usize, gen: u32) -> Connection {
        shared.metrics.open_connections.fetch_add(1, Relaxed);
        shared.metrics.workers[worker].open.fetch_add(1, Relaxed);
        Connection {
            stream: Rc::new(stream),
            buf: Vec::new(),
            shared,
            worker: worker as u16,
            gen,
            ip: None,
        }
    }

    pub fn gen(&self) -> u32 {
        self.gen
    }

    /// Counts this connection against the per-IP cap; `false` when `ip` is at the cap.
    pub fn admit_ip(&mut self, ip: IpAddr) -> bool {
        match &self.shared.per_ip {
            None => true,
            Some(limit) => {
                let admitted = limit.try_acquire(ip);
                if admitted {
                    self.ip = Some(ip);
                }
                admitted
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Completes the connection's hang-up poll, if armed (it holds a reference to the
        // socket), so the socket is really closed with its descriptor.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let m = &self.shared.metrics;
        m.open_connections.fetch_sub(1, Relaxed);
        let worker = self.worker as usize;
        if m.workers[worker].open.fetch_sub(1, Relaxed) == 1 {
            // The last one: a draining worker may be waiting for this.
            self.shared.drained[worker].notify_one();
        }
        if let (Some(ip), Some(limit)) = (self.ip, &self.shared.per_ip) {
            limit.release(ip);
        }
    }
}

/// How a connection ends when no further request head comes.
enum Ending {
    /// After an error answer: close gracefully, draining what the client still sends.
    Linger,
    /// Nothing to answer (peer closed, idle, timed out): shut down at once.
    Abort,
}

/// Why reading stopped.
enum ReadEnd {
    /// The peer closed.
    Eof,
    TimedOut,
    Failed,
}

/// Pieces of responses waiting to be written.
#[derive(Default)]
struct Out {
    pieces: Vec<Bytes>,
}

impl Out {
    fn push(&mut self, worker: &Worker, shaped: Shaped, persistence: Persistence, head_only: bool) {
        worker.metrics().count_status(shaped.status);
        self.pieces.push(shaped.head);
        self.pieces.push(worker.tail(persistence));
        if !head_only {
            self.pieces.extend(shaped.body.into_segments());
        }
    }

    fn push_reply(
        &mut self,
        worker: &Worker,
        reply: Reply,
        persistence: Persistence,
        head_only: bool,
    ) {
        self.push(worker, Shaped::from_reply(reply), persistence, head_only);
    }
}

/// The state of one connection while its task runs.
struct Task {
    worker: Rc<Worker>,
    conn: Connection,
    out: Out,
}

impl Task {
    fn persistence(head: &Head) -> Persistence {
        match (head.keep_alive, head.version) {
            (false, _) => Persistence::Close,
            (true, Version::Http10) => Persistence::KeepAlive10,
            (true, Version::Http11) => Persistence::KeepAlive,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.pieces.is_empty() {
            return Ok(());
        }
        let pieces = std::mem::take(&mut self.out.pieces);
        let stream = &self.conn.stream;
        let n = super::send::send_all(stream.as_raw_fd(), stream.clone(), pieces)
            .await
            .0?;
        self.worker.metrics().bytes_written.fetch_add(n, Relaxed);
        Ok(())
    }

    /// Reads more bytes into the buffer, within `timeout`.
    async fn read_more(&mut self, timeout: Option<Duration>) -> Result<(), ReadEnd> {
        let buf = &mut self.conn.buf;
        if buf.capacity() == 0 {
            buf.reserve_exact(FIRST_READ);
        } else if buf.capacity() - buf.len() < FIRST_READ / 2 {
            buf.reserve(READ_CHUNK.max(buf.len()));
        }
        let len = buf.len();
        let read = self.conn.stream.read(std::mem::take(buf).slice(len..));
        let (res, slice) = match timeout {
            Some(d) => match tokio::time::timeout(d, read).await {
                Ok(done) => done,
                Err(_) => return Err(ReadEnd::TimedOut),
            },
            None => read.await,
        };
        self.conn.buf = slice.into_inner();
        match res {
            Ok(0) => Err(ReadEnd::Eof),
            Ok(_) => Ok(()),
            Err(_) => Err(ReadEnd::Failed),
        }
    }

    /// The next request head, or how the connection ends.
    async fn next_head(&mut self) -> Result<Head, Ending> {
        let worker = self.worker.clone();
        let cfg = worker.config();
        let mut head_deadline: Option<tokio::time::Instant> = None;
        loop {
            match parse_head(&self.conn.buf, &cfg.head_limits) {
                Ok(Some((head, n))) => {
                    self.conn.buf.drain(..n);
                    return Ok(head);
                }
                Ok(None) => {}
                Err(e) => {
                    self.reject_head(e);
                    return Err(Ending::Linger);
                }
            }
            // Nothing more to batch with: send what is queued before waiting.
            if self.flush().await.is_err() {
                return Err(Ending::Abort);
            }
            let timeout = if self.conn.buf.is_empty() {
                if self.conn.buf.capacity() > KEEP_BUFFER_MAX {
                    self.conn.buf = Vec::new();
                }
                cfg.idle_timeout
            } else {
                let deadline = *head_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + cfg.header_timeout);
                Some(deadline.saturating_duration_since(tokio::time::Instant::now()))
            };
            let idle = self.conn.buf.is_empty();
            if idle && worker.is_draining() {
                return Err(Ending::Abort);
            }
            let read = if idle {
                // Between requests a drain may close us: wait for either.
                tokio::select! {
                    read = self.read_more(timeout) => read,
                    _ = worker.idle_wakeup() => Err(ReadEnd::Failed),
                }
            } else {
                self.read_more(timeout).await
            };
            match read {
                Ok(()) => {
                    if head_deadline.is_none() && !self.conn.buf.is_empty() {
                        head_deadline = Some(tokio::time::Instant::now() + cfg.header_timeout);
                    }
                }
                // A request had started (the buffer itself is gone with the abandoned read).
                Err(ReadEnd::TimedOut) if head_deadline.is_some() => {
                    self.worker.metrics().reject(Rejection::HeaderTimeout);
                    let reply = Reply::text(408, "request head not received in time");
                    self.out
                        .push_reply(&self.worker, reply, Persistence::Close, false);
                    let _ = self.flush().await;
                    return Err(Ending::Abort);
                }
                Err(_) => return Err(Ending::Abort),
            }
        }
    }

    fn reject_head(&mut self, e: HeadError) {
        tracing::debug!(error = %e, "bad request head");
        self.worker.metrics().reject(match e.status() {
            413 | 414 | 431 => Rejection::TooLarge,
            _ => Rejection::Malformed,
        });
        let reply = Reply::text(e.status(), &e);
        self.out
            .push_reply(&self.worker, reply, Persistence::Close, false);
    }

    /// Reads the request body (or, unless `keep`, reads and drops it). `Err` carries
    /// the reply to send before closing.
    async fn read_body(&mut self, head: &Head, keep: bool) -> Result<Bytes, Reply> {
        let worker = self.worker.clone();
        let cfg = worker.config();
        let limits = BodyLimits {
            max_body: cfg.max_body_bytes,
        };
        let mut decoder = match head.framing {
            Framing::Length(0) => return Ok(Bytes::new()),
            Framing::Length(n) => BodyDecoder::length(n, limits),
            Framing::Chunked => Ok(BodyDecoder::chunked(limits)),
        }
        .map_err(body_error_reply)?;
        if head.expect == Expect::Continue && self.conn.buf.is_empty() {
            self.out
                .pieces
                .push(Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
            self.flush().await.map_err(|_| Reply::new(400))?;
        }
        // Sized to the announced length only up to a first read's worth: a head alone
        // does not reserve megabytes; a larger body grows the buffer as it arrives.
        let hint = decoder
            .remaining_hint()
            .unwrap_or(0)
            .min(cfg.max_body_bytes)
            .min(INITIAL_BODY_CAPACITY);
        let hint = if keep {
            hint
        } else {
            hint.min(READ_CHUNK as u64)
        };
        let mut body = Vec::with_capacity(hint as usize);
        loop {
            let progress = decoder
                .decode(&self.conn.buf, &mut body)
                .map_err(body_error_reply)?;
            self.conn.buf.drain(..progress.consumed);
            if progress.done {
                return Ok(Bytes::from(body));
            }
            if !keep {
                body.clear();
            }
            match self.read_more(Some(cfg.header_timeout)).await {
                Ok(()) => {}
                Err(ReadEnd::TimedOut) => {
                    self.worker.metrics().reject(Rejection::BodyTimeout);
                    return Err(Reply::text(408, "request body not received in time"));
                }
                Err(_) => {
                    return Err(Reply::text(
                        400,
                        "connection closed inside the request body",
                    ))
                }
            }
        }
    }

    /// Serves requests until the connection ends or parks.
    async fn run(mut self) {
        let mut answered = 0usize;
        loop {
            let head = match self.next_head().await {
                Ok(head) => head,
                Err(Ending::Linger) => return self.close().await,
                Err(Ending::Abort) => return self.abort(),
            };
            let persistence = if self.worker.is_draining() {
                Persistence::Close
            } else {
                Self::persistence(&head)
            };
            let head_only = head.method == Method::Head;
            if head.expect == Expect::Unsupported {
                let reply = Reply::text(417, "only 'Expect: 100-continue' is supported");
                self.out
                    .push_reply(&self.worker, reply, Persistence::Close, false);
                return self.close().await;
            }
            // Credentials are checked on the head: a refused body is read and dropped
            // (the connection carries on), never buffered.
            let refusal = self.worker.refuse_head(&head);
            if refusal.is_some()
                && head.expect == Expect::Continue
                && head.framing != Framing::Length(0)
            {
                // It waits for `100 Continue` and may never send the body: answer, close.
                if let Some(reply) = refusal {
                    self.out
                        .push_reply(&self.worker, reply, Persistence::Close, head_only);
                }
                return self.close().await;
            }
            let body = match self.read_body(&head, refusal.is_none()).await {
                Ok(body) => body,
                Err(reply) => {
                    count_body_refusal(&self.worker, &reply);
                    self.out
                        .push_reply(&self.worker, reply, Persistence::Close, false);
                    return self.close().await;
                }
            };
            let step = match refusal {
                Some(reply) => Step::Reply(reply),
                None => self.worker.route(&head, body),
            };
            match step {
                Step::Reply(reply) => {
                    self.out
                        .push_reply(&self.worker, reply, persistence, head_only);
                    answered += 1;
                    // A pipelining client gets its answers every `--max-pipeline`
                    // requests; meanwhile nothing further is read.
                    if answered >= self.worker.config().max_pipeline {
                        answered = 0;
                        if self.flush().await.is_err() {
                            return self.abort();
                        }
                    }
                }
                Step::Remote(rx) => {
                    // Let earlier answers go out while the owner works.
                    if self.flush().await.is_err() {
                        return;
                    }
                    let reply = rx
                        .await
                        .unwrap_or_else(|_| Reply::text(500, "worker unavailable"));
                    self.out
                        .push_reply(&self.worker, reply, persistence, head_only);
                }
                Step::Batch(mut pending) => {
                    if self.flush().await.is_err() {
                        return;
                    }
                    for (indices, rx) in std::mem::take(&mut pending.remote) {
                        let answers = rx.await.unwrap_or_default();
                        let mut answers = answers.into_iter();
                        for i in indices {
                            pending.replies[i] = Some(
                                answers
                                    .next()
                                    .unwrap_or_else(|| Reply::text(500, "worker unavailable")),
                            );
                        }
                    }
                    let parts = pending.replies.into_iter().flatten().collect();
                    let reply = self.worker.multipart_answer(parts);
                    self.out
                        .push_reply(&self.worker, reply, persistence, head_only);
                }
                Step::Group { mode, subs, errors } => {
                    if self.flush().await.is_err() {
                        return;
                    }
                    let chunked = head.version == Version::Http11;
                    let persistence = match mode {
                        // A stream ends only when the connection does; HTTP/1.0 bodies are
                        // delimited by the close.
                        GroupMode::Stream(_) if !chunked => Persistence::Close,
                        GroupMode::Stream(_) => Persistence::KeepAlive,
                        GroupMode::Once { .. } => persistence,
                    };
                    if let GroupMode::Stream(form) = mode {
                        let boundary = &self.worker.shared.boundary;
                        let subtype = match form {
                            StreamForm::Digest => "digest",
                            StreamForm::MixedReplace => "x-mixed-replace",
                        };
                        let mut h = HeadBuilder::new(200);
                        h.header("Content-Type", &boundary.content_type(subtype));
                        if chunked {
                            h.header("Transfer-Encoding", b"chunked");
                        }
                        h.header("Cache-Control", b"no-cache")
                            .header("X-Accel-Buffering", b"no");
                        self.worker.metrics().count_status(200);
                        let pieces = vec![
                            h.finish(),
                            self.worker.tail(persistence),
                            boundary.opening(chunked),
                        ];
                        self.out.pieces.extend(pieces);
                        if self.flush().await.is_err() {
                            return;
                        }
                    }
                    let worker = self.worker.clone();
                    let mut conn = self.conn;
                    conn.buf = Vec::new();
                    worker.start_group(conn, mode, chunked, persistence, head_only, subs, errors);
                    return;
                }
                Step::Poll { path, query } => {
                    if self.flush().await.is_err() {
                        return;
                    }
                    let worker = self.worker.clone();
                    let mut conn = self.conn;
                    if conn.buf.is_empty() {
                        conn.buf = Vec::new();
                    } else {
                        conn.buf.shrink_to_fit();
                    }
                    let parked = ParkedConn {
                        conn,
                        persistence,
                        head_only,
                    };
                    let Some((parked, shaped)) = worker.start_poll(path, query, parked) else {
                        return; // Parked: this task ends; the wait list owns the connection.
                    };
                    // Answered at once: carry on with the same connection.
                    self = Task {
                        worker,
                        conn: parked.conn,
                        out: Out::default(),
                    };
                    self.out.push(&self.worker, shaped, persistence, head_only);
                }
            }
            if persistence == Persistence::Close {
                return self.close().await;
            }
        }
    }

    /// Ends a connection that has nothing more to say (peer gone, idle, timed out):
    /// shutting down both directions also completes any read still in flight, so the
    /// descriptor is really closed when the stream drops.
    fn abort(self) {
        let _ = self.conn.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Flushes what is queued and closes; lingers if the client may still be sending.
    async fn close(mut self) {
        let _ = self.flush().await;
        linger_close(self.conn).await;
    }
}

/// Closes a connection: sends FIN, then discards whatever the client still sends for a
/// moment so our last response is not lost to a reset.
async fn linger_close(mut conn: Connection) {
    let stream = &conn.stream;
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut discarded = 0;
    let mut buf = std::mem::take(&mut conn.buf);
    buf.clear();
    if buf.capacity() < 512 {
        buf.reserve(512);
    }
    while discarded < LINGER_MAX_BYTES {
        let cap = buf.capacity();
        let read = stream.read(buf.slice(0..cap));
        match tokio::time::timeout_at(deadline, read).await {
            Ok((Ok(n), b)) if n > 0 => {
                discarded += n;
                buf = b.into_inner();
                buf.clear();
            }
            Ok(_) => return,
            Err(_) => break,
        }
    }
    // Still sending after the linger time: stop reading (this also completes the
    // read still in flight, so the descriptor is really closed on drop).
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Serves a freshly accepted connection.
pub async fn serve(worker: Rc<Worker>, conn: Connection) {
    Task {
        worker,
        conn,
        out: Out::default(),
    }
    .run()
    .await
}

/// Writes the answer of a released waiter, then continues serving the connection.
pub async fn answer_parked(worker: Rc<Worker>, parked: ParkedConn, shaped: Shaped) {
    let born = shaped.born;
    let persistence = if worker.is_draining() {
        Persistence::Close
    } else {
        parked.persistence
    };
    let mut task = Task {
        worker,
        conn: parked.conn,
        out: Out::default(),
    };
    task.out
        .push(&task.worker, shaped, persistence, parked.head_only);
    if persistence == Persistence::Close {
        return task.close().await;
    }
    // Write now (rather than at the next read) so the latency covers the whole answer.
    if task.flush().await.is_err() {
        return task.abort();
    }
    if let Some(born) = born {
        task.worker.metrics().latency.observe(born.elapsed());
    }
    task.run().await
}

/// Refuses a connection with a clear answer: `503` at the server's connection ceiling,
/// `429` at the per-client-address cap.
pub async fn refuse(worker: Rc<Worker>, conn: Connection, status: u16) {
    let message = if status == 429 {
        "too many connections from your address; retry later"
    } else {
        "server at its connection limit; retry later"
    };
    let mut reply = Reply::text(status, message);
    reply.extra = Some(Bytes::from_static(b"Retry-After: 1\r\n"));
    let mut task = Task {
        worker,
        conn,
        out: Out::default(),
    };
    task.out
        .push_reply(&task.worker, reply, Persistence::Close, false);
    tracing::debug!(
        fd = task.conn.stream.as_raw_fd(),
        "refused a connection at the ceiling"
    );
    task.close().await
}

fn body_error_reply(e: BodyError) -> Reply {
    let status = if e.is_too_large() { 413 } else { 400 };
    Reply::text(status, e)
}

/// Counts a body refusal by its reason.
fn count_body_refusal(worker: &Worker, reply: &Reply) {
    worker.metrics().reject(match reply.status {
        413 => Rejection::TooLarge,
        408 => return, // counted where the timeout happened
        _ => Rejection::Malformed,
    });
}
