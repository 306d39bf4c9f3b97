//! Command line (clap derive). Every flag is documented here; `--help` shows it all.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "halley-load",
    version,
    about = "Load generator for halley (HTTP/1.1 push server) and Nchan, side by side.",
    long_about = "Load generator for halley (HTTP/1.1 push server) and Nchan, side by side.\n\n\
Scenarios: `park` holds long polls and measures the server's memory per parked \
connection; `fanout` publishes numbered records and verifies every delivery \
(lost/duplicated/out-of-order) with latency percentiles; `publish` measures write \
throughput; `ticker` runs a stock-ticker feed as a live demo; `baseline-server` is a \
minimal reference server for the chunked-stream scenario (a benchmark ceiling).\n\n\
A progress line goes to stderr every second, the final table to stdout, and \
`--json FILE` writes every result. Only loopback targets are meant to be loaded."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Hold many idle long polls; report time to park them all and server memory per poll.
    Park(ParkArgs),
    /// Subscribers watch resources while publishers append numbered records; verify and time every delivery.
    Fanout(FanoutArgs),
    /// Write throughput: PUT or POST as fast as the server answers.
    Publish(PublishArgs),
    /// A stock-ticker feed (quotes PUT to /quotes/<SYM>, trades POSTed to /tape) for demos.
    Ticker(TickerArgs),
    /// A minimal reference server (the benchmark ceiling): Nchan's chunked-stream subset,
    /// each pre-encoded chunk written once per subscriber.
    ///
    /// It speaks the subset of Nchan's protocol that `fanout --target nchan --mode stream`
    /// (chunked form, the default) uses: `GET /sub/<ch>`, answered at once with a chunked
    /// 200, after which every message published to <ch> is one chunk; `POST /pub/<ch>` with
    /// a Content-Length body, answered 202 (keep-alive, pipelining). No history, no other
    /// forms; anything else is refused and the connection closed. One thread per core, each
    /// with its own io_uring and SO_REUSEPORT listener. Runs until killed.
    BaselineServer(BaselineArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// halley: REST Comet (When-Modified-After, multipart/digest, POST /subscribe, POST /batch).
    Halley,
    /// nginx + Nchan with the locations of loadtest/nchan/nginx.conf.in (/pub/<ch>, /sub/<ch>, /multi/<a,b,..>).
    Nchan,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Halley => "halley",
            Target::Nchan => "nchan",
        }
    }
}

/// Flags shared by every subcommand.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Server kind to talk to.
    #[arg(long, value_enum, default_value_t = Target::Halley)]
    pub target: Target,

    /// Server address (loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Worker processes. Each is a single-threaded runtime with its own descriptor limit,
    /// so N processes can hold N × ~19,000 connections; connections are divided evenly.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub procs: u16,

    /// Source addresses for client sockets, used round-robin: a range
    /// (`127.0.0.2-127.0.0.20`) or a comma list. Each source IP has its own ~28,000
    /// ephemeral ports towards one server address.
    #[arg(long, value_name = "ADDRS")]
    pub source: Option<String>,

    /// Connection attempts in flight at once per process.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub connect_concurrency: usize,

    /// Write every result (parameters, counters, rates, percentiles, the per-second
    /// timeline) to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Path prefix (halley) or channel prefix (Nchan) for this run's resources. Default: a
    /// fresh random `run<hex>`, so a run never sees data of an earlier one.
    #[arg(long)]
    pub prefix: Option<String>,

    /// Server metrics URL. halley: its Prometheus endpoint (e.g.
    /// http://127.0.0.1:9090/metrics, gauge `halley_parked`); Nchan: an nchan_stub_status
    /// location (e.g. http://127.0.0.1:8081/nchan_stub_status, line `subscribers:`). Used
    /// to confirm that long polls are really parked.
    #[arg(long, value_name = "URL")]
    pub metrics: Option<String>,

    /// Server process id(s) for memory (VmRSS) and CPU (utime+stime) accounting; repeat
    /// it for multi-process servers (nginx: the master and every worker).
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pid: Vec<u32>,

    /// Internal: this process is worker number N of a `--procs` run.
    #[arg(long, hide = true)]
    pub child_index: Option<usize>,

    /// Internal: number of workers of a `--procs` run.
    #[arg(long, hide = true, default_value_t = 1)]
    pub child_count: usize,

    /// Internal: the run prefix chosen by the parent.
    #[arg(long, hide = true)]
    pub child_prefix: Option<String>,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug, Clone)]
pub struct ParkArgs {
    #[command(flatten)]
    pub common: Common,

    /// Long polls to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,

    /// Resources the polls are spread over (created fresh; the polls wait for a change
    /// after the stamp just read from each resource's Last-Modified).
    #[arg(long, default_value_t = 100)]
    pub resources: usize,

    /// How long to hold the parked polls once they are all parked.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub hold: Duration,

