//! `coordinator`: the daemon and the operators' CLI. See `coordinator --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = nodemaint_coordinator::cli::Cli::parse();
    // `coordinator vm list | head`: a reader that goes away ends the CLI
    // quietly, as any Unix tool (Rust ignores SIGPIPE, so println! would
    // panic). Sockets are unaffected (written with MSG_NOSIGNAL); the daemon
    // keeps Rust's default all the same.
    if !matches!(
        cli.command,
        nodemaint_coordinator::cli::Command::Serve { .. }
    ) {
        // SAFETY: before any thread that could write to a pipe exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // The daemon logs its work; the CLI only warnings, so its output stays
    // clean (NATS connection and permission errors reach the user in the
    // CLI's own error message, not as log lines).
    let (default, format) = match cli.command {
        nodemaint_coordinator::cli::Command::Serve { log_format, .. } => ("info", log_format),
        _ => (
            "warn,async_nats=off,nodemaint_proto::bus=off",
            Default::default(),
        ),
    };
    nodemaint_coordinator::logs::init(format, default);
    match nodemaint_coordinator::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            nodemaint_coordinator::cli::exit::of(&e).code().into()
        }
    }
}
