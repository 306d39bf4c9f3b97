//! Starting a server: raise the descriptor limit, bind one `SO_REUSEPORT` listener per
//! worker, start the metrics listener, spawn the worker threads.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::worker::{self, mailbox, Shared, MAX_WORKERS};

/// Listen backlog per worker (`somaxconn` caps it further).
const BACKLOG: i32 = 4096;
/// Descriptors kept out of the connection ceiling: listeners, rings, log files,
/// the metrics listener, and a margin so the ceiling answers 503 before accept runs
/// out of descriptors.
const RESERVED_FDS_BASE: u64 = 64;
const RESERVED_FDS_PER_WORKER: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics { addr: SocketAddr, source: io::Error },
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
    #[error("--threads may not exceed {MAX_WORKERS}")]
    TooManyThreads,
}

/// A running server.
pub struct Server {
    pub local_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub max_connections: usize,
    /// Soft and hard `RLIMIT_NOFILE` after raising.
    pub nofile: (u64, u64),
    pub threads: usize,
    workers: Vec<JoinHandle<io::Result<()>>>,
    mailboxes: Vec<mailbox::Mailbox>,
    /// Each worker thread reports here when it has finished.
    finished: std::sync::mpsc::Receiver<usize>,
}

/// Raises the soft open-file limit to the hard one; returns (soft, hard).
pub fn raise_nofile_limit() -> (u64, u64) {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    match rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard) {
        Ok(()) => (hard, hard),
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit");
            (soft, hard)
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Starts the server described by `config` on background threads.
pub fn start(config: Config) -> Result<Server, StartError> {
    if config.threads > MAX_WORKERS {
        return Err(StartError::TooManyThreads);
    }
    let nofile = raise_nofile_limit();
    let reserve = RESERVED_FDS_BASE + RESERVED_FDS_PER_WORKER * config.threads as u64;
    let max_connections = config
        .max_connections
        .unwrap_or_else(|| nofile.0.saturating_sub(reserve).max(1) as usize);

    // Bind every listener before starting anything, so a port in use fails cleanly.
    // With port 0 the first bind picks the port and the others join it.
    let mut listeners = Vec::with_capacity(config.threads);
    let mut addr = config.listen;
    for _ in 0..config.threads {
        let l = bind(addr).map_err(|source| StartError::Listen { addr, source })?;
        addr = l
            .local_addr()
            .map_err(|source| StartError::Listen { addr, source })?;
        listeners.push(l);
    }

    let quota = Arc::new(crate::store::quota::Quota::new(
        config.max_stored_bytes,
        config.max_resources,
    ));
    let metrics = Arc::new(Metrics::new(config.threads, quota.clone()));
    metrics
        .max_connections
        .store(max_connections as u64, Relaxed);
    let metrics_addr =
        match config.metrics_listen {
            Some(maddr) => Some(metrics::serve(maddr, metrics.clone()).map_err(|source| {
                StartError::Metrics {
                    addr: maddr,
                    source,
                }
            })?),
            None => None,
        };

    let (mailboxes, inboxes): (Vec<_>, Vec<_>) =
        (0..config.threads).map(|_| mailbox::mailbox()).unzip();
    let handles = mailboxes.clone();
    let (finished_tx, finished) = std::sync::mpsc::channel();
    let threads = config.threads;
    let per_ip = config.max_connections_per_ip;
    let shared = Arc::new(Shared {
        config,
        mailboxes,
        metrics: metrics.clone(),
        max_connections,
        boundary: crate::http::frame::Boundary::random(),
        per_ip: per_ip.map(crate::worker::limits::PerIp::new),
        drained: (0..threads).map(|_| tokio::sync::Notify::new()).collect(),
    });
    let mut workers = Vec::with_capacity(threads);
    for (id, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
        let shared = shared.clone();
        let finished = finished_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("halley-worker-{id}"))
            .spawn(move || {
                let result = worker::run(id, shared, listener, inbox);
                let _ = finished.send(id);
                result
            })
            .map_err(StartError::Thread)?;
        workers.push(handle);
    }
    Ok(Server {
        local_addr: addr,
        metrics_addr,
        metrics,
        max_connections,
        nofile,
        threads,
        workers,
        mailboxes: handles,
        finished,
    })
}

impl Server {
    /// Begins a graceful shutdown on every worker (see `Worker::begin_drain`).
    pub fn shutdown(&self) {
        for m in &self.mailboxes {
            m.send(worker::mailbox::Msg::Shutdown);
        }
    }

    /// Waits for the workers; returns the first error one of them stopped with.
    pub fn wait(self) -> io::Result<()> {
        let mut result = Ok(());
        for handle in self.workers {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = result.and(Err(e)),
                Err(_) => result = result.and(Err(io::Error::other("a worker thread panicked"))),
            }
        }
        result
    }

    /// A handle that begins the shutdown from another thread (a signal handler).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            mailboxes: self.mailboxes.clone(),
        }
    }

    /// Blocks until one worker thread has finished (after a shutdown, or on its own).
    pub fn wait_one_finished(&self) {
        let _ = self.finished.recv();
    }

    /// Waits until `running` workers finished or `timeout` passed; returns how many are
    /// still running (0 when the drain completed).
    pub fn wait_finished(&self, mut running: usize, timeout: std::time::Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        while running > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.finished.recv_timeout(left) {
                Ok(_) => running -= 1,
                Err(_) => break,
            }
        }
        running
    }
}

/// Begins a graceful shutdown of a running server.
#[derive(Clone)]
pub struct ShutdownHandle {
    mailboxes: Vec<mailbox::Mailbox>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        for m in &self.mailboxes {
            m.send(worker::mailbox::Msg::Shutdown);
        }
    }
}
