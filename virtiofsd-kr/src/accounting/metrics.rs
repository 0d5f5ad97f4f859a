//! The Prometheus text exposition (format 0.0.4) of one daemon's counters.
//!
//! Owns metric names, help texts and labels. Every series carries `tenant`, `volume`, `pod`
//! and `traffic_class`; per-opcode series add `op` (the FUSE name, e.g. `READ`), error series
//! add `errno` (e.g. `ENOENT`).

use std::fmt::Write;

use super::limiter::Limits;
use super::meter::{errno_name, opcode_name, Totals, LATENCY_BOUNDS_US, LATENCY_BUCKETS};
use super::Labels;

/// Metric name prefix.
pub const PREFIX: &str = "virtiofs";

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Writer {
    out: String,
    base: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {PREFIX}_{name} {help}");
        let _ = writeln!(self.out, "# TYPE {PREFIX}_{name} {kind}");
    }

    fn sample(&mut self, name: &str, extra: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{PREFIX}_{name}{{{}", self.base);
        for (k, v) in extra {
            let _ = write!(self.out, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(self.out, "}} {value}");
    }
}

/// Seconds as a Prometheus float.
fn secs(nanos: u64) -> String {
    format!("{:.9}", nanos as f64 / 1e9)
}

/// Renders the counters, limits and journal state.
pub fn render(labels: &Labels, totals: &Totals, limits: &Limits, journal_seq: u64) -> String {
    let base = format!(
        "tenant=\"{}\",volume=\"{}\",pod=\"{}\",traffic_class=\"{}\"",
        escape(&labels.tenant),
        escape(&labels.volume),
        escape(&labels.pod),
        escape(&labels.traffic_class)
    );
    let mut w = Writer {
        out: String::with_capacity(8192),
        base,
    };
    w.family(
        "read_bytes_total",
        "counter",
        "Data bytes returned to the guest by READ replies.",
    );
    w.sample("read_bytes_total", &[], totals.read_bytes);
    w.family(
        "written_bytes_total",
        "counter",
        "Data bytes taken from the guest and written by WRITE requests.",
    );
    w.sample("written_bytes_total", &[], totals.written_bytes);

    w.family(
        "requests_total",
        "counter",
        "FUSE requests served, by opcode.",
    );
    for (op, n) in &totals.requests {
        w.sample("requests_total", &[("op", opcode_name(*op))], n);
    }
    w.family("errors_total", "counter", "FUSE error replies, by errno.");
    for (errno, n) in &totals.errors {
        w.sample("errors_total", &[("errno", &errno_name(*errno))], n);
    }

    w.family(
        "request_duration_seconds",
        "histogram",
        "Time from taking a request off the queue to its reply, by opcode.",
    );
    for (op, buckets) in &totals.latency {
        let name = opcode_name(*op);
        let mut cumulative = 0u64;
        for i in 0..LATENCY_BUCKETS {
            cumulative = cumulative.saturating_add(buckets.get(i).copied().unwrap_or(0));
            let le = match LATENCY_BOUNDS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            w.sample(
                "request_duration_seconds_bucket",
                &[("op", name), ("le", &le)],
                cumulative,
            );
        }
        let sum = totals.latency_sum_ns.get(op).copied().unwrap_or(0);
        w.sample("request_duration_seconds_sum", &[("op", name)], secs(sum));
        w.sample(
            "request_duration_seconds_count",
            &[("op", name)],
            cumulative,
        );
    }

    for (name, help, value) in [
        (
            "dax_map_ops_total",
            "DAX SETUPMAPPING ranges mapped into the window.",
            totals.dax_map_ops,
        ),
        (
            "dax_mapped_bytes_total",
            "Bytes of host files mapped into the DAX window.",
            totals.dax_mapped_bytes,
        ),
        (
            "dax_unmap_ops_total",
            "DAX REMOVEMAPPING ranges unmapped.",
            totals.dax_unmap_ops,
        ),
        (
            "dax_unmapped_bytes_total",
            "Bytes unmapped from the DAX window.",
            totals.dax_unmapped_bytes,
        ),
    ] {
        w.family(name, "counter", help);
        w.sample(name, &[], value);
    }
    w.family(
        "throttled_seconds_total",
        "counter",
        "Time the request queue waited for the rate limiter.",
    );
    w.sample("throttled_seconds_total", &[], secs(totals.throttled_ns));
    w.family(
        "rate_limit_bytes_per_second",
        "gauge",
        "Bytes/s limit in force (0: unlimited).",
    );
    w.sample("rate_limit_bytes_per_second", &[], limits.bytes_per_sec);
    w.family(
        "rate_limit_ops_per_second",
        "gauge",
        "Requests/s limit in force (0: unlimited).",
    );
    w.sample("rate_limit_ops_per_second", &[], limits.ops_per_sec);
    w.family(
        "journal_sequence",
        "gauge",
        "Sequence of the last accounting journal record (0: no journal).",
    );
    w.sample("journal_sequence", &[], journal_seq);
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_labels_and_cumulative_buckets() {
        let labels = Labels {
            tenant: "t\"1".into(),
            volume: "v".into(),
            pod: "p".into(),
            traffic_class: "external".into(),
            host: "h".into(),
        };
        let mut totals = Totals {
            read_bytes: 4096,
            ..Totals::default()
        };
        totals.requests.insert(15, 3);
        let mut buckets = vec![0; LATENCY_BUCKETS];
        buckets[0] = 1;
        buckets[3] = 2;
        totals.latency.insert(15, buckets);
        totals.latency_sum_ns.insert(15, 1_500_000);
        totals.errors.insert(libc::ENOENT, 2);
        let text = render(&labels, &totals, &Limits::default(), 9);
        assert!(text.contains(
            "virtiofs_read_bytes_total{tenant=\"t\\\"1\",volume=\"v\",pod=\"p\",traffic_class=\"external\"} 4096"
        ), "{text}");
        assert!(text.contains("op=\"READ\",le=\"0.00001\"} 1"), "{text}");
        assert!(text.contains("op=\"READ\",le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("errno=\"ENOENT\"} 2"), "{text}");
        assert!(text.contains("virtiofs_request_duration_seconds_sum{"));
        assert!(text.contains("journal_sequence{"));
    }
}

/// One sample line of the exposition: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

fn parse_line(line: &str) -> Option<Sample> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut out = Vec::new();
    let mut rest = labels;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_string(), value));
        rest = &after[end..];
    }
    Some((name.to_string(), out, value))
}

fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The readable summary `virtiofsd-kr stats` prints from a scraped exposition.
pub fn summarize(text: &str) -> String {
    let samples: Vec<Sample> = text.lines().filter_map(parse_line).collect();
    let label = |labels: &[(String, String)], key: &str| {
        labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let get = |name: &str| {
        samples
            .iter()
            .filter(|(n, _, _)| n == &format!("{PREFIX}_{name}"))
            .map(|(_, _, v)| *v)
            .sum::<f64>()
    };
    let mut out = String::new();
    if let Some((_, labels, _)) = samples.first() {
        let _ = writeln!(
            out,
            "tenant {}  volume {}  pod {}  traffic class {}",
            label(labels, "tenant"),
            label(labels, "volume"),
            label(labels, "pod"),
            label(labels, "traffic_class")
        );
    }
    let read = get("read_bytes_total");
    let written = get("written_bytes_total");
    let _ = writeln!(out, "read     {:>16} bytes  ({})", read, human_bytes(read));
    let _ = writeln!(
        out,
        "written  {:>16} bytes  ({})",
        written,
        human_bytes(written)
    );
    let per = |name: &str, key: &str| -> Vec<(String, f64)> {
        samples
            .iter()
            .filter(|(n, _, _)| n == &format!("{PREFIX}_{name}"))
            .map(|(_, l, v)| (label(l, key), *v))
            .collect()
    };
    let requests = per("requests_total", "op");
    let total: f64 = requests.iter().map(|(_, v)| v).sum();
    let _ = writeln!(out, "requests {total:>16}");
    let counts = per("request_duration_seconds_count", "op");
    let sums = per("request_duration_seconds_sum", "op");
    for (op, n) in &requests {
        let count = counts.iter().find(|(o, _)| o == op).map_or(0.0, |c| c.1);
        let sum = sums.iter().find(|(o, _)| o == op).map_or(0.0, |c| c.1);
        let mean_us = if count > 0.0 { sum / count * 1e6 } else { 0.0 };
        let _ = writeln!(out, "  {op:<16} {n:>12}  mean {mean_us:>10.1} us");
    }
    let errors = per("errors_total", "errno");
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|(e, n)| format!("{e}={n}")).collect();
        let _ = writeln!(out, "errors   {}", list.join(" "));
    }
    let _ = writeln!(
        out,
        "dax      map_ops {} mapped {}",
        get("dax_map_ops_total"),
        human_bytes(get("dax_mapped_bytes_total"))
    );
    let bytes_limit = get("rate_limit_bytes_per_second");
    let ops_limit = get("rate_limit_ops_per_second");
    let show = |v: f64, bytes: bool| match (v, bytes) {
        (0.0, _) => "unlimited".to_string(),
        (v, true) => format!("{}/s", human_bytes(v)),
        (v, false) => format!("{v}/s"),
    };
    let _ = writeln!(
        out,
        "limits   bytes {}  ops {}  throttled {:.3} s",
        show(bytes_limit, true),
        show(ops_limit, false),
        get("throttled_seconds_total")
    );
    let _ = writeln!(out, "journal  sequence {}", get("journal_sequence"));
    out
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    #[test]
    fn summary_reads_back_the_exposition() {
        let labels = Labels {
            tenant: "acme".into(),
            volume: "v".into(),
            pod: "p".into(),
            traffic_class: "internal".into(),
            host: "h".into(),
        };
        let mut totals = Totals {
            read_bytes: 3 << 20,
            written_bytes: 1024,
            ..Totals::default()
        };
        totals.requests.insert(15, 3);
        totals.errors.insert(libc::ENOENT, 1);
        let text = render(&labels, &totals, &Limits::default(), 4);
        let s = summarize(&text);
        assert!(s.contains("tenant acme"), "{s}");
        assert!(s.contains("3.0 MiB"), "{s}");
        assert!(s.contains("READ"), "{s}");
        assert!(s.contains("ENOENT=1"), "{s}");
        assert!(s.contains("sequence 4"), "{s}");
    }
}
