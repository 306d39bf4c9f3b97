//! Counters and gauges, one cache-padded block per worker (a worker only ever writes
//! its own block, with relaxed atomics), summed or labelled per worker when scraped.
//! Exposed in the Prometheus text format on a separate listener (`--metrics-listen`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// Status codes counted individually; anything else falls into `other`.
const STATUS_CODES: [u16; 26] = [
    100, 200, 201, 204, 206, 304, 400, 401, 403, 404, 405, 408, 409, 410, 413, 414, 415, 416, 417,
    429, 431, 500, 501, 503, 505, 507,
];

/// Why a request or connection was refused (the `reason` label of
/// `halley_rejections_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    ConnectionLimit,
    PerIpLimit,
    HeaderTimeout,
    BodyTimeout,
    Malformed,
    TooLarge,
    Unauthorized,
    Forbidden,
    StorageFull,
}

const REJECTIONS: [(Rejection, &str); 9] = [
    (Rejection::ConnectionLimit, "connection_limit"),
    (Rejection::PerIpLimit, "per_ip_limit"),
    (Rejection::HeaderTimeout, "header_timeout"),
    (Rejection::BodyTimeout, "body_timeout"),
    (Rejection::Malformed, "malformed"),
    (Rejection::TooLarge, "too_large"),
    (Rejection::Unauthorized, "unauthorized"),
    (Rejection::Forbidden, "forbidden"),
    (Rejection::StorageFull, "storage_full"),
];

/// Adds `n` to a counter of the calling worker's own block. Only that worker ever
/// writes it, so a plain load and store is exact, and cheaper on the delivery path than
/// a locked read-modify-write; scrapes read it with a relaxed load as before.
#[inline]
pub fn add_own(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// [`add_own`] for a gauge (`n` may be negative).
#[inline]
pub fn add_own_i64(gauge: &AtomicI64, n: i64) {
    gauge.store(gauge.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Upper bounds (µs) of the publish-to-write latency buckets.
const LATENCY_BUCKETS_US: [u64; 17] = [
    10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
    500_000, 1_000_000, 5_000_000,
];

/// A fixed-bucket histogram of how long a change took from being stamped by its owner
/// to the completed write that carried it to a client.
#[derive(Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Records one latency; only the worker owning this histogram calls it.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        add_own(&self.buckets[i], 1);
        add_own(&self.sum_ns, d.as_nanos() as u64);
        add_own(&self.count, 1);
    }
}

/// One worker's counters.
#[derive(Default)]
pub struct WorkerMetrics {
    pub rejections: [AtomicU64; REJECTIONS.len()],
    pub latency: LatencyHistogram,
    /// Open connections accepted by this worker (gauge).
    pub open: AtomicI64,
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Parked long polls (gauge).
    pub parked: AtomicI64,
    pub parked_total: AtomicU64,
    /// Parked clients that disconnected and were freed.
    pub hangups: AtomicU64,
    pub poll_timeouts: AtomicU64,
    pub changes_published: AtomicU64,
    /// Answers written to parked long polls.
    pub deliveries: AtomicU64,
    pub bytes_written: AtomicU64,
    pub requests: [AtomicU64; STATUS_CODES.len() + 1],
    /// Messages this worker sent to other workers.
    pub messages_sent: AtomicU64,
    /// Open streams (gauge).
    pub streams: AtomicI64,
    /// Parts queued on streams.
    pub stream_parts: AtomicU64,
    /// Changes a slow stream reader did not get queued (summarised into a catch-up part).
    pub summarised: AtomicU64,
    /// Bytes queued or in flight on streams (gauge).
    pub stream_buffered_bytes: AtomicI64,
    /// Vectored writes to streams (each carries every part queued at the time).
    pub stream_writes: AtomicU64,
    /// Resources of this worker's shard that some worker waits on (gauge).
    pub watched: AtomicI64,
}

impl WorkerMetrics {
    pub fn reject(&self, why: Rejection) {
        if let Some(i) = REJECTIONS.iter().position(|(r, _)| *r == why) {
            self.rejections[i].fetch_add(1, Relaxed);
        }
    }

    pub fn count_status(&self, status: u16) {
        let i = STATUS_CODES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUS_CODES.len());
        self.requests[i].fetch_add(1, Relaxed);
    }
}

