use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

use halley::config::Args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|e| {
        eprintln!(
            "halley: invalid --log-level {:?}: {e}; using 'info'",
            args.log_level
        );
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("halley: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown_timeout = config.shutdown_timeout;
    let server = match halley::server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("halley: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        workers = server.threads,
        max_connections = server.max_connections,
        nofile_soft = server.nofile.0,
        nofile_hard = server.nofile.1,
        "connection ceiling {} (open-file limit {})",
        server.max_connections,
        server.nofile.0
    );
    // Stdout is for scripts and tests: where the metrics are (if enabled), then,
    // last, where to connect. Everything else goes to the log on stderr.
    if let Some(m) = server.metrics_addr {
        println!("halley metrics on {m}");
    }
    println!("halley listening on {}", server.local_addr);
    let _ = std::io::stdout().flush();

    // A signal thread begins the drain (SIGTERM/SIGINT); a second signal exits at once.
    // The main thread watches the workers: they finish after a drain, or if one fails.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("halley: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = server.shutdown_handle();
    let signalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = signalled.clone();
    std::thread::spawn(move || {
        let mut forever = signals.forever();
        if let Some(signal) = forever.next() {
            tracing::info!(signal, timeout = ?shutdown_timeout, "shutting down: draining connections");
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            handle.shutdown();
        }
        if forever.next().is_some() {
            eprintln!("halley: second signal, exiting now");
            std::process::exit(1);
        }
    });
    server.wait_one_finished();
    if !signalled.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::error!("a worker stopped unexpectedly; shutting the others down");
        server.shutdown();
    }
    let running = server.wait_finished(server.threads - 1, shutdown_timeout);
    if running > 0 {
        tracing::warn!(
            workers = running,
            "shutdown timeout reached with connections still open; exiting"
        );
        std::process::exit(0);
    }
    match server.wait() {
        Ok(()) => {
            tracing::info!("drained; bye");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("halley: worker failed: {e}");
            ExitCode::FAILURE
        }
    }
}
