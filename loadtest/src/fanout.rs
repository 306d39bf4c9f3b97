//! `fanout`: subscribers watch resources, publishers append numbered records, every
//! delivery is verified (per-resource sequence) and timed (record timestamp → arrival).

use crate::cli::{FanoutArgs, Method, Mode, NchanStream, Target};
use crate::clock::mono_ns;
use crate::fleet::{latency_rows, Ctl, Driver, OpenGuard, Shared, Snap, WorkerCtx, WorkerFn};
use crate::http::{parse_bytes_range, write_request, ChunkedDecoder, Conn, Head};
use crate::multipart::{is_http_part, parse_embedded, split_part, Event, MultipartParser};
use crate::net::{worker_dialer, Dialer};
use crate::output::ErrorLog;
use crate::publisher::{spawn_publisher, stop_publishers, PubShared, PubSpec};
use crate::stats::{fmt_us, Kind, Percentiles};
use crate::target::{prepare_run, Paths};
use crate::verify::{process_body, BodyKind, Tracker};
use crate::{metrics, output};
use anyhow::{bail, Result};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// Boundary of our `/subscribe` request bodies.
const SUB_BOUNDARY: &str = "halley-load-sub";

struct SubState {
    trackers: Vec<Tracker>,
    ready: bool,
    drained: bool,
}

/// Where a subscriber is on one resource (for resuming after a reconnect).
#[derive(Debug, Clone, Default)]
struct Pos {
    last_modified: Option<String>,
    etag: Option<String>,
    len: u64,
    have_first: bool,
}

/// One worker's fan-out state.
struct Fx {
    args: Rc<FanoutArgs>,
    paths: Paths,
    shared: Rc<Shared>,
    dialer: Rc<Dialer>,
    subs: RefCell<Vec<SubState>>,
    targets: RefCell<Option<Vec<u64>>>,
    notify: Notify,
    /// Subscribers ready or given up.
    settled: Cell<usize>,
    /// Subscribers caught up with the published counts, or given up.
    done: Cell<usize>,
    errors: ErrorLog,
}

impl Fx {
    fn mark_ready(&self, j: usize) {
        let mut subs = self.subs.borrow_mut();
        if !subs[j].ready {
            subs[j].ready = true;
            self.settled.set(self.settled.get() + 1);
            self.shared.c.borrow_mut().ready += 1;
            self.notify.notify_one();
        }
    }

    fn mark_dead(&self, j: usize) {
        let mut subs = self.subs.borrow_mut();
        if !subs[j].ready {
            subs[j].ready = true;
            self.settled.set(self.settled.get() + 1);
        }
        if !subs[j].drained {
            subs[j].drained = true;
            self.done.set(self.done.get() + 1);
        }
        self.notify.notify_one();
    }

    fn check_drained(&self, j: usize) {
        let targets = self.targets.borrow();
        let Some(t) = targets.as_ref() else {
            return;
        };
        let mut subs = self.subs.borrow_mut();
        let s = &mut subs[j];
        if !s.drained
            && s.trackers
                .iter()
                .all(|tr| tr.caught_up(t.get(tr.resource as usize).copied().unwrap_or(0)))
        {
            s.drained = true;
            self.done.set(self.done.get() + 1);
            self.notify.notify_one();
        }
    }

    fn body(&self, j: usize, body: &[u8], kind: BodyKind, now: u64) {
        let mut subs = self.subs.borrow_mut();
        let mut c = self.shared.c.borrow_mut();
        c.bytes_in += body.len() as u64;
        process_body(
            body,
            kind,
            &mut subs[j].trackers,
            &mut c,
            &mut self.shared.lat.borrow_mut(),
            now,
        );
    }

    fn proto_error(&self, what: String) -> anyhow::Error {
        self.shared.c.borrow_mut().protocol_errors += 1;
        anyhow::anyhow!(what)
    }

    async fn open(&self) -> Result<(Conn, OpenGuard)> {
        match self.dialer.connect().await {
            Ok(s) => {
                self.shared.c.borrow_mut().conns += 1;
                Ok((Conn::new(s, 16 * 1024), OpenGuard::new(&self.shared)))
            }
            Err(e) => {
                self.shared.c.borrow_mut().conn_failures += 1;
                Err(e)
            }
        }
    }

