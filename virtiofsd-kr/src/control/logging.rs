//! Logging: `tracing` to stderr or syslog, with fuse-backend-rs's `log` records bridged in,
//! paced (a guest can make that crate log an error per request), and the warnings and errors
//! of our own code paced per call site (`PacedEvents`), so that no log line a guest can
//! repeat fills the host's log.
//!
//! Owns the global subscriber. Nothing here writes to stdout: stdout stays free for what a
//! caller asks for (`--print-capabilities`).
//!
//! The filter is `tracing_subscriber`'s `Targets` (`level` or `target=level`, comma
//! separated), not `EnvFilter`: the latter compiles regular expressions at start-up, which
//! costs every idle daemon a few hundred KiB of resident code and heap for span-field filters
//! nobody uses here.

use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
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

/// How many events of one kind a [`PACE_WINDOW`] keeps: `log` records (fuse-backend-rs's) at
/// info level or above all together, and the warnings and errors of each of our call sites.
const PACE_BURST: u32 = 10;
const PACE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// A `log` record's message is cut here (fuse-backend-rs puts a request's bytes in some).
const MAX_MESSAGE: usize = 1024;

/// What [`Pace::admit`] says of one more event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Within the window's burst; `dropped` events were held back in the window before
    /// (only said by the first event of a new window).
    Keep { dropped: u32 },
    /// The first event past the burst: hold it back, and say so once.
    FirstHeldBack,
    /// Past the burst: hold it back.
    HeldBack,
}

/// At most [`PACE_BURST`] events a [`PACE_WINDOW`], counting what it holds back.
#[derive(Debug, Default)]
struct Pace {
    window_start: Option<std::time::Instant>,
    kept: u32,
    held_back: u32,
}