    /// Give up waiting for all polls to be parked after this long.
    #[arg(long, default_value = "120s", value_parser = duration)]
    pub park_timeout: Duration,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One long poll at a time per connection, re-polled at once after every answer
    /// (halley: When-Modified-After + Range: bytes=<len>-; Nchan: If-Modified-Since/If-None-Match).
    Longpoll,
    /// One stream per connection (halley: multipart/digest; Nchan: see --nchan-stream).
    Stream,
    /// One stream per connection watching --per-conn resources (halley: POST /subscribe;
    /// Nchan: a multiplexed subscriber GET /multi/<a>,<b>,...).
    Subscribe,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NchanStream {
    /// `TE: chunked`: every message one HTTP chunk, no per-message headers (the leanest
    /// stream Nchan offers over HTTP/1.1).
    Chunked,
    /// `Accept: multipart/mixed`: every message a MIME part with Last-Modified and Etag
    /// (the closest to halley's multipart/digest parts).
    Multipart,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,

    /// How long to publish and measure (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,

    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,

    /// Resources (channels). Subscriber i watches resource i mod R (subscribe mode:
    /// resources i·K … i·K+K−1 mod R).
    #[arg(long, default_value_t = 100)]
    pub resources: usize,

    /// How subscribers receive changes.
    #[arg(long, value_enum, default_value_t = Mode::Stream)]
    pub mode: Mode,

    /// Resources per subscriber connection (subscribe mode; the "portfolio" shape is
    /// `--mode subscribe --per-conn 10`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=255))]
    pub per_conn: u16,

    /// Give subscriber connection g the resources from a hash of g instead of from
    /// g × K mod R. By default consecutive connections watch consecutive resources, and a
    /// server that lays its subscribers out in accept order finds the subscribers of
    /// consecutive changes side by side in memory; scattered, they are not.
    #[arg(long)]
    pub scatter: bool,

    /// Publisher connections. Each resource has exactly one publisher (resource k belongs
    /// to publisher k mod P), which numbers its records 0, 1, 2, …
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,

    /// Total changes per second over all publishers (open loop). 0 = closed loop: every
    /// publisher connection sends its next request as soon as one answered (with
    /// --pipeline requests in flight).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// Requests in flight per publisher connection (HTTP/1.1 pipelining).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub pipeline: u16,

    /// Changes per publisher request. >1: halley gets one `POST /batch` with that many
    /// POST sub-requests; Nchan (which has no batch) gets that many pipelined POSTs in one
    /// write, its fastest HTTP publish path.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch: u16,

    /// Bytes per record (one record per change).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub msg_size: u32,

    /// Give up waiting for subscribers to connect and get their first part after this long.
    #[arg(long, default_value = "120s", value_parser = duration)]
    pub warmup_timeout: Duration,

    /// After publishing stops, wait at most this long for subscribers to receive every
    /// published record; what is still missing then counts as lost.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub drain: Duration,

    /// Nchan stream form for --mode stream/subscribe.
    #[arg(long, value_enum, default_value_t = NchanStream::Chunked)]
    pub nchan_stream: NchanStream,

    /// Reconnections allowed per subscriber before it gives up.
    #[arg(long, default_value_t = 3)]
    pub max_reconnects: u32,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
}

#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    #[command(flatten)]
    pub common: Common,

    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,

    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,

    /// Requests in flight per connection (HTTP/1.1 pipelining).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub pipeline: u16,

    /// PUT (replace) or POST (append). Nchan only publishes with POST.
    #[arg(long, value_enum, default_value_t = Method::Post)]
    pub method: Method,

    /// Resources written round-robin.
    #[arg(long, default_value_t = 100)]
    pub resources: usize,

    /// Bytes per request body.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub msg_size: u32,
}

#[derive(Args, Debug, Clone)]
pub struct TickerArgs {
    #[command(flatten)]
    pub common: Common,

    /// How long to run; 0 = until Ctrl-C (ticker only).
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub duration: Duration,

    /// Quote resources /quotes/<SYM>.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub symbols: u16,

    /// Quote updates per second (all symbols together).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,

    /// Fraction of updates that also print a trade on the tape.
    #[arg(long, default_value_t = 0.3)]
    pub trade_ratio: f64,

    /// Updates are sent in ticks of this length (one write per tick).
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub tick: Duration,

    /// halley: send each tick as one `POST /batch` (quotes and trades fan out together).
    #[arg(long)]
    pub batch: bool,

    /// Path prefix for the feed (`<base>/quotes/<SYM>`, `<base>/tape`); empty = at the root.
    #[arg(long, default_value = "")]
    pub base: String,
}

#[derive(Args, Debug, Clone)]
pub struct BaselineArgs {
    /// Address to listen on (every thread binds it with SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:8090", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Worker threads, each with its own io_uring and listener [default: number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

#[cfg(test)]
impl FanoutArgs {
    /// Parses `fanout` flags (tests).
    pub fn parse_from_for_test(flags: &[&str]) -> FanoutArgs {
        let mut argv = vec!["halley-load", "fanout"];
        argv.extend_from_slice(flags);
        match Cli::parse_from(argv).cmd {
            Cmd::Fanout(a) => a,
            _ => unreachable!("parsed fanout"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_is_documented() {
        for sub in Cli::command().get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.is_hide_set() || arg.get_id() == "help" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} --{} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
