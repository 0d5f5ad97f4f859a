//! The RADOS accounting sink (`--accounting-rados POOL`): this pod's journal records,
//! copied into a Ceph pool by a separate "shipper" process, and read back for reports.
//!
//! Owns the RADOS layout and the shipper's life:
//!
//! * **Keys**: a tenant's records live in the RADOS namespace named after the tenant; each
//!   counter stream (one journal, see `journal`) is one object, [`object_name`]
//!   `acct.<STREAM>`, holding the stream's latest record in the journal's own framing
//!   (magic, length, CRC-32, JSON). Records carry cumulative totals, so the object is
//!   overwritten, never appended to, and a report sums one record per stream: re-shipping a
//!   record, a shipper restarted after a crash, or two shippers racing cannot count anything
//!   twice. Writes are guarded by the object's `virtiofsd-kr.seq` xattr
//!   ([`IoCtx::write_full_if_newer`]): an older record never replaces a newer one.
//! * **The shipper**: librados starts threads, and the serving process must stay
//!   single-threaded until the sandbox is entered and then has neither sockets nor the
//!   accounting directory. So [`ShipperLink::spawn`] forks, while the process still has one
//!   thread and before the sandbox, a child that stays in the host's namespaces with no
//!   seccomp filter. The child closes every inherited descriptor but its two pipes, keeps
//!   no capability but `CAP_DAC_READ_SEARCH`, and in a worker thread connects and every
//!   [`super::FLUSH_INTERVAL`] ships the journal's last record if it changed; its main
//!   thread only listens to the daemon. Only the child ever talks to RADOS, so the daemon
//!   is never blocked or slowed by the cluster.
//! * **Failures**: an unreachable cluster, refused key or missing pool is logged once as a
//!   warning; the shipper retries with a backoff (1 s doubling to 60 s) and logs when it
//!   ships again. The journal on disk stays the source of truth, so nothing is lost, only
//!   late. A panic in a pass is caught and the pass retried later.
//! * **Exit**: the daemon's last journal record is written first (`flush_on_exit`), then
//!   [`finish_on_exit`] tells the shipper to do a last pass and waits for its answer for at
//!   most [`EXIT_WAIT`] (not at all if the cluster was already failing). If the daemon
//!   dies without that (`kill -9`), the shipper sees its control pipe close and does the
//!   same last pass. Either way it exits within [`LAST_PASS_LIMIT`].
//!
//! Must not: run librados in the serving process, fork once threads exist, or decide what is
//! metered (it ships what the journal holds).

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cephfs_backend::rados::{IoCtx, Rados, RadosError};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use tracing::{debug, info, warn};

use super::journal::{self, Record};
use super::report::Report;

/// Prefix of the objects holding a stream's record (`acct.<STREAM>`).
pub const OBJECT_PREFIX: &str = "acct.";
/// The xattr keeping an object's record sequence, for guarded writes.
pub const SEQ_XATTR: &str = "virtiofsd-kr.seq";
/// Bounds connecting and every RADOS operation of the shipper and the report.
pub const RADOS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon waits at exit for the shipper's last pass.
pub const EXIT_WAIT: Duration = Duration::from_secs(5);
/// The shipper exits at most this long after it was told to finish (or its daemon died).
pub const LAST_PASS_LIMIT: Duration = Duration::from_secs(20);
/// Backoff between failed attempts: from the first to the last value, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
/// The journal's tail read each pass (the last record is normally in it).
const TAIL_BYTES: u64 = 64 << 10;

/// The daemon's last words to the shipper: do a last pass and answer.
const FINISH: u8 = b'F';
/// The shipper's answer: last pass done.
const DONE: u8 = b'D';

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(
        "--accounting-rados: the RADOS shipper must be started while the process has one \
         thread (it has {0})"
    )]
    Threaded(usize),
    #[error("--accounting-rados: starting the RADOS shipper: {op}: {source}")]
    Spawn {
        op: &'static str,
        source: nix::Error,
    },
    #[error("RADOS pool {pool:?}, tenant {tenant:?}: {source}")]
    Rados {
        pool: String,
        tenant: String,
        source: Box<RadosError>,
    },
}