impl Pace {
    fn admit(&mut self, now: std::time::Instant) -> Verdict {
        let expired = self.window_start.map_or(true, |start| {
            now.saturating_duration_since(start) >= PACE_WINDOW
        });
        if expired {
            let dropped = self.held_back;
            *self = Pace {
                window_start: Some(now),
                kept: 1,
                held_back: 0,
            };
            return Verdict::Keep { dropped };
        }
        if self.kept < PACE_BURST {
            self.kept += 1;
            return Verdict::Keep { dropped: 0 };
        }
        self.held_back = self.held_back.saturating_add(1);
        if self.held_back == 1 {
            Verdict::FirstHeldBack
        } else {
            Verdict::HeldBack
        }
    }
}

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
        match pace.admit(std::time::Instant::now()) {
            Verdict::Keep { .. } => (level, false),
            Verdict::FirstHeldBack => (log::Level::Debug, true),
            Verdict::HeldBack => (log::Level::Debug, false),
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

/// Writes a line beside the formatted events (a [`PacedEvents`] notice).
type NoticeSink = Box<dyn Fn(&str) + Send + Sync>;

/// Paces the warnings and errors of our own code, one call site at a time: at most
/// [`PACE_BURST`] of a call site reach the log in a [`PACE_WINDOW`]; the rest of the window's
/// are held back (dropped), with one line saying so and, with the site's next one after the
/// window, how many were. Whatever a guest can make happen once per request (a host error on
/// a request's path, a refused INIT or mapping) then costs the log ten lines a minute, and a
/// warning that is not guest-made is still logged the first times it happens. Info and more
/// verbose events pass unpaced: none is logged per request, and some come one per queue or
/// per volume, all of which belong in the log.
///
/// A per-layer filter, after the level filter ([`tracing_subscriber::filter::FilterExt::and`]),
/// so that only events that would be logged are counted. The notices are written directly to
/// the sink, not as events: an event from inside a filter would be filtered again.
struct PacedEvents {
    sites: std::sync::Mutex<std::collections::HashMap<tracing::callsite::Identifier, Pace>>,
    notice: NoticeSink,
}

impl PacedEvents {
    fn new(notice: NoticeSink) -> Self {
        PacedEvents {
            sites: std::sync::Mutex::new(std::collections::HashMap::new()),
            notice,
        }
    }

    /// Whether an event of `meta` is logged, writing the notices its verdict calls for.
    fn admit(&self, meta: &tracing::Metadata<'_>, now: std::time::Instant) -> bool {
        if *meta.level() > tracing::Level::WARN {
            return true;
        }
        let verdict = {
            let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
            sites.entry(meta.callsite()).or_default().admit(now)
        };
        let site = || match (meta.file(), meta.line()) {
            (Some(file), Some(line)) => format!("{file}:{line}"),
            _ => meta.name().to_string(),
        };
        match verdict {
            Verdict::Keep { dropped: 0 } => true,
            Verdict::Keep { dropped } => {
                (self.notice)(&format!(
                    "WARN {dropped} more messages from {} were dropped in the last {} s",
                    site(),
                    PACE_WINDOW.as_secs()
                ));
                true
            }
            Verdict::FirstHeldBack => {
                (self.notice)(&format!(
                    "WARN {PACE_BURST} messages from {} in {} s: the rest of this window's are \
                     dropped (a guest can cause one per request)",
                    site(),
                    PACE_WINDOW.as_secs()
                ));
                false
            }
            Verdict::HeldBack => false,
        }
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for PacedEvents {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.admit(event.metadata(), std::time::Instant::now())
    }
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
        self.to.send(severity, text);
    }
}

impl SyslogSocket {
    /// Sends one message of `severity` (RFC 5424 numbering).
    fn send(&self, severity: u8, text: &str) {
        let message = format!("<{}>{}: {text}", 24 + severity, self.tag);
        let _ = self.socket.send(message.as_bytes());
    }

    /// A second handle on the same socket, for [`PacedEvents`]' notices (warnings).
    fn notice_sink(&self) -> std::io::Result<NoticeSink> {
        let to = SyslogSocket {
            socket: self.socket.try_clone()?,
            tag: self.tag.clone(),
        };
        Ok(Box::new(move |line: &str| to.send(4, line)))
    }
}

/// Notices to stderr, beside the formatted events and laid out as they are (the time, then
/// the level and the message), so that whatever reads the log sees one more warning.
fn stderr_notices() -> NoticeSink {
    Box::new(|line: &str| {
        use std::io::Write;
        use tracing_subscriber::fmt::time::FormatTime;
        let mut time = String::new();
        let _ = tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut time));
        let _ = writeln!(std::io::stderr(), "{time}  {line}");
    })
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
                let notices = socket.notice_sink().unwrap_or_else(|_| stderr_notices());
                let fmt = tracing_subscriber::fmt::layer()
                    .with_writer(socket)
                    .with_ansi(false)
                    .without_time()
                    .with_target(false);
                let most = most_verbose(&targets);
                let _ = tracing_subscriber::registry()
                    .with(fmt.with_filter(targets.and(PacedEvents::new(notices))))
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
        .with(fmt.with_filter(targets.and(PacedEvents::new(stderr_notices()))))
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
    fn a_pace_keeps_a_burst_a_window_then_says_how_many_it_held_back() {
        let t0 = std::time::Instant::now();
        let mut pace = Pace::default();
        assert_eq!(pace.admit(t0), Verdict::Keep { dropped: 0 });
        for _ in 1..PACE_BURST {
            assert_eq!(pace.admit(t0), Verdict::Keep { dropped: 0 });
        }
        assert_eq!(pace.admit(t0), Verdict::FirstHeldBack);
        for _ in 0..4 {
            assert_eq!(pace.admit(t0 + PACE_WINDOW / 2), Verdict::HeldBack);
        }
        // The window's end: kept again, and the five held back are counted once.
        assert_eq!(pace.admit(t0 + PACE_WINDOW), Verdict::Keep { dropped: 5 });
        assert_eq!(pace.admit(t0 + PACE_WINDOW), Verdict::Keep { dropped: 0 });
        // A clock that goes back does not open a window early nor panic.
        assert_eq!(pace.admit(t0), Verdict::Keep { dropped: 0 });
    }

    /// A writer into a shared buffer, for the fmt layer.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[test]
    fn a_flood_from_one_call_site_is_cut_and_said_once_while_other_sites_pass() {
        let events = Captured::default();
        let notices = Captured::default();
        let to_notices = notices.clone();
        let sink: NoticeSink = Box::new(move |line: &str| {
            use std::io::Write;
            let _ = writeln!(to_notices.clone(), "{line}");
        });
        let writer = events.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time();
        let targets = Targets::new().with_default(LevelFilter::INFO);
        let subscriber = tracing_subscriber::registry()
            .with(fmt.with_filter(targets.and(PacedEvents::new(sink))));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..100 {
                tracing::warn!("flooding warning {i}");
                // Below the level filter: neither logged nor counted.
                tracing::debug!("quiet detail {i}");
                // Info lines are not paced (one a queue, one a volume).
                tracing::info!("a queue's totals {i}");
            }
            for i in 0..3 {
                tracing::error!("another site {i}");
            }
            for i in 0..30 {
                tracing::error!("an error flood {i}");
            }
        });
        let text = events.text();
        let count = |what: &str| text.lines().filter(|l| l.contains(what)).count();
        assert_eq!(count("flooding warning"), PACE_BURST as usize, "{text}");
        assert!(text.contains("flooding warning 9") && !text.contains("flooding warning 10"));
        assert_eq!(count("another site"), 3, "{text}");
        assert_eq!(count("an error flood"), PACE_BURST as usize, "{text}");
        assert_eq!(count("quiet detail"), 0, "{text}");
        assert_eq!(count("a queue's totals"), 100, "{text}");
        let notices = notices.text();
        assert_eq!(
            notices.lines().count(),
            2,
            "one notice per flooding site: {notices}"
        );
        assert!(
            notices
                .lines()
                .all(|l| l.starts_with("WARN 10 messages from ")
                    && l.contains("logging.rs:")
                    && l.contains("dropped")),
            "{notices}"
        );
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
