//! Per-daemon traffic meters at the FUSE boundary: bytes, requests by opcode, errors by errno
//! and a latency histogram per opcode.
//!
//! Owns the live counters and their snapshots ([`Totals`]). The hot path ([`Meter::record`])
//! is a handful of relaxed atomic adds into fixed arrays: no allocation, no lock. Totals
//! replayed from the journal are kept as a base that every snapshot adds, so a restarted
//! daemon continues where the last flushed record stopped. It must not decide what a request
//! moved (`device` tells it) nor write anything anywhere (`journal`, `server`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Opcodes are metered in slots `0..OPCODE_SLOTS`; an opcode outside (never a known one) is
/// counted in slot 0 (`unknown`).
pub const OPCODE_SLOTS: usize = 64;
/// Errnos are metered in slots `1..ERRNO_SLOTS`; anything else in slot 0 (`other`).
pub const ERRNO_SLOTS: usize = 160;
/// Upper bounds of the latency histogram buckets, in microseconds; a last bucket is +Inf.
pub const LATENCY_BOUNDS_US: [u64; 14] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000, 10_000_000,
];
/// Histogram buckets including +Inf.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// What one served request moved, as the device saw it in the reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// FUSE opcode of the request.
    pub opcode: u32,
    /// Data bytes returned to the guest (READ payload).
    pub read_bytes: u64,
    /// Data bytes taken from the guest and written (WRITE).
    pub written_bytes: u64,
    /// Positive errno of an error reply, 0 on success.
    pub errno: i32,
}

/// Cumulative counters: a snapshot, a journal record's payload, or a report's sum.
///
/// Maps are sparse (only non-zero entries) so records stay small.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Requests by opcode.
    #[serde(default)]
    pub requests: BTreeMap<u32, u64>,
    /// Error replies by errno (0: errno outside the metered range).
    #[serde(default)]
    pub errors: BTreeMap<i32, u64>,
    /// Latency bucket counts by opcode (not cumulative; `LATENCY_BUCKETS` entries).
    #[serde(default)]
    pub latency: BTreeMap<u32, Vec<u64>>,
    /// Sum of latencies by opcode, in nanoseconds.
    #[serde(default)]
    pub latency_sum_ns: BTreeMap<u32, u64>,
    #[serde(default)]
    pub dax_map_ops: u64,
    #[serde(default)]
    pub dax_mapped_bytes: u64,
    #[serde(default)]
    pub dax_unmap_ops: u64,
    #[serde(default)]
    pub dax_unmapped_bytes: u64,
    /// Time the request queue waited for the rate limiter, in nanoseconds.
    #[serde(default)]
    pub throttled_ns: u64,
}

impl Totals {
    /// Adds `other` into `self` (saturating: a corrupt input cannot wrap a total).
    pub fn add(&mut self, other: &Totals) {
        self.read_bytes = self.read_bytes.saturating_add(other.read_bytes);
        self.written_bytes = self.written_bytes.saturating_add(other.written_bytes);
        for (k, v) in &other.requests {
            let e = self.requests.entry(*k).or_default();
            *e = e.saturating_add(*v);
        }
        for (k, v) in &other.errors {
            let e = self.errors.entry(*k).or_default();
            *e = e.saturating_add(*v);
        }
        for (k, v) in &other.latency {
            let e = self.latency.entry(*k).or_default();
            if e.len() < v.len() {
                e.resize(v.len(), 0);
            }
            for (slot, add) in e.iter_mut().zip(v) {
                *slot = slot.saturating_add(*add);
            }
        }
        for (k, v) in &other.latency_sum_ns {
            let e = self.latency_sum_ns.entry(*k).or_default();
            *e = e.saturating_add(*v);
        }
        self.dax_map_ops = self.dax_map_ops.saturating_add(other.dax_map_ops);
        self.dax_mapped_bytes = self.dax_mapped_bytes.saturating_add(other.dax_mapped_bytes);
        self.dax_unmap_ops = self.dax_unmap_ops.saturating_add(other.dax_unmap_ops);
        self.dax_unmapped_bytes = self
            .dax_unmapped_bytes
            .saturating_add(other.dax_unmapped_bytes);
        self.throttled_ns = self.throttled_ns.saturating_add(other.throttled_ns);
    }

