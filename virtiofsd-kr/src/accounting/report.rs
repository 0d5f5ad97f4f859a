//! `virtiofsd-kr accounting report`: a tenant's totals summed over every pod's records.
//!
//! Owns finding journals (`DIR/TENANT/VOLUME/POD.journal` under each accounting directory
//! given, e.g. one per host) and summing records so that each counter stream counts once: a
//! record carries cumulative totals and the random id of its stream, so the report takes the
//! highest-sequence valid record of each stream (copies of a journal, the same directory
//! given twice, or the same stream found in a journal and in RADOS add nothing) and sums
//! those. Records from RADOS (`--rados-pool`) come in through [`Report::add_record`], read by
//! `rados_sink`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::journal::{replay_file, Record};
use super::meter::{opcode_name, Totals};
use super::rados_sink::{self, SinkConfig, SinkError};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--rados-pool: {0}")]
    Sink(#[from] SinkError),
}

/// The result of a report.
#[derive(Debug, Default)]
pub struct Report {
    /// The last record of each stream, by stream id.
    pub streams: BTreeMap<String, Record>,
    /// Sum over the streams (see [`Report::sum`]).
    pub total: Totals,
    /// Journals read.
    pub journals: Vec<PathBuf>,
    /// RADOS objects read (`rados:POOL/TENANT/OBJECT`).
    pub rados_objects: Vec<String>,
    /// Corrupt regions and unreadable sources skipped (where, reason).
    pub skipped: Vec<(String, String)>,
}

fn journals_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => journals_under(&path, out),
            Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "journal") => {
                out.push(path)
            }
            _ => {}
        }
    }
}

/// What a report reads (built by the control plane from `accounting report`'s flags).
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The tenant to report.
    pub tenant: String,
    /// Accounting directories whose journals are read.
    pub accounting_dirs: Vec<PathBuf>,
    /// The RADOS pool (and the client that reads it) holding the tenant's records.
    pub rados: Option<SinkConfig>,
}

/// `virtiofsd-kr accounting report`: the tenant's records from every source `args` names
/// (journal directories, a RADOS pool), each stream once, summed. A RADOS source that
/// cannot be read is an error (a partial total would look like a real one).
pub fn run(args: &ReportOptions) -> Result<Report, ReportError> {
    let mut report = Report::default();
    report.add_journals(&args.accounting_dirs, &args.tenant);
    if let Some(sink) = &args.rados {
        let pool = &sink.pool;
        let io = sink.open(&args.tenant)?;
        rados_sink::add_to_report(&mut report, &io, &args.tenant).map_err(|source| {
            SinkError::Rados {
                pool: pool.clone(),
                tenant: args.tenant.clone(),
                source: Box::new(source),
            }
        })?;
    }
    report.sum();
    Ok(report)
}

/// Sums the journals of `tenant` found under `dirs`.
pub fn report(dirs: &[PathBuf], tenant: &str) -> Report {
    let mut report = Report::default();
    report.add_journals(dirs, tenant);
    report.sum();
    report
}

impl Report {
    /// Reads the journals of `tenant` under `dirs` (`DIR/TENANT/**.journal`) and keeps the
    /// last record of each. Call [`Report::sum`] once every source is in.
    pub fn add_journals(&mut self, dirs: &[PathBuf], tenant: &str) {
        let mut found = Vec::new();
        for dir in dirs {
            journals_under(&dir.join(tenant), &mut found);
        }
        for path in &found {
            let replay = match replay_file(path) {
                Ok(r) => r,
                Err(e) => {
                    warn!("{e}");
                    self.skipped
                        .push((path.display().to_string(), e.to_string()));
                    continue;
                }
            };
            for (offset, reason) in replay.corrupt {
                warn!(journal = %path.display(), offset, "skipping corrupt record: {reason}");
                self.skipped.push((
                    path.display().to_string(),
                    format!("offset {offset}: {reason}"),
                ));
            }
            if let Some(last) = replay.last {
                self.add_record(tenant, last);
            }
        }
        self.journals.extend(found);
    }

    /// Keeps `record` if it belongs to `tenant` and is its stream's highest sequence so far.
    /// Returns whether it was kept.
    pub fn add_record(&mut self, tenant: &str, record: Record) -> bool {
        if record.tenant != tenant {
            return false;
        }
        match self.streams.get(&record.stream) {
            Some(seen) if seen.seq >= record.seq => false,
            _ => {
                self.streams.insert(record.stream.clone(), record);
                true
            }
        }
    }

    /// Sets [`Report::total`] to the sum of the streams' records.
    pub fn sum(&mut self) {
        self.total = Totals::default();
        for record in self.streams.values() {
            self.total.add(&record.totals);
        }
    }

