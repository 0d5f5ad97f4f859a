//! The accounting journal: an append-only file of checksummed records of cumulative totals.
//!
//! Owns the on-disk format, replay and compaction. A record is
//! `magic "VKAJ" | payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload (JSON)`;
//! the payload carries a stream id, a sequence number that only grows, the labels and the
//! cumulative [`Totals`]. Replay therefore takes the valid record with the highest sequence
//! and nothing is ever counted twice; a torn or corrupted record fails its length or checksum
//! and is skipped (replay resynchronises on the next magic). At start the journal is
//! compacted to its last valid record (a corrupted file is first kept aside as
//! `*.corrupt-<unix seconds>`), and again whenever it grows past [`COMPACT_AT`].
//!
//! Every file operation after start goes through a descriptor of the journal's directory
//! opened before the sandbox, so it keeps working after `pivot_root`/`chroot`.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::meter::Totals;
use super::Labels;

/// Start of every record.
pub const MAGIC: [u8; 4] = *b"VKAJ";
/// Bytes before the payload: magic, length, checksum.
pub const HEADER_LEN: usize = 12;
/// A payload longer than this is corrupt.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The journal is rewritten to its last record when it grows past this.
pub const COMPACT_AT: u64 = 4 << 20;
/// Record format version.
pub const VERSION: u32 = 1;
/// The highest sequence a record may carry. A record per flush (seconds apart) never gets
/// near it; a record beyond it is corrupt or hostile, and continuing from it would overflow
/// the next append's sequence (found by the `journal_replay` fuzz target: with `u64::MAX`
/// the next record wrapped to 0 and every later replay went back to the old totals).
pub const MAX_SEQ: u64 = i64::MAX as u64;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path:?}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path:?}: {op}: {source}")]
    Sys {
        path: PathBuf,
        op: &'static str,
        source: nix::Error,
    },
    #[error("encoding a journal record: {0}")]
    Encode(serde_json::Error),
}

/// One journal record: who, which stream, which sequence, and the cumulative totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    /// Random id of this counter stream, kept across restarts that replay the journal. A
    /// report sums the last record of each stream once, however many copies it finds.
    pub stream: String,
    pub seq: u64,
    pub unix_ms: u64,
    pub tenant: String,
    pub volume: String,
    pub pod: String,
    pub traffic_class: String,
    pub host: String,
    pub totals: Totals,
}