/// Every worker's counters, plus process-wide gauges.
pub struct Metrics {
    pub workers: Box<[CachePadded<WorkerMetrics>]>,
    /// Open client connections (gauge, all workers).
    pub open_connections: AtomicI64,
    /// The connection ceiling in force.
    pub max_connections: AtomicU64,
    /// Stored resources and bytes (shared with the shards' stores).
    pub storage: Arc<crate::store::quota::Quota>,
}

impl Metrics {
    pub fn new(workers: usize, storage: Arc<crate::store::quota::Quota>) -> Metrics {
        Metrics {
            workers: (0..workers)
                .map(|_| CachePadded::new(WorkerMetrics::default()))
                .collect(),
            open_connections: AtomicI64::new(0),
            max_connections: AtomicU64::new(0),
            storage,
        }
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "halley_open_connections",
            "Open client connections.",
            self.open_connections.load(Relaxed),
        );
        gauge(
            "halley_max_connections",
            "Connection ceiling in force.",
            self.max_connections.load(Relaxed) as i64,
        );
        gauge(
            "halley_resources",
            "Live resources stored.",
            self.storage.resources() as i64,
        );
        gauge(
            "halley_stored_bytes",
            "Representation bytes stored.",
            self.storage.bytes() as i64,
        );
        gauge(
            "halley_shared_encodings",
            "Response heads and stream parts encoded for changes (each built once, shared by every watcher that gets it).",
            crate::store::event::SHARED_ENCODINGS.load(Relaxed) as i64,
        );

