//! Command-line flags (clap) and the validated [`Config`] the server runs with.
//! Flags are parsed into [`Args`], then checked once into a `Config`; nothing past
//! this module sees a raw flag.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::Parser;

use crate::auth::{Auth, AuthError};
use std::path::PathBuf;
use std::sync::Arc;

use crate::http::request::HeadLimits;

/// halley: an HTTP/1.1 push ("Comet") server on io_uring.
///
/// Resources are plain HTTP resources (GET/HEAD/PUT/POST/DELETE). A GET with a
/// `When-Modified-After` header is a long poll: it is answered as soon as the
/// resource changes after that time.
#[derive(Parser, Debug, Clone)]
#[command(name = "halley", version, about, long_about = None)]
pub struct Args {
    /// Address to listen on (every worker binds it with SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Worker threads, one io_uring runtime and one resource shard each [default: the cores available].
    #[arg(long, value_name = "N")]
    pub threads: Option<NonZeroUsize>,

    /// Answer a parked long poll with 304 after this long without a change (e.g. 60s, 500ms; 0 = never).
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub poll_timeout: Duration,

    /// Close a connection whose request head (or body) stalls this long (slowloris defence).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,

    /// Close a keep-alive connection idle this long between requests (0 = never).
    #[arg(long, default_value = "120s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Largest request header section, request line included; larger is refused with 431.
    #[arg(long, default_value = "64KiB", value_parser = parse_size, value_name = "BYTES")]
    pub max_header_bytes: u64,

    /// Longest request target; longer is refused with 414.
    #[arg(long, default_value = "8KiB", value_parser = parse_size, value_name = "BYTES")]
    pub max_target_bytes: u64,

    /// Largest request body (after chunked decoding); larger is refused with 413.
    #[arg(long, default_value = "16MiB", value_parser = parse_size, value_name = "BYTES")]
    pub max_body_bytes: u64,

    /// Changes remembered per resource for resuming long polls; older resumes get the full state.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub history: usize,

    /// Most simultaneous client connections; beyond it new connections get 503 and are closed
    /// [default: the open-file limit minus a reserve].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Bytes a stream may have queued or in flight to a slow reader; beyond it, its
    /// pending changes are summarised (newest state, merged appends) instead of queued.
    #[arg(long, default_value = "64KiB", value_parser = parse_size, value_name = "BYTES")]
    pub stream_buffer: u64,

    /// Send an empty part on streams idle this long, so proxies keep them open (0 = never).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub heartbeat: Duration,

    /// Kernel send buffer for stream connections (SO_SNDBUF); bounds kernel memory per
    /// slow reader [default: the kernel's autotuning].
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    pub stream_sndbuf: Option<u64>,

    /// Most sub-requests in one `POST /subscribe` (or `/batch`); more is refused with 413.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_subrequests: usize,

    /// Access rules: a TOML file granting anonymous clients, Basic users and Bearer tokens
    /// read and/or write on path prefixes (format in docs/security.md) [default: open access].
    #[arg(long, value_name = "FILE")]
    pub auth: Option<PathBuf>,

    /// Most simultaneous connections from one client address; beyond it, 429 and close
    /// [default: no per-address cap].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<u32>,

    /// Flush answers to a pipelining client after this many, and read no further ahead
    /// meanwhile (bounds what one connection can make the server buffer).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_pipeline: usize,

    /// How long SIGTERM/SIGINT waits for connections to finish before exiting.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    /// Most resources stored (live ones); writes creating more get 507 [default: no limit].
    #[arg(long, value_name = "N")]
    pub max_resources: Option<u64>,

    /// Most representation bytes stored in all; writes beyond it get 507 [default: no limit].
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    pub max_stored_bytes: Option<u64>,

    /// Serve Prometheus metrics on this separate address (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
}

