//! `vmbench`: virtiofsd-kr against the reference `virtiofsd`, side by side, in real guests.
//!
//! For every cache mode and repetition it boots one guest served by both daemons (paired
//! boots, the default: our daemon and the reference each behind its own `vhost-user-fs-pci`
//! on a folder of its own with the same files), and runs every job on one share and right
//! after on the other, the order alternating (A B, B A, ...) from job to job, round to round
//! and boot to boot; each ratio comes from those pairs, so whatever the boot and the moment do
//! to both daemons cancels. `--separate-boots` (and a CephFS comparison) boots the same guest
//! once per daemon instead, in pairs of boots whose order alternates. The jobs, the same
//! everywhere: sequential 1 MiB read and write (buffered and O_DIRECT), 4 KiB random read with
//! psync (QD1) and libaio (QD16), 4 KiB random write, mmap random read, and a metadata job
//! (create, stat, readdir and unlink of 10,000 files, done by this very binary copied into
//! the guest: `vmbench meta DIR COUNT`). The same jobs also run on the host against a folder
//! on the same filesystem as the shares: the physical reference. fio runs with
//! `--output-format=json` and the guest prints each job's JSON on one `@@VMTEST fio.JOB=...`
//! serial line (the harness's result protocol).
//!
//! Medians over the repetitions are reported as a Markdown table, or with `--json` as one JSON
//! object on stdout. Ratios are oriented so that above 1 means better for us. Both daemons'
//! peak RSS (VmHWM sampled from `/proc/PID/status` while the guest runs), their start time to
//! a listening socket and their resident memory while idle (both measured separately, without
//! a guest) are reported too.
//!
//! `scripts/bench.sh` builds everything and runs this; see `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thiserror::Error;
use vm_tests::cpu::{CpuSampler, CpuTrace, OtherLoad, OtherLoadReading};
use vm_tests::results::{parse_line, GuestResults, Line};
use vm_tests::stats::{median, paired_ratio_interval, ratio_interval, RatioInterval, DEFAULT_SEED};
use vm_tests::{AccelChoice, CacheMode, DaemonConfig, HarnessError, VmBuilder};

/// Errors of the benchmark driver.
#[derive(Debug, Error)]
enum BenchError {
    #[error("usage: {0}")]
    Usage(String),
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fio output of job {job}: {why}")]
    FioOutput { job: String, why: String },
    #[error("fio job {job} failed: {why}")]
    FioFailed { job: String, why: String },
    #[error("metadata job: {0}")]
    Meta(String),
    #[error("daemon {binary} did not create its socket within {secs} s")]
    StartTimeout { binary: String, secs: u64 },
}

type Result<T> = std::result::Result<T, BenchError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// Which fio figure a job reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    ReadMiBs,
    WriteMiBs,
    ReadIops,
    WriteIops,
}

impl Metric {
    fn unit(self) -> &'static str {
        match self {
            Metric::ReadMiBs | Metric::WriteMiBs => "MiB/s",
            Metric::ReadIops | Metric::WriteIops => "IOPS",
        }
    }

    /// What the job's CPU time is divided by: MiB moved, or I/Os done.
    fn work_unit(self) -> &'static str {
        match self {
            Metric::ReadMiBs | Metric::WriteMiBs => "MiB",
            Metric::ReadIops | Metric::WriteIops => "op",
        }
    }
}

/// One fio job.
struct FioJob {
    name: &'static str,
    /// Job options (after `[global]`); `time_based` jobs get `runtime` added.
    options: &'static str,
    time_based: bool,
    metric: Metric,
}

const READ_FILE: &str = "read.dat";
const WRITE_FILE: &str = "write.dat";
const META_FILES: u64 = 10_000;

fn fio_jobs() -> Vec<FioJob> {
    vec![
        FioJob {
            name: "seqread-1m-buffered",
            // One pass over the file (fio invalidates the page cache of the file first).
            options: "filename=read.dat\nrw=read\nbs=1m\ndirect=0\nioengine=psync\n",
            time_based: false,
            metric: Metric::ReadMiBs,
        },
        FioJob {
            name: "seqread-1m-direct",
            options: "filename=read.dat\nrw=read\nbs=1m\ndirect=1\nioengine=psync\n",
            time_based: true,
            metric: Metric::ReadMiBs,
        },
        FioJob {
            name: "seqwrite-1m-buffered",
            options: "filename=write.dat\nrw=write\nbs=1m\ndirect=0\nioengine=psync\n",
            time_based: true,
            metric: Metric::WriteMiBs,
        },
        FioJob {
            name: "seqwrite-1m-direct",
            options: "filename=write.dat\nrw=write\nbs=1m\ndirect=1\nioengine=psync\n",
            time_based: true,
            metric: Metric::WriteMiBs,
        },
        FioJob {
            name: "randread-4k-psync-qd1",
            options: "filename=read.dat\nrw=randread\nbs=4k\ndirect=1\nioengine=psync\n",
            time_based: true,
            metric: Metric::ReadIops,
        },
        FioJob {
            name: "randread-4k-libaio-qd16",
            options: "filename=read.dat\nrw=randread\nbs=4k\ndirect=1\nioengine=libaio\n\
                      iodepth=16\n",
            time_based: true,
            metric: Metric::ReadIops,
        },
        FioJob {
            name: "randwrite-4k-psync",
            options: "filename=write.dat\nrw=randwrite\nbs=4k\ndirect=0\nioengine=psync\n",
            time_based: true,
            metric: Metric::WriteIops,
        },
        FioJob {
            name: "randread-4k-mmap",
            options: "filename=read.dat\nrw=randread\nbs=4k\nioengine=mmap\n",
            time_based: true,
            metric: Metric::ReadIops,
        },
    ]
}

/// The metadata job's phases in the order it runs them.
const META_PHASES: [&str; 4] = ["create", "stat", "readdir", "unlink"];

/// The metadata job's phases: (key, unit). Phases are files/s, `meta-total` seconds.
const META_ROWS: [(&str, &str); 5] = [
    ("meta-create", "files/s"),
    ("meta-stat", "files/s"),
    ("meta-readdir", "files/s"),
    ("meta-unlink", "files/s"),
    ("meta-total", "s"),
];

fn lower_is_better(unit: &str) -> bool {
    unit == "s"
}

/// The text of a fio job file for `dir`.
fn job_text(job: &FioJob, dir: &str, cfg: &Config) -> String {
    let mut t = format!(
        "[global]\ndirectory={dir}\nsize={}m\ninvalidate=1\ngroup_reporting=1\n\
         fallocate=none\n\n[{}]\n{}",
        cfg.file_mib, job.name, job.options
    );
    if job.time_based {
        let _ = write!(t, "time_based=1\nruntime={}\n", cfg.runtime_secs);
    }
    t
}

/// What one fio run did: its figure (MiB/s or IOPS) and the work it is per (MiB moved or
/// I/Os done), which the job's CPU time is divided by.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FioFigure {
    value: f64,
    work: f64,
}

/// Extracts the job's figure from fio's JSON output (text before the first `{` is skipped:
/// fio may print notes there).
fn parse_fio(job: &str, text: &str, metric: Metric) -> Result<FioFigure> {
    let bad = |why: String| BenchError::FioOutput {
        job: job.to_string(),
        why,
    };
    let start = text
        .find('{')
        .ok_or_else(|| bad("no JSON object in the output".into()))?;
    let end = text
        .rfind('}')
        .ok_or_else(|| bad("unterminated JSON object".into()))?;
    if end < start {
        return Err(bad("unterminated JSON object".into()));
    }
    let v: Value =
        serde_json::from_str(&text[start..=end]).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let j = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .ok_or_else(|| bad("no jobs[0]".into()))?;
    if let Some(e) = j.get("error").and_then(Value::as_i64) {
        if e != 0 {
            return Err(bad(format!("fio reported error {e}")));
        }
    }
    let dir = match metric {
        Metric::ReadMiBs | Metric::ReadIops => "read",
        Metric::WriteMiBs | Metric::WriteIops => "write",
    };
    let side = j.get(dir).ok_or_else(|| bad(format!("no jobs[0].{dir}")))?;
    let num = |key: &str| -> Result<f64> {
        side.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| bad(format!("no number jobs[0].{dir}.{key}")))
    };
    let io_bytes = num("io_bytes")?;
    if io_bytes <= 0.0 {
        return Err(bad("no I/O was done".into()));
    }
    let (value, work) = match metric {
        Metric::ReadMiBs | Metric::WriteMiBs => (
            num("bw_bytes")? / (1024.0 * 1024.0),
            io_bytes / (1024.0 * 1024.0),
        ),
        Metric::ReadIops | Metric::WriteIops => (num("iops")?, num("total_ios")?),
    };
    Ok(FioFigure { value, work })
}

/// A failed fio run, from `rc=N STDERR {JSON}`: the text before the JSON (shortened) and the
/// job's error number from the JSON when there is one.
fn describe_failure(text: &str) -> String {
    let (head, json_part) = match text.find('{') {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    let mut why: String = head.split_whitespace().collect::<Vec<_>>().join(" ");
    if why.len() > 300 {
        let mut cut = 300;
        while !why.is_char_boundary(cut) {
            cut -= 1;
        }
        why.truncate(cut);
    }
    let errno = json_part
        .and_then(|j| j.rfind('}').map(|e| &j[..=e]))
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
        .and_then(|v| v.get("jobs")?.get(0)?.get("error")?.as_i64())
        .filter(|e| *e != 0);
    if let Some(e) = errno.and_then(|e| i32::try_from(e).ok()) {
        let _ = write!(
            why,
            " (fio job error {e}: {})",
            std::io::Error::from_raw_os_error(e)
        );
    }
    why
}

// ---------------------------------------------------------------------------------------
// The metadata job (runs in the guest and on the host)
// ---------------------------------------------------------------------------------------

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
}

/// `vmbench meta DIR COUNT [--drop-caches] [--tag N]`: creates, stats, lists and unlinks
/// COUNT empty files in DIR (created fresh). Around each phase it prints
/// `@@VMTEST begin.meta-PHASE:N=1` and `@@VMTEST end.meta-PHASE:N=1` (the host reads the
/// daemon's CPU time between them) and then `@@VMTEST meta-PHASE:N=SECONDS`; N (default 0)
/// numbers the repetitions of one boot.
fn meta_command(args: &[String]) -> Result<()> {
    const META_USAGE: &str = "vmbench meta DIR COUNT [--drop-caches] [--tag N]";
    let dir = PathBuf::from(
        args.first()
            .ok_or_else(|| BenchError::Usage(META_USAGE.into()))?,
    );
    let count: u64 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BenchError::Usage(META_USAGE.into()))?;
    let drop = args.iter().any(|a| a == "--drop-caches");
    let tag: u32 = match args.iter().position(|a| a == "--tag") {
        Some(i) => args
            .get(i + 1)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| BenchError::Usage(META_USAGE.into()))?,
        None => 0,
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
    }
    std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let names: Vec<PathBuf> = (0..count).map(|i| dir.join(format!("f{i:05}"))).collect();
    let begin = |phase: &str| -> Instant {
        println!("@@VMTEST begin.meta-{phase}:{tag}=1");
        Instant::now()
    };
    let report = |phase: &str, t: Instant| {
        let secs = t.elapsed().as_secs_f64();
        println!("@@VMTEST end.meta-{phase}:{tag}=1");
        println!("@@VMTEST meta-{phase}:{tag}={secs:.6}");
    };

    let t = begin("create");
    for n in &names {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(n)
            .map_err(io_err(format!("creating {}", n.display())))?;
    }
    report("create", t);
    if drop {
        drop_caches();
    }

    let t = begin("stat");
    for n in &names {
        std::fs::symlink_metadata(n).map_err(io_err(format!("stat {}", n.display())))?;
    }
    report("stat", t);
    if drop {
        drop_caches();
    }

    let t = begin("readdir");
    let mut seen = 0u64;
    for e in std::fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))? {
        e.map_err(io_err(format!("listing {}", dir.display())))?;
        seen += 1;
    }
    report("readdir", t);
    if seen != count {
        return Err(BenchError::Meta(format!(
            "listed {seen} entries, created {count}"
        )));
    }

    let t = begin("unlink");
    for n in &names {
        std::fs::remove_file(n).map_err(io_err(format!("unlinking {}", n.display())))?;
    }
    report("unlink", t);
    std::fs::remove_dir(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
    Ok(())
}

/// Turns the `meta-PHASE:TAG=SECONDS` results of repetition `tag` into the table rows
/// (files/s per phase, total s).
fn meta_rows(
    files: u64,
    get: impl Fn(&str) -> Option<String>,
    tag: usize,
) -> Result<BTreeMap<String, f64>> {
    let mut rows = BTreeMap::new();
    let mut total = 0.0;
    for phase in META_PHASES {
        let key = format!("meta-{phase}:{tag}");
        let raw = get(&key).ok_or_else(|| BenchError::Meta(format!("no {key} result")))?;
        let secs: f64 = raw
            .trim()
            .parse()
            .map_err(|_| BenchError::Meta(format!("{key}={raw:?} is not a number")))?;
        total += secs;
        rows.insert(format!("meta-{phase}"), files as f64 / secs.max(1e-6));
    }
    rows.insert("meta-total".into(), total);
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    json: bool,
    reps: usize,
    /// Runs of every job inside one boot (`--repeat`).
    repeat: usize,
    /// Further processes whose CPU time counts as a daemon's (`--count-cpu WHICH:PID`):
    /// `ceph-fuse` beside a reference serving its mount point, say.
    count_cpu: Vec<(Which, u32)>,
    /// Extra flags for one side's daemon (`--ours-arg`, `--reference-arg`).
    ours_args: Vec<String>,
    reference_args: Vec<String>,
    caches: Vec<CacheMode>,
    runtime_secs: u64,
    file_mib: u64,
    memory_mib: u32,
    smp: u32,
    accel: AccelChoice,
    ours: PathBuf,
    reference: PathBuf,
    work: PathBuf,
    only_jobs: Option<Vec<String>>,
    meta: bool,
    host: bool,
    strace_dir: Option<PathBuf>,
    strace_full: bool,
    markdown_out: Option<PathBuf>,
    json_out: Option<PathBuf>,
    start_samples: usize,
    command: String,
    /// A private copy of this program, copied into guests and run on the host for the
    /// metadata job (the build may replace `target/release/vmbench` while a run is going on).
    self_exe: PathBuf,
    /// `--ours-ceph`: our daemon serves this CephFS directory natively (`--backend cephfs`)
    /// instead of the share folder, which must then be a mount of the same directory (see
    /// [`backend_of`]).
    ours_ceph: Option<vm_tests::CephShare>,
    /// `--meta-files N`: files the metadata job creates, stats, lists and unlinks.
    meta_files: u64,
    /// Both daemons serve one guest (a share each), every job run on one and then the
    /// other ([`run_paired_guest`]); ratios from the pairs. The default (`--paired`) but with
    /// `--ours-ceph` or `--strace`; `--separate-boots` boots a guest per daemon instead.
    paired: bool,
}

const USAGE: &str = "vmbench [--quick] [--json] [--reps N] [--repeat N] [--cache auto,never,...] \
    [--count-cpu ours|reference:PID]... [--ours-arg ARG]... [--reference-arg ARG]... \
    [--runtime SECS] [--file-mib N] [--memory MIB] [--smp N] [--accel auto|kvm|tcg] \
    [--ours BIN] [--reference BIN] [--work DIR] [--jobs a,b,...] [--no-meta] [--no-host] \
    [--strace DIR [--strace-full]] [--markdown-out FILE] [--json-out FILE] \
    [--ours-ceph CONF,ID,KEYRING,ROOT] [--meta-files N] [--paired|--separate-boots]\n       vmbench meta DIR COUNT \
    [--drop-caches]";

fn parse_cache(s: &str) -> Result<CacheMode> {
    match s {
        "auto" => Ok(CacheMode::Auto),
        "always" => Ok(CacheMode::Always),
        "never" => Ok(CacheMode::Never),
        "metadata" => Ok(CacheMode::Metadata),
        o => Err(BenchError::Usage(format!("unknown cache mode {o}"))),
    }
}