    /// One `multipart/digest` part of a halley stream.
    fn digest_part(
        &self,
        j: usize,
        res: &[u64],
        pos: &mut [Pos],
        part: &[u8],
        now: u64,
    ) -> Result<()> {
        self.shared.c.borrow_mut().parts += 1;
        let v = split_part(part)?;
        if !is_http_part(v.content_type) {
            if v.body.is_empty() {
                self.shared.c.borrow_mut().heartbeats += 1;
                return Ok(());
            }
            return Err(self.proto_error(format!("unexpected part type {:?}", v.content_type)));
        }
        let (h, content) = parse_embedded(v.body)?;
        let Some(k) = h.content_location.and_then(|l| self.paths.resource_of(l)) else {
            return Err(self.proto_error(format!(
                "part without a known Content-Location ({:?})",
                h.content_location
            )));
        };
        let Some(idx) = res.iter().position(|&r| r == k) else {
            self.shared.c.borrow_mut().foreign += 1;
            return Ok(());
        };
        self.embedded_answer(j, &mut pos[idx], &h, content, now)?;
        if h.status == 200 && pos.iter().all(|p| p.have_first) {
            self.mark_ready(j);
        }
        Ok(())
    }

    /// A halley answer for one resource (a long-poll response or an embedded part).
    fn embedded_answer<S: AsRef<str>>(
        &self,
        j: usize,
        p: &mut Pos,
        h: &Head<S>,
        content: &[u8],
        now: u64,
    ) -> Result<()> {
        match h.status {
            200 => {
                if p.have_first {
                    self.shared.c.borrow_mut().resyncs += 1;
                }
                p.have_first = true;
                p.len = content.len() as u64;
                self.body(j, content, BodyKind::Full, now);
            }
            206 => {
                let range = h
                    .content_range
                    .as_ref()
                    .and_then(|r| parse_bytes_range(r.as_ref()));
                match range {
                    Some((a, b, total)) => {
                        if a != p.len || b + 1 - a != content.len() as u64 {
                            self.shared.c.borrow_mut().protocol_errors += 1;
                            self.errors.note(&format!(
                                "206 Content-Range {:?} does not continue at {} with {} bytes",
                                h.content_range.as_ref().map(AsRef::as_ref),
                                p.len,
                                content.len()
                            ));
                        }
                        p.len = total.unwrap_or(b + 1);
                    }
                    None => {
                        self.shared.c.borrow_mut().protocol_errors += 1;
                        p.len += content.len() as u64;
                    }
                }
                self.body(j, content, BodyKind::Delta, now);
            }
            304 => {
                self.shared.c.borrow_mut().poll_timeouts += 1;
                return Ok(());
            }
            s => {
                return Err(self.proto_error(format!("unexpected status {s}")));
            }
        }
        if let Some(lm) = &h.last_modified {
            // Kept for a resume; the same allocation part after part.
            let kept = p.last_modified.get_or_insert_with(String::new);
            kept.clear();
            kept.push_str(lm.as_ref());
        }
        Ok(())
    }
}

async fn subscriber(fx: Rc<Fx>, j: usize, res: Vec<u64>) {
    let mut pos = vec![Pos::default(); res.len()];
    let mut failures = 0u32;
    // Bounded: at most max_reconnects + 1 connections; the worker aborts this task at its end.
    loop {
        let r = match (fx.paths.target, fx.args.mode) {
            (Target::Halley, Mode::Longpoll) => halley_longpoll(&fx, j, &res, &mut pos).await,
            (Target::Halley, _) => halley_stream(&fx, j, &res, &mut pos).await,
            (Target::Nchan, Mode::Longpoll) => nchan_longpoll(&fx, j, &res, &mut pos).await,
            (Target::Nchan, _) => nchan_stream(&fx, j, &res).await,
        };
        let Err(e) = r else {
            return;
        };
        fx.errors.note(&format!("subscriber {j}: {e:#}"));
        failures += 1;
        if failures > fx.args.max_reconnects {
            fx.mark_dead(j);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100 << failures.min(6))).await;
    }
}

/// Runs `f` on a fresh connection, counting a failure after connecting as a disconnect.
macro_rules! on_conn {
    ($fx:expr, |$conn:ident| $body:block) => {{
        let (mut $conn, _guard) = $fx.open().await?;
        let r: Result<()> = async { $body }.await;
        if r.is_err() {
            $fx.shared.c.borrow_mut().disconnects += 1;
        }
        r
    }};
}

fn resume_headers(p: &Pos, out: &mut Vec<u8>) {
    use std::io::Write;
    match (&p.last_modified, p.have_first) {
        (Some(lm), true) => {
            let _ = write!(
                out,
                "When-Modified-After: {lm}\r\nRange: bytes={}-\r\n",
                p.len
            );
        }
        _ => out.extend_from_slice(b"Range: bytes=0-\r\n"),
    }
}