    /// All requests, every opcode.
    pub fn total_requests(&self) -> u64 {
        self.requests
            .values()
            .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

fn zeroed<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// Traffic that bypasses the FUSE path because the guest reaches host memory mapped for it
/// (a DAX window): the meter reports these counters beside its own. Accounting knows this
/// trait only, not the device that implements it.
pub trait MappedTraffic: Send + Sync {
    /// Mappings made and bytes mapped, unmappings and bytes unmapped, so far.
    fn mapped_traffic(&self) -> MappedCounts;
}

/// What a [`MappedTraffic`] source reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MappedCounts {
    pub map_ops: u64,
    pub mapped_bytes: u64,
    pub unmap_ops: u64,
    pub unmapped_bytes: u64,
}

/// The live counters of one daemon.
pub struct Meter {
    base: Totals,
    mapped: Option<Arc<dyn MappedTraffic>>,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    requests: [AtomicU64; OPCODE_SLOTS],
    errors: [AtomicU64; ERRNO_SLOTS],
    latency: Box<[[AtomicU64; LATENCY_BUCKETS]; OPCODE_SLOTS]>,
    latency_sum_ns: [AtomicU64; OPCODE_SLOTS],
    throttled_ns: AtomicU64,
}

impl Meter {
    /// A meter that starts from `base` (the last journal record, or zeros) and also reports
    /// the counters of mapped traffic (the DAX window) when there is some.
    pub fn new(base: Totals, mapped: Option<Arc<dyn MappedTraffic>>) -> Self {
        Meter {
            base,
            mapped,
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            requests: zeroed(),
            errors: zeroed(),
            latency: Box::new(std::array::from_fn(|_| zeroed())),
            latency_sum_ns: zeroed(),
            throttled_ns: AtomicU64::new(0),
        }
    }

