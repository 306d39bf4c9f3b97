//! `park`: hold many idle long polls; time to park them all and the server's memory per
//! parked poll.

use crate::cli::{ParkArgs, Target};
use crate::fleet::{Ctl, Driver, OpenGuard, Snap, WorkerCtx, WorkerFn};
use crate::http::{write_request, Conn};
use crate::net::{worker_dialer, Dialer};
use crate::output::ErrorLog;
use crate::stats::Kind;
use crate::target::{prepare_run, Paths};
use crate::{metrics, output, procfs};
use anyhow::{bail, Context, Result};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;

struct Px {
    shared: Rc<crate::fleet::Shared>,
    dialer: Rc<Dialer>,
    settled: Cell<usize>,
    notify: Notify,
    errors: ErrorLog,
}

impl Px {
    fn settle(&self) {
        self.settled.set(self.settled.get() + 1);
        self.notify.notify_one();
    }
}

/// One parked poll: sent, then held; a 304 (server poll timeout) is re-sent.
async fn park_one(px: Rc<Px>, req: Vec<u8>) {
    let stream = match px.dialer.connect().await {
        Ok(s) => s,
        Err(e) => {
            px.shared.c.borrow_mut().conn_failures += 1;
            px.errors.note(&format!("{e:#}"));
            px.settle();
            return;
        }
    };
    px.shared.c.borrow_mut().conns += 1;
    let _open = OpenGuard::new(&px.shared);
    let mut conn = Conn::new(stream, 2048);
    if let Err(e) = conn.write_all(&req).await {
        px.shared.c.borrow_mut().disconnects += 1;
        px.errors.note(&format!("{e}"));
        px.settle();
        return;
    }
    px.shared.c.borrow_mut().ready += 1;
    px.settle();
    // Ends when the connection does; the worker aborts it at the end of the hold.
    loop {
        match conn.read_response(false).await {
            Ok(r) => {
                if r.head.status == 304 || r.head.status == 408 {
                    px.shared.c.borrow_mut().poll_timeouts += 1;
                } else {
                    // Nothing writes these resources: any other answer is unexpected.
                    px.shared.c.borrow_mut().protocol_errors += 1;
                    px.errors
                        .note(&format!("parked poll answered {}", r.head.status));
                }
                if r.head.close || conn.write_all(&req).await.is_err() {
                    px.shared.c.borrow_mut().disconnects += 1;
                    return;
                }
            }
            Err(e) => {
                px.shared.c.borrow_mut().disconnects += 1;
                px.errors.note(&format!("{e}"));
                return;
            }
        }
    }
}

/// `Last-Modified` of each resource, read with HEAD on one pipelined connection.
async fn stamps(
    addr: std::net::SocketAddr,
    paths: &Paths,
    ks: &[u64],
) -> Result<BTreeMap<u64, String>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut conn = Conn::new(stream, 64 * 1024);
    let mut out = BTreeMap::new();
    for chunk in ks.chunks(64) {
        let mut req = Vec::new();
        for &k in chunk {
            write_request(&mut req, "HEAD", &paths.resource(k), &paths.host, &[], None);
        }
        conn.write_all(&req).await?;
        for &k in chunk {
            let r = tokio::time::timeout(Duration::from_secs(10), conn.read_response(true))
                .await
                .context("HEAD timed out")??;
            let lm = r.head.last_modified.with_context(|| {
                format!(
                    "HEAD {} answered {} without Last-Modified",
                    paths.resource(k),
                    r.head.status
                )
            })?;
            out.insert(k, lm);
        }
    }
    Ok(out)
}

