//! Logging: `tracing` to stderr, with fuse-backend-rs's `log` records bridged in, paced (a
//! guest can make that crate log an error per request).
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

/// The log level (`--log-level`), refined by `RUST_LOG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

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

/// The most verbose level `targets` lets through, as `log`'s global maximum. `LogTracer`
/// leaves that at TRACE, and then every `debug!`/`trace!` of fuse-backend-rs on a request's
/// path calls into the tracer only to be dropped by the filter; with the maximum set, `log`'s
/// macros skip them with one comparison.
fn most_verbose(targets: &Targets) -> log::LevelFilter {
    use tracing_log::AsLog;
    targets
        .iter()
        .map(|(_, level)| level)
        .chain(targets.default_level())
        .max()
        .unwrap_or(LevelFilter::OFF)
        .as_log()
}

/// How many `log` records (fuse-backend-rs's) a [`PACE_WINDOW`] keeps at their level; the
/// rest of the window's go on at debug level.
const PACE_BURST: u32 = 10;
const PACE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// A `log` record's message is cut here (fuse-backend-rs puts a request's bytes in some).
const MAX_MESSAGE: usize = 1024;

/// fuse-backend-rs's `log` records into `tracing`, paced. A guest can make that crate log
/// an error for every request it sends (a GETATTR of an unknown node id; a name without its
/// NUL, with the request's bytes in the line): so at most [`PACE_BURST`] records a
/// [`PACE_WINDOW`] keep their level, later ones go on at debug level (shown with
/// `--log-level debug`), one warning says so, and every message is cut at [`MAX_MESSAGE`]
/// bytes. Records below info level pass as they are.
struct PacedBridge {
    tracer: tracing_log::LogTracer,
    pace: std::sync::Mutex<Pace>,
}

#[derive(Default)]
struct Pace {
    window_start: Option<std::time::Instant>,
    kept: u32,
}

impl PacedBridge {
    fn new() -> Self {
        PacedBridge {
            tracer: tracing_log::LogTracer::new(),
            pace: std::sync::Mutex::new(Pace::default()),
        }
    }

    /// The level a record of `level` is logged at, and whether it is the window's first
    /// demoted one.
    fn paced(&self, level: log::Level) -> (log::Level, bool) {
        if level > log::Level::Info {
            return (level, false);
        }
        let mut pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let expired = match pace.window_start {
            Some(start) => now.duration_since(start) >= PACE_WINDOW,
            None => true,
        };
        if expired {
            *pace = Pace {
                window_start: Some(now),
                kept: 0,
            };
        }
        pace.kept = pace.kept.saturating_add(1);
        if pace.kept <= PACE_BURST {
            (level, false)
        } else {
            (log::Level::Debug, pace.kept == PACE_BURST + 1)
        }
    }
}

impl log::Log for PacedBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.tracer.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.tracer.enabled(record.metadata()) {
            return;
        }
        let (level, first_demoted) = self.paced(record.level());
        if first_demoted {
            tracing::warn!(
                "{} messages of the FUSE library in {} s; more in this window are logged at \
                 debug level (a guest can cause one per request)",
                PACE_BURST,
                PACE_WINDOW.as_secs()
            );
        }
        let target = record.target();
        let demoted = log::Metadata::builder().level(level).target(target).build();
        if !self.tracer.enabled(&demoted) {
            return;
        }
        let mut text = record.args().to_string();
        if text.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("... (cut)");
        }
        self.tracer.log(
            &log::Record::builder()
                .level(level)
                .target(target)
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .args(format_args!("{text}"))
                .build(),
        );
    }

    fn flush(&self) {}
}

/// Installs [`PacedBridge`] as `log`'s logger; failing means one is installed already (a
/// second init in tests), which is harmless.
fn bridge_log_records() {
    let _ = log::set_boxed_logger(Box::new(PacedBridge::new()));
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stderr,
    /// The local syslog socket (`/dev/log`), connected now, so the sandbox does not hide it;
    /// stderr if it cannot be.
    Syslog,
}

/// A connected `/dev/log` datagram socket; each event is one RFC 3164 message (facility
/// daemon, severity from the level), sent with one `send` (allowed under seccomp).
struct SyslogSocket {
    socket: std::os::unix::net::UnixDatagram,
    tag: String,
}

/// One event's text, sent when the formatter is done with it.
struct SyslogLine<'a> {
    to: &'a SyslogSocket,
    buf: Vec<u8>,
}

impl std::io::Write for SyslogLine<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim();
        // Severity from the formatted level (the fmt layer writes it first).
        let severity = match text.split_whitespace().next().unwrap_or("") {
            "ERROR" => 3,
            "WARN" => 4,
            "INFO" => 6,
            _ => 7,
        };
        let message = format!("<{}>{}: {text}", 24 + severity, self.to.tag);
        let _ = self.to.socket.send(message.as_bytes());
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SyslogSocket {
    type Writer = SyslogLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine {
            to: self,
            buf: Vec::with_capacity(256),
        }
    }
}

fn syslog_socket() -> std::io::Result<SyslogSocket> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.connect("/dev/log")?;
    Ok(SyslogSocket {
        socket,
        tag: format!("virtiofsd-kr[{}]", std::process::id()),
    })
}

