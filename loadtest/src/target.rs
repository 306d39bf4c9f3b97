//! Where things live on each server kind.

use crate::cli::{Common, Target};
use crate::http::{write_request, Conn};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;

/// Resource paths (halley) or channel endpoints (Nchan) of one run.
#[derive(Debug, Clone)]
pub struct Paths {
    pub target: Target,
    pub prefix: String,
    pub host: String,
}

impl Paths {
    pub fn new(target: Target, prefix: &str, addr: SocketAddr) -> Paths {
        Paths {
            target,
            prefix: prefix.trim_matches('/').to_string(),
            host: addr.to_string(),
        }
    }

    /// halley resource path `/<prefix>/r/<k>`.
    pub fn resource(&self, k: u64) -> String {
        format!("/{}/r/{k}", self.prefix)
    }

    /// Nchan channel id `<prefix>-<k>`.
    pub fn channel(&self, k: u64) -> String {
        format!("{}-{k}", self.prefix)
    }

    /// Where a publisher writes resource `k`.
    pub fn publish_path(&self, k: u64) -> String {
        match self.target {
            Target::Halley => self.resource(k),
            Target::Nchan => format!("/pub/{}", self.channel(k)),
        }
    }

    /// Where a subscriber of one resource reads.
    pub fn subscribe_path(&self, k: u64) -> String {
        match self.target {
            Target::Halley => self.resource(k),
            Target::Nchan => format!("/sub/{}", self.channel(k)),
        }
    }

    /// Nchan's multiplexed subscriber for several channels (`/multi/a,b,c`).
    pub fn multi_path(&self, ks: &[u64]) -> String {
        let ids: Vec<String> = ks.iter().map(|&k| self.channel(k)).collect();
        format!("/multi/{}", ids.join(","))
    }

    /// The resource number of a halley `Content-Location`.
    pub fn resource_of(&self, location: &str) -> Option<u64> {
        let rest = location
            .strip_prefix('/')?
            .strip_prefix(self.prefix.as_str())?;
        rest.strip_prefix("/r/")?.parse().ok()
    }
}

/// A fresh run prefix: `run` + 12 hex digits.
pub fn random_prefix() -> String {
    let mut rng = crate::clock::Rng::seeded();
    format!("run{:012x}", rng.next_u64() & 0xffff_ffff_ffff)
}

/// The run's prefix (`--prefix` or a fresh one); on halley, also creates the run's
/// `resources` resources, empty, so that subscribers have something to wait on.
pub async fn prepare_run(c: &Common, resources: usize) -> Result<String> {
    let prefix = c.prefix.clone().unwrap_or_else(random_prefix);
    if c.target == Target::Halley {
        let paths = Paths::new(c.target, &prefix, c.addr);
        let ks: Vec<u64> = (0..resources as u64).collect();
        create_resources(c.addr, &paths, &ks, "text/plain")
            .await
            .context("creating resources")?;
    }
    Ok(prefix)
}

/// Creates halley resources with `PUT` (empty `text/plain`) on one pipelined
/// connection; returns each one's `Last-Modified`.
pub async fn create_resources(
    addr: SocketAddr,
    paths: &Paths,
    ks: &[u64],
    content_type: &str,
) -> Result<Vec<String>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut conn = Conn::new(stream, 64 * 1024);
    let mut stamps = Vec::with_capacity(ks.len());
    for chunk in ks.chunks(64) {
        let mut req = Vec::new();
        for &k in chunk {
            write_request(
                &mut req,
                "PUT",
                &paths.resource(k),
                &paths.host,
                &[("Content-Type", content_type)],
                Some(b""),
            );
        }
        conn.write_all(&req).await?;
        for &k in chunk {
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                conn.read_response(false),
            )
            .await
            .context("PUT timed out")??;
            if !(200..300).contains(&r.head.status) {
                bail!("PUT {} answered {}", paths.resource(k), r.head.status);
            }
            stamps.push(r.head.last_modified.unwrap_or_default());
        }
    }
    Ok(stamps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let p = Paths::new(Target::Halley, "/runab/", a);
        assert_eq!(p.resource(7), "/runab/r/7");
        assert_eq!(p.resource_of("/runab/r/7"), Some(7));
        assert_eq!(p.resource_of("/runab/r/x"), None);
        assert_eq!(p.resource_of("/other/r/7"), None);
        let n = Paths::new(Target::Nchan, "runab", a);
        assert_eq!(n.publish_path(3), "/pub/runab-3");
        assert_eq!(n.subscribe_path(3), "/sub/runab-3");
        assert_eq!(n.multi_path(&[1, 2]), "/multi/runab-1,runab-2");
        assert!(random_prefix().starts_with("run"));
    }
}