/// Encodes a record with its header.
pub fn encode(record: &Record) -> Result<Vec<u8>, JournalError> {
    let payload = serde_json::to_vec(record).map_err(JournalError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replay {
    /// The valid record with the highest sequence.
    pub last: Option<Record>,
    /// Valid records seen.
    pub valid: usize,
    /// Offsets and reasons of the corrupt regions skipped.
    pub corrupt: Vec<(usize, String)>,
}

/// Decodes every record of a journal's bytes, skipping corrupt ones.
pub fn decode_all(bytes: &[u8]) -> Replay {
    let mut replay = Replay::default();
    let mut pos = 0;
    while pos < bytes.len() {
        match decode_at(&bytes[pos..]) {
            Ok((record, used)) => {
                replay.valid += 1;
                if replay.last.as_ref().map_or(true, |l| record.seq > l.seq) {
                    replay.last = Some(record);
                }
                pos += used;
            }
            Err(reason) => {
                replay.corrupt.push((pos, reason));
                // Resynchronise on the next magic after this position.
                pos = bytes[pos + 1..]
                    .windows(MAGIC.len())
                    .position(|w| w == MAGIC)
                    .map_or(bytes.len(), |i| pos + 1 + i);
            }
        }
    }
    replay
}

fn decode_at(bytes: &[u8]) -> Result<(Record, usize), String> {
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| format!("torn header ({} bytes)", bytes.len()))?;
    if header[..4] != MAGIC {
        return Err("bad magic".to_string());
    }
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let len = word(4) as usize;
    if len > MAX_PAYLOAD {
        return Err(format!("length {len} too large"));
    }
    let payload = bytes.get(HEADER_LEN..HEADER_LEN + len).ok_or_else(|| {
        format!(
            "torn record ({} of {len} payload bytes)",
            bytes.len() - HEADER_LEN
        )
    })?;
    if crc32fast::hash(payload) != word(8) {
        return Err("checksum mismatch".to_string());
    }
    let record: Record =
        serde_json::from_slice(payload).map_err(|e| format!("undecodable payload: {e}"))?;
    if record.seq > MAX_SEQ {
        return Err(format!("sequence {} out of range", record.seq));
    }
    Ok((record, HEADER_LEN + len))
}

/// Reads and replays a journal file (for reports).
pub fn replay_file(path: &Path) -> Result<Replay, JournalError> {
    let bytes = std::fs::read(path).map_err(|source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(decode_all(&bytes))
}

/// The journal's path relative to the accounting directory: `TENANT/VOLUME/POD.journal`.
pub fn relative_path(labels: &Labels) -> PathBuf {
    Path::new(&labels.tenant)
        .join(&labels.volume)
        .join(format!("{}.journal", labels.pod))
}

fn unix_now() -> (u64, u64) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (
        d.as_secs(),
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    )
}

fn new_stream_id() -> String {
    let mut bytes = [0u8; 16];
    let filled = File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !filled {
        // No urandom (odd container): time and pid still separate streams in practice.
        let (_, ms) = unix_now();
        bytes[..8].copy_from_slice(&ms.to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An open journal, appended to by the flush thread.
pub struct Journal {
    dir: OwnedFd,
    path: PathBuf,
    name: CString,
    tmp_name: CString,
    file: File,
    size: u64,
    compact_at: u64,
    last: Record,
    /// Whether `last` is a real record (replayed or appended) that compaction must keep,
    /// rather than the empty start of a new stream. Not `last.seq != 0`: a replayed record
    /// may carry sequence 0 (hand-edited or hostile), and its totals are still what the
    /// daemon continues from.
    recorded: bool,
    written: Option<Totals>,
}

impl Journal {
    /// Opens (creating) `DIR/TENANT/VOLUME/POD.journal`, replays it and compacts it. Returns
    /// the journal and the totals to continue from. Must run before the sandbox.
    pub fn open(accounting_dir: &Path, labels: &Labels) -> Result<(Journal, Totals), JournalError> {
        let rel = relative_path(labels);
        let path = accounting_dir.join(&rel);
        let parent = path.parent().unwrap_or(accounting_dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|source| JournalError::Dir {
            path: parent.clone(),
            source,
        })?;
        let dir: OwnedFd = File::open(&parent)
            .map_err(|source| JournalError::Dir {
                path: parent.clone(),
                source,
            })?
            .into();
        let file_name = format!("{}.journal", labels.pod);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let name = CString::new(file_name.clone()).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp_name =
            CString::new(format!("{file_name}.tmp")).map_err(|e| io(std::io::Error::other(e)))?;
        let replay = match std::fs::read(&path) {
            Ok(bytes) => decode_all(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Replay::default(),
            Err(e) => return Err(io(e)),
        };
        for (offset, reason) in &replay.corrupt {
            warn!(
                journal = %path.display(),
                offset,
                "skipping corrupt journal record: {reason}"
            );
        }
        if !replay.corrupt.is_empty() {
            let (secs, _) = unix_now();
            let aside = path.with_file_name(format!("{file_name}.corrupt-{secs}"));
            match std::fs::rename(&path, &aside) {
                Ok(()) => warn!(kept = %aside.display(), "corrupt journal kept aside"),
                Err(e) => warn!("could not keep the corrupt journal aside: {e}"),
            }
        }
        let (base, stream, seq) = match &replay.last {
            Some(r) => {
                if r.tenant != labels.tenant || r.volume != labels.volume || r.pod != labels.pod {
                    warn!(
                        "journal {} belongs to {}/{}/{}; continuing its counters anyway",
                        path.display(),
                        r.tenant,
                        r.volume,
                        r.pod
                    );
                }
                (r.totals.clone(), r.stream.clone(), r.seq)
            }
            None => (Totals::default(), new_stream_id(), 0),
        };
        let last = Record {
            version: VERSION,
            stream,
            seq,
            unix_ms: unix_now().1,
            tenant: labels.tenant.clone(),
            volume: labels.volume.clone(),
            pod: labels.pod.clone(),
            traffic_class: labels.traffic_class.clone(),
            host: labels.host.clone(),
            totals: base.clone(),
        };
        // Placeholder until compaction opens the real file.
        let placeholder = File::open("/dev/null").map_err(io)?;
        let mut journal = Journal {
            dir,
            path,
            name,
            tmp_name,
            file: placeholder,
            size: 0,
            compact_at: COMPACT_AT,
            last,
            recorded: replay.last.is_some(),
            written: None,
        };
        journal.compact()?;
        journal.written = Some(base.clone());
        Ok((journal, base))
    }

    /// Where the journal lives (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last record written (or replayed).
    pub fn last(&self) -> &Record {
        &self.last
    }

    fn sys(&self, op: &'static str) -> impl Fn(nix::Error) -> JournalError + '_ {
        move |source| JournalError::Sys {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// Rewrites the journal as its last record alone: temporary file, sync, rename over.
    fn compact(&mut self) -> Result<(), JournalError> {
        let bytes = if self.recorded {
            encode(&self.last)?
        } else {
            Vec::new()
        };
        let fd = nix::fcntl::openat(
            Some(self.dir.as_raw_fd()),
            self.tmp_name.as_c_str(),
            OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(self.sys("create temporary"))?;
        // SAFETY: openat just returned this descriptor; nothing else owns it.
        let mut tmp = unsafe { File::from_raw_fd(fd) };
        tmp.write_all(&bytes).map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })?;
        nix::unistd::fdatasync(tmp.as_raw_fd()).map_err(self.sys("fdatasync"))?;
        drop(tmp);
        nix::fcntl::renameat2(
            Some(self.dir.as_raw_fd()),
            self.tmp_name.as_c_str(),
            Some(self.dir.as_raw_fd()),
            self.name.as_c_str(),
            RenameFlags::empty(),
        )
        .map_err(self.sys("rename"))?;
        nix::unistd::fsync(self.dir.as_raw_fd()).map_err(self.sys("fsync directory"))?;
        let fd = nix::fcntl::openat(
            Some(self.dir.as_raw_fd()),
            self.name.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.sys("open"))?;
        // SAFETY: openat just returned this descriptor; nothing else owns it.
        self.file = unsafe { File::from_raw_fd(fd) };
        self.size = bytes.len() as u64;
        Ok(())
    }

    /// Appends a record of `totals` if they changed since the last one; syncs it to disk.
    /// Returns whether a record was written.
    pub fn append(&mut self, totals: &Totals) -> Result<bool, JournalError> {
        if self.written.as_ref() == Some(totals) {
            return Ok(false);
        }
        let mut record = self.last.clone();
        record.seq += 1;
        record.unix_ms = unix_now().1;
        record.totals = totals.clone();
        let bytes = encode(&record)?;
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        // One write per record: a crash leaves at most this record torn, which replay skips.
        self.file.write_all(&bytes).map_err(io)?;
        nix::unistd::fdatasync(self.file.as_raw_fd()).map_err(self.sys("fdatasync"))?;
        self.size += bytes.len() as u64;
        self.last = record;
        self.recorded = true;
        self.written = Some(totals.clone());
        if self.size > self.compact_at {
            self.compact()?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels {
            tenant: "acme".into(),
            volume: "vol1".into(),
            pod: "pod-a".into(),
            traffic_class: "internal".into(),
            host: "h1".into(),
        }
    }

    fn totals(read: u64) -> Totals {
        Totals {
            read_bytes: read,
            ..Totals::default()
        }
    }

    #[test]
    fn records_round_trip_and_the_highest_sequence_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, base) = Journal::open(dir.path(), &labels()).unwrap();
        assert_eq!(base, Totals::default());
        assert!(j.append(&totals(10)).unwrap());
        assert!(
            !j.append(&totals(10)).unwrap(),
            "unchanged totals are not rewritten"
        );
        assert!(j.append(&totals(25)).unwrap());
        let stream = j.last().stream.clone();
        drop(j);
        let replay = replay_file(&dir.path().join(relative_path(&labels()))).unwrap();
        assert_eq!(replay.valid, 2);
        assert!(replay.corrupt.is_empty());
        let last = replay.last.unwrap();
        assert_eq!((last.seq, last.totals.read_bytes), (2, 25));
        // Reopening continues the stream and compacts to one record.
        let (mut j, base) = Journal::open(dir.path(), &labels()).unwrap();
        assert_eq!(base.read_bytes, 25);
        assert_eq!(j.last().stream, stream);
        assert!(j.append(&totals(30)).unwrap());
        assert_eq!(j.last().seq, 3);
        let replay = replay_file(j.path()).unwrap();
        assert_eq!(replay.valid, 2);
    }

    #[test]
    fn a_growing_journal_is_compacted_to_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), &labels()).unwrap();
        j.compact_at = 2_000;
        let mut largest = 0;
        for i in 1..=60 {
            j.append(&totals(i * 1000)).unwrap();
            largest = largest.max(std::fs::metadata(j.path()).unwrap().len());
        }
        assert!(largest < 2_000 + 1_000, "journal grew to {largest} bytes");
        let replay = replay_file(j.path()).unwrap();
        let last = replay.last.unwrap();
        assert_eq!((last.seq, last.totals.read_bytes), (60, 60_000));
        assert!(replay.corrupt.is_empty());
        assert!(!dir.path().join("acme/vol/pod-a.journal.tmp").exists());
    }

    #[test]
    fn torn_and_corrupt_tails_are_skipped() {
        let mut rec = Record {
            version: VERSION,
            stream: "s".into(),
            seq: 1,
            unix_ms: 0,
            tenant: "t".into(),
            volume: "v".into(),
            pod: "p".into(),
            traffic_class: "internal".into(),
            host: "h".into(),
            totals: totals(5),
        };
        let mut bytes = encode(&rec).unwrap();
        rec.seq = 2;
        rec.totals = totals(9);
        let second = encode(&rec).unwrap();
        // A torn write: half of the second record.
        let mut torn = bytes.clone();
        torn.extend_from_slice(&second[..second.len() / 2]);
        let r = decode_all(&torn);
        assert_eq!((r.valid, r.corrupt.len()), (1, 1));
        assert_eq!(r.last.unwrap().totals.read_bytes, 5);
        // A flipped bit in the payload.
        let mut flipped = second.clone();
        let at = flipped.len() - 3;
        flipped[at] ^= 0x40;
        bytes.extend_from_slice(&flipped);
        let r = decode_all(&bytes);
        assert_eq!(r.valid, 1);
        assert!(r.corrupt[0].1.contains("checksum"), "{:?}", r.corrupt);
        // Garbage in the middle: the record after it is still found.
        let mut mid = encode(&rec).unwrap();
        mid.splice(0..0, b"garbage VKA".iter().copied());
        let r = decode_all(&mid);
        assert_eq!(r.valid, 1);
        assert_eq!(r.last.unwrap().seq, 2);
        // Pure noise never panics.
        for len in 0..64 {
            let noise: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            assert!(decode_all(&noise).last.is_none());
        }
    }

    /// Regression test for a `journal_replay` fuzz finding: a record whose sequence is
    /// `u64::MAX` (checksum right) made the next append overflow (a panic with overflow
    /// checks; in release the sequence wrapped to 0 and every later replay continued from
    /// the old record, losing what was appended).
    #[test]
    fn a_record_with_an_impossible_sequence_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(relative_path(&labels()));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut rec = Record {
            version: VERSION,
            stream: "s".into(),
            seq: u64::MAX,
            unix_ms: 0,
            tenant: "acme".into(),
            volume: "vol1".into(),
            pod: "pod-a".into(),
            traffic_class: "internal".into(),
            host: "h".into(),
            totals: totals(9),
        };
        let mut bytes = encode(&rec).unwrap();
        rec.seq = 3;
        rec.totals = totals(5);
        bytes.extend(encode(&rec).unwrap());
        std::fs::write(&path, &bytes).unwrap();
        let r = decode_all(&bytes);
        assert_eq!((r.valid, r.corrupt.len()), (1, 1), "{:?}", r.corrupt);
        let (mut j, base) = Journal::open(dir.path(), &labels()).unwrap();
        assert_eq!((base.read_bytes, j.last().seq), (5, 3));
        assert!(j.append(&totals(11)).unwrap());
        drop(j);
        let (j, base) = Journal::open(dir.path(), &labels()).unwrap();
        assert_eq!((base.read_bytes, j.last().seq), (11, 4));
    }

    #[test]
    fn a_corrupt_journal_is_kept_aside_and_replay_continues() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), &labels()).unwrap();
        j.append(&totals(7)).unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"VKAJ\x10\x00\x00\x00torn").unwrap();
        drop(f);
        let (_, base) = Journal::open(dir.path(), &labels()).unwrap();
        assert_eq!(base.read_bytes, 7);
        let kept: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(replay_file(&path).unwrap().corrupt.len(), 0);
    }

    fn record(seq: u64, read: u64) -> Record {
        Record {
            version: VERSION,
            stream: "s".into(),
            seq,
            unix_ms: 0,
            tenant: "acme".into(),
            volume: "vol1".into(),
            pod: "pod-a".into(),
            traffic_class: "internal".into(),
            host: "h".into(),
            totals: totals(read),
        }
    }

    /// Regression test: a journal whose only valid record has sequence 0 was compacted to an
    /// empty file at open, so a crash before the next flush lost the totals it had replayed.
    #[test]
    fn a_replayed_record_with_sequence_zero_survives_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(relative_path(&labels()));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, encode(&record(0, 100)).unwrap()).unwrap();
        let (j, base) = Journal::open(dir.path(), &labels()).unwrap();
        assert_eq!(base.read_bytes, 100);
        drop(j); // a crash before the first flush
        let (mut j, base) = Journal::open(dir.path(), &labels()).unwrap();
        assert_eq!(base.read_bytes, 100, "compaction lost the replayed totals");
        assert!(j.append(&totals(150)).unwrap());
        assert_eq!(j.last().seq, 1);
        drop(j);
        let (_, base) = Journal::open(dir.path(), &labels()).unwrap();
        assert_eq!(base.read_bytes, 150);
    }

    proptest::proptest! {
        /// The class of the defect above: whatever a journal file holds (valid records of any
        /// sequence, torn records, garbage), opening it and opening it again with nothing
        /// appended in between continue from the same totals, and an append after that is
        /// what the next open continues from. Compaction never loses or re-counts anything.
        #[test]
        fn opening_twice_continues_from_the_same_totals(
            parts in proptest::collection::vec(
                (0u64..5, 0u64..1_000_000, proptest::prop_oneof![
                    proptest::strategy::Just(0u8), proptest::strategy::Just(1), proptest::strategy::Just(2)
                ]),
                0..6,
            ),
            extra in 0u64..1_000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(relative_path(&labels()));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut bytes = Vec::new();
            for (seq, read, shape) in &parts {
                let enc = encode(&record(*seq, *read)).unwrap();
                match shape {
                    0 => bytes.extend_from_slice(&enc),
                    1 => bytes.extend_from_slice(&enc[..enc.len() / 2]),
                    _ => bytes.extend_from_slice(b"noise VKA"),
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            let expected = decode_all(&bytes).last.map_or(0, |r| r.totals.read_bytes);
            let (j, first) = Journal::open(dir.path(), &labels()).unwrap();
            proptest::prop_assert_eq!(first.read_bytes, expected);
            drop(j);
            let (mut j, second) = Journal::open(dir.path(), &labels()).unwrap();
            proptest::prop_assert_eq!(second.read_bytes, expected);
            j.append(&totals(expected + extra)).unwrap();
            drop(j);
            let (_, third) = Journal::open(dir.path(), &labels()).unwrap();
            proptest::prop_assert_eq!(third.read_bytes, expected + extra);
        }
    }
}