fn parse_args(args: &[String]) -> Result<Config> {
    let root = vm_tests::paths::repo_root()?;
    let quick = args.iter().any(|a| a == "--quick");
    let mut c = Config {
        quick,
        json: false,
        reps: 3,
        repeat: if quick { 3 } else { 1 },
        count_cpu: Vec::new(),
        ours_args: Vec::new(),
        reference_args: Vec::new(),
        caches: if quick {
            vec![CacheMode::Auto]
        } else {
            vec![CacheMode::Auto, CacheMode::Always, CacheMode::Never]
        },
        runtime_secs: if quick { 2 } else { 10 },
        file_mib: if quick { 256 } else { 512 },
        memory_mib: 1024,
        smp: 2,
        accel: AccelChoice::from_env()?,
        ours: root.join("target/release/virtiofsd-kr"),
        reference: root.join(".cache/reference-virtiofsd/bin/virtiofsd"),
        work: root.join("target/vmbench"),
        only_jobs: None,
        meta: true,
        host: true,
        strace_dir: None,
        strace_full: false,
        markdown_out: None,
        json_out: None,
        start_samples: 5,
        command: std::iter::once("vmbench".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
        self_exe: PathBuf::new(),
        ours_ceph: None,
        meta_files: META_FILES,
        paired: false,
    };
    let mut paired = None;
    let mut i = 0;
    let val = |i: usize| -> Result<&String> {
        args.get(i + 1)
            .ok_or_else(|| BenchError::Usage(format!("{} needs a value\n{USAGE}", args[i])))
    };
    let num = |i: usize| -> Result<u64> {
        let v = val(i)?;
        v.parse()
            .map_err(|_| BenchError::Usage(format!("{} {v}: not a number", args[i])))
    };
    while i < args.len() {
        let mut skip = 2;
        match args[i].as_str() {
            "--quick" => skip = 1,
            "--json" => {
                c.json = true;
                skip = 1
            }
            "--no-meta" => {
                c.meta = false;
                skip = 1
            }
            "--no-host" => {
                c.host = false;
                skip = 1
            }
            "--strace-full" => {
                c.strace_full = true;
                skip = 1
            }
            "--paired" => {
                paired = Some(true);
                skip = 1
            }
            "--separate-boots" => {
                paired = Some(false);
                skip = 1
            }
            "--reps" => c.reps = num(i)?.max(1) as usize,
            "--repeat" => c.repeat = num(i)?.clamp(1, 100) as usize,
            "--count-cpu" => {
                let v = val(i)?;
                let bad = || {
                    BenchError::Usage(format!("--count-cpu {v}: want ours:PID or reference:PID"))
                };
                let (who, pid) = v.split_once(':').ok_or_else(bad)?;
                let which = match who {
                    "ours" => Which::Ours,
                    "reference" => Which::Reference,
                    _ => return Err(bad()),
                };
                let pid: u32 = pid.parse().map_err(|_| bad())?;
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(BenchError::Usage(format!(
                        "--count-cpu {v}: no process {pid}"
                    )));
                }
                c.count_cpu.push((which, pid));
            }
            "--ours-arg" => c.ours_args.push(val(i)?.clone()),
            "--reference-arg" => c.reference_args.push(val(i)?.clone()),
            "--runtime" => c.runtime_secs = num(i)?.max(1),
            "--file-mib" => c.file_mib = num(i)?.max(16),
            "--memory" => c.memory_mib = num(i)? as u32,
            "--smp" => c.smp = num(i)? as u32,
            "--start-samples" => c.start_samples = num(i)?.max(1) as usize,
            "--accel" => c.accel = AccelChoice::parse(val(i)?)?,
            "--cache" => {
                c.caches = val(i)?
                    .split(',')
                    .map(parse_cache)
                    .collect::<Result<Vec<_>>>()?
            }
            "--ours" => c.ours = PathBuf::from(val(i)?),
            "--reference" => c.reference = PathBuf::from(val(i)?),
            "--work" => c.work = PathBuf::from(val(i)?),
            "--jobs" => c.only_jobs = Some(val(i)?.split(',').map(str::to_string).collect()),
            "--strace" => c.strace_dir = Some(PathBuf::from(val(i)?)),
            "--markdown-out" => c.markdown_out = Some(PathBuf::from(val(i)?)),
            "--json-out" => c.json_out = Some(PathBuf::from(val(i)?)),
            "--ours-ceph" => c.ours_ceph = Some(parse_ours_ceph(val(i)?)?),
            "--meta-files" => c.meta_files = num(i)?.max(1),
            "-h" | "--help" => return Err(BenchError::Usage(USAGE.into())),
            o => return Err(BenchError::Usage(format!("unknown option {o}\n{USAGE}"))),
        }
        i += skip;
    }
    // Paired boots unless asked otherwise, or where they cannot be: a CephFS comparison
    // (both daemons would be clients of one volume at once) and strace (one daemon a boot).
    c.paired = paired.unwrap_or(c.ours_ceph.is_none() && c.strace_dir.is_none());
    if c.paired && (c.ours_ceph.is_some() || c.strace_dir.is_some()) {
        return Err(BenchError::Usage(
            "--paired compares daemons on host folders of their own: not with --ours-ceph or --strace"
                .into(),
        ));
    }
    for (what, p) in [("--ours", &c.ours), ("--reference", &c.reference)] {
        if !p.is_file() {
            return Err(BenchError::Usage(format!(
                "{what} {} does not exist (scripts/bench.sh builds both)",
                p.display()
            )));
        }
    }
    Ok(c)
}

