//! The accounting journal replay on a torn or hostile journal file, then the daemon's use of
//! what it replayed: metering on top of it, rendering metrics, appending, and replaying again.
//!
//! Input: pieces, each a kind byte and its bytes: raw bytes; a well-formed record (fields from
//! the input, checksum right); the same torn short; a checksummed payload of raw bytes
//! (hostile JSON); a header whose checksum is wrong.
//!
//! Checks: opening never fails on content (only on I/O); the totals continued from are those
//! of the valid record with the highest sequence (the first of equals), or zero; metering,
//! rendering and appending on top of them do not panic; after an append, a second replay
//! continues exactly from the appended totals with a higher sequence.
#![no_main]

use std::time::Duration;

use fuzz_harness::{test_labels, Cursor};
use libfuzzer_sys::fuzz_target;
use virtiofsd_kr::accounting::journal::{self, Journal, Record};
use virtiofsd_kr::accounting::limiter::Limits;
use virtiofsd_kr::accounting::meter::{Outcome, Totals};
use virtiofsd_kr::accounting::{metrics, Accounting};

const NAMES: [&str; 4] = ["t", "v", "p", "other"];

fn record(c: &mut Cursor) -> Record {
    let mut totals = Totals {
        read_bytes: c.u64(),
        written_bytes: c.u64(),
        ..Totals::default()
    };
    for _ in 0..c.u8() % 4 {
        totals.requests.insert(c.u32(), c.u64());
        totals.errors.insert(c.u32() as i32, c.u64());
        let buckets = (0..c.u8() % 24).map(|_| c.u64()).collect();
        let op = c.u32();
        totals.latency.insert(op, buckets);
        totals.latency_sum_ns.insert(op, c.u64());
    }
    totals.throttled_ns = c.u64();
    let pick = |c: &mut Cursor| NAMES[c.u8() as usize % NAMES.len()].to_string();
    Record {
        version: c.u32() % 3,
        stream: pick(c),
        seq: c.u64(),
        unix_ms: c.u64(),
        tenant: pick(c),
        volume: pick(c),
        pod: pick(c),
        traffic_class: pick(c),
        host: pick(c),
        totals,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mut file = Vec::new();
    // The valid records in file order: the replay must continue from the highest sequence.
    let mut valid: Vec<Record> = Vec::new();
    while !c.is_empty() && file.len() < 1 << 16 {
        match c.u8() % 5 {
            0 => file.extend_from_slice(c.short_bytes()),
            1 => {
                let r = record(&mut c);
                file.extend(journal::encode(&r).unwrap());
                valid.push(r);
            }
            2 => {
                let bytes = journal::encode(&record(&mut c)).unwrap();
                let keep = c.u16() as usize % bytes.len();
                file.extend_from_slice(&bytes[..keep]);
            }
            3 => {
                let payload = c.short_bytes();
                file.extend_from_slice(&journal::MAGIC);
                file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                file.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
                file.extend_from_slice(payload);
                if let Ok(r) = serde_json::from_slice::<Record>(payload) {
                    valid.push(r);
                }
            }
            _ => {
                let payload = c.short_bytes();
                file.extend_from_slice(&journal::MAGIC);
                file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                file.extend_from_slice(&(crc32fast::hash(payload) ^ 1).to_le_bytes());
                file.extend_from_slice(payload);
            }
        }
    }
    let mut expected: Option<&Record> = None;
    // A sequence beyond MAX_SEQ is corrupt (continuing from it would overflow).
    for r in valid.iter().filter(|r| r.seq <= journal::MAX_SEQ) {
        if expected.is_none_or(|e| r.seq > e.seq) {
            expected = Some(r);
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(journal::relative_path(&test_labels()));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &file).unwrap();

    let (mut j, base) = Journal::open(dir.path(), &test_labels()).expect("replay of any content");
    let want = expected.map(|r| r.totals.clone()).unwrap_or_default();
    assert_eq!(base, want, "continued from the wrong totals");
    assert_eq!(j.last().seq, expected.map_or(0, |r| r.seq));

    // The daemon meters on top of what it replayed and renders it.
    let acct = Accounting::new(test_labels(), Limits::default(), base.clone(), None);
    for opcode in [15u32, 16, 1, 9999] {
        acct.meter.record(
            &Outcome {
                opcode,
                read_bytes: 4096,
                written_bytes: 4096,
                errno: 2,
            },
            Duration::from_micros(5),
        );
    }
    acct.meter.add_throttled(Duration::from_millis(1));
    let totals = acct.meter.snapshot();
    let text = metrics::render(&acct.labels, &totals, &Limits::default(), j.last().seq);
    assert!(text.ends_with('\n'));

    // Appending continues the stream; a second replay continues from what was appended.
    let seq = j.last().seq;
    let stream = j.last().stream.clone();
    let appended = j.append(&totals).expect("append");
    drop(j);
    let (j2, base2) = Journal::open(dir.path(), &test_labels()).expect("second replay");
    if appended {
        assert_eq!(base2, totals, "appended totals lost on replay");
        assert!(j2.last().seq > seq, "sequence did not advance");
        assert_eq!(j2.last().stream, stream);
    } else {
        assert_eq!(base2, base);
    }
});
