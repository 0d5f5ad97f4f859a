//! Per-tenant traffic accounting: meters at the FUSE boundary, rate limits, Prometheus
//! metrics with an admin endpoint, and a crash-safe journal of the totals.
//!
//! One daemon serves one tenant, volume and pod, so every counter of this process carries
//! the same labels. The pieces:
//!
//! * [`meter`]: atomic counters fed by `device` after each request (bytes read and written,
//!   requests by opcode, errors by errno, latency histograms), plus the DAX window's meters;
//! * [`limiter`]: token buckets for bytes/s and ops/s that `device` waits on before taking
//!   the next descriptor chain (backpressure, never an error);
//! * [`journal`]: cumulative totals appended at most every second with a checksum, replayed
//!   at start so counters continue after a crash;
//! * [`server`]: the Prometheus text endpoint and `PUT /limits`, on a current-thread tokio
//!   runtime in its own thread;
//! * [`report`]: `virtiofsd-kr accounting report`, summing a tenant's journals and RADOS
//!   records;
//! * [`rados_sink`]: `--accounting-rados POOL`, a shipper process that copies the journal's
//!   records into RADOS, and the reading side of reports.
//!
//! Start-up follows the sandbox's rules (see `daemon`): [`Prepared::prepare`] opens the
//! journal, forks the RADOS shipper and binds the metrics socket before the sandbox, while
//! the process has one thread; [`Prepared::start`] starts the threads once the process is
//! confined and under seccomp.

pub mod journal;
pub mod limiter;
pub mod meter;
pub mod metrics;
pub mod rados_sink;
pub mod report;
pub mod server;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::{info, warn};

use journal::{Journal, JournalError};
use limiter::{Limits, RateLimiter};
use meter::{MappedTraffic, Meter, Totals};
use server::{MetricsAddr, MetricsListener, ServerError};