/// Why the flags cannot run a server.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--history must be at least 1")]
    History,
    #[error("--max-header-bytes must be between 1 KiB and 16 MiB")]
    HeaderBytes,
    #[error("--max-target-bytes must be at least 16 and below --max-header-bytes")]
    TargetBytes,
    #[error("--max-connections must be at least 1")]
    MaxConnections,
    #[error("--stream-buffer must be at least 1 KiB")]
    StreamBuffer,
    #[error("--max-subrequests must be at least 1")]
    MaxSubrequests,
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub threads: usize,
    /// `None`: parked polls wait forever.
    pub poll_timeout: Option<Duration>,
    pub header_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub head_limits: HeadLimits,
    pub max_body_bytes: u64,
    pub history: usize,
    /// `None`: derived from the open-file limit at start.
    pub max_connections: Option<usize>,
    pub metrics_listen: Option<SocketAddr>,
    pub stream_buffer_bytes: usize,
    pub heartbeat: Option<Duration>,
    pub stream_sndbuf: Option<usize>,
    pub max_subrequests: usize,
    /// `None`: every client may read and write everything.
    pub auth: Option<Arc<Auth>>,
    pub max_connections_per_ip: Option<u32>,
    pub max_pipeline: usize,
    pub shutdown_timeout: Duration,
    pub max_resources: Option<u64>,
    pub max_stored_bytes: Option<u64>,
}

impl Args {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.history == 0 {
            return Err(ConfigError::History);
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_header_bytes) {
            return Err(ConfigError::HeaderBytes);
        }
        if self.max_target_bytes < 16 || self.max_target_bytes >= self.max_header_bytes {
            return Err(ConfigError::TargetBytes);
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::MaxConnections);
        }
        if self.stream_buffer < 1024 {
            return Err(ConfigError::StreamBuffer);
        }
        if self.max_subrequests == 0 {
            return Err(ConfigError::MaxSubrequests);
        }
        let threads = self
            .threads
            .map(NonZeroUsize::get)
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .map(NonZeroUsize::get)
            })
            .unwrap_or(1);
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        Ok(Config {
            listen: self.listen,
            threads,
            poll_timeout: nonzero(self.poll_timeout),
            header_timeout: self.header_timeout.max(Duration::from_millis(1)),
            idle_timeout: nonzero(self.idle_timeout),
            head_limits: HeadLimits {
                max_header_bytes: self.max_header_bytes as usize,
                max_target_bytes: self.max_target_bytes as usize,
            },
            max_body_bytes: self.max_body_bytes,
            history: self.history,
            max_connections: self.max_connections,
            metrics_listen: self.metrics_listen,
            stream_buffer_bytes: usize::try_from(self.stream_buffer).unwrap_or(usize::MAX),
            heartbeat: nonzero(self.heartbeat),
            stream_sndbuf: self
                .stream_sndbuf
                .map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
            max_subrequests: self.max_subrequests,
            max_connections_per_ip: self.max_connections_per_ip.filter(|&n| n > 0),
            max_pipeline: self.max_pipeline.max(1),
            shutdown_timeout: self.shutdown_timeout,
            max_resources: self.max_resources,
            max_stored_bytes: self.max_stored_bytes,
            auth: match &self.auth {
                Some(path) => Some(Arc::new(Auth::load(path)?)),
                None => None,
            },
        })
    }
}

impl Config {
    /// The defaults of every flag, listening on `listen`.
    pub fn with_listen(listen: SocketAddr) -> Config {
        let mut args = Args::parse_from(["halley"]);
        args.listen = listen;
        args.into_config()
            .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }
}

/// `30s`, `500ms`, `2m`, `1h 30m`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 30s, 500ms, 2m)"))
}

/// `65536`, `64KiB`, `64k`, `16MiB`, `1GiB` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional unit (KiB, MiB, GiB)")
    })?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::with_listen("127.0.0.1:0".parse().unwrap());
        assert_eq!(c.head_limits.max_header_bytes, 64 * 1024);
        assert_eq!(c.head_limits.max_target_bytes, 8 * 1024);
        assert_eq!(c.max_body_bytes, 16 << 20);
        assert_eq!(c.poll_timeout, Some(Duration::from_secs(60)));
        assert!(c.threads >= 1);
    }

    #[test]
    fn bad_flags_are_refused() {
        let bad = |extra: &[&str]| {
            let mut argv = vec!["halley"];
            argv.extend_from_slice(extra);
            Args::parse_from(argv).into_config().is_err()
        };
        assert!(bad(&["--history", "0"]));
        assert!(bad(&["--max-header-bytes", "100"]));
        assert!(bad(&["--max-target-bytes", "64KiB"]));
        assert!(bad(&["--max-connections", "0"]));
    }
}