/// Where the records go and as whom (`--accounting-rados POOL`, `--ceph-conf`, `--ceph-id`,
/// `--ceph-keyring`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    pub pool: String,
    pub conf: PathBuf,
    pub id: String,
    pub keyring: PathBuf,
}

impl SinkConfig {
    /// Connects and opens the tenant's namespace of the pool.
    pub fn open(&self, tenant: &str) -> Result<IoCtx, SinkError> {
        let err = |source| SinkError::Rados {
            pool: self.pool.clone(),
            tenant: tenant.to_string(),
            source: Box::new(source),
        };
        let rados =
            Rados::connect(&self.conf, &self.id, &self.keyring, RADOS_TIMEOUT).map_err(err)?;
        rados.ioctx(&self.pool, tenant).map_err(err)
    }
}

/// The object holding `stream`'s latest record (in its tenant's namespace).
pub fn object_name(stream: &str) -> String {
    format!("{OBJECT_PREFIX}{stream}")
}

/// Stores `record` as its stream's latest, unless the object already holds that sequence or
/// a later one. Returns whether it was written. `io` must be the record's tenant namespace.
pub fn store(io: &IoCtx, record: &Record) -> Result<bool, RadosError> {
    let bytes = journal::encode(record).map_err(|e| RadosError::Object {
        op: "encode",
        pool: io.pool().to_string(),
        namespace: io.namespace().to_string(),
        object: object_name(&record.stream),
        source: std::io::Error::other(e.to_string()),
    })?;
    io.write_full_if_newer(&object_name(&record.stream), SEQ_XATTR, record.seq, &bytes)
}

