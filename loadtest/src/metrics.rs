//! Scraping the server's own counters: halley's Prometheus endpoint, Nchan's
//! nchan_stub_status.

use crate::cli::Target;
use crate::http::simple_request;
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// `http://host:port/path` → (address, path).
pub fn parse_url(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("metrics URL must start with http://: {url:?}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("bad host:port in {url:?}"))?
        .next()
        .with_context(|| format!("no address for {hostport:?}"))?;
    Ok((addr, path.to_string()))
}

/// Sums a Prometheus metric over its label sets (`name{...} value` or `name value`).
pub fn prom_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

/// `subscribers: N` from nchan_stub_status.
pub fn stub_field(text: &str, field: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == field).then(|| v.trim().parse().ok())?
    })
}

/// Parked long polls (halley `halley_parked`) or subscribers (Nchan `subscribers:`).
pub async fn parked(url: &str, target: Target) -> Result<u64> {
    let (addr, path) = parse_url(url)?;
    let r = simple_request(addr, "GET", &path, &[], None, Duration::from_secs(5)).await?;
    if r.head.status != 200 {
        bail!("{url} answered {}", r.head.status);
    }
    let text = String::from_utf8_lossy(&r.body);
    let v = match target {
        Target::Halley => prom_sum(&text, "halley_parked"),
        Target::Nchan => stub_field(&text, "subscribers"),
    };
    v.map(|v| v as u64)
        .with_context(|| format!("{url}: no parked/subscribers figure in the answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus() {
        let t = "# HELP halley_parked Parked long polls.\n# TYPE halley_parked gauge\nhalley_parked{worker=\"0\"} 5\nhalley_parked{worker=\"1\"} 7\nhalley_parked_total{worker=\"0\"} 100\n";
        assert_eq!(prom_sum(t, "halley_parked"), Some(12.0));
        assert_eq!(prom_sum(t, "halley_streams"), None);
    }

    #[test]
    fn stub_status() {
        let t = "total published messages: 1906\nstored messages: 1249\nchannels: 80\nsubscribers: 90\n";
        assert_eq!(stub_field(t, "subscribers"), Some(90.0));
        assert_eq!(stub_field(t, "channels"), Some(80.0));
        assert_eq!(stub_field(t, "nope"), None);
    }

    #[test]
    fn urls() {
        let (a, p) = parse_url("http://127.0.0.1:9090/metrics").unwrap();
        assert_eq!(a.port(), 9090);
        assert_eq!(p, "/metrics");
        assert!(parse_url("https://x/").is_err());
    }
}
