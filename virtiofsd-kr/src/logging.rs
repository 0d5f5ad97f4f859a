//! Logging: `tracing` to stderr, with fuse-backend-rs's `log` records bridged in.
//!
//! Owns the global subscriber. Nothing here writes to stdout: stdout stays free for what a
//! caller asks for (`--print-capabilities`).
//!
//! The filter is `tracing_subscriber`'s `Targets` (`level` or `target=level`, comma
//! separated), not `EnvFilter`: the latter compiles regular expressions at start-up, which
//! costs every idle daemon a few hundred KiB of resident code and heap for span-field filters
//! nobody uses here.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

use crate::cli::LogLevel;

/// The filter for `--log-level` refined by `RUST_LOG`; an unparsable `RUST_LOG` is reported
/// in the returned message and ignored.
fn filter(level: LogLevel, rust_log: Option<&str>) -> (Targets, Option<String>) {
    let from_flag = || {
        level
            .as_filter()
            .parse::<LevelFilter>()
            .map(|l| Targets::new().with_default(l))
            .unwrap_or_default()
    };
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        None => (from_flag(), None),
        Some(spec) => match spec.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(e) => (
                from_flag(),
                Some(format!(
                    "RUST_LOG={spec:?} ignored ({e}); expected LEVEL or TARGET=LEVEL, comma \
                     separated"
                )),
            ),
        },
    }
}

/// Install the global subscriber. `RUST_LOG`, when set, replaces the level from the command
/// line.
pub fn init(level: LogLevel) {
    // fuse-backend-rs logs through `log`; forward those records into tracing. Failing means a
    // logger is already installed (a second init in tests), which is harmless.
    let _ = tracing_log::LogTracer::init();
    let (targets, complaint) = filter(level, std::env::var("RUST_LOG").ok().as_deref());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(targets))
        .try_init();
    if let Some(complaint) = complaint {
        // Not through the filter: `--log-level error` must not hide why RUST_LOG did nothing.
        if !matches!(level, LogLevel::Off) {
            eprintln!("{complaint}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_flag_sets_the_level_without_rust_log() {
        let (t, complaint) = filter(LogLevel::Warn, None);
        assert!(complaint.is_none());
        assert!(t.would_enable("virtiofsd_kr::daemon", &Level::WARN));
        assert!(!t.would_enable("virtiofsd_kr::daemon", &Level::INFO));
    }

    #[test]
    fn rust_log_replaces_the_flag_per_target() {
        let (t, complaint) = filter(LogLevel::Info, Some("warn,fuse_backend_rs=debug"));
        assert!(complaint.is_none());
        assert!(t.would_enable("fuse_backend_rs::api::server", &Level::DEBUG));
        assert!(!t.would_enable("virtiofsd_kr::daemon", &Level::INFO));
    }

    #[test]
    fn a_bad_rust_log_is_reported_and_the_flag_kept() {
        let (t, complaint) = filter(LogLevel::Info, Some("virtiofsd_kr=loud"));
        let complaint = complaint.expect("complaint");
        assert!(complaint.contains("RUST_LOG"), "{complaint}");
        assert!(t.would_enable("virtiofsd_kr::daemon", &Level::INFO));
        assert!(!t.would_enable("virtiofsd_kr::daemon", &Level::DEBUG));
    }

    #[test]
    fn off_silences_everything() {
        let (t, _) = filter(LogLevel::Off, None);
        assert!(!t.would_enable("virtiofsd_kr::daemon", &Level::ERROR));
    }
}
