//! Workers and their coordinator.
//!
//! A run is split over `--procs` workers. With one worker it runs inside this process;
//! with more, the coordinator re-executes this binary with hidden `--child-index` flags:
//! each child prints one JSON [`Report`] line per second on stdout (cumulative counters,
//! the latency recorded since its previous line as an HDR V2 + base64 histogram) and
//! obeys one JSON [`Ctl`] line at a time on stdin. The coordinator sums counters, merges
//! histograms, prints the progress line and, at the end, the table.
//!
//! The life of a run: workers connect → `ready` → coordinator sends `start` (publishers
//! begin, the measured window opens) → `stop` (publishers finish what is in flight and
//! report how many records each resource got) → `drain` with those counts (subscribers
//! get until every record has arrived, or the drain timeout) → `final`.

use crate::procfs;
use crate::stats::{
    fmt_us, hist_from_b64, hist_to_b64, new_hist, Counters, Kind, Percentiles, Report,
};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// A command from the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Ctl {
    Start,
    Stop,
    Drain { published: Vec<u64> },
    Exit,
}

/// State shared by all tasks of one worker (single-threaded: `RefCell`, no locks).
pub struct Shared {
    pub c: RefCell<Counters>,
    pub lat: RefCell<Histogram<u64>>,
    pub req_lat: RefCell<Histogram<u64>>,
    pub open: Cell<u64>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            c: RefCell::new(Counters::default()),
            lat: RefCell::new(new_hist()),
            req_lat: RefCell::new(new_hist()),
            open: Cell::new(0),
        }
    }

    /// Builds a report; the histograms are taken (each report carries an interval).
    pub fn report(&self, kind: Kind, published: Vec<u64>) -> Report {
        let lat = hist_to_b64(&self.lat.borrow());
        self.lat.borrow_mut().reset();
        let req_lat = hist_to_b64(&self.req_lat.borrow());
        self.req_lat.borrow_mut().reset();
        Report {
            kind,
            counters: self.c.borrow().clone(),
            lat,
            req_lat,
            published,
            open: self.open.get(),
            cpu_s: procfs::self_cpu_seconds(),
        }
    }
}

/// Counts an open connection for as long as it lives.
pub struct OpenGuard(Rc<Shared>);

impl OpenGuard {
    pub fn new(s: &Rc<Shared>) -> OpenGuard {
        s.open.set(s.open.get() + 1);
        OpenGuard(s.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
    }
}

enum Sink {
    Chan(mpsc::UnboundedSender<Report>),
    Stdout,
}

/// What a worker gets.
pub struct WorkerCtx {
    pub index: usize,
    pub count: usize,
    pub ctl: mpsc::UnboundedReceiver<Ctl>,
    sink: Rc<Sink>,
    pub shared: Rc<Shared>,
}

impl WorkerCtx {
    pub fn send(&self, kind: Kind, published: Vec<u64>) {
        let r = self.shared.report(kind, published);
        emit(&self.sink, r);
    }

    /// The next command; a closed control channel (the parent died) reads as `Exit`.
    pub async fn next_ctl(&mut self) -> Ctl {
        self.ctl.recv().await.unwrap_or(Ctl::Exit)
    }

