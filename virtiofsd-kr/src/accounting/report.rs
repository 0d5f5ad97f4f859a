//! `virtiofsd-kr accounting report`: a tenant's totals summed over every pod's journal.
//!
//! Owns finding journals (`DIR/TENANT/VOLUME/POD.journal` under each accounting directory
//! given, e.g. one per host) and summing them so that each counter stream counts once: a
//! record carries cumulative totals and the random id of its stream, so the report takes the
//! highest-sequence valid record of each stream (copies of a journal, or the same directory
//! given twice, add nothing) and sums those.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::journal::{replay_file, Record};
use super::meter::{opcode_name, Totals};

/// The result of a report.
#[derive(Debug, Default)]
pub struct Report {
    /// The last record of each stream, by stream id.
    pub streams: BTreeMap<String, Record>,
    /// Sum over the streams.
    pub total: Totals,
    /// Journals read.
    pub journals: Vec<PathBuf>,
    /// Corrupt regions skipped (journal, reason).
    pub skipped: Vec<(PathBuf, String)>,
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

/// Sums the journals of `tenant` found under `dirs`.
pub fn report(dirs: &[PathBuf], tenant: &str) -> Report {
    let mut report = Report::default();
    for dir in dirs {
        journals_under(&dir.join(tenant), &mut report.journals);
    }
    for path in &report.journals {
        let replay = match replay_file(path) {
            Ok(r) => r,
            Err(e) => {
                warn!("{e}");
                report.skipped.push((path.clone(), e.to_string()));
                continue;
            }
        };
        for (offset, reason) in replay.corrupt {
            warn!(journal = %path.display(), offset, "skipping corrupt record: {reason}");
            report
                .skipped
                .push((path.clone(), format!("offset {offset}: {reason}")));
        }
        let Some(last) = replay.last else { continue };
        if last.tenant != tenant {
            continue;
        }
        match report.streams.get(&last.stream) {
            Some(seen) if seen.seq >= last.seq => {}
            _ => {
                report.streams.insert(last.stream.clone(), last);
            }
        }
    }
    for record in report.streams.values() {
        report.total.add(&record.totals);
    }
    report
}

impl Report {
    /// A readable table: one line per stream, then the tenant's total.
    pub fn render(&self, tenant: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tenant {tenant}: {} journal(s), {} stream(s)",
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
        for (path, reason) in &self.skipped {
            let _ = writeln!(out, "skipped in {}: {reason}", path.display());
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
}
