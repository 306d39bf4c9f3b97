//! Counters, latency histograms and the reports workers send to the coordinator.

use anyhow::{Context, Result};
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency tracked, in microseconds (one hour); larger values are clamped.
const HIST_MAX_US: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Records a latency in nanoseconds into a microsecond histogram.
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    let us = (ns / 1000).clamp(1, HIST_MAX_US);
    // Cannot fail: the value is clamped into the histogram's range.
    let _ = h.record(us);
}

/// Serializes with hdrhistogram's V2 format and base64 (how children ship histograms).
pub fn hist_to_b64(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return String::new();
    }
    let mut buf = Vec::new();
    if V2Serializer::new().serialize(h, &mut buf).is_err() {
        return String::new();
    }
    base64::engine::general_purpose::STANDARD.encode(buf)
}

pub fn hist_from_b64(s: &str) -> Result<Histogram<u64>> {
    if s.is_empty() {
        return Ok(new_hist());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .context("histogram: bad base64")?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
    Ok(h)
}

/// Every count a worker keeps. All cumulative since the worker started; the coordinator
/// sums them over workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Connections established (reconnections included).
    pub conns: u64,
    /// Connection attempts that failed (refused, timed out, no local port).
    pub conn_failures: u64,
    /// Established connections lost before the run ended (EOF, reset, protocol error).
    pub disconnects: u64,
    /// Subscribers (or parked polls) that reached their ready state.
    pub ready: u64,
    /// Requests sent by publishers (one batch counts once).
    pub requests: u64,
    /// Responses received by publishers.
    pub responses: u64,
    /// Publisher responses (or embedded batch responses) with an unexpected status.
    pub status_errors: u64,
    /// Changes (records) acknowledged by the server.
    pub changes: u64,
    /// Records seen for the first time by a subscriber (each one is a delivery).
    pub deliveries: u64,
    /// Parts / answers / messages received by subscribers.
    pub parts: u64,
    /// Answers holding more than one record: the server merged appends for a slow reader.
    pub merged_parts: u64,
    /// Records skipped when a later one arrived first (minus nothing: see out_of_order).
    pub lost: u64,
    /// Records seen again.
    pub duplicates: u64,
    /// Records that arrived after a later one (they were counted in `lost` first).
    pub out_of_order: u64,
    /// Full-state (`200`) answers after the first one: re-synchronisations.
    pub resyncs: u64,
    /// Records still undelivered when the drain ended.
    pub missing: u64,
    /// Lines / bodies that were not well-formed records.
    pub malformed: u64,
    /// Records for a resource this subscriber does not watch.
    pub foreign: u64,
    /// Protocol violations (bad framing, unexpected statuses, bad embedded responses).
    pub protocol_errors: u64,
    /// `304` poll timeouts (the poll is simply repeated).
    pub poll_timeouts: u64,
    /// Heartbeat (empty) parts.
    pub heartbeats: u64,
    /// Open-loop sends that left later than scheduled by more than a millisecond.
    pub late_sends: u64,
    /// Body bytes received by subscribers.
    pub bytes_in: u64,
}

/// Applies macro `$m` to the list of every summable counter (one list, used by
/// `add` and `delta`).
macro_rules! counter_fields {
    ($m:ident) => {
        $m!(
            conns,
            conn_failures,
            disconnects,
            ready,
            requests,
            responses,
            status_errors,
            changes,
            deliveries,
            parts,
            merged_parts,
            lost,
            duplicates,
            out_of_order,
            resyncs,
            missing,
            malformed,
            foreign,
            protocol_errors,
            poll_timeouts,
            heartbeats,
            late_sends,
            bytes_in
        )
    };
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        macro_rules! sum { ($($f:ident),*) => { $( self.$f += o.$f; )* } }
        counter_fields!(sum);
    }

    /// `self - prev`, field by field (for per-second rates).
    pub fn delta(&self, prev: &Counters) -> Counters {
        let mut d = self.clone();
        macro_rules! sub { ($($f:ident),*) => { $( d.$f = self.$f.saturating_sub(prev.$f); )* } }
        counter_fields!(sub);
        d
    }

    /// Records lost for good: skipped and never seen later, plus undelivered at the end.
    pub fn net_lost(&self) -> u64 {
        self.lost.saturating_sub(self.out_of_order) + self.missing
    }
}

/// What a worker tells the coordinator.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Every connection of this worker is set up (subscribers have their first part).
    Ready,
    /// Periodic (once a second).
    Stats,
    /// Publishers stopped; `published` holds the per-resource sequence counts.
    Stopped,
    /// Last report; the worker exits after it.
    Final,
}

/// One line of a child's stdout (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub kind: Kind,
    pub counters: Counters,
    /// Delivery latency recorded since the previous report (V2 + base64).
    #[serde(default)]
    pub lat: String,
    /// Publisher request latency recorded since the previous report (V2 + base64).
    #[serde(default)]
    pub req_lat: String,
    /// Per-resource number of records published (index = resource), for `Stopped`.
    #[serde(default)]
    pub published: Vec<u64>,
    /// Open connections right now.
    #[serde(default)]
    pub open: u64,
    /// CPU seconds this worker process used so far.
    #[serde(default)]
    pub cpu_s: f64,
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }

    pub fn short(&self) -> String {
        if self.count == 0 {
            return "-".into();
        }
        format!(
            "p50 {} p99 {} max {}",
            fmt_us(self.p50_us),
            fmt_us(self.p99_us),
            fmt_us(self.max_us)
        )
    }
}

pub fn fmt_us(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

/// Prints rows as an aligned two-column table.
pub fn print_table(title: &str, rows: &[(String, String)]) {
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    println!("{title}");
    println!("{}", "-".repeat(title.chars().count().max(20)));
    for (k, v) in rows {
        let pad = w - k.chars().count();
        println!("  {k}{}  {v}", " ".repeat(pad));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_roundtrip() {
        let mut h = new_hist();
        for v in [1_000u64, 5_000, 250_000, 12_000_000] {
            record_ns(&mut h, v);
        }
        let back = hist_from_b64(&hist_to_b64(&h)).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), h.max());
        let mut merged = new_hist();
        merged.add(&back).unwrap();
        merged.add(&back).unwrap();
        assert_eq!(merged.len(), 8);
        assert_eq!(hist_from_b64("").unwrap().len(), 0);
        assert!(hist_from_b64("!!").is_err());
    }

    #[test]
    fn report_json_roundtrip() {
        let r = Report {
            kind: Kind::Stopped,
            counters: Counters {
                deliveries: 5,
                lost: 2,
                out_of_order: 1,
                missing: 3,
                ..Default::default()
            },
            lat: String::new(),
            req_lat: String::new(),
            published: vec![1, 2],
            open: 3,
            cpu_s: 0.5,
        };
        let s = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&s).unwrap();
        assert_eq!(back.kind, Kind::Stopped);
        assert_eq!(back.counters, r.counters);
        assert_eq!(back.counters.net_lost(), 4);
    }
}