    /// Sends a `stats` report every second until the returned handle is dropped/aborted.
    pub fn spawn_stats(&self) -> tokio::task::JoinHandle<()> {
        let sink = self.sink.clone();
        let shared = self.shared.clone();
        tokio::task::spawn_local(async move {
            let mut iv = tokio::time::interval(Duration::from_secs(1));
            iv.tick().await;
            // Bounded by the worker, which aborts this task before it returns.
            loop {
                iv.tick().await;
                emit(&sink, shared.report(Kind::Stats, Vec::new()));
            }
        })
    }
}

fn emit(sink: &Sink, r: Report) {
    match sink {
        Sink::Chan(tx) => {
            let _ = tx.send(r);
        }
        Sink::Stdout => {
            if let Ok(line) = serde_json::to_string(&r) {
                let mut out = std::io::stdout().lock();
                // A closed stdout means the parent is gone: the worker ends on its own
                // deadline or when stdin closes.
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }
}

pub type WorkerFn = Rc<dyn Fn(WorkerCtx) -> Pin<Box<dyn Future<Output = Result<()>>>>>;

/// Runs this process as child worker `index` of `count`: commands from stdin, reports on
/// stdout.
pub async fn run_child(index: usize, count: usize, f: WorkerFn) -> Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        // Ends at EOF (parent gone) or after `exit`.
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Ctl>(&line) {
                Ok(c) => {
                    let exit = c == Ctl::Exit;
                    if tx.send(c).is_err() || exit {
                        break;
                    }
                }
                Err(e) => eprintln!("halley-load worker {index}: bad command {line:?}: {e}"),
            }
        }
        let _ = tx.send(Ctl::Exit);
    });
    let ctx = WorkerCtx {
        index,
        count,
        ctl: rx,
        sink: Rc::new(Sink::Stdout),
        shared: Rc::new(Shared::new()),
    };
    f(ctx).await
}

enum FleetEvent {
    Report(usize, Box<Report>),
    Exited(usize, String),
}

/// The coordinator's view of the workers.
pub struct Fleet {
    ctl: Vec<mpsc::UnboundedSender<Ctl>>,
    rx: mpsc::UnboundedReceiver<FleetEvent>,
    children: Vec<tokio::process::Child>,
    pub n: usize,
    latest: Vec<Counters>,
    open: Vec<u64>,
    cpu: Vec<f64>,
    seen: Vec<Option<Kind>>,
    gone: Vec<bool>,
    pub lat_total: Histogram<u64>,
    pub req_total: Histogram<u64>,
    lat_iv: Histogram<u64>,
    req_iv: Histogram<u64>,
    pub published: Vec<u64>,
}