    /// A readable table: one line per stream, then the tenant's total.
    pub fn render(&self, tenant: &str) -> String {
        let mut out = String::new();
        let rados = match self.rados_objects.len() {
            0 => String::new(),
            n => format!("{n} RADOS object(s), "),
        };
        let _ = writeln!(
            out,
            "tenant {tenant}: {} journal(s), {rados}{} stream(s)",
            self.journals.len(),
            self.streams.len()
        );
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<10} {:<16} {:>16} {:>16} {:>12}",
            "volume", "pod", "class", "host", "read_bytes", "written_bytes", "requests"
        );
        for r in self.streams.values() {
            let _ = writeln!(
                out,
                "{:<16} {:<24} {:<10} {:<16} {:>16} {:>16} {:>12}",
                r.volume,
                r.pod,
                r.traffic_class,
                r.host,
                r.totals.read_bytes,
                r.totals.written_bytes,
                r.totals.total_requests()
            );
        }
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<10} {:<16} {:>16} {:>16} {:>12}",
            "TOTAL",
            "",
            "",
            "",
            self.total.read_bytes,
            self.total.written_bytes,
            self.total.total_requests()
        );
        let ops: Vec<String> = self
            .total
            .requests
            .iter()
            .map(|(op, n)| format!("{}={n}", opcode_name(*op)))
            .collect();
        let _ = writeln!(out, "requests by op: {}", ops.join(" "));
        for (source, reason) in &self.skipped {
            let _ = writeln!(out, "skipped in {source}: {reason}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::journal::Journal;
    use super::super::Labels;
    use super::*;

    fn labels(tenant: &str, pod: &str) -> Labels {
        Labels {
            tenant: tenant.into(),
            volume: "vol".into(),
            pod: pod.into(),
            traffic_class: "internal".into(),
            host: "h".into(),
        }
    }

    #[test]
    fn each_stream_counts_once() {
        let host_a = tempfile::tempdir().unwrap();
        let host_b = tempfile::tempdir().unwrap();
        let write = |dir: &Path, l: &Labels, bytes: u64| {
            let (mut j, _) = Journal::open(dir, l).unwrap();
            j.append(&Totals {
                written_bytes: bytes,
                ..Totals::default()
            })
            .unwrap();
        };
        write(host_a.path(), &labels("acme", "p1"), 100);
        write(host_a.path(), &labels("acme", "p2"), 20);
        write(host_b.path(), &labels("acme", "p1"), 3);
        write(host_a.path(), &labels("other", "p1"), 5000);
        // A copy of host A's p1 journal (e.g. a backup) adds nothing.
        let copy = host_b.path().join("acme/vol/copy-of-p1.journal");
        std::fs::copy(host_a.path().join("acme/vol/p1.journal"), copy).unwrap();
        let dirs = vec![
            host_a.path().to_path_buf(),
            host_b.path().to_path_buf(),
            host_a.path().to_path_buf(),
        ];
        let r = report(&dirs, "acme");
        assert_eq!(r.streams.len(), 3);
        assert_eq!(r.total.written_bytes, 123);
        assert!(r.render("acme").contains("TOTAL"));
    }

    #[test]
    fn records_from_several_sources_count_once_per_stream() {
        let host = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(host.path(), &labels("acme", "p1")).unwrap();
        j.append(&Totals {
            written_bytes: 100,
            ..Totals::default()
        })
        .unwrap();
        let in_journal = j.last().clone();
        let mut r = Report::default();
        r.add_journals(&[host.path().to_path_buf()], "acme");
        // The same stream from RADOS: an older copy is ignored, a newer one replaces.
        let mut older = in_journal.clone();
        older.seq -= 1;
        older.totals.written_bytes = 7_000;
        assert!(!r.add_record("acme", older));
        assert!(!r.add_record("acme", in_journal.clone()));
        let mut newer = in_journal.clone();
        newer.seq += 1;
        newer.totals.written_bytes = 150;
        assert!(r.add_record("acme", newer));
        // Another stream of the tenant adds; another tenant's record does not.
        let mut other_stream = in_journal.clone();
        other_stream.stream = "another".into();
        other_stream.totals.written_bytes = 1;
        assert!(r.add_record("acme", other_stream));
        let mut other_tenant = in_journal;
        other_tenant.stream = "third".into();
        other_tenant.tenant = "globex".into();
        assert!(!r.add_record("acme", other_tenant));
        r.sum();
        assert_eq!(r.streams.len(), 2);
        assert_eq!(r.total.written_bytes, 151);
        r.sum();
        assert_eq!(r.total.written_bytes, 151, "sum is not cumulative");
    }
}