        type Field = fn(&WorkerMetrics) -> u64;
        let per_worker: [(&str, &str, &str, Field); 18] = [
            (
                "halley_watched_resources",
                "gauge",
                "Resources of this worker's shard that some worker waits on.",
                |m| m.watched.load(Relaxed).max(0) as u64,
            ),
            (
                "halley_worker_open_connections",
                "gauge",
                "Open connections per worker.",
                |m| m.open.load(Relaxed).max(0) as u64,
            ),
            ("halley_streams", "gauge", "Open streams.", |m| {
                m.streams.load(Relaxed).max(0) as u64
            }),
            (
                "halley_stream_parts_total",
                "counter",
                "Parts queued on streams.",
                |m| m.stream_parts.load(Relaxed),
            ),
            (
                "halley_stream_writes_total",
                "counter",
                "Vectored writes to streams.",
                |m| m.stream_writes.load(Relaxed),
            ),
            (
                "halley_summarised_total",
                "counter",
                "Changes summarised for slow stream readers instead of queued.",
                |m| m.summarised.load(Relaxed),
            ),
            (
                "halley_stream_buffered_bytes",
                "gauge",
                "Bytes queued or in flight on streams.",
                |m| m.stream_buffered_bytes.load(Relaxed).max(0) as u64,
            ),
            ("halley_parked", "gauge", "Parked long polls.", |m| {
                m.parked.load(Relaxed).max(0) as u64
            }),
            (
                "halley_connections_accepted_total",
                "counter",
                "Connections accepted.",
                |m| m.connections_accepted.load(Relaxed),
            ),
            (
                "halley_connections_refused_total",
                "counter",
                "Connections refused at the connection ceiling.",
                |m| m.connections_refused.load(Relaxed),
            ),
            (
                "halley_accept_errors_total",
                "counter",
                "Accept failures (descriptor exhaustion included).",
                |m| m.accept_errors.load(Relaxed),
            ),
            (
                "halley_parked_total",
                "counter",
                "Long polls parked.",
                |m| m.parked_total.load(Relaxed),
            ),
            (
                "halley_hangups_total",
                "counter",
                "Parked clients that disconnected and were freed.",
                |m| m.hangups.load(Relaxed),
            ),
            (
                "halley_poll_timeouts_total",
                "counter",
                "Parked long polls answered 304 on timeout.",
                |m| m.poll_timeouts.load(Relaxed),
            ),
            (
                "halley_changes_published_total",
                "counter",
                "Changes stamped by this worker's shard.",
                |m| m.changes_published.load(Relaxed),
            ),
            (
                "halley_deliveries_total",
                "counter",
                "Change answers written to waiting clients.",
                |m| m.deliveries.load(Relaxed),
            ),
            (
                "halley_bytes_written_total",
                "counter",
                "Bytes written to clients.",
                |m| m.bytes_written.load(Relaxed),
            ),
            (
                "halley_worker_messages_sent_total",
                "counter",
                "Messages sent to other workers.",
                |m| m.messages_sent.load(Relaxed),
            ),
        ];
        for (name, kind, help, field) in per_worker {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, w) in self.workers.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", field(w));
            }
        }
        let name = "halley_rejections_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests and connections refused, by reason.\n# TYPE {name} counter"
        );
        for (i, (_, reason)) in REJECTIONS.iter().enumerate() {
            let total: u64 = self
                .workers
                .iter()
                .map(|w| w.rejections[i].load(Relaxed))
                .sum();
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {total}");
        }
        let name = "halley_publish_to_write_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From a change being stamped to the completed write carrying it to a client.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0u64;
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += self
                .workers
                .iter()
                .map(|w| w.latency.buckets[i].load(Relaxed))
                .sum::<u64>();
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let count: u64 = self
            .workers
            .iter()
            .map(|w| w.latency.count.load(Relaxed))
            .sum();
        let sum_ns: u64 = self
            .workers
            .iter()
            .map(|w| w.latency.sum_ns.load(Relaxed))
            .sum();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", sum_ns as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
        let name = "halley_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} Responses by status code.\n# TYPE {name} counter"
        );
        for (i, code) in STATUS_CODES
            .iter()
            .map(|c| c.to_string())
            .chain(["other".to_string()])
            .enumerate()
        {
            let total: u64 = self
                .workers
                .iter()
                .map(|w| w.requests[i].load(Relaxed))
                .sum();
            if total > 0 {
                let _ = writeln!(out, "{name}{{code=\"{code}\"}} {total}");
            }
        }
        out
    }

    /// Sum of one counter over every worker.
    pub fn sum(&self, field: impl Fn(&WorkerMetrics) -> u64) -> u64 {
        self.workers.iter().map(|w| field(w)).sum()
    }
}

/// Serves `GET /metrics` (any path, in fact) on `addr` from a plain thread: scrapes are
/// rare and must not share a ring with client traffic.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("halley-metrics".into())
        .spawn(move || scrape_loop(listener, &metrics))?;
    Ok(local)
}

/// Accepts scrapes one at a time. Metrics matter most when the server is in trouble,
/// so the thread keeps one spare descriptor: when accept fails because the process is
/// out of descriptors, it releases the spare, accepts the scrape with it, answers, and
/// takes the spare back. Other accept failures back off instead of spinning.
fn scrape_loop(listener: TcpListener, metrics: &Metrics) {
    let reserve = || std::fs::File::open("/dev/null").ok();
    let mut spare = reserve();
    loop {
        let accepted = match listener.accept() {
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
                    && spare.is_some() =>
            {
                spare = None; // closes the spare: one descriptor is free for this accept
                listener.accept()
            }
            other => other,
        };
        match accepted {
            Ok((stream, _)) => {
                if let Err(e) = answer_scrape(stream, metrics) {
                    tracing::debug!(error = %e, "metrics scrape failed");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if spare.is_none() {
            spare = reserve();
        }
    }
}

fn answer_scrape(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    // Read the request head (we answer every path the same way).
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 64 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let body = metrics.render();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