impl Fleet {
    /// Starts `procs` workers: in-process when 1, else child processes.
    pub async fn launch(procs: usize, prefix: &str, f: WorkerFn) -> Result<Fleet> {
        let (etx, rx) = mpsc::unbounded_channel();
        let mut ctl = Vec::new();
        let mut children = Vec::new();
        if procs <= 1 {
            let (ctx_tx, ctx_rx) = mpsc::unbounded_channel();
            let (rtx, mut rrx) = mpsc::unbounded_channel::<Report>();
            let ctx = WorkerCtx {
                index: 0,
                count: 1,
                ctl: ctx_rx,
                sink: Rc::new(Sink::Chan(rtx)),
                shared: Rc::new(Shared::new()),
            };
            tokio::task::spawn_local(async move {
                if let Err(e) = f(ctx).await {
                    eprintln!("halley-load: worker failed: {e:#}");
                }
            });
            // Reports, then the exit once the worker dropped its sink: the same order a
            // child's stdout gives.
            tokio::task::spawn_local(async move {
                while let Some(r) = rrx.recv().await {
                    if etx.send(FleetEvent::Report(0, Box::new(r))).is_err() {
                        break;
                    }
                }
                let _ = etx.send(FleetEvent::Exited(0, "exited".into()));
            });
            ctl.push(ctx_tx);
        } else {
            let exe = std::env::current_exe().context("locate own executable")?;
            let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            for i in 0..procs {
                let mut cmd = tokio::process::Command::new(&exe);
                cmd.args(&args)
                    .arg("--child-index")
                    .arg(i.to_string())
                    .arg("--child-count")
                    .arg(procs.to_string())
                    .arg("--child-prefix")
                    .arg(prefix)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::inherit())
                    .kill_on_drop(true);
                let mut child = cmd.spawn().context("spawn worker process")?;
                let stdout = child.stdout.take().context("child stdout")?;
                let mut stdin = child.stdin.take().context("child stdin")?;
                let etx = etx.clone();
                tokio::task::spawn_local(async move {
                    let mut lines = BufReader::new(stdout).lines();
                    // Ends when the child closes stdout (it exited).
                    loop {
                        match lines.next_line().await {
                            Ok(Some(line)) => match serde_json::from_str::<Report>(&line) {
                                Ok(r) => {
                                    let _ = etx.send(FleetEvent::Report(i, Box::new(r)));
                                }
                                Err(e) => eprintln!("worker {i}: unreadable report: {e}"),
                            },
                            Ok(None) => break,
                            Err(e) => {
                                eprintln!("worker {i}: {e}");
                                break;
                            }
                        }
                    }
                    let _ = etx.send(FleetEvent::Exited(i, "exited".into()));
                });
                let (ctx_tx, mut ctx_rx) = mpsc::unbounded_channel::<Ctl>();
                tokio::task::spawn_local(async move {
                    while let Some(c) = ctx_rx.recv().await {
                        let Ok(mut line) = serde_json::to_string(&c) else {
                            continue;
                        };
                        line.push('\n');
                        if stdin.write_all(line.as_bytes()).await.is_err() {
                            break;
                        }
                        let _ = stdin.flush().await;
                    }
                });
                ctl.push(ctx_tx);
                children.push(child);
            }
        }
        Ok(Fleet {
            ctl,
            rx,
            children,
            n: procs.max(1),
            latest: vec![Counters::default(); procs.max(1)],
            open: vec![0; procs.max(1)],
            cpu: vec![0.0; procs.max(1)],
            seen: vec![None; procs.max(1)],
            gone: vec![false; procs.max(1)],
            lat_total: new_hist(),
            req_total: new_hist(),
            lat_iv: new_hist(),
            req_iv: new_hist(),
            published: Vec::new(),
        })
    }

    pub fn broadcast(&self, c: Ctl) {
        for t in &self.ctl {
            let _ = t.send(c.clone());
        }
    }

    pub fn totals(&self) -> Counters {
        let mut t = Counters::default();
        for c in &self.latest {
            t.add(c);
        }
        t
    }

    pub fn open(&self) -> u64 {
        self.open.iter().sum()
    }

    pub fn client_cpu(&self) -> f64 {
        self.cpu.iter().sum()
    }

    /// Takes the latency recorded since the previous call.
    fn take_interval(&mut self) -> (Percentiles, Percentiles) {
        let a = Percentiles::of(&self.lat_iv);
        let b = Percentiles::of(&self.req_iv);
        self.lat_iv.reset();
        self.req_iv.reset();
        (a, b)
    }

    fn absorb(&mut self, ev: FleetEvent) {
        match ev {
            FleetEvent::Report(i, r) => {
                if i >= self.n {
                    return;
                }
                let r = *r;
                self.latest[i] = r.counters;
                self.open[i] = r.open;
                self.cpu[i] = r.cpu_s;
                for (src, tot, iv) in [
                    (&r.lat, &mut self.lat_total, &mut self.lat_iv),
                    (&r.req_lat, &mut self.req_total, &mut self.req_iv),
                ] {
                    match hist_from_b64(src) {
                        Ok(h) => {
                            let _ = tot.add(&h);
                            let _ = iv.add(&h);
                        }
                        Err(e) => eprintln!("worker {i}: {e:#}"),
                    }
                }
                if r.kind == Kind::Stopped {
                    if self.published.len() < r.published.len() {
                        self.published.resize(r.published.len(), 0);
                    }
                    for (a, b) in self.published.iter_mut().zip(&r.published) {
                        *a += b;
                    }
                }
                if r.kind != Kind::Stats {
                    self.seen[i] = Some(r.kind);
                }
            }
            FleetEvent::Exited(i, why) => {
                if i < self.n && !self.gone[i] {
                    self.gone[i] = true;
                    self.open[i] = 0;
                    if self.seen[i] != Some(Kind::Final) {
                        eprintln!("halley-load: worker {i} {why} before its final report");
                    }
                }
            }
        }
    }

    /// Whether every worker has reached `kind` (or is gone).
    fn all_reached(&self, kind: Kind) -> bool {
        let rank = |k: Option<Kind>| match k {
            None | Some(Kind::Stats) => 0,
            Some(Kind::Ready) => 1,
            Some(Kind::Stopped) => 2,
            Some(Kind::Final) => 3,
        };
        (0..self.n).all(|i| self.gone[i] || rank(self.seen[i]) >= rank(Some(kind)))
    }

    /// Waits for events until `deadline` or `done(self)`; ticks `progress` each second.
    async fn pump(
        &mut self,
        deadline: Instant,
        prog: &mut Progress<'_>,
        phase: &str,
        done: impl Fn(&Fleet) -> bool,
    ) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wake = deadline.min(prog.next_tick);
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => self.absorb(ev),
                    None => return done(self),
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if Instant::now() >= prog.next_tick {
                prog.tick(self, phase);
            }
        }
    }

    pub async fn shutdown(mut self) {
        self.broadcast(Ctl::Exit);
        for c in &mut self.children {
            match tokio::time::timeout(Duration::from_secs(3), c.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = c.start_kill();
                }
            }
        }
    }
}