/// Adds the records `io`'s namespace (a tenant) holds to `report`, each stream once (the
/// report keeps the highest sequence per stream, whatever else it was given). Objects that
/// are not records (no `acct.` prefix) are left alone; unreadable or corrupt ones are listed
/// in `report.skipped`.
pub fn add_to_report(report: &mut Report, io: &IoCtx, tenant: &str) -> Result<(), RadosError> {
    let mut names: Vec<String> = io
        .list()?
        .into_iter()
        .filter(|n| n.starts_with(OBJECT_PREFIX))
        .collect();
    names.sort();
    for name in names {
        let source = format!("rados:{}/{}/{name}", io.pool(), io.namespace());
        let bytes = match io.read(&name) {
            Ok(b) => b,
            // Removed between the listing and the read: nothing to count.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        report.rados_objects.push(source.clone());
        let replay = journal::decode_all(&bytes);
        for (offset, reason) in replay.corrupt {
            warn!(object = %source, offset, "skipping corrupt record: {reason}");
            report
                .skipped
                .push((source.clone(), format!("offset {offset}: {reason}")));
        }
        let Some(record) = replay.last else { continue };
        if object_name(&record.stream) != name {
            report.skipped.push((
                source,
                format!("holds stream {} (not this object's)", record.stream),
            ));
            continue;
        }
        report.add_record(tenant, record);
    }
    Ok(())
}

/// The daemon's end of a running shipper.
#[derive(Debug)]
pub struct ShipperLink {
    pid: nix::unistd::Pid,
    /// Write end: [`FINISH`] asks for the last pass; closing it (the daemon gone) does too.
    control: OwnedFd,
    /// Read end (non-blocking): [`DONE`] once the last pass is over.
    done: OwnedFd,
}

/// The running shipper, told to finish by [`finish_on_exit`].
static SHIPPER: OnceLock<ShipperLink> = OnceLock::new();

/// Tells the shipper (if any) to ship the journal's last record and waits up to
/// [`EXIT_WAIT`]. Call after the journal's last record is written. Uses only `write`,
/// `read` and `nanosleep`, so it works under the daemon's seccomp filter.
pub fn finish_on_exit() {
    if let Some(link) = SHIPPER.get() {
        link.finish(EXIT_WAIT);
    }
}

fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

impl ShipperLink {
    /// Forks the shipper for the journal at `journal_path` of `tenant` and registers it for
    /// [`finish_on_exit`]. Must run while the process has one thread, before the sandbox.
    pub fn spawn(
        config: SinkConfig,
        journal_path: PathBuf,
        tenant: String,
    ) -> Result<(), SinkError> {
        if let Some(n) = thread_count().filter(|n| *n > 1) {
            return Err(SinkError::Threaded(n));
        }
        let sys = |op| move |source| SinkError::Spawn { op, source };
        let (control_r, control_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
        let (done_r, done_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(sys("pipe2"))?;
        // SAFETY: the process has a single thread (checked above), so the child is a
        // complete copy and may run any code; the child branch never returns.
        match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
            nix::unistd::ForkResult::Parent { child } => {
                drop((control_r, done_w));
                info!(
                    pid = child.as_raw(),
                    pool = %config.pool,
                    "RADOS accounting shipper started"
                );
                let link = ShipperLink {
                    pid: child,
                    control: control_w,
                    done: done_r,
                };
                // A second registration (never done by the daemon) would leave it unfinished:
                // it still ends when its control pipe closes.
                let _ = SHIPPER.set(link);
                Ok(())
            }
            nix::unistd::ForkResult::Child => {
                drop((control_w, done_r));
                shipper_main(config, journal_path, tenant, control_r, done_w)
            }
        }
    }

    /// The shipper's process id.
    pub fn pid(&self) -> nix::unistd::Pid {
        self.pid
    }

    /// Asks for the last pass and waits for it, at most `wait`. Returns whether it finished.
    pub fn finish(&self, wait: Duration) -> bool {
        if nix::unistd::write(&self.control, &[FINISH]).is_err() {
            // EPIPE: the shipper is gone already.
            return true;
        }
        let deadline = Instant::now() + wait;
        let mut byte = [0u8; 1];
        loop {
            match nix::unistd::read(self.done.as_raw_fd(), &mut byte) {
                Ok(_) => return true, // DONE, or EOF: the shipper exited.
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return true,
            }
            if Instant::now() >= deadline {
                warn!(
                    "the RADOS accounting shipper did not finish within {wait:?}; exiting \
                     without it"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The shipper process. Never returns.
///
/// Two threads: this one only listens to the daemon (so it can answer at once), a worker
/// does the passes (and may sit in a librados call for up to [`RADOS_TIMEOUT`]).
fn shipper_main(
    config: SinkConfig,
    journal_path: PathBuf,
    tenant: String,
    control: OwnedFd,
    done: OwnedFd,
) -> ! {
    close_inherited_fds(&[control.as_raw_fd(), done.as_raw_fd()]);
    let _ = nix::sys::prctl::set_name(c"vfs-rados");
    // Before any thread exists: capabilities are per thread and inherited.
    drop_capabilities();
    let failing = Arc::new(AtomicBool::new(false));
    let (finish_tx, finish_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker_failing = failing.clone();
    let worker = std::thread::Builder::new()
        .name("vfs-rados-ship".to_string())
        .spawn(move || {
            let mut shipper = Shipper::new(config, journal_path, tenant, worker_failing);
            // A pass at once (connecting, so a wrong key or pool shows at start), then one
            // per interval until the daemon says it is finishing.
            while let Err(RecvTimeoutError::Timeout) = {
                shipper.pass_caught(false);
                finish_rx.recv_timeout(super::FLUSH_INTERVAL)
            } {}
            shipper.pass_caught(true);
            drop(shipper);
            let _ = done_tx.send(());
        });
    if let Err(e) = worker {
        warn!("accounting RADOS sink: no shipping thread ({e}); nothing is shipped");
        // SAFETY: _exit ends this process at once; the daemon's journal keeps every record.
        unsafe { libc::_exit(1) }
    }
    // FINISH, or EOF once every copy of the write end is closed (the daemon is gone).
    loop {
        let mut fds = [PollFd::new(control.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) | Err(_) => break,
        }
    }
    let _ = finish_tx.send(());
    if failing.load(Ordering::Relaxed) {
        // Do not hold the daemon's exit for a cluster that is not answering.
        let _ = nix::unistd::write(&done, &[DONE]);
    }
    // Bounded, whatever librados does in the worker.
    let _ = done_rx.recv_timeout(LAST_PASS_LIMIT);
    let _ = nix::unistd::write(&done, &[DONE]);
    // SAFETY: _exit ends the process without the atexit handlers inherited from the daemon
    // and without waiting for a worker that may still sit in librados.
    unsafe { libc::_exit(0) }
}

/// Narrows the shipper to reading files (the journal, the conf and keyring whoever owns
/// them): it parses what the network sends and needs no other privilege. Failures are
/// logged, not fatal: the shipper is no more privileged than the daemon that forked it.
fn drop_capabilities() {
    use caps::{CapSet, Capability, CapsHashSet};
    let keep: CapsHashSet = [Capability::CAP_DAC_READ_SEARCH]
        .into_iter()
        .filter(|c| caps::has_cap(None, CapSet::Permitted, *c).unwrap_or(false))
        .collect();
    // Effective first: it must stay within the permitted set at every step.
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        if let Err(e) = caps::set(None, set, &keep) {
            warn!("accounting RADOS shipper: narrowing capabilities ({set:?}): {e}");
        }
    }
    if let Err(e) = caps::clear(None, CapSet::Ambient) {
        debug!("accounting RADOS shipper: clearing ambient capabilities: {e}");
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        warn!("accounting RADOS shipper: PR_SET_NO_NEW_PRIVS: {e}");
    }
}

/// Closes every descriptor but 0, 1, 2 and `keep`: the daemon's sockets, journal and
/// listener must not stay open in the shipper.
fn close_inherited_fds(keep: &[i32]) {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // EBADF for the listing's own descriptor, already closed: fine.
            let _ = nix::unistd::close(fd);
        }
    }
}

/// Identity of the journal file's content as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

/// The shipper's state.
struct Shipper {
    config: SinkConfig,
    journal: PathBuf,
    tenant: String,
    io: Option<IoCtx>,
    stamp: Option<FileStamp>,
    /// The newest record read from the journal and not yet stored.
    pending: Option<Record>,
    /// Stream and sequence of the last record stored (or found already stored).
    shipped: Option<(String, u64)>,
    failing: bool,
    /// `failing`, seen by the thread that answers the daemon.
    failing_flag: Arc<AtomicBool>,
    backoff: Duration,
    next_try: Instant,
}

impl Shipper {
    fn new(
        config: SinkConfig,
        journal: PathBuf,
        tenant: String,
        failing_flag: Arc<AtomicBool>,
    ) -> Self {
        Shipper {
            config,
            journal,
            tenant,
            io: None,
            stamp: None,
            pending: None,
            shipped: None,
            failing: false,
            failing_flag,
            backoff: BACKOFF.0,
            next_try: Instant::now(),
        }
    }

    /// One pass, with a panic turned into a failure (retried after the backoff).
    fn pass_caught(&mut self, last: bool) {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.pass(last)));
        if caught.is_err() {
            self.io = None;
            self.stamp = None;
            self.failed("a shipping pass panicked".to_string());
        }
    }

    /// Reads the journal if it changed and stores its last record if it is new. `last`: the
    /// final pass, which ignores the backoff.
    fn pass(&mut self, last: bool) {
        if let Some(record) = self.read_if_changed() {
            let newer = |seen: Option<(&str, u64)>| {
                seen.map_or(true, |(stream, seq)| {
                    stream != record.stream || record.seq > seq
                })
            };
            let pending = self.pending.as_ref().map(|r| (r.stream.as_str(), r.seq));
            let shipped = self.shipped.as_ref().map(|(s, q)| (s.as_str(), *q));
            if newer(pending) && newer(shipped) {
                self.pending = Some(record);
            }
        }
        if !last && Instant::now() < self.next_try {
            return;
        }
        // Connected from the first pass, so a wrong key or pool shows at start.
        if self.io.is_none() {
            match self.config.open(&self.tenant) {
                // Not yet "recovered": only a stored record says the sink works again.
                Ok(io) => self.io = Some(io),
                Err(e) => return self.failed(e.to_string()),
            }
        }
        let (Some(io), Some(record)) = (&self.io, &self.pending) else {
            return;
        };
        match store(io, record) {
            Ok(written) => {
                debug!(
                    stream = %record.stream,
                    seq = record.seq,
                    written,
                    "accounting record shipped to RADOS"
                );
                self.shipped = Some((record.stream.clone(), record.seq));
                self.pending = None;
                self.recovered("shipping again");
            }
            Err(e) => {
                // Reconnect next time: the pool may have been recreated, or the key changed.
                self.io = None;
                self.failed(e.to_string());
            }
        }
    }

    fn recovered(&mut self, what: &str) {
        if self.failing {
            info!(pool = %self.config.pool, "accounting RADOS sink: {what}");
        }
        self.failing = false;
        self.failing_flag.store(false, Ordering::Relaxed);
        self.backoff = BACKOFF.0;
    }

    fn failed(&mut self, reason: String) {
        // Flagged before the warning, so whoever sees the warning sees the flag too.
        self.failing_flag.store(true, Ordering::Relaxed);
        if !self.failing {
            warn!(
                pool = %self.config.pool,
                "accounting RADOS sink: {reason} (the records stay in the journal; retrying \
                 with backoff)"
            );
        } else {
            debug!("accounting RADOS sink: {reason}");
        }
        self.failing = true;
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF.1);
    }

    /// The journal's last valid record, if the file changed since the last read.
    fn read_if_changed(&mut self) -> Option<Record> {
        let meta = match std::fs::metadata(&self.journal) {
            Ok(m) => m,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    debug!(journal = %self.journal.display(), "accounting RADOS sink: {e}");
                }
                return None;
            }
        };
        let stamp = FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        };
        if self.stamp == Some(stamp) {
            return None;
        }
        match last_record(&self.journal) {
            Ok(record) => {
                self.stamp = Some(stamp);
                record
            }
            Err(e) => {
                debug!(journal = %self.journal.display(), "accounting RADOS sink: {e}");
                None
            }
        }
    }
}

