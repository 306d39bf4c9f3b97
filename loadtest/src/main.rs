//! halley-load: the load generator of halley (and, for comparison, Nchan).
//!
//! One current-thread tokio runtime per process (the machine is small and shared with
//! the server); `--procs N` runs N worker processes coordinated by this one. See
//! `loadtest/README.md`. `baseline-server` (a minimal reference server) runs outside the
//! runtime, on its own threads.

/// The allocator halley uses: the per-delivery parsing allocates little, but
/// glibc's free was 2% of this tool's CPU in a stream fan-out.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod baseline;
mod cli;
mod clock;
mod fanout;
mod fleet;
mod http;
mod metrics;
mod multipart;
mod net;
mod output;
mod park;
mod procfs;
mod publish;
mod publisher;
mod record;
mod stats;
mod target;
mod ticker;
mod verify;

use clap::Parser;
use cli::{Cli, Cmd, Common};
use std::process::ExitCode;

/// Raises the soft descriptor limit to the hard one: every connection is a descriptor.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn child_of(c: &Common) -> Option<(usize, usize, String)> {
    c.child_index.map(|i| {
        (
            i,
            c.child_count.max(1),
            c.child_prefix.clone().unwrap_or_default(),
        )
    })
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.cmd {
        Cmd::Fanout(a) => match child_of(&a.common) {
            Some((i, n, prefix)) => {
                let f = fanout::worker_fn(std::rc::Rc::new(a), prefix);
                fleet::run_child(i, n, f).await.map(|_| 0)
            }
            None => fanout::run(a).await,
        },
        Cmd::Park(a) => match child_of(&a.common) {
            Some((i, n, prefix)) => {
                let f = park::worker_fn(std::rc::Rc::new(a), prefix);
                fleet::run_child(i, n, f).await.map(|_| 0)
            }
            None => park::run(a).await,
        },
        Cmd::Publish(a) => match child_of(&a.common) {
            Some((i, n, prefix)) => {
                let f = publish::worker_fn(std::rc::Rc::new(a), prefix);
                fleet::run_child(i, n, f).await.map(|_| 0)
            }
            None => publish::run(a).await,
        },
        Cmd::Ticker(a) => ticker::run(a).await,
        Cmd::BaselineServer(_) => anyhow::bail!("baseline-server does not run in the runtime"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_nofile();
    // The baseline server has its own threads and io_urings: no tokio runtime.
    if let Cmd::BaselineServer(a) = &cli.cmd {
        return match baseline::run(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("halley-load: error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("halley-load: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, run(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("halley-load: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