/// One second of the run as the progress line sees it.
pub struct Snap<'a> {
    pub t: f64,
    pub c: &'a Counters,
    /// Per-second rates (counters delta / seconds).
    pub d: &'a Counters,
    pub dt: f64,
    pub lat: &'a Percentiles,
    pub req: &'a Percentiles,
    pub open: u64,
}

impl Snap<'_> {
    pub fn rate(&self, v: u64) -> f64 {
        if self.dt > 0.0 {
            v as f64 / self.dt
        } else {
            0.0
        }
    }
}

type LineFn<'a> = Box<dyn Fn(&Snap) -> String + 'a>;

/// Prints the progress line every second and keeps the timeline for `--json`.
pub struct Progress<'a> {
    started: Instant,
    next_tick: Instant,
    last: Instant,
    prev: Counters,
    line: LineFn<'a>,
    pub timeline: Vec<serde_json::Value>,
    /// Extra text appended to the line (e.g. a metrics gauge), set by the scenario.
    pub extra: Rc<RefCell<String>>,
}

impl<'a> Progress<'a> {
    pub fn new(line: impl Fn(&Snap) -> String + 'a) -> Progress<'a> {
        let now = Instant::now();
        Progress {
            started: now,
            // Workers report once a second from their own start: tick a little later so
            // each line includes the latest reports.
            next_tick: now + Duration::from_millis(1200),
            last: now,
            prev: Counters::default(),
            line: Box::new(line),
            timeline: Vec::new(),
            extra: Rc::new(RefCell::new(String::new())),
        }
    }

    fn tick(&mut self, fleet: &mut Fleet, phase: &str) {
        let now = Instant::now();
        let dt = (now - self.last).as_secs_f64();
        let c = fleet.totals();
        let d = c.delta(&self.prev);
        let (lat, req) = fleet.take_interval();
        let snap = Snap {
            t: (now - self.started).as_secs_f64(),
            c: &c,
            d: &d,
            dt,
            lat: &lat,
            req: &req,
            open: fleet.open(),
        };
        let extra = self.extra.borrow();
        eprintln!(
            "[{:>5.0}s {:<7}] {}{}",
            snap.t,
            phase,
            (self.line)(&snap),
            if extra.is_empty() {
                String::new()
            } else {
                format!(" | {extra}")
            }
        );
        self.timeline.push(serde_json::json!({
            "t": (snap.t * 10.0).round() / 10.0,
            "phase": phase,
            "open": snap.open,
            "ready": c.ready,
            "deliveries_per_s": snap.rate(d.deliveries).round(),
            "changes_per_s": snap.rate(d.changes).round(),
            "requests_per_s": snap.rate(d.responses).round(),
            "lost": c.net_lost(),
            "duplicates": c.duplicates,
            "out_of_order": c.out_of_order,
            "merged_parts": c.merged_parts,
            "latency_us": {"p50": lat.p50_us, "p99": lat.p99_us, "max": lat.max_us},
            "request_latency_us": {"p50": req.p50_us, "p99": req.p99_us, "max": req.max_us},
            "extra": *extra,
        }));
        self.prev = c;
        self.last = now;
        while self.next_tick <= now {
            self.next_tick += Duration::from_secs(1);
        }
    }
}

/// Drives a run through its phases.
pub struct Driver<'a> {
    pub fleet: Fleet,
    pub prog: Progress<'a>,
    pub server_pids: Vec<u32>,
    start: Option<Instant>,
    cpu_at_start: f64,
    pub window: Duration,
    pub server_cpu: Option<f64>,
    pub at_stop: Counters,
}