/// `POST /subscribe` for `res`: one explicit-form `GET` sub-request per resource
/// (`Range: bytes=0-` inherited from the parent, or each one's own resume headers).
fn subscribe_request(paths: &Paths, res: &[u64], pos: &[Pos], req: &mut Vec<u8>) {
    use std::io::Write;
    let mut body = Vec::new();
    for (i, &k) in res.iter().enumerate() {
        let _ = write!(
            body,
            "--{SUB_BOUNDARY}\r\nContent-Type: application/http; msgtype=request\r\n\r\nGET {} HTTP/1.1\r\n",
            paths.resource(k)
        );
        if pos[i].have_first {
            resume_headers(&pos[i], &mut body);
        }
        // The blank line ending the embedded head, then the CRLF that belongs to the
        // next delimiter.
        body.extend_from_slice(b"\r\n\r\n");
    }
    let _ = write!(body, "--{SUB_BOUNDARY}--\r\n");
    let _ = write!(
        req,
        "POST /subscribe HTTP/1.1\r\nHost: {}\r\nAccept: multipart/digest\r\nRange: bytes=0-\r\nContent-Type: multipart/digest; boundary={SUB_BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        paths.host,
        body.len()
    );
    req.extend_from_slice(&body);
}

async fn halley_stream(fx: &Fx, j: usize, res: &[u64], pos: &mut [Pos]) -> Result<()> {
    use std::io::Write;
    on_conn!(fx, |conn| {
        let mut req = Vec::new();
        let host = &fx.paths.host;
        if fx.args.mode == Mode::Subscribe {
            subscribe_request(&fx.paths, res, pos, &mut req);
        } else {
            let _ = write!(
                req,
                "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: multipart/digest\r\n",
                fx.paths.resource(res[0])
            );
            resume_headers(&pos[0], &mut req);
            req.extend_from_slice(b"\r\n");
        }
        conn.write_all(&req).await?;
        let head = conn.read_head().await?;
        if head.status != 200 {
            return Err(fx.proto_error(format!("stream request answered {}", head.status)));
        }
        let Some(b) = head.boundary() else {
            return Err(fx.proto_error(format!("stream without boundary: {:?}", head.content_type)));
        };
        let mut dec = head.chunked.then(ChunkedDecoder::default);
        let mut mp = MultipartParser::new(&b);
        // Ends when the stream or connection ends; the worker aborts it at the run's end.
        loop {
            let mut ended = false;
            let data = conn.data();
            let n = data.len();
            if let Some(d) = dec.as_mut() {
                let used = d.decode(data, mp.input())?;
                conn.consume(used);
                ended = d.is_done();
            } else {
                mp.input().extend_from_slice(data);
                conn.consume(n);
            }
            let now = mono_ns();
            let mut err = None;
            mp.parse(|ev| match ev {
                Event::End => ended = true,
                Event::Part(p) => {
                    if let Err(e) = fx.digest_part(j, res, pos, p, now) {
                        err.get_or_insert(e);
                    }
                }
            })?;
            if let Some(e) = err {
                return Err(e);
            }
            fx.check_drained(j);
            if ended {
                bail!("stream ended by the server");
            }
            if conn.fill().await? == 0 {
                bail!("connection closed by the server");
            }
        }
    })
}