    /// Counts one request (hot path: relaxed atomic adds only).
    pub fn record(&self, outcome: &Outcome, elapsed: Duration) {
        let op = opcode_slot(outcome.opcode);
        self.requests[op].fetch_add(1, Ordering::Relaxed);
        if outcome.read_bytes != 0 {
            self.read_bytes
                .fetch_add(outcome.read_bytes, Ordering::Relaxed);
        }
        if outcome.written_bytes != 0 {
            self.written_bytes
                .fetch_add(outcome.written_bytes, Ordering::Relaxed);
        }
        if outcome.errno != 0 {
            self.errors[errno_slot(outcome.errno)].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let micros = nanos / 1_000;
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|bound| micros < *bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.latency[op][bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns[op].fetch_add(nanos, Ordering::Relaxed);
    }

    /// Adds time the queue spent waiting for the rate limiter.
    pub fn add_throttled(&self, waited: Duration) {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.throttled_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Base plus everything counted since start, plus the DAX window's counters.
    pub fn snapshot(&self) -> Totals {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut live = Totals {
            read_bytes: load(&self.read_bytes),
            written_bytes: load(&self.written_bytes),
            throttled_ns: load(&self.throttled_ns),
            ..Totals::default()
        };
        for (op, count) in self.requests.iter().enumerate() {
            let n = load(count);
            if n != 0 {
                live.requests.insert(op as u32, n);
                let buckets: Vec<u64> = self.latency[op].iter().map(load).collect();
                live.latency.insert(op as u32, buckets);
                live.latency_sum_ns
                    .insert(op as u32, load(&self.latency_sum_ns[op]));
            }
        }
        for (errno, count) in self.errors.iter().enumerate() {
            let n = load(count);
            if n != 0 {
                live.errors.insert(errno as i32, n);
            }
        }
        if let Some(source) = &self.mapped {
            let d = source.mapped_traffic();
            live.dax_map_ops = d.map_ops;
            live.dax_mapped_bytes = d.mapped_bytes;
            live.dax_unmap_ops = d.unmap_ops;
            live.dax_unmapped_bytes = d.unmapped_bytes;
        }
        let mut total = self.base.clone();
        total.add(&live);
        total
    }
}

fn opcode_slot(opcode: u32) -> usize {
    let slot = opcode as usize;
    if slot < OPCODE_SLOTS {
        slot
    } else {
        0
    }
}

fn errno_slot(errno: i32) -> usize {
    match usize::try_from(errno) {
        Ok(slot) if slot < ERRNO_SLOTS => slot,
        _ => 0,
    }
}

/// The FUSE name of an opcode, for labels (`unknown` for holes and slot 0).
pub fn opcode_name(opcode: u32) -> &'static str {
    const NAMES: [&str; 52] = [
        "unknown",
        "LOOKUP",
        "FORGET",
        "GETATTR",
        "SETATTR",
        "READLINK",
        "SYMLINK",
        "unknown",
        "MKNOD",
        "MKDIR",
        "UNLINK",
        "RMDIR",
        "RENAME",
        "LINK",
        "OPEN",
        "READ",
        "WRITE",
        "STATFS",
        "RELEASE",
        "unknown",
        "FSYNC",
        "SETXATTR",
        "GETXATTR",
        "LISTXATTR",
        "REMOVEXATTR",
        "FLUSH",
        "INIT",
        "OPENDIR",
        "READDIR",
        "RELEASEDIR",
        "FSYNCDIR",
        "GETLK",
        "SETLK",
        "SETLKW",
        "ACCESS",
        "CREATE",
        "INTERRUPT",
        "BMAP",
        "DESTROY",
        "IOCTL",
        "POLL",
        "NOTIFY_REPLY",
        "BATCH_FORGET",
        "FALLOCATE",
        "READDIRPLUS",
        "RENAME2",
        "LSEEK",
        "COPY_FILE_RANGE",
        "SETUPMAPPING",
        "REMOVEMAPPING",
        "SYNCFS",
        "TMPFILE",
    ];
    NAMES.get(opcode as usize).copied().unwrap_or("unknown")
}

/// The symbolic name of an errno, for labels (`E<number>` when not in the table; `other`
/// for slot 0).
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        0 => "other",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EDQUOT => "EDQUOT",
        libc::ESTALE => "ESTALE",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(opcode: u32, read: u64, written: u64, errno: i32) -> Outcome {
        Outcome {
            opcode,
            read_bytes: read,
            written_bytes: written,
            errno,
        }
    }

    #[test]
    fn counts_add_up_and_continue_from_the_base() {
        let mut base = Totals {
            read_bytes: 100,
            written_bytes: 7,
            ..Totals::default()
        };
        base.requests.insert(15, 2);
        let meter = Meter::new(base, None);
        meter.record(&outcome(15, 4096, 0, 0), Duration::from_micros(30));
        meter.record(&outcome(16, 0, 512, 0), Duration::from_millis(2));
        meter.record(&outcome(1, 0, 0, libc::ENOENT), Duration::from_micros(5));
        meter.record(&outcome(4242, 0, 0, 99999), Duration::from_secs(20));
        let t = meter.snapshot();
        assert_eq!(t.read_bytes, 4196);
        assert_eq!(t.written_bytes, 519);
        assert_eq!(t.requests[&15], 3);
        assert_eq!(t.requests[&16], 1);
        assert_eq!(t.requests[&0], 1, "an out-of-range opcode lands in slot 0");
        assert_eq!(t.errors[&libc::ENOENT], 1);
        assert_eq!(t.errors[&0], 1, "an out-of-range errno lands in slot 0");
        assert_eq!(t.total_requests(), 6);
        // 30 us falls in the (25, 50] bucket; 20 s in +Inf.
        assert_eq!(t.latency[&15][2], 1);
        assert_eq!(t.latency[&0][LATENCY_BUCKETS - 1], 1);
        assert_eq!(t.latency_sum_ns[&16], 2_000_000);
    }

    #[test]
    fn names_cover_the_table() {
        assert_eq!(opcode_name(15), "READ");
        assert_eq!(opcode_name(16), "WRITE");
        assert_eq!(opcode_name(49), "REMOVEMAPPING");
        assert_eq!(opcode_name(7), "unknown");
        assert_eq!(opcode_name(5000), "unknown");
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(133), "E133");
    }

    #[test]
    fn totals_add_saturates() {
        let mut a = Totals {
            read_bytes: u64::MAX - 1,
            ..Totals::default()
        };
        a.latency.insert(1, vec![1, 2]);
        let mut b = Totals {
            read_bytes: 5,
            ..Totals::default()
        };
        b.latency.insert(1, vec![1, 1, 1]);
        a.add(&b);
        assert_eq!(a.read_bytes, u64::MAX);
        assert_eq!(a.latency[&1], vec![2, 3, 1]);
    }
}