/// The last valid record of a journal: from its tail when the tail holds one, else from the
/// whole file.
fn last_record(path: &Path) -> std::io::Result<Option<Record>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > TAIL_BYTES {
        file.seek(SeekFrom::Start(len - TAIL_BYTES))?;
        let mut tail = Vec::with_capacity(TAIL_BYTES as usize);
        file.by_ref().take(TAIL_BYTES).read_to_end(&mut tail)?;
        // A record cut by the window's start fails its checksum and is skipped.
        if let Some(record) = journal::decode_all(&tail).last {
            return Ok(Some(record));
        }
        file.seek(SeekFrom::Start(0))?;
    }
    let mut all = Vec::new();
    file.read_to_end(&mut all)?;
    Ok(journal::decode_all(&all).last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::journal::Journal;
    use crate::accounting::meter::Totals;
    use crate::accounting::Labels;

    #[test]
    fn the_last_record_is_found_in_the_tail_or_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let labels = Labels {
            tenant: "acme".into(),
            volume: "v".into(),
            pod: "p".into(),
            traffic_class: "internal".into(),
            host: "h".into(),
        };
        let (mut j, _) = Journal::open(dir.path(), &labels).unwrap();
        assert_eq!(last_record(j.path()).unwrap(), None, "empty journal");
        // Enough records to pass the tail window several times over.
        let mut n = 0;
        while std::fs::metadata(j.path()).unwrap().len() < 3 * TAIL_BYTES {
            n += 1;
            j.append(&Totals {
                read_bytes: n,
                ..Totals::default()
            })
            .unwrap();
        }
        let last = last_record(j.path()).unwrap().unwrap();
        assert_eq!((last.seq, last.totals.read_bytes), (n, n));
        // A torn record at the end (a write in progress) is skipped.
        let mut bytes = std::fs::read(j.path()).unwrap();
        bytes.extend_from_slice(b"VKAJ\x40\x00\x00\x00\x00\x00\x00\x00{\"vers");
        std::fs::write(j.path(), &bytes).unwrap();
        assert_eq!(last_record(j.path()).unwrap().unwrap().seq, n);
        // A single record larger than the window is read from the whole file.
        let big = Totals {
            requests: (0..20_000u32).map(|i| (i, u64::from(i))).collect(),
            ..Totals::default()
        };
        j.append(&big).unwrap();
        let last = last_record(j.path()).unwrap().unwrap();
        assert_eq!(last.seq, n + 1);
        assert_eq!(last.totals.requests.len(), 20_000);
        assert!(journal::encode(&last).unwrap().len() as u64 > TAIL_BYTES);
    }

    #[test]
    fn object_names_depend_on_the_stream_only() {
        assert_eq!(object_name("0123abcd"), "acct.0123abcd");
    }
}