async fn worker(mut w: WorkerCtx, args: Rc<ParkArgs>, prefix: String) -> Result<()> {
    let c = &args.common;
    let dialer = worker_dialer(c, w.index)?;
    let paths = Paths::new(c.target, &prefix, c.addr);
    let mine: Vec<usize> = (w.index..args.conns).step_by(w.count).collect();
    let mut ks: Vec<u64> = mine.iter().map(|g| (g % args.resources) as u64).collect();
    ks.sort_unstable();
    ks.dedup();
    let lms = match c.target {
        Target::Halley => stamps(c.addr, &paths, &ks).await?,
        Target::Nchan => BTreeMap::new(),
    };
    let px = Rc::new(Px {
        shared: w.shared.clone(),
        dialer,
        settled: Cell::new(0),
        notify: Notify::new(),
        errors: ErrorLog::new("park"),
    });
    let stats = w.spawn_stats();
    let mut tasks = JoinSet::new();
    for &g in &mine {
        let k = (g % args.resources) as u64;
        let mut req = Vec::new();
        match c.target {
            Target::Halley => {
                let lm = lms.get(&k).cloned().unwrap_or_default();
                write_request(
                    &mut req,
                    "GET",
                    &paths.resource(k),
                    &paths.host,
                    &[("When-Modified-After", &lm)],
                    None,
                );
            }
            Target::Nchan => {
                write_request(
                    &mut req,
                    "GET",
                    &paths.subscribe_path(k),
                    &paths.host,
                    &[],
                    None,
                );
            }
        }
        tasks.spawn_local(park_one(px.clone(), req));
    }
    let mut ready_sent = false;
    // Ends at `drain`/`exit`; a dead parent closes stdin → exit.
    loop {
        if !ready_sent && px.settled.get() >= mine.len() {
            w.send(Kind::Ready, Vec::new());
            ready_sent = true;
        }
        tokio::select! {
            _ = px.notify.notified(), if !ready_sent => {}
            ctl = w.next_ctl() => match ctl {
                Ctl::Start => {}
                Ctl::Stop => w.send(Kind::Stopped, Vec::new()),
                Ctl::Drain { .. } => {
                    w.send(Kind::Final, Vec::new());
                    break;
                }
                Ctl::Exit => break,
            }
        }
    }
    stats.abort();
    tasks.abort_all();
    Ok(())
}

pub fn worker_fn(args: Rc<ParkArgs>, prefix: String) -> WorkerFn {
    Rc::new(move |ctx| Box::pin(worker(ctx, args.clone(), prefix.clone())))
}

