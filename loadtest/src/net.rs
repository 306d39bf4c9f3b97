//! Connecting: optional source addresses (to get past the ~28k ephemeral ports of one
//! source IP), TCP_NODELAY, a bounded number of connects in flight.

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// Parses `127.0.0.2-127.0.0.20` (a range of IPv4 addresses) or a comma list.
pub fn parse_sources(s: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("bad address {a:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("bad address {b:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                bail!("bad source range {item:?}");
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            out.push(
                item.parse()
                    .with_context(|| format!("bad address {item:?}"))?,
            );
        }
    }
    if out.is_empty() {
        bail!("empty --source");
    }
    Ok(out)
}

/// Opens client connections to one server address.
pub struct Dialer {
    pub addr: SocketAddr,
    sources: Vec<IpAddr>,
    next: Cell<usize>,
    /// Connects in flight at once: thousands of simultaneous SYNs would overflow the
    /// server's accept backlog and turn into 1 s SYN retransmits.
    gate: Rc<Semaphore>,
    timeout: Duration,
}

impl Dialer {
    pub fn new(addr: SocketAddr, sources: Vec<IpAddr>, concurrency: usize) -> Dialer {
        Dialer {
            addr,
            sources,
            next: Cell::new(0),
            gate: Rc::new(Semaphore::new(concurrency.max(1))),
            timeout: Duration::from_secs(10),
        }
    }

    /// Starts the round robin over sources at a different place per process.
    pub fn offset(&self, n: usize) {
        self.next.set(n);
    }

    pub async fn connect(&self) -> Result<TcpStream> {
        let _permit = self.gate.acquire().await.context("dialer closed")?;
        let src = if self.sources.is_empty() {
            None
        } else {
            let i = self.next.get();
            self.next.set(i.wrapping_add(1));
            Some(self.sources[i % self.sources.len()])
        };
        let sock = self.socket(src)?;
        let stream = tokio::time::timeout(self.timeout, sock.connect(self.addr))
            .await
            .map_err(|_| anyhow::anyhow!("connect to {} timed out", self.addr))?
            .with_context(|| format!("connect to {} (source {src:?})", self.addr))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn socket(&self, src: Option<IpAddr>) -> Result<TcpSocket> {
        let domain = if self.addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        s.set_nonblocking(true)?;
        s.set_nodelay(true)?;
        if let Some(ip) = src {
            // Choose the port at connect time from the full 4-tuple instead of reserving
            // one per source address at bind time (Linux IP_BIND_ADDRESS_NO_PORT):
            // otherwise every source IP is capped at the ephemeral range again.
            let one: libc::c_int = 1;
            // SAFETY: a valid socket fd and a c_int option value of the right size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            s.bind(&SocketAddr::new(ip, 0).into())
                .with_context(|| format!("bind source {ip}"))?;
        }
        let std_stream: std::net::TcpStream = s.into();
        Ok(TcpSocket::from_std_stream(std_stream))
    }
}

/// The dialer of worker process `index`: the common flags' address, source addresses
/// (`--source`) and connect concurrency, offset so processes start on different sources.
pub fn worker_dialer(c: &crate::cli::Common, index: usize) -> anyhow::Result<std::rc::Rc<Dialer>> {
    let sources = match &c.source {
        Some(s) => parse_sources(s)?,
        None => Vec::new(),
    };
    let dialer = std::rc::Rc::new(Dialer::new(c.addr, sources, c.connect_concurrency));
    dialer.offset(index);
    Ok(dialer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let v = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[2], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(parse_sources("127.0.0.9, 127.0.0.7").unwrap().len(), 2);
        assert!(parse_sources("127.0.0.5-127.0.0.2").is_err());
        assert!(parse_sources("x").is_err());
        assert!(parse_sources("").is_err());
    }
}
