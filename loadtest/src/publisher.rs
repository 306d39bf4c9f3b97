//! Publisher connections: closed loop (next request when one answered, `pipeline` in
//! flight) or open loop (a fixed schedule), single changes or batches.

use crate::cli::{Method, Target};
use crate::clock::mono_ns;
use crate::fleet::{OpenGuard, Shared};
use crate::http::{write_request, Conn, HttpError, Response};
use crate::multipart::{is_http_part, parse_embedded, split_part, Event, MultipartParser};
use crate::net::Dialer;
use crate::output::ErrorLog;
use crate::record::write_record;
use crate::stats::record_ns;
use crate::target::Paths;
use anyhow::Result;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Boundary of our `/batch` bodies: records are `[a-z0-9=. ]`, so it can never occur in one.
pub const BATCH_BOUNDARY: &str = "halley-load-batch-7f3a";

/// What every publisher of a worker shares.
pub struct PubShared {
    pub shared: Rc<Shared>,
    pub dialer: Rc<Dialer>,
    pub paths: Paths,
    /// Next sequence number per resource (index = resource).
    pub seq: RefCell<Vec<u64>>,
    /// Errors seen by this worker's publishers (the first few printed).
    pub errors: ErrorLog,
}

#[derive(Debug, Clone)]
pub struct PubSpec {
    pub method: Method,
    /// Changes per request unit (halley: one /batch; Nchan: that many pipelined POSTs).
    pub batch: usize,
    /// Units in flight.
    pub pipeline: usize,
    pub msg_size: usize,
    /// Changes per second for this connection; 0 = closed loop.
    pub rate: f64,
    /// Resources this connection writes, round-robin.
    pub resources: Vec<u64>,
}

struct Unit {
    sent_ns: u64,
    /// Responses still expected for this unit.
    left: usize,
}

/// Appends one unit (`spec.batch` changes) to `out`; returns the responses it expects.
fn build_unit(ps: &PubShared, spec: &PubSpec, rr: &mut usize, out: &mut Vec<u8>) -> usize {
    let paths = &ps.paths;
    let mut seq = ps.seq.borrow_mut();
    let mut next = |rr: &mut usize| {
        let k = spec.resources[*rr % spec.resources.len()];
        *rr += 1;
        let s = seq.get_mut(k as usize).map(|v| {
            *v += 1;
            *v - 1
        });
        (k, s.unwrap_or(0))
    };
    let method = match spec.method {
        Method::Post => "POST",
        Method::Put => "PUT",
    };
    if spec.batch > 1 && paths.target == Target::Halley {
        use std::io::Write;
        let mut body = Vec::with_capacity(spec.batch * (spec.msg_size + 160));
        for _ in 0..spec.batch {
            let (k, s) = next(rr);
            let _ = write!(
                body,
                "--{BATCH_BOUNDARY}\r\nContent-Type: application/http; msgtype=request\r\n\r\n{method} {} HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                paths.resource(k),
                spec.msg_size
            );
            write_record(&mut body, k, s, mono_ns(), spec.msg_size);
            body.extend_from_slice(b"\r\n");
        }
        let _ = write!(body, "--{BATCH_BOUNDARY}--\r\n");
        let ct = format!("multipart/digest; boundary={BATCH_BOUNDARY}");
        write_request(
            out,
            "POST",
            "/batch",
            &paths.host,
            &[("Content-Type", &ct)],
            Some(&body),
        );
        1
    } else {
        let mut rec = Vec::with_capacity(spec.msg_size);
        for _ in 0..spec.batch {
            let (k, s) = next(rr);
            rec.clear();
            write_record(&mut rec, k, s, mono_ns(), spec.msg_size);
            write_request(
                out,
                method,
                &paths.publish_path(k),
                &paths.host,
                &[("Content-Type", "text/plain")],
                Some(&rec),
            );
        }
        spec.batch
    }
}

/// Accounts one response; returns false when publishing must stop (e.g. /batch missing).
fn on_response(ps: &PubShared, spec: &PubSpec, r: &Response) -> bool {
    let mut c = ps.shared.c.borrow_mut();
    c.responses += 1;
    let ok = |s: u16| (200..300).contains(&s);
    if spec.batch > 1 && ps.paths.target == Target::Halley {
        if r.head.status == 501 || r.head.status == 404 || r.head.status == 405 {
            c.status_errors += spec.batch as u64;
            drop(c);
            ps.errors.note(&format!(
                "POST /batch answered {} ({}): this server has no /batch; run without --batch",
                r.head.status,
                String::from_utf8_lossy(&r.body).trim()
            ));
            return false;
        }
        if !ok(r.head.status) {
            c.status_errors += spec.batch as u64;
            drop(c);
            ps.errors
                .note(&format!("POST /batch answered {}", r.head.status));
            return true;
        }
        let Some(b) = r.head.boundary() else {
            c.protocol_errors += 1;
            drop(c);
            ps.errors
                .note("POST /batch answer without a multipart boundary");
            return true;
        };
        let mut mp = MultipartParser::new(&b);
        let (mut good, mut bad, mut broken) = (0u64, 0u64, 0u64);
        let mut first_bad = None;
        let res = mp.feed(&r.body, |ev| {
            if let Event::Part(p) = ev {
                match split_part(p).and_then(|v| {
                    if !is_http_part(v.content_type) {
                        return Err(HttpError::Parse("part is not application/http".into()));
                    }
                    parse_embedded(v.body).map(|(h, _)| h.status)
                }) {
                    Ok(s) if ok(s) => good += 1,
                    Ok(s) => {
                        bad += 1;
                        first_bad.get_or_insert(s);
                    }
                    Err(_) => broken += 1,
                }
            }
        });
        c.changes += good;
        c.status_errors += bad;
        let short = (spec.batch as u64).saturating_sub(good + bad + broken);
        c.protocol_errors += broken + u64::from(res.is_err()) + u64::from(short > 0);
        drop(c);
        if let Some(s) = first_bad {
            ps.errors
                .note(&format!("a /batch sub-request answered {s}"));
        }
        if broken > 0 || res.is_err() || short > 0 {
            ps.errors.note("malformed /batch answer");
        }
        return true;
    }
    if ok(r.head.status) {
        c.changes += 1;
    } else {
        c.status_errors += 1;
        drop(c);
        ps.errors.note(&format!(
            "publish answered {}: {}",
            r.head.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)]).trim()
        ));
    }
    true
}