impl<'a> Driver<'a> {
    pub async fn launch(
        procs: usize,
        prefix: &str,
        server_pids: Vec<u32>,
        f: WorkerFn,
        line: impl Fn(&Snap) -> String + 'a,
    ) -> Result<Driver<'a>> {
        let fleet = Fleet::launch(procs, prefix, f).await?;
        Ok(Driver {
            fleet,
            prog: Progress::new(line),
            server_pids,
            start: None,
            cpu_at_start: 0.0,
            window: Duration::ZERO,
            server_cpu: None,
            at_stop: Counters::default(),
        })
    }

    /// Waits until every worker is ready; returns whether they all were, in time.
    pub async fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.fleet
            .pump(deadline, &mut self.prog, "warmup", |f| {
                f.all_reached(Kind::Ready)
            })
            .await
    }

    /// Keeps printing progress for `d` (e.g. while polling metrics elsewhere).
    pub async fn idle(&mut self, d: Duration, phase: &str) {
        let deadline = Instant::now() + d;
        self.fleet
            .pump(deadline, &mut self.prog, phase, |_| false)
            .await;
    }

    /// Opens the measured window: publishers start.
    pub fn start(&mut self) {
        self.cpu_at_start = procfs::sum_cpu(&self.server_pids);
        self.start = Some(Instant::now());
        self.fleet.broadcast(Ctl::Start);
    }

    pub async fn run_for(&mut self, d: Duration, phase: &str) {
        let end = self.start.unwrap_or_else(Instant::now) + d;
        self.fleet.pump(end, &mut self.prog, phase, |_| false).await;
    }

    /// Closes the window; waits for every worker's `stopped` report.
    pub async fn stop(&mut self, timeout: Duration) -> bool {
        self.window = self.start.map(|s| s.elapsed()).unwrap_or_default();
        if !self.server_pids.is_empty() {
            self.server_cpu = Some(procfs::sum_cpu(&self.server_pids) - self.cpu_at_start);
        }
        self.fleet.broadcast(Ctl::Stop);
        let ok = self
            .fleet
            .pump(Instant::now() + timeout, &mut self.prog, "stop", |f| {
                f.all_reached(Kind::Stopped)
            })
            .await;
        self.at_stop = self.fleet.totals();
        ok
    }

    /// Sends the published counts and waits for every worker's final report.
    pub async fn drain(&mut self, timeout: Duration) -> bool {
        let published = self.fleet.published.clone();
        self.fleet.broadcast(Ctl::Drain { published });
        self.fleet
            .pump(Instant::now() + timeout, &mut self.prog, "drain", |f| {
                f.all_reached(Kind::Final)
            })
            .await
    }

    pub fn rate(&self, v: u64) -> f64 {
        let s = self.window.as_secs_f64();
        if s > 0.0 {
            v as f64 / s
        } else {
            0.0
        }
    }

    pub async fn finish(self) -> (Fleet, Progress<'a>) {
        let Driver { fleet, prog, .. } = self;
        (fleet, prog)
    }
}

/// Percentile rows for the final table.
pub fn latency_rows(name: &str, p: &Percentiles) -> Vec<(String, String)> {
    if p.count == 0 {
        return vec![(name.to_string(), "no samples".into())];
    }
    vec![(
        name.to_string(),
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
            fmt_us(p.p50_us),
            fmt_us(p.p90_us),
            fmt_us(p.p99_us),
            fmt_us(p.p999_us),
            fmt_us(p.max_us),
            p.count
        ),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_json() {
        let s = serde_json::to_string(&Ctl::Drain {
            published: vec![3, 4],
        })
        .unwrap();
        assert_eq!(s, r#"{"cmd":"drain","published":[3,4]}"#);
        assert_eq!(
            serde_json::from_str::<Ctl>(r#"{"cmd":"start"}"#).unwrap(),
            Ctl::Start
        );
        assert!(serde_json::from_str::<Ctl>(r#"{"cmd":"nope"}"#).is_err());
    }
}