/// How often the flush thread writes the journal (at most one record per interval).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    #[error("--accounting-dir: {0}")]
    Journal(#[from] JournalError),
    #[error("--metrics-addr: {0}")]
    Server(#[from] ServerError),
    #[error(transparent)]
    Rados(#[from] rados_sink::SinkError),
    #[error("starting the {which} thread: {source}")]
    Thread {
        which: &'static str,
        source: std::io::Error,
    },
}

/// Who this daemon's traffic belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub tenant: String,
    pub volume: String,
    pub pod: String,
    /// `internal` or `external`.
    pub traffic_class: String,
    /// Host name, recorded in journal records (not a metric label).
    pub host: String,
}

/// What the command line asks of accounting.
#[derive(Debug, Clone)]
pub struct Config {
    pub labels: Labels,
    pub limits: Limits,
    pub metrics_addr: Option<MetricsAddr>,
    pub accounting_dir: Option<PathBuf>,
    /// `--accounting-rados`: ship the journal's records to this pool (needs the journal).
    pub rados: Option<rados_sink::SinkConfig>,
}

/// The accounting state of one daemon, shared by the request path and the threads.
pub struct Accounting {
    pub labels: Labels,
    pub meter: Meter,
    pub limiter: RateLimiter,
    journal: Mutex<Option<Journal>>,
    journal_seq: AtomicU64,
    journal_failing: AtomicBool,
}

impl Accounting {
    /// Accounting without journal or server (tests, and the in-process parts of the daemon).
    pub fn new(
        labels: Labels,
        limits: Limits,
        base: Totals,
        mapped: Option<Arc<dyn MappedTraffic>>,
    ) -> Self {
        Accounting {
            labels,
            meter: Meter::new(base, mapped),
            limiter: RateLimiter::new(limits),
            journal: Mutex::new(None),
            journal_seq: AtomicU64::new(0),
            journal_failing: AtomicBool::new(false),
        }
    }

    /// Sequence of the last journal record written or replayed (0 without a journal).
    pub fn journal_seq(&self) -> u64 {
        self.journal_seq.load(Ordering::Relaxed)
    }

    /// Writes the current totals to the journal if they changed. Errors are logged once,
    /// then at debug level: serving goes on without durable counters rather than stopping.
    pub fn flush(&self) {
        let Ok(mut guard) = self.journal.lock() else {
            return;
        };
        let Some(journal) = guard.as_mut() else {
            return;
        };
        match journal.append(&self.meter.snapshot()) {
            Ok(_) => {
                self.journal_seq
                    .store(journal.last().seq, Ordering::Relaxed);
                if self.journal_failing.swap(false, Ordering::Relaxed) {
                    info!("accounting journal writable again");
                }
            }
            Err(e) => {
                if !self.journal_failing.swap(true, Ordering::Relaxed) {
                    warn!("accounting journal: {e} (counters stay in memory; retrying)");
                } else {
                    tracing::debug!("accounting journal: {e}");
                }
            }
        }
    }
}

/// The registered accounting, flushed once more when a termination signal ends the process.
static EXIT_FLUSH: OnceLock<Arc<Accounting>> = OnceLock::new();

/// Writes the last journal record before the process exits (signal thread, clean exit),
/// then lets the RADOS shipper, if any, ship it (waiting a bounded time).
pub fn flush_on_exit() {
    if let Some(acct) = EXIT_FLUSH.get() {
        acct.flush();
    }
    rados_sink::finish_on_exit();
}

/// Accounting set up before the sandbox, waiting for [`Prepared::start`].
pub struct Prepared {
    acct: Arc<Accounting>,
    listener: Option<MetricsListener>,
}

impl Prepared {
    /// Opens (replaying) the journal, starts the RADOS shipper and binds the metrics
    /// socket. Must run before the sandbox (it creates files and sockets, which the
    /// sandboxed process cannot) and while the process has one thread (the shipper is
    /// forked).
    pub fn prepare(
        config: Config,
        mapped: Option<Arc<dyn MappedTraffic>>,
    ) -> Result<Self, AccountingError> {
        let (journal, base) = match &config.accounting_dir {
            Some(dir) => {
                let (journal, base) = Journal::open(dir, &config.labels)?;
                info!(
                    journal = %journal.path().display(),
                    seq = journal.last().seq,
                    read_bytes = base.read_bytes,
                    written_bytes = base.written_bytes,
                    requests = base.total_requests(),
                    "accounting journal replayed"
                );
                (Some(journal), base)
            }
            None => (None, Totals::default()),
        };
        // Forked before the metrics socket exists (the shipper closes what it inherits
        // anyway). Without a journal there is nothing to ship (the CLI refuses that).
        if let (Some(sink), Some(j)) = (&config.rados, &journal) {
            rados_sink::ShipperLink::spawn(
                sink.clone(),
                j.path().to_path_buf(),
                config.labels.tenant.clone(),
            )?;
        }
        let listener = config
            .metrics_addr
            .as_ref()
            .map(MetricsListener::bind)
            .transpose()?;
        if let (Some(addr), Some(l)) = (&config.metrics_addr, &listener) {
            // Asked now: after seccomp the thread has no getsockname.
            match l.local_addr() {
                Some(bound) => info!(%bound, "metrics endpoint bound"),
                None => info!(%addr, "metrics endpoint bound"),
            }
        }
        let acct = Accounting::new(config.labels, config.limits, base, mapped);
        if let Some(j) = &journal {
            acct.journal_seq.store(j.last().seq, Ordering::Relaxed);
        }
        *acct.journal.lock().unwrap_or_else(|p| p.into_inner()) = journal;
        Ok(Prepared {
            acct: Arc::new(acct),
            listener,
        })
    }

    /// The shared accounting state (for the request path).
    pub fn accounting(&self) -> Arc<Accounting> {
        self.acct.clone()
    }

    /// Starts the journal flush thread and the metrics server thread. Call after the sandbox
    /// and seccomp are in place (the sandbox needs a single-threaded process).
    pub fn start(self) -> Result<Arc<Accounting>, AccountingError> {
        let has_journal = self
            .acct
            .journal
            .lock()
            .map(|j| j.is_some())
            .unwrap_or(false);
        if has_journal {
            let acct = self.acct.clone();
            std::thread::Builder::new()
                .name("vfs-journal".to_string())
                .spawn(move || {
                    // Fixed ticks, not "a second after the last flush": a slow fdatasync does
                    // not stretch the interval whose traffic a crash can lose.
                    let mut next = std::time::Instant::now() + FLUSH_INTERVAL;
                    loop {
                        std::thread::sleep(
                            next.saturating_duration_since(std::time::Instant::now()),
                        );
                        acct.flush();
                        next += FLUSH_INTERVAL;
                        let now = std::time::Instant::now();
                        if next < now {
                            next = now + FLUSH_INTERVAL;
                        }
                    }
                })
                .map_err(|source| AccountingError::Thread {
                    which: "journal",
                    source,
                })?;
            let _ = EXIT_FLUSH.set(self.acct.clone());
        }
        if let Some(listener) = self.listener {
            server::spawn(listener, self.acct.clone()).map_err(|source| {
                AccountingError::Thread {
                    which: "metrics",
                    source,
                }
            })?;
        }
        Ok(self.acct)
    }
}
