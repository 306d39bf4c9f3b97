//! `publish`: write throughput (requests/s and request latency).

use crate::cli::{Method, PublishArgs, Target};
use crate::fleet::{latency_rows, Ctl, Driver, Snap, WorkerCtx, WorkerFn};
use crate::net::worker_dialer;
use crate::output;
use crate::output::ErrorLog;
use crate::publisher::{spawn_publisher, stop_publishers, PubShared, PubSpec};
use crate::stats::{Kind, Percentiles};
use crate::target::{random_prefix, Paths};
use anyhow::{bail, Result};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

async fn worker(mut w: WorkerCtx, args: Rc<PublishArgs>, prefix: String) -> Result<()> {
    let c = &args.common;
    let dialer = worker_dialer(c, w.index)?;
    let ps = Rc::new(PubShared {
        shared: w.shared.clone(),
        dialer,
        paths: Paths::new(c.target, &prefix, c.addr),
        seq: RefCell::new(vec![0; args.resources]),
        errors: ErrorLog::new("publisher"),
    });
    let stats = w.spawn_stats();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut pubs = JoinSet::new();
    w.send(Kind::Ready, Vec::new());
    // Ends at `drain`/`exit`.
    loop {
        match w.next_ctl().await {
            Ctl::Start => {
                for i in (w.index..args.conns).step_by(w.count) {
                    let resources: Vec<u64> = if args.conns <= args.resources {
                        (i..args.resources)
                            .step_by(args.conns)
                            .map(|k| k as u64)
                            .collect()
                    } else {
                        vec![(i % args.resources) as u64]
                    };
                    let spec = PubSpec {
                        method: args.method,
                        batch: 1,
                        pipeline: args.pipeline as usize,
                        msg_size: args.msg_size as usize,
                        rate: 0.0,
                        resources,
                    };
                    spawn_publisher(&mut pubs, &ps, spec, stop_rx.clone());
                }
            }
            Ctl::Stop => {
                stop_publishers(&mut pubs, &stop_tx).await;
                w.send(Kind::Stopped, Vec::new());
            }
            Ctl::Drain { .. } => {
                w.send(Kind::Final, Vec::new());
                break;
            }
            Ctl::Exit => break,
        }
    }
    stats.abort();
    pubs.abort_all();
    Ok(())
}

pub fn worker_fn(args: Rc<PublishArgs>, prefix: String) -> WorkerFn {
    Rc::new(move |ctx| Box::pin(worker(ctx, args.clone(), prefix.clone())))
}

pub async fn run(args: PublishArgs) -> Result<i32> {
    if args.conns == 0 || args.resources == 0 {
        bail!("--conns and --resources must be at least 1");
    }
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    if args.common.target == Target::Nchan && args.method == Method::Put {
        bail!("Nchan publishes with POST only (--method post)");
    }
    let c = args.common.clone();
    let prefix = c.prefix.clone().unwrap_or_else(random_prefix);
    eprintln!(
        "halley-load publish: {} connections × pipeline {} {:?} to {} resources at {} ({}), prefix {prefix}",
        args.conns,
        args.pipeline,
        args.method,
        args.resources,
        c.addr,
        c.target.name()
    );
    let args = Rc::new(args);
    let line = |s: &Snap| {
        format!(
            "open {} | {:.0} req/s | status errors {} | {}",
            s.open,
            s.rate(s.d.responses),
            s.c.status_errors,
            s.req.short()
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
    d.wait_ready(Duration::from_secs(30)).await;
    let at_start = d.fleet.totals();
    d.start();
    d.run_for(args.duration, "run").await;
    d.stop(Duration::from_secs(15)).await;
    d.drain(Duration::from_secs(10)).await;
    let at_stop = d.at_stop.clone();
    let rps = d.rate(at_stop.responses - at_start.responses);
    let cps = d.rate(at_stop.changes - at_start.changes);
    let window = d.window;
    let server_cpu = d.server_cpu;
    let (fleet, prog) = d.finish().await;
    let t = fleet.totals();
    let req = Percentiles::of(&fleet.req_total);
    let client_cpu = fleet.client_cpu();
    let timeline = std::mem::take(&mut { prog }.timeline);
    fleet.shutdown().await;
    let mut rows: Vec<(String, String)> = vec![
        (
            "target".into(),
            format!("{} at {}", c.target.name(), c.addr),
        ),
        (
            "shape".into(),
            format!(
                "{} connections, pipeline {}, {:?}, {} resources, {} B bodies",
                args.conns, args.pipeline, args.method, args.resources, args.msg_size
            ),
        ),
        ("window".into(), format!("{:.2}s", window.as_secs_f64())),
        ("requests/s".into(), format!("{rps:.0}")),
        ("successful writes/s".into(), format!("{cps:.0}")),
        ("requests (total)".into(), t.responses.to_string()),
    ];
    rows.extend(latency_rows("request latency", &req));
    rows.push((
        "errors".into(),
        format!(
            "status {} connect {} disconnect {} protocol {}",
            t.status_errors, t.conn_failures, t.disconnects, t.protocol_errors
        ),
    ));
    if let Some(s) = server_cpu {
        rows.push(("server CPU".into(), format!("{s:.2}s in the window")));
        if s > 0.0 {
            rows.push((
                "requests per server CPU-s".into(),
                format!("{:.0}", (at_stop.responses - at_start.responses) as f64 / s),
            ));
        }
    }
    rows.push(("client CPU".into(), format!("{client_cpu:.2}s")));
    crate::stats::print_table("halley-load publish", &rows);
    if let Some(path) = &c.json {
        let json = serde_json::json!({
            "scenario": "publish",
            "target": c.target.name(),
            "addr": c.addr.to_string(),
            "argv": std::env::args().collect::<Vec<_>>(),
            "prefix": prefix,
            "params": {"conns": args.conns, "pipeline": args.pipeline, "method": format!("{:?}", args.method).to_lowercase(),
                       "resources": args.resources, "msg_size": args.msg_size, "duration_s": args.duration.as_secs_f64(), "procs": c.procs},
            "window_s": window.as_secs_f64(),
            "results": {"requests_per_s": rps, "writes_per_s": cps, "request_latency_us": req,
                        "status_errors": t.status_errors, "server_cpu_s": server_cpu, "client_cpu_s": client_cpu},
            "counters": t,
            "timeline": timeline,
        });
        output::write_json(path, &json)?;
    }
    Ok(if t.status_errors == 0 && t.conn_failures == 0 {
        0
    } else {
        2
    })
}
