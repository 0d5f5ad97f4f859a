//! Logging: `tracing` to stderr, with fuse-backend-rs's `log` records bridged in.
//!
//! Owns the global subscriber. Nothing here writes to stdout: stdout stays free for what a
//! caller asks for (`--print-capabilities`).

use tracing_subscriber::EnvFilter;

use crate::cli::LogLevel;

/// Install the global subscriber. `RUST_LOG`, when set, refines the level from the command line.
pub fn init(level: LogLevel) {
    // fuse-backend-rs logs through `log`; forward those records into tracing. Failing means a
    // logger is already installed (a second init in tests), which is harmless.
    let _ = tracing_log::LogTracer::init();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.as_filter()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