pub async fn run(args: ParkArgs) -> Result<i32> {
    if args.conns == 0 || args.resources == 0 {
        bail!("--conns and --resources must be at least 1");
    }
    let c = args.common.clone();
    let prefix = prepare_run(&c, args.resources).await?;
    let n = args.conns as u64;
    let rss_before = procfs::sum_rss(&c.server_pid);
    eprintln!(
        "halley-load park: {} long polls over {} resources at {} ({}), prefix {prefix}",
        args.conns,
        args.resources,
        c.addr,
        c.target.name()
    );
    let args = Rc::new(args);
    let line = move |s: &Snap| {
        format!(
            "sent {}/{} open {} | conn failures {} disconnects {} poll timeouts {}",
            s.c.ready, n, s.open, s.c.conn_failures, s.c.disconnects, s.c.poll_timeouts
        )
    };
    let t0 = Instant::now();
    let mut d = Driver::launch(
        c.procs as usize,
        &prefix,
        c.server_pid.clone(),
        worker_fn(args.clone(), prefix.clone()),
        line,
    )
    .await?;
    let all_sent = d.wait_ready(args.park_timeout).await;
    let t_sent = t0.elapsed();
    let sent = d.fleet.totals().ready;
    // The server's own count, when we can read it.
    let mut t_parked = None;
    let mut gauge = None;
    if let Some(url) = &c.metrics {
        let deadline = t0 + args.park_timeout;
        loop {
            match metrics::parked(url, c.target).await {
                Ok(v) => {
                    gauge = Some(v);
                    *d.prog.extra.borrow_mut() = format!("server parked {v}");
                    if v >= sent {
                        t_parked = Some(t0.elapsed());
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("halley-load: metrics: {e:#}");
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            d.idle(Duration::from_millis(100), "park").await;
        }
    }
    // Let allocations settle before reading the server's memory.
    d.idle(Duration::from_millis(500), "park").await;
    let rss_after = procfs::sum_rss(&c.server_pid);
    d.start();
    let hold_end = Instant::now() + args.hold;
    while Instant::now() < hold_end {
        let step = (hold_end - Instant::now()).min(Duration::from_secs(1));
        d.idle(step, "hold").await;
        if let Some(url) = &c.metrics {
            if let Ok(v) = metrics::parked(url, c.target).await {
                gauge = Some(v);
                *d.prog.extra.borrow_mut() = format!("server parked {v}");
            }
        }
    }
    d.stop(Duration::from_secs(10)).await;
    d.drain(Duration::from_secs(10)).await;
    let server_cpu = d.server_cpu;
    let (fleet, prog) = d.finish().await;
    let t = fleet.totals();
    let client_cpu = fleet.client_cpu();
    let timeline = std::mem::take(&mut { prog }.timeline);
    fleet.shutdown().await;

    let per_conn = (!c.server_pid.is_empty() && n > 0)
        .then(|| (rss_after as f64 - rss_before as f64) / n as f64);
    let mut rows: Vec<(String, String)> = vec![
        (
            "target".into(),
            format!("{} at {}", c.target.name(), c.addr),
        ),
        (
            "long polls".into(),
            format!(
                "{sent}/{n} sent{}",
                if all_sent { "" } else { " (timed out)" }
            ),
        ),
        (
            "time to send all".into(),
            format!("{:.2}s", t_sent.as_secs_f64()),
        ),
    ];
    match (t_parked, gauge) {
        (Some(tp), Some(g)) => rows.push((
            "time to park all (server gauge)".into(),
            format!("{:.2}s ({g} parked)", tp.as_secs_f64()),
        )),
        (None, Some(g)) => rows.push((
            "server gauge".into(),
            format!("{g} parked (never reached {sent})"),
        )),
        _ => {}
    }
    if let Some(p) = per_conn {
        rows.push((
            "server RSS".into(),
            format!(
                "{:.1} MiB before, {:.1} MiB parked",
                rss_before as f64 / 1048576.0,
                rss_after as f64 / 1048576.0
            ),
        ));
        // An allocator that returns earlier garbage to the OS during the run makes the
        // difference meaningless (even negative): say so instead of hiding it.
        let note = if p < 0.0 {
            " (negative: the server returned memory meanwhile; measure on a freshly started server)"
        } else {
            ""
        };
        rows.push((
            "server memory per parked poll".into(),
            format!("{p:.0} bytes{note}"),
        ));
    }
    rows.push(("held".into(), format!("{:.1}s", args.hold.as_secs_f64())));
    rows.push((
        "errors".into(),
        format!(
            "connect {} disconnect {} unexpected answers {} (poll timeouts {})",
            t.conn_failures, t.disconnects, t.protocol_errors, t.poll_timeouts
        ),
    ));
    if let Some(s) = server_cpu {
        rows.push(("server CPU while holding".into(), format!("{s:.2}s")));
    }
    rows.push(("client CPU".into(), format!("{client_cpu:.2}s")));
    crate::stats::print_table(&format!("halley-load park: {} long polls", n), &rows);
    if let Some(path) = &c.json {
        let json = serde_json::json!({
            "scenario": "park",
            "target": c.target.name(),
            "addr": c.addr.to_string(),
            "argv": std::env::args().collect::<Vec<_>>(),
            "prefix": prefix,
            "params": {"conns": args.conns, "resources": args.resources, "hold_s": args.hold.as_secs_f64(), "procs": c.procs},
            "results": {
                "sent": sent,
                "all_sent": all_sent,
                "time_to_send_s": t_sent.as_secs_f64(),
                "time_to_park_s": t_parked.map(|d| d.as_secs_f64()),
                "server_parked_gauge": gauge,
                "server_rss_before_bytes": (!c.server_pid.is_empty()).then_some(rss_before),
                "server_rss_parked_bytes": (!c.server_pid.is_empty()).then_some(rss_after),
                "server_bytes_per_parked_poll": per_conn,
                "server_cpu_hold_s": server_cpu,
                "client_cpu_s": client_cpu,
            },
            "counters": t,
            "timeline": timeline,
        });
        output::write_json(path, &json)?;
    }
    Ok(if all_sent && t.conn_failures == 0 {
        0
    } else {
        2
    })
}