/// Runs one publisher connection until `stop` turns true and its requests are answered.
pub async fn run_publisher(
    ps: Rc<PubShared>,
    spec: PubSpec,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    if spec.resources.is_empty() {
        return Ok(());
    }
    let stream = match ps.dialer.connect().await {
        Ok(s) => s,
        Err(e) => {
            ps.shared.c.borrow_mut().conn_failures += 1;
            ps.errors.note(&format!("{e:#}"));
            return Err(e);
        }
    };
    ps.shared.c.borrow_mut().conns += 1;
    let _open = OpenGuard::new(&ps.shared);
    let mut conn = Conn::new(stream, 64 * 1024);
    let open_loop = spec.rate > 0.0;
    let interval = if open_loop {
        Duration::from_secs_f64(spec.batch as f64 / spec.rate)
    } else {
        Duration::ZERO
    };
    let mut next_due = Instant::now();
    let mut inflight: VecDeque<Unit> = VecDeque::new();
    let mut wbuf = Vec::with_capacity(spec.pipeline * spec.batch * (spec.msg_size + 200));
    let mut rr = 0usize;
    let mut halted = false;
    // Ends when stopped and drained; the worker also aborts it after its stop timeout.
    loop {
        let stopping = *stop.borrow() || halted;
        if stopping && inflight.is_empty() {
            return Ok(());
        }
        wbuf.clear();
        let mut units = 0u64;
        while !stopping && inflight.len() < spec.pipeline {
            if open_loop {
                let now = Instant::now();
                if now < next_due {
                    break;
                }
                if now - next_due > Duration::from_millis(1) {
                    ps.shared.c.borrow_mut().late_sends += 1;
                }
                next_due += interval;
                // Far behind (the server is slower than the schedule): do not burst to
                // catch up by more than one second's worth.
                if now > next_due + Duration::from_secs(1) {
                    next_due = now;
                }
            }
            let left = build_unit(&ps, &spec, &mut rr, &mut wbuf);
            inflight.push_back(Unit {
                sent_ns: mono_ns(),
                left,
            });
            units += 1;
        }
        if !wbuf.is_empty() {
            // Small pipelines of small requests: the socket buffers absorb them, so
            // writing before reading cannot deadlock against the server's answers.
            conn.write_all(&wbuf).await.map_err(anyhow::Error::from)?;
            ps.shared.c.borrow_mut().requests += units;
        }
        let mut progressed = false;
        while let Some(r) = conn.take_response(false)? {
            let Some(front) = inflight.front_mut() else {
                ps.shared.c.borrow_mut().protocol_errors += 1;
                anyhow::bail!("response without a request");
            };
            if !on_response(&ps, &spec, &r) {
                halted = true;
            }
            front.left -= 1;
            if front.left == 0 {
                let u = inflight.pop_front().expect("front exists");
                record_ns(&mut ps.shared.req_lat.borrow_mut(), mono_ns() - u.sent_ns);
            }
            progressed = true;
            if r.head.close {
                ps.shared.c.borrow_mut().disconnects += 1;
                anyhow::bail!("server closed the publisher connection");
            }
        }
        if progressed {
            continue;
        }
        if conn.eof {
            ps.shared.c.borrow_mut().disconnects += 1;
            anyhow::bail!("publisher connection closed by server");
        }
        let can_send = open_loop && !stopping && inflight.len() < spec.pipeline;
        tokio::select! {
            r = conn.fill() => { r?; }
            _ = tokio::time::sleep_until(next_due.into()), if can_send => {}
            r = stop.changed(), if !stopping => {
                // The worker dropped its sender: treat as a stop.
                if r.is_err() {
                    halted = true;
                }
            }
        }
    }
}

/// Starts a publisher connection on `pubs`; its error, if any, is noted in the stats.
pub fn spawn_publisher(
    pubs: &mut tokio::task::JoinSet<()>,
    ps: &Rc<PubShared>,
    spec: PubSpec,
    stop: watch::Receiver<bool>,
) {
    let ps = ps.clone();
    pubs.spawn_local(async move {
        if let Err(e) = run_publisher(ps.clone(), spec, stop).await {
            ps.errors.note(&format!("{e:#}"));
        }
    });
}

/// Tells every publisher to stop and waits (at most 10 s) for their answers.
pub async fn stop_publishers(pubs: &mut tokio::task::JoinSet<()>, stop: &watch::Sender<bool>) {
    let _ = stop.send(true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pubs.is_empty() {
        match tokio::time::timeout_at(deadline.into(), pubs.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    pubs.abort_all();
}