/// [`init`] with a choice of sink.
pub fn init_to(level: LogLevel, sink: Sink) {
    if sink == Sink::Syslog {
        match syslog_socket() {
            Ok(socket) => {
                bridge_log_records();
                let (targets, _) = filter(level, std::env::var("RUST_LOG").ok().as_deref());
                let fmt = tracing_subscriber::fmt::layer()
                    .with_writer(socket)
                    .with_ansi(false)
                    .without_time()
                    .with_target(false);
                let most = most_verbose(&targets);
                let _ = tracing_subscriber::registry()
                    .with(fmt.with_filter(targets))
                    .try_init();
                log::set_max_level(most);
                return;
            }
            Err(e) => eprintln!("virtiofsd-kr: --syslog: /dev/log: {e}; logging to stderr"),
        }
    }
    init(level)
}

/// Install the global subscriber. `RUST_LOG`, when set, replaces the level from the command
/// line.
pub fn init(level: LogLevel) {
    // fuse-backend-rs logs through `log`; forward those records into tracing, paced.
    bridge_log_records();
    let (targets, complaint) = filter(level, std::env::var("RUST_LOG").ok().as_deref());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let most = most_verbose(&targets);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(targets))
        .try_init();
    log::set_max_level(most);
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
    fn the_bridge_keeps_a_burst_at_its_level_then_demotes_and_says_so_once() {
        let bridge = PacedBridge::new();
        for _ in 0..PACE_BURST {
            assert_eq!(bridge.paced(log::Level::Error), (log::Level::Error, false));
        }
        assert_eq!(bridge.paced(log::Level::Warn), (log::Level::Debug, true));
        assert_eq!(bridge.paced(log::Level::Error), (log::Level::Debug, false));
        // Debug and trace records are not counted and pass as they are.
        assert_eq!(bridge.paced(log::Level::Trace), (log::Level::Trace, false));
        // A new window keeps a burst again.
        bridge.pace.lock().unwrap().window_start = Some(std::time::Instant::now() - PACE_WINDOW);
        assert_eq!(bridge.paced(log::Level::Error), (log::Level::Error, false));
    }

    #[test]
    fn the_flag_sets_the_level_without_rust_log() {
        let (t, complaint) = filter(LogLevel::Warn, None);
        assert!(complaint.is_none());
        assert!(t.would_enable("virtiofsd_kr::control::daemon", &Level::WARN));
        assert!(!t.would_enable("virtiofsd_kr::control::daemon", &Level::INFO));
    }

    #[test]
    fn rust_log_replaces_the_flag_per_target() {
        let (t, complaint) = filter(LogLevel::Info, Some("warn,fuse_backend_rs=debug"));
        assert!(complaint.is_none());
        assert!(t.would_enable("fuse_backend_rs::api::server", &Level::DEBUG));
        assert!(!t.would_enable("virtiofsd_kr::control::daemon", &Level::INFO));
    }

    #[test]
    fn log_records_stop_at_the_most_verbose_level_any_target_enables() {
        let most = |level, rust_log| most_verbose(&filter(level, rust_log).0);
        assert_eq!(most(LogLevel::Info, None), log::LevelFilter::Info);
        assert_eq!(most(LogLevel::Off, None), log::LevelFilter::Off);
        // One target more verbose than the default: its debug records must still get through.
        assert_eq!(
            most(LogLevel::Info, Some("warn,fuse_backend_rs=debug")),
            log::LevelFilter::Debug
        );
        assert_eq!(
            most(LogLevel::Info, Some("fuse_backend_rs=trace")),
            log::LevelFilter::Trace
        );
    }

    #[test]
    fn a_bad_rust_log_is_reported_and_the_flag_kept() {
        let (t, complaint) = filter(LogLevel::Info, Some("virtiofsd_kr=loud"));
        let complaint = complaint.expect("complaint");
        assert!(complaint.contains("RUST_LOG"), "{complaint}");
        assert!(t.would_enable("virtiofsd_kr::control::daemon", &Level::INFO));
        assert!(!t.would_enable("virtiofsd_kr::control::daemon", &Level::DEBUG));
    }

    #[test]
    fn syslog_lines_carry_facility_severity_and_tag() {
        use std::io::Write;
        use tracing_subscriber::fmt::MakeWriter;
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let sink = SyslogSocket {
            socket: ours,
            tag: "virtiofsd-kr[42]".to_string(),
        };
        for (line, want) in [
            (
                "ERROR disk on fire\n",
                "<27>virtiofsd-kr[42]: ERROR disk on fire",
            ),
            (
                " INFO Waiting for vhost-user socket connection...\n",
                "<30>virtiofsd-kr[42]: INFO Waiting for vhost-user socket connection...",
            ),
            ("DEBUG x", "<31>virtiofsd-kr[42]: DEBUG x"),
        ] {
            let mut w = sink.make_writer();
            w.write_all(line.as_bytes()).unwrap();
            drop(w);
            let mut buf = [0u8; 256];
            let n = theirs.recv(&mut buf).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), want);
        }
    }

    #[test]
    fn off_silences_everything() {
        let (t, _) = filter(LogLevel::Off, None);
        assert!(!t.would_enable("virtiofsd_kr::control::daemon", &Level::ERROR));
    }
}