impl Config {
    fn jobs(&self) -> Vec<FioJob> {
        fio_jobs()
            .into_iter()
            .filter(|j| match &self.only_jobs {
                Some(list) => list.iter().any(|n| n == j.name),
                None => true,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Which {
    Ours,
    Reference,
}

impl Which {
    fn key(self) -> &'static str {
        match self {
            Which::Ours => "ours",
            Which::Reference => "reference",
        }
    }
}

/// The flags both daemons get: the same for each (documented in docs/benchmarks.md).
fn daemon_config(cfg: &Config, which: Which, cache: CacheMode) -> DaemonConfig {
    DaemonConfig {
        binary: Some(match which {
            Which::Ours => cfg.ours.clone(),
            Which::Reference => cfg.reference.clone(),
        }),
        cache,
        sandbox: Some("none".into()),
        seccomp: None,
        xattr: false,
        readonly: false,
        log_level: None,
        // O_DIRECT honoured by both (the reference drops it otherwise). Inodes are
        // referenced as each daemon ships: file handles where they work (`prefer`, the
        // default of both when run as root).
        extra_args: ["--allow-direct-io".to_string()]
            .into_iter()
            .chain(match which {
                Which::Ours => cfg.ours_args.iter().cloned(),
                Which::Reference => cfg.reference_args.iter().cloned(),
            })
            .collect(),
        start_timeout: Duration::from_secs(30),
        command_line: None,
        inherited_fd: None,
    }
}

/// Starts a daemon (stdout discarded, stderr to `log`) and waits up to `secs` for its socket.
fn spawn_until_listening(
    binary: &std::path::Path,
    args: Vec<String>,
    log: std::fs::File,
    sock: &std::path::Path,
    secs: u64,
) -> Result<std::process::Child> {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(io_err(format!("starting {}", binary.display())))?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !sock.exists() {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::StartTimeout {
                binary: binary.display().to_string(),
                secs,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(child)
}

/// The order of the two daemons in the `n`th pair of runs: A B, B A, A B, ... Whichever
/// runs first in a pair meets a colder machine (the first boot of a run also meets cold TCG
/// and page caches), so the first place alternates and that bias cancels like slow drift.
fn pair_order(n: usize) -> [Which; 2] {
    if n % 2 == 0 {
        [Which::Ours, Which::Reference]
    } else {
        [Which::Reference, Which::Ours]
    }
}

// ---------------------------------------------------------------------------------------
// CephFS: our daemon's native backend against daemons serving a mount of the same volume
// ---------------------------------------------------------------------------------------

/// `--ours-ceph CONF,ID,KEYRING,ROOT`: ceph.conf, cephx id (without `client.`), its keyring,
/// and the directory inside CephFS whose contents are the share (the same files the share
/// folder shows through a host mount of it, for the other daemon).
fn parse_ours_ceph(v: &str) -> Result<vm_tests::CephShare> {
    let parts: Vec<&str> = v.split(',').collect();
    let [conf, id, keyring, root] = parts[..] else {
        return Err(BenchError::Usage(format!(
            "--ours-ceph {v}: want CONF,ID,KEYRING,ROOT"
        )));
    };
    if !root.starts_with('/') {
        return Err(BenchError::Usage(format!(
            "--ours-ceph: ROOT {root} must be an absolute path inside CephFS"
        )));
    }
    for f in [conf, keyring] {
        if !Path::new(f).is_file() {
            return Err(BenchError::Usage(format!(
                "--ours-ceph: {f} does not exist"
            )));
        }
    }
    Ok(vm_tests::CephShare {
        conf: conf.into(),
        id: id.into(),
        keyring: keyring.into(),
        root: root.into(),
    })
}

/// What `which` serves: the share folder, or for our daemon with `--ours-ceph` the CephFS
/// directory itself through libcephfs.
fn backend_of(cfg: &Config, which: Which, share: &Path) -> vm_tests::ShareBackend {
    match (which, &cfg.ours_ceph) {
        (Which::Ours, Some(c)) => vm_tests::ShareBackend::CephFs(c.clone()),
        _ => vm_tests::ShareBackend::Passthrough(share.to_path_buf()),
    }
}

/// A field of `/proc/PID/status` in KiB (`VmHWM`, `RssAnon`, ...).
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// What a daemon used during one boot: peak memory in KiB and CPU time.
#[derive(Debug, Default, Clone, Copy)]
struct DaemonUsage {
    /// `VmHWM`: the kernel's resident high-water mark. It includes the pages of guest memory
    /// (the shared memfd) the daemon has touched, so it grows with the I/O done.
    hwm: Option<u64>,
    /// The largest `RssAnon` sampled: the daemon's private memory (heap, stacks).
    anon: Option<u64>,
    /// User + system CPU time of the daemon, its children and the `--count-cpu` processes
    /// over the boot, in seconds (`vm_tests::cpu`: `/proc/PID/stat`, clock-tick resolution).
    /// The fio jobs are time based, so a daemon that serves more also spends more: per
    /// operation, [`RunValues::cpu`] is the figure to compare.
    cpu_s: Option<f64>,
}

/// Samples `/proc/PID/status` of the daemon every 50 ms until `stop` is set or it is gone:
/// its `VmHWM`, and `RssAnon` summed with that of the `others` (the `--count-cpu` processes,
/// such as the ceph-fuse a reference serves: their memory is part of its cost too).
fn sample_usage(
    pid: u32,
    others: Vec<u32>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<DaemonUsage> {
    std::thread::spawn(move || {
        let mut peak = DaemonUsage::default();
        let max = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        while !stop.load(Ordering::Relaxed) {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                break;
            };
            let others_anon: u64 = others
                .iter()
                .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
                .filter_map(|s| status_kib(&s, "RssAnon"))
                .sum();
            peak.hwm = max(peak.hwm, status_kib(&status, "VmHWM"));
            peak.anon = max(
                peak.anon,
                status_kib(&status, "RssAnon").map(|a| a + others_anon),
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

/// How often a daemon's CPU time is sampled during a boot: well under a job's length, and
/// twice the clock tick of `/proc/PID/stat`.
const CPU_SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// One start of a daemon without a guest: time to a listening socket and its memory while it
/// waits for a frontend.
#[derive(Debug, Clone, Copy)]
struct StartSample {
    ms: f64,
    /// `/proc/PID/status` 300 ms after the socket appeared, the daemon idle and unconnected:
    /// `VmHWM` (peak resident set so far, KiB) and `RssAnon`.
    idle_hwm_kib: Option<u64>,
    idle_anon_kib: Option<u64>,
}

/// How long an idle daemon settles after its socket appears before its memory is read.
const IDLE_SETTLE: Duration = Duration::from_millis(300);

/// Starts the daemon without a guest and measures the time from spawn to its socket existing
/// (polled every 0.5 ms; fork and exec included), then its idle memory after [`IDLE_SETTLE`].
/// It is then stopped with SIGTERM. The memory read is the spawned process's: right only
/// while both daemons run with `--sandbox none` (with a namespace sandbox that process is
/// the supervisor, not the server).
fn start_sample(cfg: &Config, which: Which, share: &Path) -> Result<StartSample> {
    let dc = daemon_config(cfg, which, CacheMode::Auto);
    let dir = tempfile::Builder::new()
        .prefix("vmbench-start-")
        .tempdir()
        .map_err(io_err("temp dir"))?;
    let sock = dir.path().join("s.sock");
    let binary = dc.binary.clone().unwrap_or_default();
    // The clock starts before the spawn: the daemon may have its socket before spawn returns.
    let t = Instant::now();
    let mut child = Command::new(&binary)
        .args(dc.args_for(&sock, &backend_of(cfg, which, share)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io_err(format!("starting {}", binary.display())))?;
    let deadline = t + Duration::from_secs(10);
    let result = loop {
        if std::fs::symlink_metadata(&sock).is_ok() {
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            std::thread::sleep(IDLE_SETTLE);
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            break Ok(StartSample {
                ms,
                idle_hwm_kib: status_kib(&status, "VmHWM"),
                idle_anon_kib: status_kib(&status, "RssAnon"),
            });
        }
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            break Err(BenchError::StartTimeout {
                binary: binary.display().to_string(),
                secs: 10,
            });
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    // SIGTERM our own child; kill it if it does not stop.
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let stop_deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < stop_deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    result
}

fn version_of(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------------------
// One guest run, one host run
// ---------------------------------------------------------------------------------------

/// What one boot (or one host run) measured: per job, one value per repetition inside it.
#[derive(Debug, Default, Clone)]
struct RunValues {
    /// Job (or metadata row) -> its figure, one per repetition.
    values: BTreeMap<String, Vec<f64>>,
    /// Job (or metadata row) -> daemon CPU seconds per unit of work (per MiB, I/O or file),
    /// one per repetition whose window was found.
    cpu: BTreeMap<String, Vec<f64>>,
    /// The round of each value and of each CPU figure (a failed run leaves a gap): what
    /// pairs the two daemons' runs of a paired boot.
    value_rounds: BTreeMap<String, Vec<usize>>,
    cpu_rounds: BTreeMap<String, Vec<usize>>,
    errors: Vec<String>,
    usage: DaemonUsage,
    elapsed_s: f64,
    /// The host's 1-minute load average when the run ended (others may share the machine).
    load_avg: Option<f64>,
    /// What else the machine did during the boot (other processes, steal).
    other_load: Option<OtherLoadReading>,
}

impl RunValues {
    fn push(&mut self, job: &str, round: usize, value: f64) {
        self.values.entry(job.to_string()).or_default().push(value);
        self.value_rounds
            .entry(job.to_string())
            .or_default()
            .push(round);
    }

    fn push_cpu(&mut self, job: &str, round: usize, per_unit: f64) {
        self.cpu.entry(job.to_string()).or_default().push(per_unit);
        self.cpu_rounds
            .entry(job.to_string())
            .or_default()
            .push(round);
    }
}

fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The guest shell function that runs one fio job between the markers whose times bound
/// the window charged to it (`run_job JOB ROUND [JOBDIR]`: the job file is
/// `JOBDIR/JOB.fio`, `/bench` by default); the DAX and multiqueue modes use it too.
pub(crate) const RUN_JOB: &str = "run_job() {\n\
         \x20   echo \"@@VMTEST begin.$1:$2=1\"\n\
         \x20   fio --output-format=json --output=/tmp/$1.json ${3:-/bench}/$1.fio >/tmp/$1.err 2>&1\n\
         \x20   rc=$?\n\
         \x20   echo \"@@VMTEST end.$1:$2=1\"\n\
         \x20   if [ $rc = 0 ]; then\n\
         \x20       echo \"@@VMTEST fio.$1:$2=$(tr -d '\\n' < /tmp/$1.json)\"\n\
         \x20   else\n\
         \x20       echo \"@@VMTEST fio.$1:$2=FAILED rc=$rc $(tr '\\n' ' ' < /tmp/$1.err | cut -c1-300) \\\n\
         \x20           $(tr -d '\\n' < /tmp/$1.json 2>/dev/null)\"\n\
         \x20   fi\n\
         }\n";

/// The guest's workload: `repeat` rounds of every fio job and the metadata job. Each fio run
/// is framed by `begin.JOB:N` and `end.JOB:N` lines (N: the round), whose arrival times on
/// the host bound the window in which the daemon's CPU time is charged to that run.
fn guest_script(cfg: &Config, jobs: &[FioJob]) -> String {
    let mut s = String::from("mkdir -p /data/bench\n");
    s.push_str(RUN_JOB);
    for round in 0..cfg.repeat {
        for j in jobs {
            let _ = writeln!(s, "run_job {} {round}", j.name);
        }
        if cfg.meta {
            let _ = writeln!(
                s,
                "/bin/vmbench meta /data/bench/meta {} --drop-caches --tag {round} || \
                 echo \"@@VMTEST-ERROR metadata job failed\"",
                cfg.meta_files
            );
        }
    }
    s.push_str("exit 0\n");
    s
}

/// The fio results of round `round`, reported by the guest under `tag` (the round unless two
/// daemons share the boot): values into `out`, and what each did (for CPU per unit).
fn collect_fio(
    jobs: &[FioJob],
    round: usize,
    tag: usize,
    get: impl Fn(&str) -> Option<String>,
    out: &mut RunValues,
) -> BTreeMap<&'static str, FioFigure> {
    let mut done = BTreeMap::new();
    for j in jobs {
        let key = format!("fio.{}:{tag}", j.name);
        match get(&key) {
            None => out
                .errors
                .push(format!("{} (round {round}): no result", j.name)),
            Some(v) if v.starts_with("FAILED") => out.errors.push(
                BenchError::FioFailed {
                    job: j.name.into(),
                    why: describe_failure(v.trim_start_matches("FAILED")),
                }
                .to_string(),
            ),
            Some(v) => match parse_fio(j.name, &v, j.metric) {
                Ok(x) => {
                    out.push(j.name, round, x.value);
                    done.insert(j.name, x);
                }
                Err(e) => out.errors.push(e.to_string()),
            },
        }
    }
    done
}

/// CPU seconds the daemon spent between the guest's `begin.NAME:ROUND` and
/// `end.NAME:ROUND` lines.
fn window_cpu(results: &GuestResults, trace: &CpuTrace, name: &str, round: usize) -> Option<f64> {
    let from = results.entry(&format!("begin.{name}:{round}"))?.at;
    let to = results.entry(&format!("end.{name}:{round}"))?.at;
    (to > from).then(|| trace.between(from, to)).flatten()
}

/// The processes whose CPU time counts as `which`'s: the daemon and `--count-cpu` ones.
fn cpu_roots(cfg: &Config, which: Which, daemon: u32) -> Vec<u32> {
    std::iter::once(daemon)
        .chain(
            cfg.count_cpu
                .iter()
                .filter(|(w, _)| *w == which)
                .map(|(_, p)| *p),
        )
        .collect()
}

/// The Ceph daemons of a storage cluster: they serve a CephFS bench's requests on both sides.
const CEPH_SERVICES: [&str; 4] = ["ceph-mon", "ceph-mgr", "ceph-osd", "ceph-mds"];

/// Processes outside vmbench's own tree that do the bench's work, so not other load: the
/// `--count-cpu` ones and, in a CephFS bench, the storage cluster's daemons.
fn work_outside_the_bench(cfg: &Config) -> Vec<u32> {
    let mut work: Vec<u32> = cfg.count_cpu.iter().map(|(_, p)| *p).collect();
    if cfg.ours_ceph.is_some() {
        let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        work.extend(procs.filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            CEPH_SERVICES.contains(&comm.trim()).then_some(pid)
        }));
    }
    work
}

/// One daemon's figures of a boot: for each round, its fio results and metadata rows, and
/// its CPU time per unit of work inside each run's window. The guest tagged this daemon's
/// runs `round + tag_offset` (0 unless two daemons share the boot).
fn collect_side(
    cfg: &Config,
    jobs: &[FioJob],
    results: &GuestResults,
    trace: &CpuTrace,
    name: &str,
    tag_offset: usize,
    out: &mut RunValues,
) {
    let get = |k: &str| results.get(k).map(str::to_string);
    for round in 0..cfg.repeat {
        let tag = round + tag_offset;
        for (job, fig) in collect_fio(jobs, round, tag, get, out) {
            match window_cpu(results, trace, job, tag) {
                Some(c) if fig.work > 0.0 => out.push_cpu(job, round, c / fig.work),
                _ => out
                    .errors
                    .push(format!("{name}: no CPU window for {job} round {round}")),
            }
        }
        if cfg.meta {
            match meta_rows(cfg.meta_files, get, tag) {
                Ok(rows) => {
                    for (k, v) in rows {
                        out.push(&k, round, v);
                    }
                    let mut total = Some(0.0);
                    for phase in META_PHASES {
                        let key = format!("meta-{phase}");
                        let c = window_cpu(results, trace, &key, tag);
                        if let Some(c) = c {
                            out.push_cpu(&key, round, c / cfg.meta_files as f64);
                        }
                        total = total.zip(c).map(|(t, c)| t + c);
                    }
                    match total {
                        Some(t) => out.push_cpu("meta-total", round, t / cfg.meta_files as f64),
                        None => out.errors.push(format!(
                            "{name}: no CPU window for a metadata phase of round {round}"
                        )),
                    }
                }
                Err(e) => out.errors.push(e.to_string()),
            }
        }
    }
}

/// One daemon watched through a boot: its peak memory ([`sample_usage`]) and its CPU time
/// over time ([`CpuSampler`]), both counting the `--count-cpu` processes that are its.
struct DaemonWatch {
    usage: Option<std::thread::JoinHandle<DaemonUsage>>,
    cpu: Option<CpuSampler>,
}

impl DaemonWatch {
    /// Starts watching `pid` (nothing when the boot has no such daemon); the usage sampler
    /// stops when `stop` is set.
    fn start(cfg: &Config, which: Which, pid: Option<u32>, stop: &Arc<AtomicBool>) -> Self {
        let Some(pid) = pid else {
            return DaemonWatch {
                usage: None,
                cpu: None,
            };
        };
        let roots = cpu_roots(cfg, which, pid);
        DaemonWatch {
            cpu: Some(CpuSampler::start(&roots, CPU_SAMPLE_EVERY)),
            usage: Some(sample_usage(
                pid,
                roots.into_iter().skip(1).collect(),
                Arc::clone(stop),
            )),
        }
    }

    /// The CPU trace, and the usage with the boot's whole CPU time in it (call after `stop`).
    fn finish(self) -> (CpuTrace, DaemonUsage) {
        let trace = self.cpu.map(CpuSampler::finish).unwrap_or_default();
        let mut usage = self.usage.and_then(|h| h.join().ok()).unwrap_or_default();
        usage.cpu_s = match (trace.points.first(), trace.last()) {
            (Some(first), Some(last)) => Some(last - first.1),
            _ => None,
        };
        (trace, usage)
    }
}

fn run_guest(
    cfg: &Config,
    which: Which,
    cache: CacheMode,
    rep: usize,
    share: &Path,
    jobs: &[FioJob],
) -> Result<RunValues> {
    let name = format!("{}-{}-{}", which.key(), cache, rep);
    let exe = &cfg.self_exe;
    let mut b = VmBuilder::new()
        .name(&name)
        .backend(backend_of(cfg, which, share))
        .daemon_config(daemon_config(cfg, which, cache))
        .fio(true)
        .memory_mib(cfg.memory_mib)
        .smp(cfg.smp)
        .accel(cfg.accel)
        .timeout(Duration::from_secs(1800))
        .daemon_exit_timeout(Duration::from_secs(30))
        .workload(&guest_script(cfg, jobs))
        .program(exe, "/bin/vmbench")?;
    for j in jobs {
        b = b.file(
            &format!("/bench/{}.fio", j.name),
            0o644,
            job_text(j, "/data/bench", cfg),
        );
    }
    let other_load = OtherLoad::start(&work_outside_the_bench(cfg));
    let vm = b.spawn()?;
    let pid = vm.daemon_pid();
    let stop = Arc::new(AtomicBool::new(false));
    let watch = DaemonWatch::start(cfg, which, pid, &stop);
    let strace = match (&cfg.strace_dir, pid) {
        (Some(dir), Some(p)) => {
            std::fs::create_dir_all(dir).map_err(io_err("creating the strace dir"))?;
            let out = dir.join(format!("{name}.strace.txt"));
            let mode: &[&str] = if cfg.strace_full {
                &["-f", "-tt", "-T", "-o"]
            } else {
                &["-c", "-f", "-o"]
            };
            Some(
                Command::new("strace")
                    .args(mode)
                    .arg(&out)
                    .args(["-p", &p.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(io_err("starting strace"))?,
            )
        }
        _ => None,
    };
    let outcome = vm.wait()?;
    stop.store(true, Ordering::Relaxed);
    let (trace, peak) = watch.finish();
    if let Some(mut s) = strace {
        let _ = s.wait();
    }
    let mut out = RunValues {
        other_load: other_load.and_then(|l| l.finish()),
        usage: peak,
        elapsed_s: outcome.elapsed.as_secs_f64(),
        load_avg: load_avg(),
        ..RunValues::default()
    };
    collect_side(cfg, jobs, &outcome.results, &trace, &name, 0, &mut out);
    // Our daemon logs what its request-queue polling and its request workers did
    // (docs/benchmarks.md): into the progress log, beside the figures they explain.
    if let Some(d) = &outcome.daemon {
        let explains = |l: &&str| l.contains(" polling: ") || l.contains(" request workers: ");
        for line in d.log.lines().filter(explains) {
            eprintln!("vmbench: [{name}] {}", line.trim());
        }
    }
    for p in outcome.problems() {
        out.errors.push(format!("{name}: {p}"));
    }
    if !out.errors.is_empty() {
        let log: String = outcome
            .serial_text()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        eprintln!("vmbench: [{name}] problems: {:?}\n{log}", out.errors);
    }
    Ok(out)
}

/// In a paired boot, the reference's runs are tagged `round + PAIRED_TAG_OFFSET`, ours
/// `round`.
const PAIRED_TAG_OFFSET: usize = 100;

fn paired_tag_offset(which: Which) -> usize {
    match which {
        Which::Ours => 0,
        Which::Reference => PAIRED_TAG_OFFSET,
    }
}

/// Which daemon a paired boot puts on the first virtio-fs device (mounted by the guest's
/// /init at /data) and which on the second (/data2): alternating with the repetition, so
/// that the device order cancels like the run order.
fn paired_devices(rep: usize) -> [(Which, &'static str); 2] {
    let [first, second] = pair_order(rep);
    [
        (first, vm_tests::GUEST_MOUNT),
        (second, vm_tests::SECOND_MOUNT),
    ]
}

/// The workload of a paired boot: `repeat` rounds; in each, every fio job twice in a row,
/// once on each daemon's share, in an order that alternates from job to job, round to round
/// and boot to boot (A B, B A, ...), then the metadata job on each share the same way. The
/// two runs of a pair are seconds apart in one guest, so what the boot and the moment do to
/// both cancels in their ratio.
fn paired_guest_script(cfg: &Config, jobs: &[FioJob], rep: usize) -> String {
    let devices = paired_devices(rep);
    let mount = |which: Which| {
        devices
            .iter()
            .find(|(w, _)| *w == which)
            .map_or(vm_tests::GUEST_MOUNT, |(_, m)| *m)
    };
    let mut s = String::new();
    for (_, m) in devices {
        let _ = writeln!(s, "mkdir -p {m}/bench");
    }
    s.push_str(RUN_JOB);
    for round in 0..cfg.repeat {
        for (i, j) in jobs.iter().enumerate() {
            for which in pair_order(rep + round + i) {
                let _ = writeln!(
                    s,
                    "run_job {} {} /bench-{}",
                    j.name,
                    round + paired_tag_offset(which),
                    which.key()
                );
            }
        }
        if cfg.meta {
            for which in pair_order(rep + round + jobs.len()) {
                let _ = writeln!(
                    s,
                    "/bin/vmbench meta {}/bench/meta {} --drop-caches --tag {} || \
                     echo \"@@VMTEST-ERROR metadata job of {} failed\"",
                    mount(which),
                    cfg.meta_files,
                    round + paired_tag_offset(which),
                    which.key()
                );
            }
        }
    }
    s.push_str("exit 0\n");
    s
}

/// One guest boot served by both daemons (`--paired`): ours on `shares[0]`, the reference
/// on `shares[1]`, each share a folder of its own with the same files, each daemon on its
/// own `vhost-user-fs-pci`. Returns ours' figures and the reference's, each with its CPU time
/// per unit of work inside its own runs' windows.
fn run_paired_guest(
    cfg: &Config,
    cache: CacheMode,
    rep: usize,
    shares: [&Path; 2],
    jobs: &[FioJob],
) -> Result<[RunValues; 2]> {
    let name = format!("paired-{cache}-{rep}");
    let share_of = |which: Which| match which {
        Which::Ours => shares[0],
        Which::Reference => shares[1],
    };
    let [(first, _), (second, _)] = paired_devices(rep);
    let mut b = VmBuilder::new()
        .name(&name)
        .backend(backend_of(cfg, first, share_of(first)))
        .daemon_config(daemon_config(cfg, first, cache))
        .second_share(
            backend_of(cfg, second, share_of(second)),
            daemon_config(cfg, second, cache),
        )
        .fio(true)
        .memory_mib(cfg.memory_mib)
        .smp(cfg.smp)
        .accel(cfg.accel)
        .timeout(Duration::from_secs(3600))
        .daemon_exit_timeout(Duration::from_secs(30))
        .workload(&paired_guest_script(cfg, jobs, rep))
        .program(&cfg.self_exe, "/bin/vmbench")?;
    for (which, mount) in paired_devices(rep) {
        for j in jobs {
            b = b.file(
                &format!("/bench-{}/{}.fio", which.key(), j.name),
                0o644,
                job_text(j, &format!("{mount}/bench"), cfg),
            );
        }
    }
    let other_load = OtherLoad::start(&work_outside_the_bench(cfg));
    let vm = b.spawn()?;
    let pid_of = |which: Which| {
        if which == first {
            vm.daemon_pid()
        } else {
            vm.second_daemon_pid()
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let watches: Vec<(Which, DaemonWatch)> = [Which::Ours, Which::Reference]
        .into_iter()
        .map(|which| (which, DaemonWatch::start(cfg, which, pid_of(which), &stop)))
        .collect();
    let outcome = vm.wait()?;
    stop.store(true, Ordering::Relaxed);
    let problems = outcome.problems();
    let mut sides = Vec::new();
    let finished: Vec<(Which, (CpuTrace, DaemonUsage))> = watches
        .into_iter()
        .map(|(which, w)| (which, w.finish()))
        .collect();
    let other_load = other_load.and_then(|l| l.finish());
    for (which, (trace, peak)) in finished {
        let mut out = RunValues {
            other_load,
            usage: peak,
            elapsed_s: outcome.elapsed.as_secs_f64(),
            load_avg: load_avg(),
            ..RunValues::default()
        };
        let side = format!("{name} {}", which.key());
        collect_side(
            cfg,
            jobs,
            &outcome.results,
            &trace,
            &side,
            paired_tag_offset(which),
            &mut out,
        );
        out.errors
            .extend(problems.iter().map(|p| format!("{name}: {p}")));
        if !out.errors.is_empty() {
            eprintln!("vmbench: [{side}] problems: {:?}", out.errors);
        }
        sides.push(out);
    }
    if !problems.is_empty() {
        let text = outcome.serial_text();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "vmbench: [{name}] serial log (end):\n{}",
            lines[lines.len().saturating_sub(15)..].join("\n")
        );
    }
    let reference = sides.pop().unwrap_or_default();
    let ours = sides.pop().unwrap_or_default();
    Ok([ours, reference])
}

fn run_host(cfg: &Config, dir: &Path, jobs: &[FioJob]) -> Result<RunValues> {
    let started = Instant::now();
    let mut out = RunValues::default();
    let mut results: BTreeMap<String, String> = BTreeMap::new();
    let jobdir = tempfile::Builder::new()
        .prefix("vmbench-host-")
        .tempdir()
        .map_err(io_err("temp dir"))?;
    for j in jobs {
        let f = jobdir.path().join(format!("{}.fio", j.name));
        std::fs::write(&f, job_text(j, &dir.display().to_string(), cfg))
            .map_err(io_err("writing a job file"))?;
        let o = Command::new("fio")
            .arg("--output-format=json")
            .arg(&f)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running fio on the host"))?;
        let text = String::from_utf8_lossy(&o.stdout).replace('\n', "");
        if o.status.success() {
            results.insert(format!("fio.{}:0", j.name), text);
        } else {
            results.insert(
                format!("fio.{}:0", j.name),
                format!("FAILED {}", String::from_utf8_lossy(&o.stderr)),
            );
        }
    }
    collect_fio(jobs, 0, 0, |k| results.get(k).cloned(), &mut out);
    if cfg.meta {
        let exe = &cfg.self_exe;
        // The host's caches are shared with everyone on the machine: not dropped here.
        let o = Command::new(exe)
            .arg("meta")
            .arg(dir.join("meta"))
            .arg(cfg.meta_files.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running the metadata job on the host"))?;
        let mut kv = BTreeMap::new();
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if let Ok(Line::Result { key, value }) = parse_line(l) {
                kv.insert(key, value);
            }
        }
        match meta_rows(cfg.meta_files, |k| kv.get(k).cloned(), 0) {
            Ok(rows) => {
                for (k, v) in rows {
                    out.push(&k, 0, v);
                }
            }
            Err(e) => out.errors.push(format!(
                "host: {e}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
        }
    }
    out.elapsed_s = started.elapsed().as_secs_f64();
    out.load_avg = load_avg();
    if !out.errors.is_empty() {
        eprintln!("vmbench: [host] problems: {:?}", out.errors);
    }
    Ok(out)
}

/// Creates the read and write files (`file_mib` MiB of non-zero data) once, on the host.
fn prepare_dir(dir: &Path, mib: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for name in [READ_FILE, WRITE_FILE] {
        let p = dir.join(name);
        if std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) == mib << 20 {
            continue;
        }
        let mut f =
            std::fs::File::create(&p).map_err(io_err(format!("creating {}", p.display())))?;
        for _ in 0..mib {
            for chunk in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block)
                .map_err(io_err(format!("writing {}", p.display())))?;
        }
        f.sync_all().map_err(io_err("fsync"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Statistics and output
// ---------------------------------------------------------------------------------------

fn ratio(ours: Option<f64>, other: Option<f64>, lower_better: bool) -> Option<f64> {
    let (o, r) = (ours?, other?);
    if o <= 0.0 || r <= 0.0 {
        return None;
    }
    Some(if lower_better { r / o } else { o / r })
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn mib_pair(max: Option<f64>, med: Option<f64>) -> String {
    match (max, med) {
        (Some(a), Some(b)) => format!("{:.1} MiB ({:.1} MiB)", a / 1024.0, b / 1024.0),
        _ => "n/a".into(),
    }
}

/// `1.23 [1.10-1.38] won`: a ratio, its 95 % interval and what it says.
fn fmt_interval(r: Option<&RatioInterval>, above_one_is_better: bool) -> String {
    match r {
        None => "n/a".into(),
        Some(r) => format!(
            "{:.2} [{:.2}-{:.2}] {}",
            r.ratio,
            r.low,
            r.high,
            r.verdict(above_one_is_better).as_str()
        ),
    }
}

fn interval_json(r: Option<&RatioInterval>, above_one_is_better: bool) -> Value {
    match r {
        None => Value::Null,
        Some(r) => json!({
            "estimate": round(r.ratio, 3),
            "ci95_low": round(r.low, 3),
            "ci95_high": round(r.high, 3),
            "verdict": r.verdict(above_one_is_better).as_str(),
            "samples": [r.n_a, r.n_b],
            "boots": [r.boots_a, r.boots_b],
        }),
    }
}

/// A CPU cost per unit of work, in µs (per op, MiB or file), for the table.
/// Above this many CPUs of other work in a boot, a report says the machine was not quiet
/// (docs/benchmarks.md: quiet boots here read 0.003, boots beside a busy loop that runs half
/// the time 0.43).
const QUIET_OTHER_CPUS: f64 = 0.15;
/// Likewise for CPUs stolen by the hypervisor.
const QUIET_STEAL_CPUS: f64 = 0.05;

fn fmt_cpus(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.2}"))
}

fn fmt_cpu_us(v: Option<f64>) -> String {
    fmt_num(v.map(|s| s * 1e6))
}

/// Units of work per CPU second.
fn per_cpu_second(v: Option<f64>) -> Option<f64> {
    v.filter(|s| *s > 0.0).map(|s| 1.0 / s)
}

/// One job's samples from a set of runs, grouped by boot (a boot's repetitions together).
/// The pairs of a paired bench for one row: per boot, (ours, reference) of each round both
/// daemons completed; `cpu` picks CPU per unit of work instead of the figure.
fn paired_samples(
    ours: &[RunValues],
    reference: &[RunValues],
    job: &str,
    cpu: bool,
) -> Vec<Vec<(f64, f64)>> {
    let by_round = |r: &RunValues| -> BTreeMap<usize, f64> {
        let (values, rounds) = if cpu {
            (r.cpu.get(job), r.cpu_rounds.get(job))
        } else {
            (r.values.get(job), r.value_rounds.get(job))
        };
        rounds
            .into_iter()
            .flatten()
            .copied()
            .zip(values.into_iter().flatten().copied())
            .collect()
    };
    ours.iter()
        .zip(reference)
        .map(|(o, r)| {
            let (o, r) = (by_round(o), by_round(r));
            o.iter()
                .filter_map(|(round, x)| r.get(round).map(|y| (*x, *y)))
                .collect()
        })
        .collect()
}

fn grouped(runs: &[RunValues], pick: impl Fn(&RunValues) -> Option<&Vec<f64>>) -> Vec<Vec<f64>> {
    runs.iter()
        .filter_map(|r| pick(r).filter(|v| !v.is_empty()).cloned())
        .collect()
}

fn machine_description(cfg: &Config) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let first_line = |prog: &std::ffi::OsStr, arg: &str| {
        Command::new(prog)
            .arg(arg)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    // Device, type and mount options: whether the share's filesystem has a journal, say,
    // changes what a create costs the host (docs/benchmarks.md, `bench.sh --fs`).
    let fstype = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T"])
        .arg(&cfg.work)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let guest_kernel = vm_tests::GuestImage::locate()
        .map(|g| g.kernel_version)
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "host_cores": cores,
        "host_memory_gib": round(mem_kib as f64 / 1048576.0, 1),
        "host_kernel": kernel,
        "qemu": vm_tests::paths::qemu_binary()
            .map(|q| first_line(q.as_os_str(), "--version"))
            .unwrap_or_default(),
        "fio": first_line("fio".as_ref(), "--version"),
        "share_filesystem": fstype,
        "guest_kernel": guest_kernel,
        "guest_memory_mib": cfg.memory_mib,
        "guest_vcpus": cfg.smp,
        "accel_requested": format!("{:?}", cfg.accel).to_lowercase(),
    })
}

struct Report {
    json: Value,
    markdown: String,
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    cfg: &Config,
    jobs: &[FioJob],
    guest: &BTreeMap<(String, Which), Vec<RunValues>>,
    host: &[RunValues],
    starts: &BTreeMap<&'static str, Vec<StartSample>>,
    accel: &str,
    elapsed: Duration,
) -> Report {
    // (row, unit of the figure, unit of work its CPU time is divided by)
    let mut rows: Vec<(String, &'static str, &'static str)> = jobs
        .iter()
        .map(|j| (j.name.to_string(), j.metric.unit(), j.metric.work_unit()))
        .collect();
    if cfg.meta {
        rows.extend(META_ROWS.iter().map(|(k, u)| (k.to_string(), *u, "file")));
    }
    let flat = |g: &[Vec<f64>]| median(&g.concat());
    let mut json_jobs = Vec::new();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| cache | job | unit | ours | reference | host | ours/reference [95 %] | n | CPU per | \
         CPU µs ours | CPU µs reference | CPU ours/reference [95 %] | per CPU-s ours | \
         per CPU-s reference |\n\
         |---|---|---|---:|---:|---:|---|---:|---|---:|---:|---|---:|---:|"
    );
    for cache in &cfg.caches {
        let empty = Vec::new();
        let ours_runs = guest
            .get(&(cache.to_string(), Which::Ours))
            .unwrap_or(&empty);
        let ref_runs = guest
            .get(&(cache.to_string(), Which::Reference))
            .unwrap_or(&empty);
        for (job, unit, work) in &rows {
            let lb = lower_is_better(unit);
            let value = |runs: &[RunValues]| grouped(runs, |r| r.values.get(job.as_str()));
            let cpu = |runs: &[RunValues]| grouped(runs, |r| r.cpu.get(job.as_str()));
            let (ov, rv, hv) = (value(ours_runs), value(ref_runs), value(host));
            let (oc, rc) = (cpu(ours_runs), cpu(ref_runs));
            let o = flat(&ov);
            let r = flat(&rv);
            let h = if cfg.host { flat(&hv) } else { None };
            // Oriented so that above 1 is better for us: ours/reference for rates,
            // reference/ours for seconds.
            let (vr, cr) = if cfg.paired {
                let vp = paired_samples(ours_runs, ref_runs, job, false);
                let swapped: Vec<Vec<(f64, f64)>> = vp
                    .iter()
                    .map(|b| b.iter().map(|(o, r)| (*r, *o)).collect())
                    .collect();
                (
                    paired_ratio_interval(if lb { &swapped } else { &vp }, DEFAULT_SEED),
                    paired_ratio_interval(
                        &paired_samples(ours_runs, ref_runs, job, true),
                        DEFAULT_SEED,
                    ),
                )
            } else {
                (
                    if lb {
                        ratio_interval(&rv, &ov, DEFAULT_SEED)
                    } else {
                        ratio_interval(&ov, &rv, DEFAULT_SEED)
                    },
                    // CPU per unit of work, ours/reference: below 1 is better for us.
                    ratio_interval(&oc, &rc, DEFAULT_SEED),
                )
            };
            let vh = ratio(o, h, lb);
            let (oc_med, rc_med) = (flat(&oc), flat(&rc));
            let rounded = |g: &[Vec<f64>], digits: i32| -> Value {
                json!(g
                    .iter()
                    .map(|b| b.iter().map(|x| round(*x, digits)).collect::<Vec<_>>())
                    .collect::<Vec<_>>())
            };
            json_jobs.push(json!({
                "job": job,
                "cache": cache.as_str(),
                "unit": unit,
                "higher_is_better": !lb,
                "ours": o.map(|x| round(x, 3)),
                "reference": r.map(|x| round(x, 3)),
                "host": h.map(|x| round(x, 3)),
                "ours_vs_reference": interval_json(vr.as_ref(), true),
                "ours_vs_host": vh.map(|x| round(x, 3)),
                "samples_per_boot": {
                    "ours": rounded(&ov, 3),
                    "reference": rounded(&rv, 3),
                    "host": rounded(&hv, 3),
                },
                "cpu": {
                    "per": work,
                    "ours_s_per_unit": oc_med.map(|x| round(x, 9)),
                    "reference_s_per_unit": rc_med.map(|x| round(x, 9)),
                    "ours_units_per_cpu_s": per_cpu_second(oc_med).map(|x| round(x, 1)),
                    "reference_units_per_cpu_s": per_cpu_second(rc_med).map(|x| round(x, 1)),
                    "ours_vs_reference": interval_json(cr.as_ref(), false),
                    "samples_per_boot": {
                        "ours": rounded(&oc, 9),
                        "reference": rounded(&rc, 9),
                    },
                },
            }));
            let _ = writeln!(
                md,
                "| {cache} | {job} | {unit} | {} | {} | {} | {} | {} | {work} | {} | {} | {} | {} | {} |",
                fmt_num(o),
                fmt_num(r),
                fmt_num(h),
                fmt_interval(vr.as_ref(), true),
                vr.map_or("0".into(), |x| format!(
                    "{}/{} ({}/{})",
                    x.n_a, x.n_b, x.boots_a, x.boots_b
                )),
                fmt_cpu_us(oc_med),
                fmt_cpu_us(rc_med),
                fmt_interval(cr.as_ref(), false),
                fmt_num(per_cpu_second(oc_med)),
                fmt_num(per_cpu_second(rc_med)),
            );
        }
    }
    let design = if cfg.paired {
        "Paired boots: both daemons served each guest (a share each, on its own \
         vhost-user-fs-pci), every job ran on one and right after on the other, the order \
         alternating. Ratios: one-sample Hodges-Lehmann estimate of the pairs' ratios with a \
         95 % hierarchical-bootstrap interval (boots, then pairs"
    } else {
        "Ratios: Hodges-Lehmann estimate with a 95 % hierarchical-bootstrap interval \
         (boots, then repetitions"
    };
    let _ = writeln!(
        md,
        "\n{design}; {} resamples, fixed seed); `won`/`lost` only when the \
         interval excludes 1.0. Throughput ratios: above 1 is better for us. CPU: the \
         daemon's run time (schedstat nanoseconds of its threads, with its children and \
         `--count-cpu` processes) inside each job's window, per unit of work; CPU ratio ours/reference, below 1 is better for us. \
         `n`: samples ours/reference (boots); no verdict from fewer than 2 boots or {} samples a side.",
        vm_tests::stats::RESAMPLES,
        vm_tests::stats::MIN_VERDICT_SAMPLES
    );
    let mut daemons = serde_json::Map::new();
    let _ = writeln!(
        md,
        "\n| daemon | version | idle, no guest: VmHWM max (median) | serving: VmHWM max \
         (median) | serving: RssAnon max (median), with --count-cpu processes | CPU time per \
         boot (median) | start to \
         listening socket (median) |\n|---|---|---:|---:|---:|---:|---:|"
    );
    for which in [Which::Ours, Which::Reference] {
        let runs: Vec<&RunValues> = guest
            .iter()
            .filter(|((_, w), _)| *w == which)
            .flat_map(|(_, v)| v.iter())
            .collect();
        let stat = |f: fn(&DaemonUsage) -> Option<u64>| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| f(&r.usage).map(|x| x as f64))
                .collect();
            (v.iter().copied().reduce(f64::max), median(&v))
        };
        let (hwm_max, hwm_med) = stat(|p| p.hwm);
        let (anon_max, anon_med) = stat(|p| p.anon);
        let cpu: Vec<f64> = runs.iter().filter_map(|r| r.usage.cpu_s).collect();
        let cpu_med = median(&cpu);
        let started: &[StartSample] = starts.get(which.key()).map_or(&[], Vec::as_slice);
        let st = median(&started.iter().map(|s| s.ms).collect::<Vec<_>>());
        let idle: Vec<f64> = started
            .iter()
            .filter_map(|s| s.idle_hwm_kib.map(|x| x as f64))
            .collect();
        let (idle_max, idle_med) = (idle.iter().copied().reduce(f64::max), median(&idle));
        let binary = match which {
            Which::Ours => &cfg.ours,
            Which::Reference => &cfg.reference,
        };
        let version = version_of(binary);
        let args = daemon_config(cfg, which, CacheMode::Auto)
            .args(Path::new("SOCKET"), Path::new("SHARE"))
            .join(" ")
            .replace("--cache auto", "--cache MODE");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            which.key(),
            version,
            mib_pair(idle_max, idle_med),
            mib_pair(hwm_max, hwm_med),
            mib_pair(anon_max, anon_med),
            cpu_med.map_or("n/a".into(), |s| format!("{s:.2} s")),
            st.map_or("n/a".into(), |ms| format!("{ms:.1} ms")),
        );
        daemons.insert(
            which.key().into(),
            json!({
                "binary": binary.display().to_string(),
                "version": version,
                "args": args,
                "peak_rss_kib": hwm_max.map(|x| x as u64),
                "peak_rss_kib_median": hwm_med.map(|x| x as u64),
                "peak_rss_anon_kib": anon_max.map(|x| x as u64),
                "peak_rss_anon_kib_median": anon_med.map(|x| x as u64),
                "peak_rss_per_boot": runs.iter().map(|r| json!({
                    "vm_hwm_kib": r.usage.hwm, "rss_anon_kib": r.usage.anon,
                })).collect::<Vec<_>>(),
                "cpu_s_median": cpu_med.map(|x| round(x, 3)),
                "cpu_s_per_boot": runs.iter().map(|r| r.usage.cpu_s.map(|x| round(x, 3)))
                    .collect::<Vec<_>>(),
                "cpu_source": "run time of /proc/PID/task/*/schedstat (all threads, exited \
                    ones with their last reading), last sample before the daemon exited; same \
                    guest jobs for both daemons",
                "peak_rss_source": "VmHWM and RssAnon of /proc/PID/status sampled every 50 ms \
                    while the guest runs; VmHWM counts the guest-memory pages the daemon touched; \
                    RssAnon adds that of the --count-cpu processes (a reference's ceph-fuse)",
                "idle_rss_kib": idle_max.map(|x| x as u64),
                "idle_rss_kib_median": idle_med.map(|x| x as u64),
                "idle_samples": started.iter().map(|s| json!({
                    "vm_hwm_kib": s.idle_hwm_kib, "rss_anon_kib": s.idle_anon_kib,
                })).collect::<Vec<_>>(),
                "idle_rss_source": "VmHWM and RssAnon of /proc/PID/status 300 ms after the \
                    daemon's socket appeared, no frontend connected",
                "start_ms_median": st.map(|x| round(x, 2)),
                "start_ms_samples": started.iter().map(|s| round(s.ms, 2)).collect::<Vec<_>>(),
            }),
        );
    }
    let errors: Vec<String> = guest
        .values()
        .flatten()
        .chain(host.iter())
        .flat_map(|r| r.errors.iter().cloned())
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "\nProblems during the run:\n");
        for e in &errors {
            let _ = writeln!(md, "- {}", e.replace('\n', " "));
        }
    }
    // What else ran during the boots: a comparison on a busy machine has wide intervals and
    // can mislead (see docs/benchmarks.md, "Paired boots against separate boots").
    let boots: Vec<&RunValues> = guest.values().flatten().collect();
    let other: Vec<f64> = boots
        .iter()
        .filter_map(|r| r.other_load.map(|l| l.other_cpus))
        .collect();
    let steal: Vec<f64> = boots
        .iter()
        .filter_map(|r| r.other_load.map(|l| l.steal_cpus))
        .collect();
    let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
    let not_quiet = max(&other).is_some_and(|x| x > QUIET_OTHER_CPUS)
        || max(&steal).is_some_and(|x| x > QUIET_STEAL_CPUS);
    let _ = writeln!(
        md,
        "\nOther load during the boots (CPUs busy in processes other than the bench, its guests, \
         its daemons and what serves them: `--count-cpu` processes, a CephFS bench's cluster; \
         steal: CPUs the hypervisor gave to others): median {} (max {}), steal median {} (max \
         {}).{}",
        fmt_cpus(median(&other)),
        fmt_cpus(max(&other)),
        fmt_cpus(median(&steal)),
        fmt_cpus(max(&steal)),
        if not_quiet {
            format!(
                " **The machine was not quiet** (more than {QUIET_OTHER_CPUS} CPUs of other \
                 work or {QUIET_STEAL_CPUS} of steal in a boot): throughput ratios and their \
                 verdicts are not to be trusted; CPU per operation is less affected."
            )
        } else {
            String::new()
        }
    );
    let loads = |which: Option<Which>| -> Vec<Option<f64>> {
        match which {
            Some(w) => guest
                .iter()
                .filter(|((_, x), _)| *x == w)
                .flat_map(|(_, v)| v.iter().map(|r| r.load_avg))
                .collect(),
            None => host.iter().map(|r| r.load_avg).collect(),
        }
    };
    let json = json!({
        "jobs": json_jobs,
        "host_load_average_at_end_of_each_run": {
            "ours": loads(Some(Which::Ours)),
            "reference": loads(Some(Which::Reference)),
            "host": loads(None),
        },
        "daemons": daemons,
        "other_load_per_boot": boots.iter().map(|r| r.other_load.map(|l| json!({
            "other_cpus": round(l.other_cpus, 3),
            "steal_cpus": round(l.steal_cpus, 3),
        }))).collect::<Vec<_>>(),
        "machine_quiet": !not_quiet,
        "config": {
            "command": cfg.command,
            "quick": cfg.quick,
            "repetitions": cfg.reps,
            "paired": cfg.paired,
            "order": if cfg.paired {
                "per cache mode and repetition one boot served by both daemons; every job run \
                 on each in turn, the first alternating by job, round and boot; ratios from the \
                 pairs; host after each repetition"
            } else {
                "per cache mode and repetition one pair of boots, ours first in even pairs and \
                 reference first in odd ones (A B, B A, ...); host after each repetition"
            },
            "cache_modes": cfg.caches.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "runtime_s": cfg.runtime_secs,
            "file_mib": cfg.file_mib,
            "metadata_files": if cfg.meta { Some(cfg.meta_files) } else { None },
            "ours_backend": cfg.ours_ceph.as_ref().map_or("passthrough", |_| "cephfs"),
            "accel": accel,
            "repeat_in_boot": cfg.repeat,
            "count_cpu": cfg.count_cpu.iter().map(|(w, p)| format!("{}:{p}", w.key())).collect::<Vec<_>>(),
            "ours_extra_args": cfg.ours_args,
            "reference_extra_args": cfg.reference_args,
            "statistic": "figures: medians of all samples; ratios: Hodges-Lehmann estimate \
                (median of all pairwise ratios) with a 95 % hierarchical bootstrap interval \
                (boots resampled, then repetitions inside each), fixed seed; won/lost only when \
                the interval excludes 1.0",
        },
        "machine": machine_description(cfg),
        "errors": errors,
        "elapsed_s": round(elapsed.as_secs_f64(), 1),
    });
    Report { json, markdown: md }
}

/// Samples as `1,2,3` (one per boot) or `1,2;3,4` (boots separated by `;`).
fn parse_samples(text: &str) -> Result<Vec<Vec<f64>>> {
    text.split(';')
        .map(|boot| {
            boot.split([',', ' '])
                .filter(|x| !x.is_empty())
                .map(|x| {
                    x.parse::<f64>()
                        .map_err(|_| BenchError::Usage(format!("{x:?} is not a number")))
                })
                .collect::<Result<Vec<f64>>>()
        })
        .collect::<Result<Vec<_>>>()
        .map(|v| v.into_iter().filter(|b| !b.is_empty()).collect())
}

/// `vmbench ratio [--lower-is-better] OURS REFERENCE`: the statistics of the report for
/// samples given by hand (earlier runs' published samples, say). With one value per boot
/// each value is its own boot.
fn ratio_command(args: &[String]) -> Result<String> {
    const RATIO_USAGE: &str = "vmbench ratio [--lower-is-better] OURS REFERENCE \
        (samples as 1,2,3 one per boot, or 1,2;3,4 with boots separated by ;)";
    let lower = args.iter().any(|a| a == "--lower-is-better");
    let rest: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [ours, reference] = rest[..] else {
        return Err(BenchError::Usage(RATIO_USAGE.into()));
    };
    let group = |t: &str| -> Result<Vec<Vec<f64>>> {
        let g = parse_samples(t)?;
        // A plain list is one sample per boot.
        Ok(if g.len() == 1 {
            vm_tests::stats::ungrouped(&g[0])
        } else {
            g
        })
    };
    let (o, r) = (group(ours)?, group(reference)?);
    let ri = if lower {
        ratio_interval(&r, &o, DEFAULT_SEED)
    } else {
        ratio_interval(&o, &r, DEFAULT_SEED)
    };
    match ri {
        Some(x) => Ok(format!(
            "{} (n {}/{}, boots {}/{})",
            fmt_interval(Some(&x), true),
            x.n_a,
            x.n_b,
            x.boots_a,
            x.boots_b
        )),
        None => Err(BenchError::Usage("no positive samples".into())),
    }
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

/// Copies the running program (`/proc/self/exe` stays readable even when the file was
/// replaced) to `work/vmbench-self`.
fn copy_self(work: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(work).map_err(io_err(format!("creating {}", work.display())))?;
    let dst = work.join("vmbench-self");
    let tmp = work.join(format!("vmbench-self.{}", std::process::id()));
    std::fs::copy("/proc/self/exe", &tmp).map_err(io_err("copying /proc/self/exe"))?;
    std::fs::rename(&tmp, &dst).map_err(io_err(format!("renaming to {}", dst.display())))?;
    Ok(dst)
}

fn bench(cfg: &Config) -> Result<Report> {
    let started = Instant::now();
    let jobs = cfg.jobs();
    let share = cfg.work.join("share");
    let host_dir = cfg.work.join("host");
    eprintln!(
        "vmbench: preparing {} MiB files in {} and {}",
        cfg.file_mib,
        share.display(),
        host_dir.display()
    );
    prepare_dir(&share.join("bench"), cfg.file_mib)?;
    prepare_dir(&host_dir, cfg.file_mib)?;

    let mut starts: BTreeMap<&'static str, Vec<StartSample>> = BTreeMap::new();
    for i in 0..cfg.start_samples {
        for which in pair_order(i) {
            let sample = start_sample(cfg, which, &share)?;
            starts.entry(which.key()).or_default().push(sample);
        }
    }
    eprintln!("vmbench: starts without a guest: {starts:?}");

    let image = vm_tests::GuestImage::locate()?;
    let accel = vm_tests::accel::resolve(cfg.accel, &image)?.to_string();
    let mut guest: BTreeMap<(String, Which), Vec<RunValues>> = BTreeMap::new();
    let mut host = Vec::new();
    let mut pair = 0;
    let ref_share = cfg.work.join("share-reference");
    if cfg.paired {
        prepare_dir(&ref_share.join("bench"), cfg.file_mib)?;
    }
    for rep in 0..cfg.reps {
        for cache in cfg.caches.iter().filter(|_| cfg.paired) {
            let runs = run_paired_guest(cfg, *cache, rep, [&share, &ref_share], &jobs)
                .unwrap_or_else(|e| {
                    eprintln!("vmbench: paired cache={cache} rep={rep}: {e}");
                    let failed = RunValues {
                        errors: vec![format!("paired cache={cache} rep={rep}: {e}")],
                        ..RunValues::default()
                    };
                    [failed.clone(), failed]
                });
            for (which, r) in [Which::Ours, Which::Reference].into_iter().zip(runs) {
                eprintln!(
                    "vmbench: {} (paired) cache={} rep={} ({:.0} s, load {:?}, other {:?}, usage {:?}): {:?}",
                    which.key(),
                    cache,
                    rep,
                    r.elapsed_s,
                    r.load_avg,
                    r.other_load,
                    r.usage,
                    r.values
                );
                guest.entry((cache.to_string(), which)).or_default().push(r);
            }
        }
        for cache in cfg.caches.iter().filter(|_| !cfg.paired) {
            let order = pair_order(pair);
            pair += 1;
            for which in order {
                let r = run_guest(cfg, which, *cache, rep, &share, &jobs).unwrap_or_else(|e| {
                    eprintln!("vmbench: {} cache={cache} rep={rep}: {e}", which.key());
                    RunValues {
                        errors: vec![format!("{} cache={cache} rep={rep}: {e}", which.key())],
                        ..RunValues::default()
                    }
                });
                eprintln!(
                    "vmbench: {} cache={} rep={} ({:.0} s, load {:?}, usage {:?}): {:?}",
                    which.key(),
                    cache,
                    rep,
                    r.elapsed_s,
                    r.load_avg,
                    r.usage,
                    r.values
                );
                guest.entry((cache.to_string(), which)).or_default().push(r);
            }
        }
        // The host's figures are the physical reference, not a comparison: one run in quick
        // mode.
        if cfg.host && (rep == 0 || !cfg.quick) {
            let h = run_host(cfg, &host_dir, &jobs).unwrap_or_else(|e| {
                eprintln!("vmbench: host rep={rep}: {e}");
                RunValues {
                    errors: vec![format!("host rep={rep}: {e}")],
                    ..RunValues::default()
                }
            });
            eprintln!(
                "vmbench: host rep={rep} ({:.0} s, load {:?}): {:?}",
                h.elapsed_s, h.load_avg, h.values
            );
            host.push(h);
        }
    }
    Ok(build_report(
        cfg,
        &jobs,
        &guest,
        &host,
        &starts,
        &accel,
        started.elapsed(),
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("micro") {
        return match micro::command(&args[1..]) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmbench micro: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some("ratio") {
        return match ratio_command(&args[1..]) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmbench ratio: {e}");
                ExitCode::from(2)
            }
        };
    }
    if args.first().map(String::as_str) == Some("density") {
        return match density::command(&args[1..]) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmbench density: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(which @ ("dax" | "multiqueue")) = args.first().map(String::as_str) {
        return match modern::command(which == "dax", &args[1..]) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmbench {which}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some("meta") {
        return match meta_command(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("@@VMTEST-ERROR {e}");
                eprintln!("vmbench meta: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmbench: {e}");
            return ExitCode::from(2);
        }
    };
    cfg.self_exe = match copy_self(&cfg.work) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vmbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match bench(&cfg) {
        Ok(report) => {
            let json_text =
                serde_json::to_string_pretty(&report.json).unwrap_or_else(|_| "{}".into());
            if let Some(p) = &cfg.markdown_out {
                if let Err(e) = std::fs::write(p, &report.markdown) {
                    eprintln!("vmbench: writing {}: {e}", p.display());
                }
            }
            if let Some(p) = &cfg.json_out {
                if let Err(e) = std::fs::write(p, format!("{json_text}\n")) {
                    eprintln!("vmbench: writing {}: {e}", p.display());
                }
            }
            if cfg.json {
                println!("{json_text}");
            } else {
                print!("{}", report.markdown);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmbench: {e}");
            ExitCode::FAILURE
        }
    }
}

// `vmbench dax` and `vmbench multiqueue`: setups of ours in the QEMU 11.1 / Linux 6.12 guest
#[path = "vmbench/modern.rs"]
mod modern;

// ---------------------------------------------------------------------------------------
// `vmbench micro`: the daemons without a guest
// ---------------------------------------------------------------------------------------

/// `vmbench micro`: each daemon driven straight over its vhost-user socket by the test
/// frontend (`vm_tests::frontend`: no guest, no TCG), with the FUSE request sequences a
/// Linux 6.1 guest sends for the metadata job and the 4 KiB jobs. Per request it reports the
/// round trip (wall time) and the daemon's CPU time (the run time of all its threads from
/// `/proc/PID/task/*/schedstat`), medians over rounds that alternate ours and the reference.
/// CPU time per request is the figure other load on a shared machine disturbs least.
mod micro {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use fuse_backend_rs::abi::fuse_abi::{Dirent, EntryOut, FlushIn, Opcode, ReadIn, ReleaseIn};
    use vm_memory::ByteValued;
    use vm_tests::frontend::TestFrontend;
    use vm_tests::fuse::{read_struct, FuseError, FuseSession, OUT_HEADER_LEN, REPLY_SPACE, ROOT};
    use vm_tests::CacheMode;

    use super::{daemon_config, io_err, median, BenchError, Config, Result, Which};

    const USAGE: &str = "vmbench micro [--ours BIN] [--reference BIN] [--rounds N] \
        [--count N] [--group all|meta|io] [--op getattr|lookup|read-4k|write-4k|read-1m|read-1m-pages] \
        [--jobs N] [--queues N] [--reference-queues N] [--ours-arg ARG]... [--reference-arg ARG]... [--strace DIR] [--work DIR] \
        [--ours-ceph CONF,ID,KEYRING,ROOT] [--count-cpu ours|reference:PID]... [--markdown-out FILE]";
    /// Files the `--op lookup` phase looks up (created on the host before the daemon starts).
    const LOOKUP_DIR: &str = "micro-lookup";
    /// Size of the file the 4 KiB jobs read and write.
    const DATA_MIB: u64 = 64;
    const DATA_FILE: &str = "micro-data.bin";
    /// The file the 4 KiB writes go to: not the one read, so that no daemon's writes decide
    /// what the next daemon's reads find in its caches (on CephFS a file another client has
    /// written is not cached by this one until that client has given up its caps).
    const WRITE_FILE: &str = "micro-write.bin";
    const DIR: &str = "micro";
    /// `FOPEN_NOFLUSH` in an OPEN/CREATE reply: the guest sends no FLUSH on close.
    const FOPEN_NOFLUSH: u32 = 1 << 5;
    /// READDIR(PLUS) size a 6.1 guest asks for (one page, less the reply header).
    const DIR_BUF: u32 = 4096 - OUT_HEADER_LEN as u32;

    /// One timed phase: what was sent, per file or per I/O.
    struct Phase {
        name: &'static str,
        what: &'static str,
    }

    const PHASES: [Phase; 6] = [
        Phase {
            name: "create",
            what: "GETATTR dir, LOOKUP (ENOENT), CREATE, FLUSH (unless the reply said \
                   FOPEN_NOFLUSH), RELEASE per file",
        },
        Phase {
            name: "stat",
            what: "LOOKUP per file (the guest forgot them: drop_caches)",
        },
        Phase {
            name: "readdir",
            what: "OPENDIR, READDIRPLUS (first page), READDIR to the end, RELEASEDIR; per entry",
        },
        Phase {
            name: "unlink",
            what: "LOOKUP, UNLINK per file",
        },
        Phase {
            name: "read-4k",
            what: "READ 4 KiB at a random offset (file not O_DIRECT, read whole once before: \
                   the daemon's share of a 4 KiB read from its caches, without the disk or OSD)",
        },
        Phase {
            name: "write-4k",
            what: "WRITE 4 KiB at a random offset",
        },
    ];

    /// Wall and daemon-CPU nanoseconds of one phase, and the unit count they divide by.
    #[derive(Debug, Clone, Copy, Default)]
    struct Sample {
        wall_ns: u64,
        cpu_ns: u64,
        units: u64,
        requests: u64,
    }

    struct MicroConfig {
        base: Config,
        rounds: usize,
        count: u64,
        /// Run the metadata phases (create, stat, readdir, unlink; they build on each other).
        meta: bool,
        /// Run the 4 KiB read and write phases.
        io: bool,
        /// `--op`: only `count` requests of this one kind (phase "op"), nothing else after
        /// INIT and the setup every run shares: for counting instructions (callgrind) and
        /// system calls (strace) per request as the difference of two counts.
        op: Option<&'static str>,
        /// `--jobs`: requests of `--op getattr|read-4k` in flight at once, one per job, as
        /// fio jobs on as many vCPUs send them (each job waits for its reply).
        jobs: u64,
        /// `--queues` / `--reference-queues`: request queues the frontend starts for ours /
        /// the reference; job `j` posts on request queue `j % queues`, as a multiqueue guest
        /// driver maps CPUs to queues.
        queues: [usize; 2],
    }

    /// The kinds `--op` sends: what one unit is.
    const OPS: [(&str, &str); 7] = [
        ("getattr", "GETATTR of a file (looked up once before)"),
        (
            "lookup",
            "LOOKUP of a file not looked up before, then its FORGET",
        ),
        (
            "lookup-held",
            "LOOKUP of a file not looked up before, held (as after a guest's stat of every \
             file; the FORGETs follow after the timed part)",
        ),
        (
            "read-4k",
            "READ 4 KiB at a random offset (host page cache warm)",
        ),
        ("write-4k", "WRITE 4 KiB at a random offset"),
        (
            "read-1m",
            "READ 1 MiB at a random MiB-aligned offset (host page cache warm)",
        ),
        (
            "read-1m-pages",
            "READ 1 MiB as a Linux guest sends it: the reply header in one descriptor and 256 \
             page descriptors of 4 KiB (host page cache warm)",
        ),
    ];

    fn fuse_err(what: &str) -> impl FnOnce(FuseError) -> BenchError + '_ {
        move |e| BenchError::Meta(format!("micro {what}: {e}"))
    }

    /// Run time of every thread of `pid`, in nanoseconds.
    fn cpu_ns(pid: u32) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// A xorshift stream of 4 KiB-aligned offsets inside the data file.
    struct Offsets(u64);

    impl Iterator for Offsets {
        type Item = u64;
        fn next(&mut self) -> Option<u64> {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            Some((self.0 % ((DATA_MIB << 20) / 4096)) * 4096)
        }
    }

    /// Node ids and offsets of a READDIRPLUS reply body (`fuse_direntplus` records).
    fn parse_direntplus(mut body: &[u8]) -> Vec<(u64, u64)> {
        let entry_len = std::mem::size_of::<EntryOut>();
        let dirent_len = std::mem::size_of::<Dirent>();
        let mut out = Vec::new();
        while body.len() >= entry_len + dirent_len {
            let (Some(entry), Some(dirent)) = (
                read_struct::<EntryOut>(body),
                read_struct::<Dirent>(&body[entry_len..]),
            ) else {
                break;
            };
            out.push((entry.nodeid, dirent.off));
            let record = entry_len + ((dirent_len + dirent.namelen as usize + 7) & !7);
            body = body.get(record..).unwrap_or(&[]);
        }
        out
    }

    struct Running {
        child: Child,
        session: FuseSession,
        /// `strace -c -f` attached to the daemon (`--strace DIR`).
        strace: Option<Child>,
        /// The daemon and the processes whose CPU counts as its own (`--count-cpu`).
        cpu_pids: Vec<u32>,
    }

    fn start(cfg: &MicroConfig, which: Which, share: &Path, round: usize) -> Result<Running> {
        let dc = daemon_config(&cfg.base, which, CacheMode::Auto);
        let dir = cfg.base.work.join("micro");
        std::fs::create_dir_all(&dir).map_err(io_err("creating the micro work dir"))?;
        let sock = dir.join(format!("{}-{round}.sock", which.key()));
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::File::create(dir.join(format!("{}-{round}.log", which.key())))
            .map_err(io_err("creating a daemon log"))?;
        let binary = dc.binary.clone().unwrap_or_default();
        let child = super::spawn_until_listening(
            &binary,
            dc.args_for(&sock, &super::backend_of(&cfg.base, which, share)),
            log,
            &sock,
            // A daemon run under valgrind (a wrapper given as --ours/--reference) starts slowly.
            60,
        )?;
        // 1,024 descriptors a queue (as Kata configures virtio-fs): `read-1m-pages` posts 258.
        let frontend = TestFrontend::connect_with(
            &sock,
            vm_tests::frontend::FrontendConfig {
                queue_size: 1024,
                queues: 1 + cfg.queues[usize::from(which == Which::Reference)],
                ..Default::default()
            },
        )
        .map_err(|e| BenchError::Meta(format!("micro: connecting: {e}")))?;
        let mut session = FuseSession::new(frontend);
        let init = session.init().map_err(fuse_err("INIT"))?;
        if round == 0 {
            // What the guest is told decides which requests it sends: log it for comparison.
            eprintln!(
                "vmbench micro: {} INIT reply: flags {:#x} flags2 {:#x} max_write {} \
                 max_pages {} max_background {} max_readahead {} time_gran {}",
                which.key(),
                init.flags,
                init.flags2,
                init.max_write,
                init.max_pages,
                init.max_background,
                init.max_readahead,
                init.time_gran
            );
        }
        let strace = match &cfg.base.strace_dir {
            Some(out) => {
                std::fs::create_dir_all(out).map_err(io_err("creating the strace dir"))?;
                let file = out.join(format!("micro-{}-{round}.strace.txt", which.key()));
                let tracer = Command::new("strace")
                    .args(["-c", "-f", "-o"])
                    .arg(&file)
                    .args(["-p", &child.id().to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(io_err("starting strace"))?;
                // strace attaches asynchronously; give it time before the first request.
                std::thread::sleep(Duration::from_millis(500));
                Some(tracer)
            }
            None => None,
        };
        let cpu_pids = super::cpu_roots(&cfg.base, which, child.id());
        Ok(Running {
            child,
            session,
            strace,
            cpu_pids,
        })
    }

    /// Disconnects and waits for the daemon to exit (it exits when its frontend leaves).
    fn stop(run: Running) {
        let Running {
            mut child,
            session,
            strace,
            ..
        } = run;
        drop(session);
        // Long enough for a daemon under valgrind to write its profile on the way out.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        if let Some(mut tracer) = strace {
            // strace writes its summary once the traced daemon is gone.
            let _ = tracer.wait();
        }
    }

    fn forget_all(s: &mut FuseSession, nodes: &[u64]) -> Result<()> {
        for &n in nodes {
            s.forget(n, 1).map_err(fuse_err("FORGET"))?;
        }
        Ok(())
    }

    /// Run time of every thread of each of `pids` (a daemon and the processes whose CPU
    /// counts as its own, such as the ceph-fuse under a reference), in nanoseconds.
    fn cpu_total_ns(pids: &[u32]) -> u64 {
        pids.iter().map(|&p| cpu_ns(p)).sum()
    }

    /// Times `body` (which returns its unit and request counts) on the daemon and the
    /// processes counted with it, `pids`.
    fn timed(pids: &[u32], body: impl FnOnce() -> Result<(u64, u64)>) -> Result<Sample> {
        let cpu0 = cpu_total_ns(pids);
        let t = Instant::now();
        let (units, requests) = body()?;
        let wall_ns = t.elapsed().as_nanos() as u64;
        Ok(Sample {
            wall_ns,
            cpu_ns: cpu_total_ns(pids).saturating_sub(cpu0),
            units,
            requests,
        })
    }

    /// Runs every phase once against a started daemon.
    fn run_phases(cfg: &MicroConfig, run: &mut Running) -> Result<BTreeMap<&'static str, Sample>> {
        let pids = &run.cpu_pids[..];
        let s = &mut run.session;
        let n = cfg.count;
        let mut out = BTreeMap::new();
        if let Some(op) = cfg.op {
            let queues = s.frontend().config().queues - 1;
            let sample = if cfg.jobs > 1 || queues > 1 {
                jobs_op(pids, s, op, n, cfg.jobs, queues)?
            } else {
                one_op(pids, s, op, n)?
            };
            out.insert("op", sample);
            return Ok(out);
        }
        if cfg.io {
            io_phases(pids, s, n, &mut out)?;
        }
        if !cfg.meta {
            return Ok(out);
        }
        let dir = s.mkdir(ROOT, DIR, 0o755).map_err(fuse_err("MKDIR"))?.nodeid;
        let names: Vec<String> = (0..n).map(|i| format!("f{i:05}")).collect();

        let mut nodes = Vec::with_capacity(names.len());
        let sample = timed(pids, || {
            let mut requests = 0;
            for name in &names {
                s.getattr(dir).map_err(fuse_err("GETATTR"))?;
                match s.lookup(dir, name) {
                    Err(FuseError::Errno(libc::ENOENT)) => {}
                    other => {
                        return Err(BenchError::Meta(format!(
                            "micro: LOOKUP of a new name: {other:?}"
                        )))
                    }
                }
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                let (entry, open) = s
                    .create(dir, name, flags, 0o644)
                    .map_err(fuse_err("CREATE"))?;
                // As the guest kernel does: no FLUSH on close when the reply said
                // FOPEN_NOFLUSH (ours on a local filesystem).
                if open.open_flags & FOPEN_NOFLUSH == 0 {
                    let flush = FlushIn {
                        fh: open.fh,
                        ..Default::default()
                    };
                    s.call_ok(
                        Opcode::Flush as u32,
                        entry.nodeid,
                        &[flush.as_slice()],
                        REPLY_SPACE,
                    )
                    .map_err(fuse_err("FLUSH"))?;
                    requests += 1;
                }
                s.release(entry.nodeid, open.fh)
                    .map_err(fuse_err("RELEASE"))?;
                nodes.push(entry.nodeid);
                requests += 4;
            }
            Ok((n, requests))
        })?;
        out.insert("create", sample);
        forget_all(s, &nodes)?;

        nodes.clear();
        let sample = timed(pids, || {
            for name in &names {
                nodes.push(s.lookup(dir, name).map_err(fuse_err("LOOKUP"))?.nodeid);
            }
            Ok((n, n))
        })?;
        out.insert("stat", sample);
        forget_all(s, &nodes)?;

        let mut looked_up = Vec::new();
        let sample = timed(pids, || {
            let fh = s.opendir(dir).map_err(fuse_err("OPENDIR"))?.fh;
            let arg = ReadIn {
                fh,
                offset: 0,
                size: DIR_BUF,
                ..Default::default()
            };
            let reply = s
                .call_ok(
                    Opcode::Readdirplus as u32,
                    dir,
                    &[arg.as_slice()],
                    DIR_BUF as usize + OUT_HEADER_LEN,
                )
                .map_err(fuse_err("READDIRPLUS"))?;
            let plus = parse_direntplus(&reply.body);
            looked_up.extend(plus.iter().map(|(node, _)| *node).filter(|n| *n != 0));
            let mut entries = plus.len() as u64;
            let mut requests = 3;
            let mut offset = plus.last().map_or(0, |(_, off)| *off);
            loop {
                let batch = s.readdir(dir, fh, offset).map_err(fuse_err("READDIR"))?;
                requests += 1;
                let Some(last) = batch.last() else { break };
                offset = last.off;
                entries += batch.len() as u64;
            }
            let arg = ReleaseIn {
                fh,
                ..Default::default()
            };
            s.call_ok(
                Opcode::Releasedir as u32,
                dir,
                &[arg.as_slice()],
                REPLY_SPACE,
            )
            .map_err(fuse_err("RELEASEDIR"))?;
            Ok((entries, requests))
        })?;
        out.insert("readdir", sample);
        forget_all(s, &looked_up)?;

        let sample = timed(pids, || {
            for name in &names {
                let node = s.lookup(dir, name).map_err(fuse_err("LOOKUP"))?.nodeid;
                s.unlink(dir, name).map_err(fuse_err("UNLINK"))?;
                nodes.push(node);
            }
            Ok((n, 2 * n))
        })?;
        out.insert("unlink", sample);
        Ok(out)
    }

    /// `n` requests of `op` (GETATTR or 4 KiB READ) sent by `jobs` jobs at once: each round
    /// every job posts one request (with its kick) on request queue `job % queues`, then the
    /// replies are collected. With one queue the jobs' requests meet in it, with several each
    /// queue carries its own: the daemon's side of `--multiqueue` without a guest.
    fn jobs_op(
        pids: &[u32],
        s: &mut FuseSession,
        op: &str,
        n: u64,
        jobs: u64,
        queues: usize,
    ) -> Result<Sample> {
        use fuse_backend_rs::abi::fuse_abi::GetattrIn;
        use vm_tests::fuse::FuseReply;
        let data = s
            .lookup(ROOT, DATA_FILE)
            .map_err(fuse_err("LOOKUP"))?
            .nodeid;
        let fh = s.open(data, libc::O_RDONLY).map_err(fuse_err("OPEN"))?.fh;
        if op == "read-4k" {
            warm_data(s, data, fh)?;
        }
        let mut offsets = Offsets(0x9E37_79B9_7F4A_7C15 ^ n);
        let rounds = n.div_ceil(jobs);
        let timeout = s.frontend().config().reply_timeout;
        let sample = timed(pids, || {
            for _ in 0..rounds {
                let mut pending: Vec<Vec<(u64, vm_tests::frontend::PendingChain)>> =
                    (0..queues).map(|_| Vec::new()).collect();
                for job in 0..jobs {
                    let queue = vm_tests::frontend::REQUEST_QUEUE + (job as usize % queues);
                    let unique = s.unique();
                    let (req, space) = match op {
                        "read-4k" => {
                            let arg = ReadIn {
                                fh,
                                offset: offsets.next().unwrap_or(0),
                                size: 4096,
                                ..Default::default()
                            };
                            let req = vm_tests::fuse::request(
                                Opcode::Read as u32,
                                unique,
                                data,
                                &[arg.as_slice()],
                            );
                            (req, OUT_HEADER_LEN + 4096)
                        }
                        "getattr" => {
                            let arg = GetattrIn::default();
                            let req = vm_tests::fuse::request(
                                Opcode::Getattr as u32,
                                unique,
                                data,
                                &[arg.as_slice()],
                            );
                            (req, vm_tests::fuse::REPLY_SPACE)
                        }
                        other => {
                            return Err(BenchError::Usage(format!(
                                "--jobs/--queues: --op getattr or read-4k, not {other}\n{USAGE}"
                            )))
                        }
                    };
                    let chain = s
                        .frontend()
                        .post_request(queue, &[&req], &[space], true)
                        .map_err(|e| BenchError::Meta(format!("micro {op}: {e}")))?;
                    pending[queue - vm_tests::frontend::REQUEST_QUEUE].push((unique, chain));
                }
                for on_queue in pending {
                    let uniques: Vec<u64> = on_queue.iter().map(|(u, _)| *u).collect();
                    let chains = on_queue.into_iter().map(|(_, c)| c).collect();
                    let replies = s
                        .frontend()
                        .collect(chains, timeout)
                        .map_err(|e| BenchError::Meta(format!("micro {op}: {e}")))?;
                    for reply in replies {
                        let parsed = FuseReply::parse(&reply.bytes)
                            .and_then(FuseReply::ok)
                            .map_err(fuse_err(op))?;
                        if !uniques.contains(&parsed.header.unique) {
                            return Err(BenchError::Meta(format!(
                                "micro {op}: a reply to request {} nobody sent",
                                parsed.header.unique
                            )));
                        }
                    }
                }
            }
            Ok((rounds * jobs, rounds * jobs))
        })?;
        s.release(data, fh).map_err(fuse_err("RELEASE"))?;
        Ok(sample)
    }

    /// Reads the whole data file once in 1 MiB READs, so that the timed reads find it in the
    /// caches a daemon reads through: the host's page cache for a daemon serving a host
    /// folder (a mount, too), libcephfs' object cacher for ours with `--ours-ceph`, whose
    /// client starts cold with every daemon while the reference's ceph-fuse lives on.
    fn warm_data(s: &mut FuseSession, data: u64, fh: u64) -> Result<()> {
        for mib in 0..DATA_MIB {
            let got = s
                .read(data, fh, mib << 20, 1 << 20)
                .map_err(fuse_err("READ"))?;
            if got.len() != 1 << 20 {
                return Err(BenchError::Meta(format!(
                    "micro: warming the data file, READ at {mib} MiB returned {} bytes",
                    got.len()
                )));
            }
        }
        Ok(())
    }

    /// `n` requests of one kind (`--op`), after the setup they need.
    fn one_op(pids: &[u32], s: &mut FuseSession, op: &str, n: u64) -> Result<Sample> {
        let file = if op == "write-4k" {
            WRITE_FILE
        } else {
            DATA_FILE
        };
        let data = s.lookup(ROOT, file).map_err(fuse_err("LOOKUP"))?.nodeid;
        let flags = if op == "write-4k" {
            libc::O_WRONLY
        } else {
            libc::O_RDONLY
        };
        let fh = s.open(data, flags).map_err(fuse_err("OPEN"))?.fh;
        if op.starts_with("read") {
            warm_data(s, data, fh)?;
        }
        let dir = s
            .lookup(ROOT, LOOKUP_DIR)
            .map_err(fuse_err("LOOKUP"))?
            .nodeid;
        let block = vec![0x5au8; 4096];
        let mut offsets = Offsets(0x9E37_79B9_7F4A_7C15 ^ n);
        let mut held = Vec::new();
        let sample = timed(pids, || {
            for i in 0..n {
                let off = offsets.next().unwrap_or(0);
                match op {
                    "getattr" => drop(s.getattr(data).map_err(fuse_err("GETATTR"))?),
                    "lookup" => {
                        let name = format!("f{i:05}");
                        let node = s.lookup(dir, &name).map_err(fuse_err("LOOKUP"))?.nodeid;
                        s.forget(node, 1).map_err(fuse_err("FORGET"))?;
                    }
                    "lookup-held" => {
                        let name = format!("f{i:05}");
                        held.push(s.lookup(dir, &name).map_err(fuse_err("LOOKUP"))?.nodeid);
                    }
                    "read-4k" => drop(s.read(data, fh, off, 4096).map_err(fuse_err("READ"))?),
                    "write-4k" => drop(s.write(data, fh, off, &block).map_err(fuse_err("WRITE"))?),
                    "read-1m" => {
                        let off = off & !((1 << 20) - 1);
                        let got = s.read(data, fh, off, 1 << 20).map_err(fuse_err("READ"))?;
                        if got.len() != 1 << 20 {
                            return Err(BenchError::Meta(format!(
                                "micro: 1 MiB READ returned {} bytes",
                                got.len()
                            )));
                        }
                    }
                    "read-1m-pages" => {
                        let off = off & !((1 << 20) - 1);
                        let arg = ReadIn {
                            fh,
                            offset: off,
                            size: 1 << 20,
                            ..Default::default()
                        };
                        let unique = s.unique();
                        let req = vm_tests::fuse::request(
                            Opcode::Read as u32,
                            unique,
                            data,
                            &[arg.as_slice()],
                        );
                        let mut writable = vec![OUT_HEADER_LEN];
                        writable.extend([4096; 256]);
                        let reply = s
                            .frontend()
                            .send_chain(vm_tests::frontend::REQUEST_QUEUE, &[&req], &writable)
                            .map_err(|e| BenchError::Meta(format!("micro READ: {e}")))?;
                        if reply.len as usize != OUT_HEADER_LEN + (1 << 20) {
                            return Err(BenchError::Meta(format!(
                                "micro: 1 MiB READ into pages returned {} bytes",
                                reply.len
                            )));
                        }
                    }
                    other => return Err(BenchError::Usage(format!("--op {other}\n{USAGE}"))),
                }
            }
            Ok((n, n))
        })?;
        forget_all(s, &held)?;
        Ok(sample)
    }

    /// The 4 KiB read and write phases on the data file.
    fn io_phases(
        pids: &[u32],
        s: &mut FuseSession,
        n: u64,
        out: &mut BTreeMap<&'static str, Sample>,
    ) -> Result<()> {
        // (No O_DIRECT phase: the test frontend's buffers are not block aligned, which the
        // reference's O_DIRECT reads into guest memory need; the daemon's path is the same.)
        for (phase, file, flags) in [
            ("read-4k", DATA_FILE, libc::O_RDONLY),
            ("write-4k", WRITE_FILE, libc::O_WRONLY),
        ] {
            let data = s.lookup(ROOT, file).map_err(fuse_err("LOOKUP"))?.nodeid;
            let fh = s.open(data, flags).map_err(fuse_err("OPEN"))?.fh;
            if phase == "read-4k" {
                warm_data(s, data, fh)?;
            }
            let block = vec![0x5au8; 4096];
            let mut offsets = Offsets(0x9E37_79B9_7F4A_7C15 ^ n);
            let sample = timed(pids, || {
                for _ in 0..n {
                    let off = offsets.next().unwrap_or(0);
                    if phase == "write-4k" {
                        s.write(data, fh, off, &block).map_err(fuse_err("WRITE"))?;
                    } else {
                        s.read(data, fh, off, 4096).map_err(fuse_err("READ"))?;
                    }
                }
                Ok((n, n))
            })?;
            out.insert(phase, sample);
            s.release(data, fh).map_err(fuse_err("RELEASE"))?;
        }
        Ok(())
    }

    fn parse(args: &[String]) -> Result<MicroConfig> {
        let mut rounds = 3;
        let mut count = 2000;
        let (mut meta, mut io) = (true, true);
        let mut op = None;
        let mut jobs = 1;
        let mut queues = [1usize, 1];
        let mut rest = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let num = |i: usize| -> Result<u64> {
                args.get(i + 1).and_then(|v| v.parse().ok()).ok_or_else(|| {
                    BenchError::Usage(format!("{} needs a number\n{USAGE}", args[i]))
                })
            };
            match args[i].as_str() {
                "--rounds" => rounds = num(i)?.max(1) as usize,
                "--count" => count = num(i)?.clamp(10, 99_999),
                "--jobs" => jobs = num(i)?.clamp(1, 64),
                "--queues" => queues[0] = num(i)?.clamp(1, 16) as usize,
                "--reference-queues" => queues[1] = num(i)?.clamp(1, 16) as usize,
                "--group" => match args.get(i + 1).map(String::as_str) {
                    Some("all") => (meta, io) = (true, true),
                    Some("meta") => (meta, io) = (true, false),
                    Some("io") => (meta, io) = (false, true),
                    other => {
                        return Err(BenchError::Usage(format!(
                            "--group {other:?}: all, meta or io\n{USAGE}"
                        )))
                    }
                },
                "--op" => {
                    let v = args.get(i + 1).map(String::as_str).unwrap_or("");
                    op = Some(
                        OPS.iter()
                            .find(|(k, _)| *k == v)
                            .map(|(k, _)| *k)
                            .ok_or_else(|| {
                                BenchError::Usage(format!("--op {v:?}: unknown\n{USAGE}"))
                            })?,
                    );
                }
                "-h" | "--help" => return Err(BenchError::Usage(USAGE.into())),
                "--ours" | "--reference" | "--work" | "--markdown-out" | "--strace"
                | "--ours-arg" | "--reference-arg" | "--ours-ceph" | "--count-cpu" => {
                    rest.extend(args[i..(i + 2).min(args.len())].iter().cloned())
                }
                o => return Err(BenchError::Usage(format!("unknown option {o}\n{USAGE}"))),
            }
            i += 2;
        }
        Ok(MicroConfig {
            base: super::parse_args(&rest)?,
            rounds,
            count,
            meta,
            io,
            op,
            jobs,
            queues,
        })
    }

    fn prepare_share(share: &Path) -> Result<()> {
        std::fs::create_dir_all(share).map_err(io_err("creating the micro share"))?;
        let _ = std::fs::remove_dir_all(share.join(DIR));
        let lookup = share.join(LOOKUP_DIR);
        let want = 2000;
        let have = std::fs::read_dir(&lookup).map(|d| d.count()).unwrap_or(0);
        if have != want {
            let _ = std::fs::remove_dir_all(&lookup);
            std::fs::create_dir_all(&lookup).map_err(io_err("creating the lookup dir"))?;
            for i in 0..want {
                std::fs::File::create(lookup.join(format!("f{i:05}")))
                    .map_err(io_err("creating a lookup file"))?;
            }
        }
        for file in [DATA_FILE, WRITE_FILE] {
            let data = share.join(file);
            if std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0) != DATA_MIB << 20 {
                let block = vec![0xa5u8; 1 << 20];
                let mut f =
                    std::fs::File::create(&data).map_err(io_err("creating the data file"))?;
                for _ in 0..DATA_MIB {
                    std::io::Write::write_all(&mut f, &block)
                        .map_err(io_err("writing the data file"))?;
                }
                f.sync_all().map_err(io_err("fsync"))?;
            }
        }
        Ok(())
    }

    fn per(x: u64, units: u64) -> f64 {
        x as f64 / 1000.0 / units.max(1) as f64
    }

    /// `vmbench micro ...`: runs the rounds and prints the table (also to `--markdown-out`).
    pub fn command(args: &[String]) -> Result<String> {
        let cfg = parse(args)?;
        let mut samples: BTreeMap<(Which, &'static str), Vec<Sample>> = BTreeMap::new();
        let load_before = super::load_avg();
        for round in 0..cfg.rounds {
            for which in super::pair_order(round) {
                // With `--ours-ceph`, both serve one directory of the volume: the reference
                // through the mount that `--work` is, ours natively (its ROOT is WORK/share).
                let share: PathBuf = match cfg.base.ours_ceph {
                    Some(_) => cfg.base.work.join("share"),
                    None => cfg.base.work.join(format!("micro-share-{}", which.key())),
                };
                prepare_share(&share)?;
                let mut run = start(&cfg, which, &share, round)?;
                let result = run_phases(&cfg, &mut run);
                stop(run);
                let result = result?;
                eprintln!("vmbench micro: round {round} {}: {result:?}", which.key());
                for (phase, sample) in result {
                    samples.entry((which, phase)).or_default().push(sample);
                }
            }
        }
        let load_after = super::load_avg();
        let med = |which: Which, phase: &str, f: fn(&Sample) -> f64| {
            let v: Vec<f64> = samples
                .get(&(which, phase))
                .map(|v| v.iter().map(f).collect())
                .unwrap_or_default();
            median(&v)
        };
        let mut md = String::new();
        let _ = writeln!(
            md,
            "`{}`: {} rounds (ours, reference alternating), {} files / I/Os per phase; \
             1-minute load {:?} before, {:?} after. Medians; µs per file, entry or I/O.\n",
            cfg.base.command.replacen("vmbench", "vmbench micro", 1),
            cfg.rounds,
            cfg.count,
            load_before,
            load_after
        );
        if let Some(ceph) = &cfg.base.ours_ceph {
            let _ = writeln!(
                md,
                "Ours serves `{}` natively (`--backend cephfs`, cephx id {}); the reference \
                 serves the same directory through the mount {}. CPU counts the processes \
                 given with `--count-cpu` with their daemon: {}.\n",
                ceph.root,
                ceph.id,
                cfg.base.work.join("share").display(),
                cfg.base
                    .count_cpu
                    .iter()
                    .map(|(w, p)| format!("{} {p}", w.key()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if cfg.jobs > 1 || cfg.queues != [1, 1] {
            let _ = writeln!(
                md,
                "{} jobs with a request each in flight; request queues: ours {}, the reference \
                 {}.\n",
                cfg.jobs, cfg.queues[0], cfg.queues[1]
            );
        }
        let _ = writeln!(
            md,
            "| phase | requests per unit | wall ours | wall reference | CPU ours | CPU reference \
             | wall ref/ours | CPU ref/ours |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        let names: Vec<&str> = match cfg.op {
            Some(_) => vec!["op"],
            None => PHASES.iter().map(|p| p.name).collect(),
        };
        for phase in names {
            let wall = |w| med(w, phase, |s| per(s.wall_ns, s.units));
            let cpu = |w| med(w, phase, |s| per(s.cpu_ns, s.units));
            let reqs = med(Which::Ours, phase, |s| {
                s.requests as f64 / s.units.max(1) as f64
            });
            let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
                _ => "n/a".into(),
            };
            let f = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{x:.1}"));
            let _ = writeln!(
                md,
                "| {phase} | {} | {} | {} | {} | {} | {} | {} |",
                reqs.map_or("n/a".into(), |x| format!("{x:.2}")),
                f(wall(Which::Ours)),
                f(wall(Which::Reference)),
                f(cpu(Which::Ours)),
                f(cpu(Which::Reference)),
                r(wall(Which::Ours), wall(Which::Reference)),
                r(cpu(Which::Ours), cpu(Which::Reference)),
            );
        }
        let _ = writeln!(md, "\nPhases:\n");
        match cfg.op {
            Some(op) => {
                let what = OPS.iter().find(|(k, _)| *k == op).map_or("", |(_, w)| w);
                let _ = writeln!(md, "- op: {op}: {what}");
            }
            None => {
                for p in &PHASES {
                    let _ = writeln!(md, "- {}: {}", p.name, p.what);
                }
            }
        }
        if let Some(path) = &cfg.base.markdown_out {
            std::fs::write(path, &md).map_err(io_err(format!("writing {}", path.display())))?;
        }
        Ok(md)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use fuse_backend_rs::abi::fuse_abi::Attr;

        #[test]
        fn direntplus_records_are_walked_with_their_padding() {
            let mut body = Vec::new();
            for (node, off, name) in [(7u64, 11u64, "a"), (0, 12, ".."), (9, 13, "name-of-9")] {
                let entry = EntryOut {
                    nodeid: node,
                    attr: Attr::default(),
                    ..Default::default()
                };
                body.extend_from_slice(entry.as_slice());
                let d = Dirent {
                    ino: 100 + node,
                    off,
                    namelen: name.len() as u32,
                    type_: 8,
                };
                body.extend_from_slice(d.as_slice());
                body.extend_from_slice(name.as_bytes());
                while body.len() % 8 != 0 {
                    body.push(0);
                }
            }
            assert_eq!(parse_direntplus(&body), [(7, 11), (0, 12), (9, 13)]);
            // A truncated last record is not invented.
            assert_eq!(parse_direntplus(&body[..body.len() - 40]).len(), 2);
        }

        #[test]
        fn jobs_and_queues_are_parsed_and_bounded() {
            // Daemon binaries that exist on any machine: parsing checks they do, and a
            // clean clone has no reference virtiofsd until bench.sh builds it.
            let args = |a: &[&str]| {
                ["--ours", "/bin/sh", "--reference", "/bin/sh"]
                    .iter()
                    .chain(a)
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
            };
            let cfg = parse(&args(&["--op", "read-4k", "--jobs", "4", "--queues", "4"])).unwrap();
            assert_eq!((cfg.jobs, cfg.queues), (4, [4, 1]));
            let cfg = parse(&args(&["--reference-queues", "99", "--jobs", "0"])).unwrap();
            assert_eq!((cfg.jobs, cfg.queues), (1, [1, 16]));
            assert!(parse(&args(&["--queues", "many"])).is_err());
            // The CephFS comparison's options reach the common parser.
            let cfg = parse(&args(&[
                "--ours-ceph",
                "/bin/sh,tenant,/bin/sh,/volumes/v/share",
                "--count-cpu",
                "reference:1",
            ]))
            .unwrap();
            assert_eq!(
                cfg.base.ours_ceph.map(|c| c.root).as_deref(),
                Some("/volumes/v/share")
            );
            assert_eq!(cfg.base.count_cpu, [(Which::Reference, 1)]);
            assert!(parse(&args(&["--ours-ceph", "/bin/sh,tenant"])).is_err());
        }

        #[test]
        fn offsets_are_block_aligned_inside_the_data_file() {
            let offsets: Vec<u64> = Offsets(42).take(1000).collect();
            assert!(offsets.iter().all(|o| o % 4096 == 0 && *o < DATA_MIB << 20));
            let distinct: std::collections::BTreeSet<_> = offsets.iter().collect();
            assert!(distinct.len() > 900, "random enough: {}", distinct.len());
        }
    }
}

// ---------------------------------------------------------------------------------------
// `vmbench density`: many daemons on one host
// ---------------------------------------------------------------------------------------

/// `vmbench density`: what N pods' daemons cost a host together. N daemons of one kind are
/// started, each on a share of its own, and each connected to a test frontend
/// (`vm_tests::frontend`: the vhost-user handshake, memory table and rings of a VMM, FUSE
/// INIT as a 6.1 guest sends it). Then, per kind:
/// - **idle**: nothing is sent for `--idle-secs`; the run time of all N daemons' threads and
///   each daemon's PSS (`/proc/PID/smaps_rollup`) are read;
/// - **light load**: each daemon gets one GETATTR every `--interval-us` from a driver thread
///   of its own, for `--load-secs`; the daemons' run time per second and per request, the
///   requests served and their median round trip.
///
/// Kinds alternate between rounds (ours first, then the reference first). CPU is the run
/// time of every thread of every daemon and its children (`/proc/PID/task/*/schedstat`,
/// nanoseconds: 32 clock ticks would hide 1 % of a core), not the driver's.
mod density {
    use std::fmt::Write as _;
    use std::process::Child;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};
    use vm_tests::cpu::{tree_pss_kib, tree_run_ns};
    use vm_tests::frontend::{FrontendConfig, TestFrontend};
    use vm_tests::fuse::{FuseSession, ROOT};
    use vm_tests::stats::median;
    use vm_tests::CacheMode;

    use super::{daemon_config, io_err, pair_order, round, BenchError, Config, Result, Which};

    const USAGE: &str = "vmbench density [--n N] [--rounds N] [--idle-secs S] [--load-secs S] \
        [--interval-us US] [--ours BIN] [--reference BIN] [--ours-arg ARG]... \
        [--reference-arg ARG]... [--work DIR] [--markdown-out FILE] [--json-out FILE]";

    struct DensityConfig {
        base: Config,
        n: usize,
        rounds: usize,
        idle: Duration,
        load: Duration,
        interval: Duration,
    }

    /// What one round measured for one kind of daemon.
    #[derive(Debug, Clone, Default)]
    struct Sample {
        /// CPU seconds per second of all N daemons together, idle.
        idle_cpu_per_s: f64,
        /// Median and total PSS after the idle phase, KiB.
        idle_pss_median_kib: f64,
        idle_pss_total_kib: f64,
        /// CPU seconds per second of all N daemons under the light load.
        load_cpu_per_s: f64,
        /// Requests served per second (all daemons).
        load_requests_per_s: f64,
        /// Daemon CPU per request, seconds.
        load_cpu_per_request: f64,
        /// Median round trip of a request, µs.
        load_rtt_median_us: f64,
        load_pss_median_kib: f64,
    }

    fn parse(args: &[String]) -> Result<DensityConfig> {
        let mut n = 32;
        let mut rounds = 2;
        let mut idle = 15;
        let mut load = 10;
        let mut interval_us = 5000;
        let mut rest = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let num = |i: usize| -> Result<u64> {
                args.get(i + 1).and_then(|v| v.parse().ok()).ok_or_else(|| {
                    BenchError::Usage(format!("{} needs a number\n{USAGE}", args[i]))
                })
            };
            match args[i].as_str() {
                "--n" => n = num(i)?.clamp(1, 512) as usize,
                "--rounds" => rounds = num(i)?.clamp(1, 100) as usize,
                "--idle-secs" => idle = num(i)?.clamp(1, 3600),
                "--load-secs" => load = num(i)?.clamp(1, 3600),
                "--interval-us" => interval_us = num(i)?.clamp(10, 10_000_000),
                "-h" | "--help" => return Err(BenchError::Usage(USAGE.into())),
                "--ours" | "--reference" | "--work" | "--markdown-out" | "--json-out"
                | "--ours-arg" | "--reference-arg" => {
                    rest.extend(args[i..(i + 2).min(args.len())].iter().cloned())
                }
                o => return Err(BenchError::Usage(format!("unknown option {o}\n{USAGE}"))),
            }
            i += 2;
        }
        Ok(DensityConfig {
            base: super::parse_args(&rest)?,
            n,
            rounds,
            idle: Duration::from_secs(idle),
            load: Duration::from_secs(load),
            interval: Duration::from_micros(interval_us),
        })
    }

    struct Pod {
        child: Child,
        session: Option<FuseSession>,
    }

    fn start_pod(cfg: &DensityConfig, which: Which, i: usize) -> Result<Pod> {
        let dir = cfg.base.work.join("density").join(which.key());
        let share = dir.join(format!("share-{i}"));
        std::fs::create_dir_all(&share).map_err(io_err("creating a density share"))?;
        std::fs::write(share.join("file"), b"density\n").map_err(io_err("writing a share"))?;
        let sock = dir.join(format!("{i}.sock"));
        let _ = std::fs::remove_file(&sock);
        let dc = daemon_config(&cfg.base, which, CacheMode::Auto);
        let binary = dc.binary.clone().unwrap_or_default();
        let log = std::fs::File::create(dir.join(format!("{i}.log")))
            .map_err(io_err("creating a daemon log"))?;
        let child = super::spawn_until_listening(&binary, dc.args(&sock, &share), log, &sock, 20)?;
        // A small guest: 4 MiB of memory (2 MiB of rings, 2 MiB of buffers), short queues.
        let fc = FrontendConfig {
            mem_size: 4 << 20,
            queue_size: 64,
            ..FrontendConfig::default()
        };
        let frontend = TestFrontend::connect_with(&sock, fc)
            .map_err(|e| BenchError::Meta(format!("density: connecting: {e}")))?;
        let mut session = FuseSession::new(frontend);
        session
            .init()
            .map_err(|e| BenchError::Meta(format!("density: INIT: {e}")))?;
        // What a guest does right after mounting: look at the root.
        session
            .getattr(ROOT)
            .map_err(|e| BenchError::Meta(format!("density: GETATTR: {e}")))?;
        Ok(Pod {
            child,
            session: Some(session),
        })
    }

    fn stop_pods(pods: Vec<Pod>) {
        let mut children = Vec::new();
        for mut p in pods {
            drop(p.session.take());
            children.push(p.child);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for mut c in children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }

    fn pss_kib(pids: &[u32]) -> Vec<f64> {
        pids.iter()
            .filter_map(|p| tree_pss_kib(&[*p]).map(|k| k as f64))
            .collect()
    }

    /// One round of one kind: start, idle, light load, stop.
    fn run_kind(cfg: &DensityConfig, which: Which) -> Result<Sample> {
        let mut pods = Vec::with_capacity(cfg.n);
        for i in 0..cfg.n {
            match start_pod(cfg, which, i) {
                Ok(p) => pods.push(p),
                Err(e) => {
                    stop_pods(pods);
                    return Err(e);
                }
            }
        }
        let pids: Vec<u32> = pods.iter().map(|p| p.child.id()).collect();
        // Let start-up work (first requests, lazily started threads) settle.
        std::thread::sleep(Duration::from_secs(1));
        let mut s = Sample::default();

        let (t0, c0) = (Instant::now(), tree_run_ns(&pids));
        std::thread::sleep(cfg.idle);
        let (t1, c1) = (Instant::now(), tree_run_ns(&pids));
        s.idle_cpu_per_s = c1.saturating_sub(c0) as f64 / 1e9 / (t1 - t0).as_secs_f64();
        let pss = pss_kib(&pids);
        s.idle_pss_median_kib = median(&pss).unwrap_or(0.0);
        s.idle_pss_total_kib = pss.iter().sum();

        // Light load: one GETATTR per daemon every interval, from a thread per daemon.
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now() + Duration::from_millis(50);
        let mut handles = Vec::new();
        for (i, pod) in pods.iter_mut().enumerate() {
            let mut session = pod.session.take().expect("a session per pod");
            let stop = Arc::clone(&stop);
            let interval = cfg.interval;
            // Spread the daemons' ticks over the interval, as independent guests would be.
            let phase = interval.mul_f64(i as f64 / cfg.n as f64);
            handles.push(std::thread::spawn(move || {
                let mut rtts = Vec::new();
                let mut next = start + phase;
                let mut error = None;
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    let t = Instant::now();
                    if let Err(e) = session.getattr(ROOT) {
                        error = Some(e.to_string());
                        break;
                    }
                    rtts.push(t.elapsed().as_secs_f64() * 1e6);
                    // A late driver does not send bursts to catch up.
                    next = (next + interval).max(Instant::now());
                }
                (session, rtts, error)
            }));
        }
        std::thread::sleep(Duration::from_millis(50) + cfg.load / 10);
        // Measured after the first tenth, so every driver thread is in its rhythm.
        let (t2, c2) = (Instant::now(), tree_run_ns(&pids));
        std::thread::sleep(cfg.load);
        let (t3, c3) = (Instant::now(), tree_run_ns(&pids));
        stop.store(true, Ordering::Relaxed);
        let mut all_rtts = Vec::new();
        let mut errors = Vec::new();
        for (pod, h) in pods.iter_mut().zip(handles) {
            match h.join() {
                Ok((session, rtts, error)) => {
                    pod.session = Some(session);
                    all_rtts.extend(rtts);
                    errors.extend(error);
                }
                Err(_) => errors.push("a driver thread panicked".into()),
            }
        }
        let secs = (t3 - t2).as_secs_f64();
        s.load_cpu_per_s = c3.saturating_sub(c2) as f64 / 1e9 / secs;
        // The driver threads count from the start of the load phase: the achieved rate
        // over all of it.
        let load_total = (t3 - start).as_secs_f64().max(1e-9);
        s.load_requests_per_s = all_rtts.len() as f64 / load_total;
        s.load_cpu_per_request = s.load_cpu_per_s / s.load_requests_per_s.max(1e-9);
        s.load_rtt_median_us = median(&all_rtts).unwrap_or(0.0);
        s.load_pss_median_kib = median(&pss_kib(&pids)).unwrap_or(0.0);
        stop_pods(pods);
        if let Some(e) = errors.first() {
            return Err(BenchError::Meta(format!(
                "density: {} of {} drivers failed: {e}",
                errors.len(),
                cfg.n
            )));
        }
        Ok(s)
    }

    /// `vmbench density ...`: runs the rounds and returns the Markdown table.
    pub fn command(args: &[String]) -> Result<String> {
        let cfg = parse(args)?;
        let started = Instant::now();
        let load_before = super::load_avg();
        let mut samples: Vec<(Which, Sample)> = Vec::new();
        for r in 0..cfg.rounds {
            for which in pair_order(r) {
                let s = run_kind(&cfg, which)?;
                eprintln!(
                    "vmbench density: round {r} {} x{}: {s:?}",
                    which.key(),
                    cfg.n
                );
                samples.push((which, s));
            }
        }
        let load_after = super::load_avg();
        let of = |w: Which, f: fn(&Sample) -> f64| -> Vec<f64> {
            samples
                .iter()
                .filter(|(x, _)| *x == w)
                .map(|(_, s)| f(s))
                .collect()
        };
        let med = |w: Which, f: fn(&Sample) -> f64| median(&of(w, f)).unwrap_or(f64::NAN);
        let range = |w: Which, f: fn(&Sample) -> f64, scale: f64| -> String {
            let v = of(w, f);
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min) * scale;
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max) * scale;
            format!("{lo:.3}-{hi:.3}")
        };
        let mut md = String::new();
        let _ = writeln!(
            md,
            "`{}`: {} daemons of each kind, {} rounds (kinds alternating), idle {} s, light \
             load {} s of one GETATTR per daemon every {} µs; 1-minute load {:?} before, \
             {:?} after; {:.0} s.\n",
            cfg.base.command.replacen("vmbench", "vmbench density", 1),
            cfg.n,
            cfg.rounds,
            cfg.idle.as_secs(),
            cfg.load.as_secs(),
            cfg.interval.as_micros(),
            load_before,
            load_after,
            started.elapsed().as_secs_f64()
        );
        let _ = writeln!(
            md,
            "| daemon | idle: CPU of all {n}, % of one core (range) | idle: PSS per daemon, MiB \
             | idle: PSS of all {n}, MiB | loaded: CPU of all {n}, % of one core (range) | \
             loaded: requests/s | loaded: CPU µs per request | loaded: round trip µs \
             (median) | loaded: PSS per daemon, MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            n = cfg.n
        );
        let mut json_kinds = serde_json::Map::new();
        for w in [Which::Ours, Which::Reference] {
            let _ = writeln!(
                md,
                "| {} | {:.3} ({}) | {:.2} | {:.1} | {:.2} ({}) | {:.0} | {:.1} | {:.0} | {:.2} |",
                w.key(),
                med(w, |s| s.idle_cpu_per_s) * 100.0,
                range(w, |s| s.idle_cpu_per_s, 100.0),
                med(w, |s| s.idle_pss_median_kib) / 1024.0,
                med(w, |s| s.idle_pss_total_kib) / 1024.0,
                med(w, |s| s.load_cpu_per_s) * 100.0,
                range(w, |s| s.load_cpu_per_s, 100.0),
                med(w, |s| s.load_requests_per_s),
                med(w, |s| s.load_cpu_per_request) * 1e6,
                med(w, |s| s.load_rtt_median_us),
                med(w, |s| s.load_pss_median_kib) / 1024.0,
            );
            let list = |f: fn(&Sample) -> f64, digits: i32| -> Value {
                json!(of(w, f)
                    .into_iter()
                    .map(|x| round(x, digits))
                    .collect::<Vec<_>>())
            };
            json_kinds.insert(
                w.key().into(),
                json!({
                    "idle_cpu_cores": list(|s| s.idle_cpu_per_s, 6),
                    "idle_pss_per_daemon_kib_median": list(|s| s.idle_pss_median_kib, 0),
                    "idle_pss_all_kib": list(|s| s.idle_pss_total_kib, 0),
                    "load_cpu_cores": list(|s| s.load_cpu_per_s, 6),
                    "load_requests_per_s": list(|s| s.load_requests_per_s, 1),
                    "load_cpu_s_per_request": list(|s| s.load_cpu_per_request, 9),
                    "load_rtt_us_median": list(|s| s.load_rtt_median_us, 1),
                    "load_pss_per_daemon_kib_median": list(|s| s.load_pss_median_kib, 0),
                }),
            );
        }
        let json = json!({
            "command": cfg.base.command.replacen("vmbench", "vmbench density", 1),
            "daemons_per_kind": cfg.n,
            "rounds": cfg.rounds,
            "idle_s": cfg.idle.as_secs(),
            "load_s": cfg.load.as_secs(),
            "interval_us": cfg.interval.as_micros() as u64,
            "load_average_before_after": [load_before, load_after],
            "cpu_source": "run time of all threads of each daemon and its children, \
                /proc/PID/task/*/schedstat",
            "pss_source": "Pss of /proc/PID/smaps_rollup of each daemon and its children",
            "kinds": json_kinds,
            "ours_extra_args": cfg.base.ours_args,
            "reference_extra_args": cfg.base.reference_args,
        });
        if let Some(path) = &cfg.base.markdown_out {
            std::fs::write(path, &md).map_err(io_err(format!("writing {}", path.display())))?;
        }
        if let Some(path) = &cfg.base.json_out {
            let text = serde_json::to_string_pretty(&json).unwrap_or_default();
            std::fs::write(path, text + "\n")
                .map_err(io_err(format!("writing {}", path.display())))?;
        }
        Ok(md)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn options_are_parsed_and_bounded() {
            let cfg = parse(
                &[
                    "--n",
                    "4",
                    "--rounds",
                    "1",
                    "--idle-secs",
                    "2",
                    "--interval-us",
                    "1",
                    "--ours",
                    "/bin/sh",
                    "--reference",
                    "/bin/sh",
                    "--ours-arg",
                    "-x",
                ]
                .map(String::from),
            )
            .unwrap();
            assert_eq!((cfg.n, cfg.rounds), (4, 1));
            assert_eq!(cfg.idle, Duration::from_secs(2));
            assert_eq!(cfg.interval, Duration::from_micros(10), "clamped");
            assert_eq!(cfg.base.ours_args, ["-x"]);
            assert!(parse(&["--n".to_string()]).is_err());
            assert!(parse(&["--bogus".to_string(), "1".to_string()]).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIO_SAMPLE: &str = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{ "fio version" : "fio-3.33", "jobs" : [ { "jobname" : "x", "error" : 0,
  "read" : { "io_bytes" : 1048576, "bw_bytes" : 2097152, "iops" : 512.5, "total_ios" : 256 },
  "write" : { "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0 } } ] }"#;

    /// A configuration from `extra` options, with binaries that exist.
    fn test_config(extra: &[&str]) -> Result<Config> {
        let args: Vec<String> = ["--ours", "/bin/true", "--reference", "/bin/true"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        parse_args(&args)
    }

    #[test]
    fn each_daemon_goes_first_in_every_other_pair() {
        let firsts: Vec<Which> = (0..4).map(|n| pair_order(n)[0]).collect();
        assert_eq!(
            firsts,
            [Which::Ours, Which::Reference, Which::Ours, Which::Reference]
        );
        for n in 0..4 {
            let [a, b] = pair_order(n);
            assert_ne!(a, b, "pair {n} runs one daemon twice");
        }
    }

    #[test]
    fn fio_json_is_parsed() {
        let mib = parse_fio("x", FIO_SAMPLE, Metric::ReadMiBs).unwrap();
        assert!((mib.value - 2.0).abs() < 1e-9);
        // Per MiB moved, for CPU per MiB.
        assert!((mib.work - 1.0).abs() < 1e-9);
        let iops = parse_fio("x", FIO_SAMPLE, Metric::ReadIops).unwrap();
        assert!((iops.value - 512.5).abs() < 1e-9);
        // Per I/O done, for CPU per operation.
        assert_eq!(iops.work, 256.0);
        // No I/O on the write side is an error, not a zero.
        assert!(parse_fio("x", FIO_SAMPLE, Metric::WriteIops).is_err());
        assert!(parse_fio("x", "garbage", Metric::ReadIops).is_err());
        assert!(parse_fio("x", "{\"jobs\": []}", Metric::ReadIops).is_err());
        assert!(parse_fio("x", "} {", Metric::ReadIops).is_err());
    }

    #[test]
    fn failures_are_described() {
        let d = describe_failure(
            " rc=1 fio: pid=7, err=19/file:engines/mmap.c:50, error=No such device \
             {\"jobs\": [{\"error\": 19}]}",
        );
        assert!(d.starts_with("rc=1 fio: pid=7"), "{d}");
        assert!(d.contains("fio job error 19: No such device"), "{d}");
        assert_eq!(describe_failure("rc=2 "), "rc=2");
    }

    #[test]
    fn ratios_are_oriented() {
        assert_eq!(ratio(Some(2.0), Some(1.0), false), Some(2.0));
        assert_eq!(ratio(Some(2.0), Some(1.0), true), Some(0.5));
        assert_eq!(ratio(None, Some(1.0), false), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn meta_rows_need_every_phase() {
        let r = meta_rows(
            META_FILES,
            |k| (k != "meta-unlink:0").then(|| "2.0".to_string()),
            0,
        );
        assert!(r.is_err());
        // Each round reads its own keys.
        let r = meta_rows(
            META_FILES,
            |k| k.ends_with(":0").then(|| "1.0".to_string()),
            1,
        );
        assert!(r.is_err());
        let r = meta_rows(
            META_FILES,
            |k| k.ends_with(":1").then(|| "2.0".to_string()),
            1,
        )
        .unwrap();
        assert_eq!(r["meta-create"], META_FILES as f64 / 2.0);
        assert_eq!(r["meta-total"], 8.0);
    }

    #[test]
    fn guest_script_frames_every_run_of_every_job() {
        let mut cfg = test_config(&["--repeat", "2"]).unwrap();
        cfg.meta = true;
        let jobs = fio_jobs();
        let script = guest_script(&cfg, &jobs[..2]);
        for round in 0..2 {
            for j in &jobs[..2] {
                assert!(
                    script.contains(&format!("run_job {} {round}\n", j.name)),
                    "{script}"
                );
            }
            assert!(
                script.contains(&format!("--drop-caches --tag {round} ")),
                "{script}"
            );
        }
        assert!(!script.contains(&format!("run_job {} 2", jobs[0].name)));
        // The begin line comes before fio, the end line before the result.
        let (b, f, e) = (
            script.find("begin.$1:$2").unwrap(),
            script.find("fio --output-format").unwrap(),
            script.find("end.$1:$2").unwrap(),
        );
        assert!(b < f && f < e);
    }

    #[test]
    fn a_paired_boot_runs_every_job_on_both_daemons_back_to_back_in_alternating_order() {
        let mut cfg = test_config(&["--repeat", "2", "--paired"]).unwrap();
        cfg.meta = true;
        let jobs = fio_jobs();
        let jobs = &jobs[..3];
        for rep in 0..2 {
            let script = paired_guest_script(&cfg, jobs, rep);
            let runs: Vec<&str> = script
                .lines()
                .filter(|l| l.starts_with("run_job ") || l.starts_with("/bin/vmbench meta"))
                .collect();
            // Per round: each job twice, then the metadata job twice.
            assert_eq!(runs.len(), 2 * (2 * jobs.len() + 2), "{script}");
            let mut firsts = Vec::new();
            for pair in runs.chunks(2) {
                let [a, b] = pair else { unreachable!() };
                let ours_meta = format!("meta {}/bench/meta ", mount_of(rep, Which::Ours));
                let side = |l: &str| {
                    if l.contains("/bench-ours") || l.contains(&ours_meta) {
                        Which::Ours
                    } else {
                        Which::Reference
                    }
                };
                assert_ne!(side(a), side(b), "one pair, one daemon: {a} / {b}");
                firsts.push(side(a));
            }
            // Neither daemon always goes first.
            assert!(firsts.contains(&Which::Ours) && firsts.contains(&Which::Reference));
            for round in 0..2 {
                for j in jobs {
                    let ours = format!("run_job {} {round} /bench-ours\n", j.name);
                    let reference = format!(
                        "run_job {} {} /bench-reference\n",
                        j.name,
                        round + PAIRED_TAG_OFFSET
                    );
                    assert!(
                        script.contains(&ours) && script.contains(&reference),
                        "{script}"
                    );
                }
                assert!(script.contains(&format!(
                    "meta {}/bench/meta {META_FILES} --drop-caches --tag {round} ",
                    mount_of(rep, Which::Ours)
                )));
                assert!(script.contains(&format!(
                    "meta {}/bench/meta {META_FILES} --drop-caches --tag {} ",
                    mount_of(rep, Which::Reference),
                    round + PAIRED_TAG_OFFSET
                )));
            }
        }
        // The device each daemon gets alternates from boot to boot.
        assert_ne!(mount_of(0, Which::Ours), mount_of(1, Which::Ours));
    }

    fn mount_of(rep: usize, which: Which) -> &'static str {
        paired_devices(rep)
            .into_iter()
            .find(|(w, _)| *w == which)
            .unwrap()
            .1
    }

    #[test]
    fn pairs_are_the_rounds_both_daemons_completed_in_one_boot() {
        let mut ours = RunValues::default();
        let mut reference = RunValues::default();
        ours.push("job", 0, 10.0);
        ours.push("job", 2, 12.0);
        reference.push("job", 0, 5.0);
        reference.push("job", 1, 6.0);
        reference.push("job", 2, 7.0);
        ours.push_cpu("job", 1, 0.5);
        reference.push_cpu("job", 1, 0.25);
        let pairs = paired_samples(&[ours.clone()], &[reference.clone()], "job", false);
        assert_eq!(pairs, vec![vec![(10.0, 5.0), (12.0, 7.0)]]);
        let cpu = paired_samples(&[ours], &[reference], "job", true);
        assert_eq!(cpu, vec![vec![(0.5, 0.25)]]);
        assert!(paired_samples(&[], &[RunValues::default()], "job", false).is_empty());
    }

    #[test]
    fn boots_are_paired_by_default_but_where_they_cannot_be() {
        let parse = |extra: &[&str]| {
            let args: Vec<&str> = extra.iter().copied().chain(["--quick"]).collect();
            test_config(&args).map(|c| c.paired)
        };
        assert!(parse(&[]).unwrap());
        assert!(!parse(&["--separate-boots"]).unwrap());
        // strace follows one daemon a boot: unpaired unless asked, refused when asked.
        assert!(!parse(&["--strace", "/tmp/x"]).unwrap());
        assert!(parse(&["--strace", "/tmp/x", "--paired"]).is_err());
    }

    #[test]
    fn a_report_says_when_other_work_shared_the_machine() {
        let cfg = test_config(&["--quick"]).unwrap();
        let jobs: Vec<FioJob> = fio_jobs().into_iter().take(1).collect();
        let report = |other_cpus: f64| {
            let mut guest = BTreeMap::new();
            for which in [Which::Ours, Which::Reference] {
                let runs = (0..2)
                    .map(|boot| {
                        let mut r = RunValues {
                            other_load: Some(OtherLoadReading {
                                other_cpus: if boot == 1 { other_cpus } else { 0.01 },
                                steal_cpus: 0.0,
                            }),
                            ..RunValues::default()
                        };
                        for round in 0..3 {
                            r.push(jobs[0].name, round, 100.0 + round as f64);
                        }
                        r
                    })
                    .collect();
                guest.insert(("auto".to_string(), which), runs);
            }
            build_report(
                &cfg,
                &jobs,
                &guest,
                &[],
                &BTreeMap::new(),
                "tcg",
                Duration::ZERO,
            )
        };
        let quiet = report(0.02);
        assert!(!quiet.markdown.contains("not quiet"), "{}", quiet.markdown);
        assert_eq!(quiet.json["machine_quiet"], true);
        let busy = report(0.5);
        assert!(
            busy.markdown.contains("**The machine was not quiet**"),
            "{}",
            busy.markdown
        );
        assert_eq!(busy.json["machine_quiet"], false);
        assert_eq!(
            busy.json["other_load_per_boot"].as_array().map(Vec::len),
            Some(4)
        );
    }

    #[test]
    fn a_run_is_charged_the_cpu_inside_its_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let trace = CpuTrace {
            points: (0..=10).map(|i| (at(i * 100), i as f64 * 0.01)).collect(),
        };
        let line = |text: &str, ms: u64| vm_tests::SerialLine {
            at: at(ms),
            text: text.to_string(),
        };
        let results = GuestResults::from_lines(&[
            line("@@VMTEST begin.job:0=1", 200),
            line("@@VMTEST end.job:0=1", 700),
            line("@@VMTEST begin.job:1=1", 900),
        ]);
        let c = window_cpu(&results, &trace, "job", 0).unwrap();
        assert!((c - 0.05).abs() < 1e-9, "{c}");
        // No end line, or a window past the trace: nothing is invented.
        assert_eq!(window_cpu(&results, &trace, "job", 1), None);
        assert_eq!(window_cpu(&results, &trace, "other", 0), None);
    }

    /// The memory a reference's ceph-fuse holds counts with the daemon's: a `--count-cpu`
    /// process holding 40 MB shows in the sampled RssAnon.
    #[test]
    fn sampled_rss_anon_includes_the_count_cpu_processes() {
        let mut holder = std::process::Command::new("sh")
            .args([
                "-c",
                "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo ready; sleep 30",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        let own = status_kib(
            &std::fs::read_to_string("/proc/self/status").unwrap(),
            "RssAnon",
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_usage(std::process::id(), vec![holder.id()], Arc::clone(&stop));
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let usage = sampler.join().unwrap();
        let _ = holder.kill();
        let _ = holder.wait();
        let anon = usage.anon.expect("sampled");
        assert!(
            anon >= own + 39_000,
            "RssAnon {anon} KiB: own {own} KiB and the 40 MB holder"
        );
    }

    #[test]
    fn count_cpu_and_extra_daemon_args_are_parsed() {
        let me = std::process::id();
        let base = ["--ours", "/bin/sh", "--reference", "/bin/sh"].map(String::from);
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend(extra.iter().map(|s| s.to_string()));
            parse_args(&a)
        };
        let cfg = with(&[
            "--count-cpu",
            &format!("reference:{me}"),
            "--ours-arg",
            "--poll-max-us=0",
        ])
        .unwrap();
        assert_eq!(cfg.count_cpu, [(Which::Reference, me)]);
        assert_eq!(cpu_roots(&cfg, Which::Reference, 1), [1, me]);
        assert_eq!(cpu_roots(&cfg, Which::Ours, 1), [1]);
        let dc = daemon_config(&cfg, Which::Ours, CacheMode::Auto);
        assert!(dc.extra_args.contains(&"--poll-max-us=0".to_string()));
        let dc = daemon_config(&cfg, Which::Reference, CacheMode::Auto);
        assert!(!dc.extra_args.contains(&"--poll-max-us=0".to_string()));
        assert!(with(&["--count-cpu", "nobody:1"]).is_err());
        assert!(with(&["--count-cpu", "ours:x"]).is_err());
        assert!(with(&["--count-cpu", &format!("ours:{}", u32::MAX)]).is_err());
        assert_eq!(with(&["--quick"]).unwrap().repeat, 3);
    }

    #[test]
    fn ratio_command_reads_boots_and_orientation() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let won = ratio_command(&s(&[
            "20,21,19,20.5,20.2,19.8",
            "10,10.5,9.5,10.2,9.9,10.1",
        ]))
        .unwrap();
        assert!(won.starts_with("1.9") || won.starts_with("2.0"), "{won}");
        assert!(won.contains(" won (n 6/6, boots 6/6)"), "{won}");
        // Seconds: the same numbers are a loss for us.
        let lost = ratio_command(&s(&[
            "--lower-is-better",
            "20,21,19,20.5,20.2,19.8",
            "10,10.5,9.5,10.2,9.9,10.1",
        ]))
        .unwrap();
        assert!(lost.contains(" lost "), "{lost}");
        // Four samples a side are too few for a verdict, however far apart.
        let few = ratio_command(&s(&["20,21,19,20.5", "10,10.5,9.5,10.2"])).unwrap();
        assert!(few.contains(" level (n 4/4, boots 4/4)"), "{few}");
        let grouped = ratio_command(&s(&["1,1.1;1.2,1.3", "1,1.1;1.2,1.3"])).unwrap();
        assert!(grouped.contains("level (n 4/4, boots 2/2)"), "{grouped}");
        assert!(ratio_command(&s(&["1,x", "1"])).is_err());
        assert!(ratio_command(&s(&["1"])).is_err());
    }

    #[test]
    fn meta_job_runs_on_the_host() {
        let d = tempfile::tempdir().unwrap();
        meta_command(&[
            d.path().join("m").display().to_string(),
            "50".into(),
            "--tag".into(),
            "4".into(),
        ])
        .unwrap();
        assert!(
            meta_command(&[d.path().display().to_string(), "5".into(), "--tag".into()]).is_err()
        );
        assert!(!d.path().join("m").exists());
    }
}
