use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
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
    match server.wait() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("halley: worker failed: {e}");
            ExitCode::FAILURE
        }
    }
}