async fn halley_longpoll(fx: &Fx, j: usize, res: &[u64], pos: &mut [Pos]) -> Result<()> {
    use std::io::Write;
    let path = fx.paths.resource(res[0]);
    let host = fx.paths.host.clone();
    on_conn!(fx, |conn| {
        let p = &mut pos[0];
        let mut req = Vec::new();
        if !p.have_first {
            write_request(&mut req, "GET", &path, &host, &[], None);
            conn.write_all(&req).await?;
            let r = conn.read_response(false).await?;
            if r.head.status != 200 {
                return Err(fx.proto_error(format!("GET {path} answered {}", r.head.status)));
            }
            fx.embedded_answer(j, p, &r.head, &r.body, mono_ns())?;
            if r.head.last_modified.is_none() {
                return Err(fx.proto_error(format!("GET {path}: no Last-Modified")));
            }
        }
        // Ends on a connection error; the worker aborts it at the run's end.
        loop {
            req.clear();
            let lm = p.last_modified.clone().unwrap_or_default();
            let _ = write!(
                req,
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nWhen-Modified-After: {lm}\r\nRange: bytes={}-\r\n\r\n",
                p.len
            );
            conn.write_all(&req).await?;
            // Parked from here on: a change after `lm` can no longer be missed.
            fx.mark_ready(j);
            let r = conn.read_response(false).await?;
            let now = mono_ns();
            fx.shared.c.borrow_mut().parts += 1;
            if let Err(e) = fx.embedded_answer(j, p, &r.head, &r.body, now) {
                fx.errors.note(&format!("long poll: {e:#}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            fx.check_drained(j);
            if r.head.close {
                bail!("server closed the long-poll connection");
            }
        }
    })
}

/// The Nchan path for this subscriber (one channel, or multiplexed).
fn nchan_path(fx: &Fx, res: &[u64]) -> String {
    if res.len() == 1 && fx.args.mode != Mode::Subscribe {
        fx.paths.subscribe_path(res[0])
    } else {
        fx.paths.multi_path(res)
    }
}

/// Nchan messages of a `multipart/mixed` body (each part one message).
fn nchan_multipart_messages(fx: &Fx, j: usize, mp: &mut MultipartParser, now: u64) -> Result<u64> {
    let mut n = 0u64;
    let mut err = None;
    mp.parse(|ev| {
        if let Event::Part(p) = ev {
            match split_part(p) {
                Ok(v) => {
                    n += 1;
                    fx.body(j, v.body, BodyKind::Messages, now);
                }
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
    })?;
    fx.shared.c.borrow_mut().parts += n;
    match err {
        Some(e) => Err(fx.proto_error(format!("multipart part: {e}"))),
        None => Ok(n),
    }
}

async fn nchan_longpoll(fx: &Fx, j: usize, res: &[u64], pos: &mut [Pos]) -> Result<()> {
    use std::io::Write;
    let path = nchan_path(fx, res);
    let host = fx.paths.host.clone();
    on_conn!(fx, |conn| {
        let p = &mut pos[0];
        let mut req = Vec::new();
        // Ends on a connection error; the worker aborts it at the run's end.
        loop {
            req.clear();
            let _ = write!(req, "GET {path} HTTP/1.1\r\nHost: {host}\r\n");
            if let Some(lm) = &p.last_modified {
                let _ = write!(req, "If-Modified-Since: {lm}\r\n");
            }
            if let Some(et) = &p.etag {
                let _ = write!(req, "If-None-Match: {et}\r\n");
            }
            req.extend_from_slice(b"\r\n");
            conn.write_all(&req).await?;
            fx.mark_ready(j);
            let r = conn.read_response(false).await?;
            let now = mono_ns();
            match r.head.status {
                200 => {
                    let multipart = r
                        .head
                        .content_type
                        .as_deref()
                        .is_some_and(|c| c.to_ascii_lowercase().starts_with("multipart/mixed"));
                    match (multipart, r.head.boundary()) {
                        (true, Some(b)) => {
                            let mut mp = MultipartParser::new(&b);
                            mp.input().extend_from_slice(&r.body);
                            if nchan_multipart_messages(fx, j, &mut mp, now)? > 1 {
                                fx.shared.c.borrow_mut().merged_parts += 1;
                            }
                        }
                        _ => {
                            fx.shared.c.borrow_mut().parts += 1;
                            fx.body(j, &r.body, BodyKind::Messages, now);
                        }
                    }
                }
                304 | 408 => fx.shared.c.borrow_mut().poll_timeouts += 1,
                s => {
                    fx.shared.c.borrow_mut().protocol_errors += 1;
                    fx.errors.note(&format!("Nchan long poll answered {s}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            if let Some(lm) = r.head.last_modified {
                p.last_modified = Some(lm);
            }
            if let Some(et) = r.head.etag {
                p.etag = Some(et);
            }
            fx.check_drained(j);
            if r.head.close {
                bail!("server closed the long-poll connection");
            }
        }
    })
}

async fn nchan_stream(fx: &Fx, j: usize, res: &[u64]) -> Result<()> {
    let path = nchan_path(fx, res);
    let host = fx.paths.host.clone();
    on_conn!(fx, |conn| {
        let mut req = Vec::new();
        let hdr = match fx.args.nchan_stream {
            NchanStream::Chunked => ("TE", "chunked"),
            NchanStream::Multipart => ("Accept", "multipart/mixed"),
        };
        write_request(&mut req, "GET", &path, &host, &[hdr], None);
        conn.write_all(&req).await?;
        let head = conn.read_head().await?;
        if head.status != 200 {
            return Err(fx.proto_error(format!("Nchan subscribe answered {}", head.status)));
        }
        // Nchan answers once the subscription is registered.
        fx.mark_ready(j);
        match fx.args.nchan_stream {
            NchanStream::Chunked => {
                if !head.chunked {
                    return Err(fx.proto_error("Nchan stream is not chunked".into()));
                }
                let mut dec = ChunkedDecoder::default();
                let mut lines: Vec<u8> = Vec::with_capacity(4096);
                // Ends when the stream or connection ends; aborted by the worker.
                loop {
                    let used = dec.decode(conn.data(), &mut lines)?;
                    conn.consume(used);
                    // Every message is one record ending in '\n' (one chunk each).
                    if let Some(end) = memchr::memrchr(b'\n', &lines) {
                        let now = mono_ns();
                        let n = memchr::memchr_iter(b'\n', &lines[..=end]).count() as u64;
                        fx.shared.c.borrow_mut().parts += n;
                        fx.body(j, &lines[..=end], BodyKind::Messages, now);
                        lines.drain(..=end);
                    }
                    if lines.len() > crate::http::MAX_BODY {
                        return Err(fx.proto_error("Nchan message without newline".into()));
                    }
                    fx.check_drained(j);
                    if dec.is_done() {
                        bail!("stream ended by the server");
                    }
                    if conn.fill().await? == 0 {
                        bail!("connection closed by the server");
                    }
                }
            }
            NchanStream::Multipart => {
                let Some(b) = head.boundary() else {
                    return Err(fx.proto_error("multipart/mixed without boundary".into()));
                };
                let mut dec = head.chunked.then(ChunkedDecoder::default);
                let mut mp = MultipartParser::new(&b);
                loop {
                    let data = conn.data();
                    let n = data.len();
                    if let Some(d) = dec.as_mut() {
                        let used = d.decode(data, mp.input())?;
                        conn.consume(used);
                    } else {
                        mp.input().extend_from_slice(data);
                        conn.consume(n);
                    }
                    nchan_multipart_messages(fx, j, &mut mp, mono_ns())?;
                    fx.check_drained(j);
                    if mp.is_done() {
                        bail!("stream ended by the server");
                    }
                    if conn.fill().await? == 0 {
                        bail!("connection closed by the server");
                    }
                }
            }
        }
    })
}

fn resources_of(args: &FanoutArgs, g: usize) -> Vec<u64> {
    let k = if args.mode == Mode::Subscribe {
        args.per_conn as usize
    } else {
        1
    };
    let first = if args.scatter {
        (splitmix64(g as u64) % args.resources as u64) as usize
    } else {
        g * k
    };
    (0..k)
        .map(|i| ((first + i) % args.resources) as u64)
        .collect()
}

/// A well-mixed hash of `x` (SplitMix64's finaliser).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

async fn worker(mut w: WorkerCtx, args: Rc<FanoutArgs>, prefix: String) -> Result<()> {
    let c = &args.common;
    let dialer = worker_dialer(c, w.index)?;
    let paths = Paths::new(c.target, &prefix, c.addr);
    let fx = Rc::new(Fx {
        args: args.clone(),
        paths: paths.clone(),
        shared: w.shared.clone(),
        dialer: dialer.clone(),
        subs: RefCell::new(Vec::new()),
        targets: RefCell::new(None),
        notify: Notify::new(),
        settled: Cell::new(0),
        done: Cell::new(0),
        errors: ErrorLog::new("fanout"),
    });
    let stats = w.spawn_stats();
    let mut tasks = JoinSet::new();
    for g in (w.index..args.subscribers).step_by(w.count) {
        let res = resources_of(&args, g);
        let j = fx.subs.borrow().len();
        fx.subs.borrow_mut().push(SubState {
            trackers: res.iter().map(|&k| Tracker::new(k)).collect(),
            ready: false,
            drained: false,
        });
        tasks.spawn_local(subscriber(fx.clone(), j, res));
    }
    let n_local = fx.subs.borrow().len();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ps = Rc::new(PubShared {
        shared: w.shared.clone(),
        dialer,
        paths,
        seq: RefCell::new(vec![0; args.resources]),
        errors: ErrorLog::new("fanout"),
    });
    let mut pubs = JoinSet::new();
    let effective_pubs = args.publishers.min(args.resources).max(1);
    let mut ready_sent = false;
    // Ends at `drain` (after its timeout) or `exit`; a dead parent closes stdin → exit.
    loop {
        if !ready_sent && fx.settled.get() >= n_local {
            w.send(Kind::Ready, Vec::new());
            ready_sent = true;
        }
        tokio::select! {
            _ = fx.notify.notified(), if !ready_sent => {}
            ctl = w.next_ctl() => match ctl {
                Ctl::Start => {
                    for p in (w.index..effective_pubs).step_by(w.count) {
                        let spec = PubSpec {
                            method: Method::Post,
                            batch: args.batch as usize,
                            pipeline: args.pipeline as usize,
                            msg_size: args.msg_size as usize,
                            rate: args.rate / effective_pubs as f64,
                            resources: (p..args.resources).step_by(effective_pubs).map(|k| k as u64).collect(),
                        };
                        spawn_publisher(&mut pubs, &ps, spec, stop_rx.clone());
                    }
                }
                Ctl::Stop => {
                    stop_publishers(&mut pubs, &stop_tx).await;
                    w.send(Kind::Stopped, ps.seq.borrow().clone());
                }
                Ctl::Drain { published } => {
                    *fx.targets.borrow_mut() = Some(published.clone());
                    for j in 0..n_local {
                        fx.check_drained(j);
                    }
                    let deadline = Instant::now() + args.drain;
                    while fx.done.get() < n_local {
                        tokio::select! {
                            _ = fx.notify.notified() => {}
                            _ = tokio::time::sleep_until(deadline.into()) => break,
                        }
                    }
                    let missing: u64 = fx
                        .subs
                        .borrow()
                        .iter()
                        .flat_map(|s| s.trackers.iter())
                        .map(|t| t.missing(published.get(t.resource as usize).copied().unwrap_or(0)))
                        .sum();
                    w.shared.c.borrow_mut().missing += missing;
                    w.send(Kind::Final, Vec::new());
                    break;
                }
                Ctl::Exit => break,
            }
        }
    }
    stats.abort();
    tasks.abort_all();
    pubs.abort_all();
    Ok(())
}

pub fn worker_fn(args: Rc<FanoutArgs>, prefix: String) -> WorkerFn {
    Rc::new(move |ctx| Box::pin(worker(ctx, args.clone(), prefix.clone())))
}

fn validate(a: &FanoutArgs) -> Result<()> {
    if a.subscribers == 0 || a.resources == 0 || a.publishers == 0 {
        bail!("--subscribers, --resources and --publishers must be at least 1");
    }
    if a.duration.is_zero() {
        bail!("--duration must be positive");
    }
    if !(a.rate.is_finite() && a.rate >= 0.0) {
        bail!("--rate must be a non-negative number");
    }
    if a.mode != Mode::Subscribe && a.per_conn != 1 {
        bail!("--per-conn applies to --mode subscribe only");
    }
    if a.per_conn as usize > a.resources {
        bail!("--per-conn cannot exceed --resources");
    }
    if (a.msg_size as usize) < crate::record::MIN_RECORD_SIZE {
        bail!(
            "--msg-size must be at least {}",
            crate::record::MIN_RECORD_SIZE
        );
    }
    if a.resources > u32::MAX as usize {
        bail!("--resources too large");
    }
    Ok(())
}

/// Runs `fanout` as the coordinator; returns the process exit code.
pub async fn run(args: FanoutArgs) -> Result<i32> {
    validate(&args)?;
    let c = args.common.clone();
    let prefix = prepare_run(&c, args.resources).await?;
    let label = format!(
        "{} {} {:?}",
        c.target.name(),
        match args.mode {
            Mode::Longpoll => "longpoll",
            Mode::Stream => "stream",
            Mode::Subscribe => "subscribe",
        },
        args.subscribers
    );
    eprintln!(
        "halley-load fanout: {} subscribers ({}) over {} resources at {}, prefix {prefix}",
        args.subscribers, label, args.resources, c.addr
    );
    let subs = args.subscribers as u64;
    let args = Rc::new(args);
    let line = move |s: &Snap| {
        format!(
            "ready {}/{} open {} | {:.0} deliv/s {:.0} chg/s | lost {} dup {} ooo {} merged {} | {}",
            s.c.ready,
            subs,
            s.open,
            s.rate(s.d.deliveries),
            s.rate(s.d.changes),
            s.c.net_lost(),
            s.c.duplicates,
            s.c.out_of_order,
            s.c.merged_parts,
            s.lat.short()
        )
    };
    let mut d = Driver::launch(
        c.procs as usize,
        &prefix,
        c.server_pid.clone(),
        worker_fn(args.clone(), prefix.clone()),
        line,
    )
    .await?;
    let t0 = Instant::now();
    let all_ready = d.wait_ready(args.warmup_timeout).await;
    let warmup = t0.elapsed();
    if !all_ready {
        eprintln!(
            "halley-load: warning: only {}/{} subscribers ready after {:?}; measuring anyway",
            d.fleet.totals().ready,
            subs,
            args.warmup_timeout
        );
    }
    // An Nchan long poll is registered some time after it is sent: confirm with the stub
    // status (when given) so the first message cannot be missed; halley's
    // When-Modified-After makes this unnecessary.
    if c.target == Target::Nchan && args.mode == Mode::Longpoll {
        match &c.metrics {
            Some(url) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    match metrics::parked(url, c.target).await {
                        Ok(n) if n >= subs => break,
                        Ok(n) => *d.prog.extra.borrow_mut() = format!("nchan subscribers {n}"),
                        Err(e) => {
                            eprintln!("halley-load: metrics: {e:#}");
                            break;
                        }
                    }
                    d.idle(Duration::from_millis(200), "warmup").await;
                }
            }
            None => d.idle(Duration::from_secs(1), "warmup").await,
        }
        d.prog.extra.borrow_mut().clear();
    }
    let at_start = d.fleet.totals();
    d.start();
    d.run_for(args.duration, "run").await;
    let stopped = d.stop(Duration::from_secs(15)).await;
    if !stopped {
        eprintln!("halley-load: warning: some workers did not report their publishers stopped");
    }
    let drained = d.drain(args.drain + Duration::from_secs(10)).await;
    if !drained {
        eprintln!("halley-load: warning: some workers sent no final report");
    }
    let window = d.window;
    let at_stop = d.at_stop.clone();
    let server_cpu = d.server_cpu;
    let deliveries = at_stop.deliveries - at_start.deliveries;
    let changes = at_stop.changes - at_start.changes;
    let dps = d.rate(deliveries);
    let cps = d.rate(changes);
    let (fleet, prog) = d.finish().await;
    let t = fleet.totals();
    let lat = Percentiles::of(&fleet.lat_total);
    let req = Percentiles::of(&fleet.req_total);
    let client_cpu = fleet.client_cpu();
    let timeline = std::mem::take(&mut { prog }.timeline);
    fleet.shutdown().await;

    let verify_ok = t.net_lost() == 0
        && t.duplicates == 0
        && t.out_of_order == 0
        && t.foreign == 0
        && t.malformed == 0;
    let per_cpu = server_cpu
        .filter(|&s| s > 0.0)
        .map(|s| deliveries as f64 / s);
    let mut rows: Vec<(String, String)> = vec![
        ("target".into(), format!("{} at {}", c.target.name(), c.addr)),
        (
            "shape".into(),
            format!(
                "{} subscribers ({:?}, {} per conn) over {} resources; {} publisher(s), {}, pipeline {}, batch {}, {} B records",
                args.subscribers,
                args.mode,
                args.per_conn,
                args.resources,
                args.publishers,
                if args.rate > 0.0 { format!("open loop {} changes/s", args.rate) } else { "closed loop".into() },
                args.pipeline,
                args.batch,
                args.msg_size
            ),
        ),
        ("subscribers ready".into(), format!("{}/{} after {:.2}s", t.ready, subs, warmup.as_secs_f64())),
        ("window".into(), format!("{:.2}s", window.as_secs_f64())),
        ("deliveries/s".into(), format!("{dps:.0}")),
        ("changes/s".into(), format!("{cps:.0}")),
        ("deliveries / changes".into(), if changes > 0 { format!("{:.1}", deliveries as f64 / changes as f64) } else { "-".into() }),
        ("deliveries (total)".into(), t.deliveries.to_string()),
        ("changes (total)".into(), t.changes.to_string()),
        ("lost".into(), format!("{} (skipped {}, undelivered at end {})", t.net_lost(), t.lost.saturating_sub(t.out_of_order), t.missing)),
        ("duplicated".into(), t.duplicates.to_string()),
        ("out of order".into(), t.out_of_order.to_string()),
        ("merged parts".into(), t.merged_parts.to_string()),
        ("resyncs (200 full state)".into(), t.resyncs.to_string()),
        ("parts received".into(), t.parts.to_string()),
    ];
    rows.extend(latency_rows("delivery latency", &lat));
    rows.extend(latency_rows("publish request latency", &req));
    rows.push((
        "errors".into(),
        format!(
            "connect {} disconnect {} protocol {} status {} malformed {} foreign {} (heartbeats {}, poll timeouts {}, late sends {})",
            t.conn_failures, t.disconnects, t.protocol_errors, t.status_errors, t.malformed, t.foreign, t.heartbeats, t.poll_timeouts, t.late_sends
        ),
    ));
    if let Some(s) = server_cpu {
        rows.push(("server CPU".into(), format!("{s:.2}s in the window")));
        if let Some(p) = per_cpu {
            rows.push(("deliveries per server CPU-s".into(), format!("{p:.0}")));
        }
    }
    rows.push(("client CPU".into(), format!("{client_cpu:.2}s")));
    rows.push((
        "verification".into(),
        if verify_ok {
            "OK (no loss, duplicate or reordering)".into()
        } else {
            "FAILED (see lost/duplicated/out of order)".into()
        },
    ));
    crate::stats::print_table(&format!("halley-load fanout: {label}"), &rows);

    if let Some(path) = &c.json {
        let json = serde_json::json!({
            "scenario": "fanout",
            "target": c.target.name(),
            "addr": c.addr.to_string(),
            "argv": std::env::args().collect::<Vec<_>>(),
            "prefix": prefix,
            "params": {
                "mode": format!("{:?}", args.mode).to_lowercase(),
                "subscribers": args.subscribers,
                "resources": args.resources,
                "per_conn": args.per_conn,
                "scatter": args.scatter,
                "publishers": args.publishers,
                "rate": args.rate,
                "pipeline": args.pipeline,
                "batch": args.batch,
                "msg_size": args.msg_size,
                "duration_s": args.duration.as_secs_f64(),
                "procs": c.procs,
                "nchan_stream": format!("{:?}", args.nchan_stream).to_lowercase(),
            },
            "warmup_s": warmup.as_secs_f64(),
            "all_ready": all_ready,
            "window_s": window.as_secs_f64(),
            "results": {
                "deliveries_per_s": dps,
                "changes_per_s": cps,
                "deliveries": t.deliveries,
                "changes": t.changes,
                "lost": t.net_lost(),
                "duplicates": t.duplicates,
                "out_of_order": t.out_of_order,
                "merged_parts": t.merged_parts,
                "resyncs": t.resyncs,
                "latency_us": lat,
                "request_latency_us": req,
                "server_cpu_s": server_cpu,
                "deliveries_per_server_cpu_s": per_cpu,
                "client_cpu_s": client_cpu,
                "verification_ok": verify_ok,
            },
            "counters": t,
            "timeline": timeline,
        });
        output::write_json(path, &json)?;
    }
    if !verify_ok {
        eprintln!(
            "halley-load: VERIFICATION FAILED: lost {} duplicated {} out-of-order {} foreign {} malformed {}",
            t.net_lost(),
            t.duplicates,
            t.out_of_order,
            t.foreign,
            t.malformed
        );
        return Ok(2);
    }
    let _ = fmt_us;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_body_parses_back() {
        let a: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let paths = Paths::new(Target::Halley, "runx", a);
        let mut pos = vec![Pos::default(); 3];
        pos[1] = Pos {
            last_modified: Some("Wed, 25 Nov 2026 18:41:21.286833 GMT".into()),
            etag: None,
            len: 300,
            have_first: true,
        };
        let mut req = Vec::new();
        subscribe_request(&paths, &[4, 5, 6], &pos, &mut req);
        let text = String::from_utf8(req.clone()).unwrap();
        let (head_end, body) = text.split_once("\r\n\r\n").unwrap();
        let cl: usize = head_end
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(cl, body.len());
        let mut mp = MultipartParser::new(SUB_BOUNDARY);
        let mut gets = Vec::new();
        let mut ended = false;
        mp.feed(body.as_bytes(), |e| match e {
            Event::Part(p) => {
                let v = split_part(p).unwrap();
                assert!(is_http_part(v.content_type));
                let mut hs = [httparse::EMPTY_HEADER; 8];
                let mut r = httparse::Request::new(&mut hs);
                assert!(r.parse(v.body).unwrap().is_complete());
                gets.push((r.path.unwrap().to_string(), r.headers.len()));
            }
            Event::End => ended = true,
        })
        .unwrap();
        assert!(ended);
        assert_eq!(
            gets,
            vec![
                ("/runx/r/4".into(), 0),
                ("/runx/r/5".into(), 2),
                ("/runx/r/6".into(), 0)
            ]
        );
    }

    #[test]
    fn resources_per_subscriber() {
        let mut a = crate::cli::FanoutArgs::parse_from_for_test(&[
            "--mode",
            "subscribe",
            "--per-conn",
            "10",
            "--resources",
            "100",
        ]);
        assert_eq!(resources_of(&a, 0), (0..10).collect::<Vec<u64>>());
        assert_eq!(resources_of(&a, 10), (0..10).collect::<Vec<u64>>());
        a.mode = Mode::Stream;
        assert_eq!(resources_of(&a, 123), vec![23]);
    }

    #[test]
    fn scattered_subscribers_cover_every_resource_out_of_order() {
        let mut a =
            crate::cli::FanoutArgs::parse_from_for_test(&["--resources", "100", "--scatter"]);
        let mut count = [0u32; 100];
        let mut in_order = 0;
        for g in 0..10_000 {
            let r = resources_of(&a, g);
            assert_eq!(r, resources_of(&a, g), "the same for every run");
            count[r[0] as usize] += 1;
            in_order += usize::from(r[0] == (g % 100) as u64);
        }
        assert!(count.iter().all(|&c| (60..=140).contains(&c)), "{count:?}");
        assert!(in_order < 300, "not g mod R: {in_order} of 10,000");
        // Several resources per connection: distinct, consecutive from a scattered start.
        a.mode = Mode::Subscribe;
        a.per_conn = 10;
        for g in 0..1000 {
            let r = resources_of(&a, g);
            let mut d = r.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 10);
            assert!(r.windows(2).all(|w| w[1] == (w[0] + 1) % 100));
        }
    }
}
