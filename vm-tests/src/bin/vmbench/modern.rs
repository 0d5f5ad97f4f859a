//! `vmbench dax` and `vmbench multiqueue`: setups of our daemon compared with each other in
//! the modern guest rig (QEMU 11.1 from `.cache/trixie-root`, Debian trixie's 6.12 kernel).
//!
//! `dax`: per repetition one boot of each of ours with a DAX window (`dax=always`), ours
//! without DAX, and the reference virtiofsd (no DAX: it has no window), in an order that
//! rotates from one repetition to the next. In each boot: the guest's page cache before and
//! after reading the file once (what DAX saves the guest), then sequential 1 MiB read (one
//! pass, the guest's cache of the file dropped first), 4 KiB random read with psync and
//! O_DIRECT, and 4 KiB random read through mmap. The no-DAX boot of ours also copies the file
//! into a tmpfs of the guest's own and runs the same jobs on it: the guest's memory speed,
//! the limit of any path to the file.
//!
//! `multiqueue`: our daemon with N vCPUs (`--vcpus`, 4 by default) and `num-request-queues` N
//! against 1, fio with N jobs (one pinned to each vCPU).
//!
//! Every figure is per boot and repetition; ratios come with the 95 % interval of
//! `vm_tests::stats`, the daemon's CPU time per operation (or MiB) over exactly each job's
//! window with `vm_tests::cpu`. This module owns the two modes' jobs, boots and tables; the
//! fio parsing, CPU windows and interval formatting are the parent's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vm_tests::cpu::CpuSampler;
use vm_tests::stats::{median, ratio_interval, RatioInterval, DEFAULT_SEED};
use vm_tests::{AccelChoice, CacheMode, DaemonConfig, VmBuilder};

use super::{
    collect_fio, fmt_cpu_us, fmt_interval, fmt_num, interval_json, load_avg, prepare_dir,
    sample_usage, version_of, window_cpu, BenchError, FioJob, Metric, Result, RunValues,
    CPU_SAMPLE_EVERY, READ_FILE,
};

/// Which comparison runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Dax,
    Multiqueue,
}

#[derive(Debug, Clone)]
struct Opts {
    mode: Mode,
    ours: PathBuf,
    reference: PathBuf,
    work: PathBuf,
    reps: usize,
    repeat: usize,
    runtime_secs: u64,
    file_mib: u64,
    window: String,
    memory_mib: u32,
    accel: AccelChoice,
    markdown_out: Option<PathBuf>,
    json_out: Option<PathBuf>,
    command: String,
    /// `--ours-arg`: extra flags for our daemon, in every setup.
    ours_args: Vec<String>,
    /// `--jobs a,b`: only these jobs (and their tmpfs twins).
    only_jobs: Option<Vec<String>>,
    /// `multiqueue`: the guest's vCPUs, fio jobs and request queues of the many-queue setup.
    vcpus: u32,
}

const USAGE: &str = "vmbench dax|multiqueue [--ours BIN] [--reference BIN] [--work DIR] \
    [--reps N] [--repeat N] [--runtime SECS] [--file-mib N] [--window SIZE] [--memory MIB] \
    [--accel auto|kvm|tcg] [--ours-arg ARG]... [--jobs a,b] [--vcpus N (multiqueue, 2-16)] \
    [--markdown-out FILE] [--json-out FILE]";

fn parse(mode: Mode, args: &[String]) -> Result<Opts> {
    let root = vm_tests::paths::repo_root()?;
    let name = match mode {
        Mode::Dax => "dax",
        Mode::Multiqueue => "multiqueue",
    };
    let mut o = Opts {
        mode,
        ours: root.join("target/release/virtiofsd-kr"),
        reference: root.join(".cache/reference-virtiofsd/bin/virtiofsd"),
        work: root.join("target/vmbench"),
        reps: 3,
        repeat: 3,
        runtime_secs: 4,
        file_mib: 128,
        window: "256M".into(),
        memory_mib: 1536,
        accel: AccelChoice::from_env()?,
        markdown_out: None,
        json_out: None,
        ours_args: Vec::new(),
        only_jobs: None,
        vcpus: 4,
        command: std::iter::once(format!("vmbench {name}"))
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut i = 0;
    while i < args.len() {
        let val = || -> Result<&String> {
            args.get(i + 1)
                .ok_or_else(|| BenchError::Usage(format!("{} needs a value\n{USAGE}", args[i])))
        };
        let num = || -> Result<u64> {
            let v = val()?;
            v.parse()
                .map_err(|_| BenchError::Usage(format!("{} {v}: not a number", args[i])))
        };
        match args[i].as_str() {
            "--ours" => o.ours = PathBuf::from(val()?),
            "--reference" => o.reference = PathBuf::from(val()?),
            "--work" => o.work = PathBuf::from(val()?),
            "--reps" => o.reps = num()?.clamp(1, 100) as usize,
            "--repeat" => o.repeat = num()?.clamp(1, 100) as usize,
            "--runtime" => o.runtime_secs = num()?.clamp(1, 600),
            "--file-mib" => o.file_mib = num()?.clamp(16, 4096),
            "--window" => o.window = val()?.clone(),
            "--memory" => o.memory_mib = num()?.clamp(256, 65536) as u32,
            "--accel" => o.accel = AccelChoice::parse(val()?)?,
            "--ours-arg" => o.ours_args.push(val()?.clone()),
            "--jobs" => o.only_jobs = Some(val()?.split(',').map(str::to_string).collect()),
            "--vcpus" if mode == Mode::Multiqueue => {
                let n = num()?;
                if !(2..=16).contains(&n) {
                    return Err(BenchError::Usage(format!(
                        "--vcpus {n}: from 2 to 16 (the request queues a device may have)"
                    )));
                }
                o.vcpus = n as u32;
            }
            "--vcpus" => {
                return Err(BenchError::Usage(
                    "--vcpus: only for vmbench multiqueue".into(),
                ))
            }
            "--markdown-out" => o.markdown_out = Some(PathBuf::from(val()?)),
            "--json-out" => o.json_out = Some(PathBuf::from(val()?)),
            "-h" | "--help" => return Err(BenchError::Usage(USAGE.into())),
            other => {
                return Err(BenchError::Usage(format!(
                    "unknown option {other}\n{USAGE}"
                )))
            }
        }
        i += 2;
    }
    let mut need = vec![("--ours", &o.ours)];
    if mode == Mode::Dax {
        need.push(("--reference", &o.reference));
    }
    for (what, p) in need {
        if !p.is_file() {
            return Err(BenchError::Usage(format!(
                "{what} {} does not exist (scripts/bench.sh builds both)",
                p.display()
            )));
        }
    }
    Ok(o)
}

/// One setup that gets a boot per repetition.
#[derive(Debug, Clone)]
struct Variant {
    key: &'static str,
    label: &'static str,
    /// The reference daemon instead of ours.
    reference: bool,
    /// `dax=always` on a window of `Opts::window`.
    dax: bool,
    queues: u32,
    smp: u32,
    /// Also copies the file into a tmpfs of the guest and runs the jobs there.
    tmpfs: bool,
}

fn variants(mode: Mode, vcpus: u32) -> Vec<Variant> {
    match mode {
        Mode::Dax => vec![
            Variant {
                key: "dax",
                label: "ours, DAX (dax=always)",
                reference: false,
                dax: true,
                queues: 1,
                smp: 2,
                tmpfs: false,
            },
            Variant {
                key: "nodax",
                label: "ours, no DAX",
                reference: false,
                dax: false,
                queues: 1,
                smp: 2,
                tmpfs: true,
            },
            Variant {
                key: "reference",
                label: "reference virtiofsd (no DAX)",
                reference: true,
                dax: false,
                queues: 1,
                smp: 2,
                tmpfs: false,
            },
        ],
        Mode::Multiqueue => vec![
            Variant {
                key: "qn",
                label: "ours, a request queue per vCPU",
                reference: false,
                dax: false,
                queues: vcpus,
                smp: vcpus,
                tmpfs: false,
            },
            Variant {
                key: "q1",
                label: "ours, 1 request queue",
                reference: false,
                dax: false,
                queues: 1,
                smp: vcpus,
                tmpfs: false,
            },
        ],
    }
}

/// The jobs of a mode; `tmpfs` names the same jobs on the guest's tmpfs copy.
fn jobs(mode: Mode, tmpfs: bool) -> Vec<FioJob> {
    match (mode, tmpfs) {
        (Mode::Dax, false) => vec![
            FioJob {
                name: "seqread-1m",
                options: "filename=read.dat\nrw=read\nbs=1m\nioengine=psync\n",
                time_based: false,
                metric: Metric::ReadMiBs,
            },
            FioJob {
                name: "randread-4k-psync",
                options: "filename=read.dat\nrw=randread\nbs=4k\ndirect=1\nioengine=psync\n",
                time_based: true,
                metric: Metric::ReadIops,
            },
            FioJob {
                name: "randread-4k-mmap",
                options: "filename=read.dat\nrw=randread\nbs=4k\nioengine=mmap\n",
                time_based: true,
                metric: Metric::ReadIops,
            },
        ],
        (Mode::Dax, true) => vec![
            FioJob {
                name: "tmpfs-seqread-1m",
                options: "filename=read.dat\nrw=read\nbs=1m\nioengine=psync\n",
                time_based: false,
                metric: Metric::ReadMiBs,
            },
            FioJob {
                name: "tmpfs-randread-4k-psync",
                options: "filename=read.dat\nrw=randread\nbs=4k\ndirect=1\nioengine=psync\n",
                time_based: true,
                metric: Metric::ReadIops,
            },
            FioJob {
                name: "tmpfs-randread-4k-mmap",
                options: "filename=read.dat\nrw=randread\nbs=4k\nioengine=mmap\n",
                time_based: true,
                metric: Metric::ReadIops,
            },
        ],
        (Mode::Multiqueue, _) => vec![
            FioJob {
                name: "randread-4k-psync-per-vcpu",
                options: "filename=read.dat\nrw=randread\nbs=4k\ndirect=1\nioengine=psync\n",
                time_based: true,
                metric: Metric::ReadIops,
            },
            FioJob {
                name: "seqread-1m-direct-per-vcpu",
                options: "filename=read.dat\nrw=read\nbs=1m\ndirect=1\nioengine=psync\n",
                time_based: true,
                metric: Metric::ReadMiBs,
            },
            FioJob {
                name: "randwrite-4k-direct-per-vcpu",
                options: "filename=write.dat\nrw=randwrite\nbs=4k\ndirect=1\nioengine=psync\n",
                time_based: true,
                metric: Metric::WriteIops,
            },
        ],
    }
}

/// The jobs of `o`'s mode that `--jobs` selects (a tmpfs job follows its twin).
fn selected(o: &Opts, tmpfs: bool) -> Vec<FioJob> {
    jobs(o.mode, tmpfs)
        .into_iter()
        .filter(|j| match &o.only_jobs {
            Some(list) => list
                .iter()
                .any(|n| n == j.name.trim_start_matches("tmpfs-")),
            None => true,
        })
        .collect()
}

fn job_text(o: &Opts, job: &FioJob, dir: &str) -> String {
    let mut t = format!(
        "[global]\ndirectory={dir}\nsize={}m\ninvalidate=1\ngroup_reporting=1\n\
         fallocate=none\n\n[{}]\n{}",
        o.file_mib, job.name, job.options
    );
    if o.mode == Mode::Multiqueue {
        // One fio job per vCPU, each pinned to its own: the guest's driver sends a CPU's
        // requests on that CPU's queue.
        let _ = write!(
            t,
            "numjobs={n}\ncpus_allowed=0-{}\ncpus_allowed_policy=split\n",
            o.vcpus - 1,
            n = o.vcpus
        );
    }
    if job.time_based {
        let _ = write!(t, "time_based=1\nruntime={}\n", o.runtime_secs);
    }
    t
}

/// The guest's script for one boot of `v`.
fn guest_script(o: &Opts, v: &Variant) -> String {
    let mut s = String::from(super::RUN_JOB);
    s.push_str(
        "kib() { awk -v f=\"$1:\" '$1 == f { print $2 }' /proc/meminfo; }\n\
         echo \"@@VMTEST mount=$(grep ' /data ' /proc/mounts | cut -d' ' -f4 | tr ',' ' ')\"\n",
    );
    if o.mode == Mode::Dax {
        // What reading the file once leaves in the guest's memory.
        let _ = write!(
            s,
            "sync; echo 3 > /proc/sys/vm/drop_caches\n\
             c0=$(kib Cached); a0=$(kib MemAvailable)\n\
             cat /data/bench/{READ_FILE} > /dev/null\n\
             c1=$(kib Cached); a1=$(kib MemAvailable)\n\
             echo \"@@VMTEST mem.cached_growth_kib=$((c1 - c0))\"\n\
             echo \"@@VMTEST mem.available_drop_kib=$((a0 - a1))\"\n"
        );
    }
    for round in 0..o.repeat {
        for j in selected(o, false) {
            let _ = writeln!(s, "run_job {} {round}", j.name);
        }
    }
    if v.tmpfs {
        let _ = write!(
            s,
            "mkdir -p /mnt/tmpfs && mount -t tmpfs -o size={}m tmpfs /mnt/tmpfs\n\
             cp /data/bench/{READ_FILE} /mnt/tmpfs/ || echo \"@@VMTEST-ERROR copy to tmpfs failed\"\n",
            o.file_mib + 16
        );
        for round in 0..o.repeat {
            for j in selected(o, true) {
                let _ = writeln!(s, "run_job {} {round}", j.name);
            }
        }
    }
    s.push_str("exit 0\n");
    s
}

fn run_boot(o: &Opts, v: &Variant, rep: usize, share: &Path) -> Result<RunValues> {
    let name = format!("{}-{}-{}", super_mode_key(o.mode), v.key, rep);
    let daemon = DaemonConfig {
        binary: Some(if v.reference {
            o.reference.clone()
        } else {
            o.ours.clone()
        }),
        cache: CacheMode::Auto,
        sandbox: Some("none".into()),
        seccomp: None,
        xattr: false,
        readonly: false,
        log_level: None,
        extra_args: std::iter::once("--allow-direct-io".to_string())
            .chain(if v.reference {
                Vec::new()
            } else {
                o.ours_args.clone()
            })
            .collect(),
        start_timeout: Duration::from_secs(30),
        command_line: None,
        inherited_fd: None,
    };
    let mut b = VmBuilder::new()
        .name(&name)
        .modern()
        .share(share)
        .daemon_config(daemon)
        .fio(true)
        .memory_mib(o.memory_mib)
        .smp(v.smp)
        .accel(o.accel)
        .timeout(Duration::from_secs(1800))
        .daemon_exit_timeout(Duration::from_secs(30))
        .request_queues(v.queues)
        .workload(&guest_script(o, v));
    if v.dax {
        b = b.dax_window(&o.window).mount_options("dax=always");
    }
    let mut all_jobs = selected(o, false);
    if v.tmpfs {
        all_jobs.extend(selected(o, true));
    }
    for j in &all_jobs {
        let dir = if j.name.starts_with("tmpfs-") {
            "/mnt/tmpfs"
        } else {
            "/data/bench"
        };
        b = b.file(
            &format!("/bench/{}.fio", j.name),
            0o644,
            job_text(o, j, dir),
        );
    }
    let vm = b.spawn()?;
    let pid = vm.daemon_pid();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = pid.map(|p| sample_usage(p, Vec::new(), Arc::clone(&stop)));
    let cpu = pid.map(|p| CpuSampler::start(&[p], CPU_SAMPLE_EVERY));
    let outcome = vm.wait()?;
    stop.store(true, Ordering::Relaxed);
    let trace = cpu.map(CpuSampler::finish).unwrap_or_default();
    let usage = sampler.and_then(|h| h.join().ok()).unwrap_or_default();
    let mut out = RunValues {
        usage,
        elapsed_s: outcome.elapsed.as_secs_f64(),
        load_avg: load_avg(),
        ..RunValues::default()
    };
    let results = &outcome.results;
    let get = |k: &str| results.get(k).map(str::to_string);
    for round in 0..o.repeat {
        for (job, fig) in collect_fio(&all_jobs, round, round, get, &mut out) {
            if job.starts_with("tmpfs-") {
                continue; // no daemon in that path
            }
            match window_cpu(results, &trace, job, round) {
                Some(c) if fig.work > 0.0 => out.push_cpu(job, round, c / fig.work),
                _ => out
                    .errors
                    .push(format!("{name}: no CPU window for {job} round {round}")),
            }
        }
    }
    for (key, kib) in [
        ("mem.cached_growth_mib", "mem.cached_growth_kib"),
        ("mem.available_drop_mib", "mem.available_drop_kib"),
    ] {
        if let Some(v) = results.get(kib).and_then(|s| s.parse::<f64>().ok()) {
            out.push(key, 0, v / 1024.0);
        }
    }
    let mount = results.get("mount").unwrap_or_default().to_string();
    if v.dax && !mount.split_whitespace().any(|w| w == "dax=always") {
        out.errors.push(format!(
            "{name}: /data is not mounted dax=always: {mount:?}"
        ));
    }
    if let Some(d) = &outcome.daemon {
        for line in d.log.lines().filter(|l| {
            l.contains("dax totals:") || l.contains("requests per queue") || l.contains(" ERROR ")
        }) {
            eprintln!("vmbench: [{name}] {}", line.trim());
        }
    }
    for p in outcome.problems() {
        out.errors.push(format!("{name}: {p}"));
    }
    if !out.errors.is_empty() {
        let tail: Vec<String> = outcome
            .serial_text()
            .lines()
            .rev()
            .take(15)
            .map(str::to_string)
            .collect();
        let tail: Vec<String> = tail.into_iter().rev().collect();
        eprintln!(
            "vmbench: [{name}] problems: {:?}\n{}",
            out.errors,
            tail.join("\n")
        );
    }
    Ok(out)
}

fn super_mode_key(mode: Mode) -> &'static str {
    match mode {
        Mode::Dax => "dax",
        Mode::Multiqueue => "mq",
    }
}

/// A key's samples over the boots of one variant, grouped by boot.
fn grouped(runs: &[RunValues], key: &str, cpu: bool) -> Vec<Vec<f64>> {
    runs.iter()
        .filter_map(|r| {
            if cpu {
                r.cpu.get(key)
            } else {
                r.values.get(key)
            }
        })
        .filter(|v| !v.is_empty())
        .cloned()
        .collect()
}

fn med(runs: &[RunValues], key: &str, cpu: bool) -> Option<f64> {
    let all: Vec<f64> = grouped(runs, key, cpu).into_iter().flatten().collect();
    median(&all)
}

fn interval(a: &[Vec<f64>], b: &[Vec<f64>]) -> Option<RatioInterval> {
    ratio_interval(a, b, DEFAULT_SEED)
}

/// A target line: met when the whole interval is at or above `at_least`.
fn target(r: Option<&RatioInterval>, at_least: f64) -> String {
    match r {
        None => "n/a".into(),
        Some(r) if r.low >= at_least => format!("met (>= {at_least})"),
        Some(r) if r.ratio >= at_least => {
            format!("estimate met (>= {at_least}), interval reaches below")
        }
        Some(_) => format!("NOT met (>= {at_least})"),
    }
}

struct Report {
    markdown: String,
    json: Value,
}

fn report(o: &Opts, runs: &BTreeMap<&'static str, Vec<RunValues>>, elapsed: Duration) -> Report {
    let vs = variants(o.mode, o.vcpus);
    let empty = Vec::new();
    let of = |k: &str| runs.get(k).unwrap_or(&empty);
    let mut md = String::new();
    let loads: Vec<f64> = runs.values().flatten().filter_map(|r| r.load_avg).collect();
    let errors: Vec<String> = runs
        .values()
        .flatten()
        .flat_map(|r| r.errors.iter().cloned())
        .collect();
    let _ = writeln!(
        md,
        "Command: `{}`. Guest: QEMU 11.1 (trixie root), Linux 6.12, {} MiB, accel {:?}; \
         file {} MiB; {} boot(s) per setup x {} repetition(s) of each job ({} s time-based jobs). \
         Ours: {}. {}Load average at the end of the boots: {}. Took {:.0} s.\n",
        o.command,
        o.memory_mib,
        o.accel,
        o.file_mib,
        o.reps,
        o.repeat,
        o.runtime_secs,
        version_of(&o.ours),
        if o.mode == Mode::Dax {
            format!(
                "Reference: {}. Window {}. ",
                version_of(&o.reference),
                o.window
            )
        } else {
            String::new()
        },
        loads
            .iter()
            .map(|l| format!("{l:.1}"))
            .collect::<Vec<_>>()
            .join(" "),
        elapsed.as_secs_f64()
    );
    let mut jrows = Vec::new();
    match o.mode {
        Mode::Dax => {
            let _ = writeln!(
                md,
                "| job | ours DAX | ours no DAX | reference | guest tmpfs | DAX / no DAX | DAX / reference | DAX / tmpfs | target |\n\
                 |---|---:|---:|---:|---:|---|---|---|---|"
            );
            for (job, tmpfs_job, goal) in [
                ("seqread-1m", "tmpfs-seqread-1m", "DAX >= 0.8 x tmpfs"),
                (
                    "randread-4k-psync",
                    "tmpfs-randread-4k-psync",
                    "DAX >= 10 x no DAX",
                ),
                (
                    "randread-4k-mmap",
                    "tmpfs-randread-4k-mmap",
                    "DAX >= 20 x no DAX",
                ),
            ] {
                let unit = jobs(Mode::Dax, false)
                    .iter()
                    .find(|j| j.name == job)
                    .map(|j| j.metric.unit())
                    .unwrap_or("");
                let d = grouped(of("dax"), job, false);
                let n = grouped(of("nodax"), job, false);
                let r = grouped(of("reference"), job, false);
                let t = grouped(of("nodax"), tmpfs_job, false);
                let dn = interval(&d, &n);
                let dr = interval(&d, &r);
                let dt = interval(&d, &t);
                let verdict = match job {
                    "seqread-1m" => target(dt.as_ref(), 0.8),
                    "randread-4k-psync" => target(dn.as_ref(), 10.0),
                    _ => target(dn.as_ref(), 20.0),
                };
                let _ = writeln!(
                    md,
                    "| {job} ({unit}) | {} | {} | {} | {} | {} | {} | {} | {goal}: {verdict} |",
                    fmt_num(med(of("dax"), job, false)),
                    fmt_num(med(of("nodax"), job, false)),
                    fmt_num(med(of("reference"), job, false)),
                    fmt_num(med(of("nodax"), tmpfs_job, false)),
                    fmt_interval(dn.as_ref(), true),
                    fmt_interval(dr.as_ref(), true),
                    fmt_interval(dt.as_ref(), true),
                );
                jrows.push(json!({
                    "job": job, "unit": unit,
                    "samples": {"dax": d, "nodax": n, "reference": r, "tmpfs": t},
                    "dax_over_nodax": interval_json(dn.as_ref(), true),
                    "dax_over_reference": interval_json(dr.as_ref(), true),
                    "dax_over_tmpfs": interval_json(dt.as_ref(), true),
                    "target": verdict,
                }));
            }
            let _ = writeln!(
                md,
                "\nDaemon CPU time per unit of work (µs per op, per MiB for seqread), over each \
                 job's window (ratios: no DAX / DAX, above 1 = DAX cheaper):\n\n\
                 | job | ours DAX | ours no DAX | reference | no DAX / DAX | reference / DAX |\n\
                 |---|---:|---:|---:|---|---|"
            );
            for job in ["seqread-1m", "randread-4k-psync", "randread-4k-mmap"] {
                let d = grouped(of("dax"), job, true);
                let n = grouped(of("nodax"), job, true);
                let r = grouped(of("reference"), job, true);
                // Most DAX windows hold no CPU tick at all (the reads never reach the
                // daemon): a ratio over the few that do would be noise, not a figure.
                let dax_cpu = med(of("dax"), job, true);
                let over_dax = |x: &[Vec<f64>]| match dax_cpu {
                    Some(c) if c > 0.0 => fmt_interval(interval(x, &d).as_ref(), true),
                    Some(_) => "n/a (DAX: no CPU)".to_string(),
                    None => "n/a".to_string(),
                };
                let _ = writeln!(
                    md,
                    "| {job} | {} | {} | {} | {} | {} |",
                    fmt_cpu_us(dax_cpu),
                    fmt_cpu_us(med(of("nodax"), job, true)),
                    fmt_cpu_us(med(of("reference"), job, true)),
                    over_dax(&n),
                    over_dax(&r),
                );
                jrows.push(
                    json!({"job": job, "cpu_s_per_unit": {"dax": d, "nodax": n, "reference": r}}),
                );
            }
            let _ = writeln!(
                md,
                "\nGuest memory after reading the {} MiB file once (caches dropped first; \
                 medians over boots, MiB):\n\n\
                 | setup | page cache grown by | MemAvailable dropped by |\n|---|---:|---:|",
                o.file_mib
            );
            for v in &vs {
                jrows.push(json!({
                    "setup": v.key,
                    "cached_growth_mib": grouped(of(v.key), "mem.cached_growth_mib", false),
                    "available_drop_mib": grouped(of(v.key), "mem.available_drop_mib", false),
                }));
                let _ = writeln!(
                    md,
                    "| {} | {} | {} |",
                    v.label,
                    fmt_num(med(of(v.key), "mem.cached_growth_mib", false)),
                    fmt_num(med(of(v.key), "mem.available_drop_mib", false)),
                );
            }
        }
        Mode::Multiqueue => {
            let n = o.vcpus;
            let _ = writeln!(
                md,
                "| job ({n} fio jobs, one per vCPU) | {n} queues | 1 queue | {n} / 1 | CPU µs/unit {n} queues | CPU µs/unit 1 queue | CPU 1 / {n} |\n\
                 |---|---:|---:|---|---:|---:|---|"
            );
            for j in jobs(Mode::Multiqueue, false) {
                let a = grouped(of("qn"), j.name, false);
                let b = grouped(of("q1"), j.name, false);
                let ca = grouped(of("qn"), j.name, true);
                let cb = grouped(of("q1"), j.name, true);
                let r = interval(&a, &b);
                let c = interval(&cb, &ca);
                let _ = writeln!(
                    md,
                    "| {} ({}) | {} | {} | {} | {} | {} | {} |",
                    j.name,
                    j.metric.unit(),
                    fmt_num(med(of("qn"), j.name, false)),
                    fmt_num(med(of("q1"), j.name, false)),
                    fmt_interval(r.as_ref(), true),
                    fmt_cpu_us(med(of("qn"), j.name, true)),
                    fmt_cpu_us(med(of("q1"), j.name, true)),
                    fmt_interval(c.as_ref(), true),
                );
                jrows.push(json!({
                    "job": j.name, "unit": j.metric.unit(),
                    "samples": {"qn": a, "q1": b}, "cpu_s_per_unit": {"qn": ca, "q1": cb},
                    "qn_over_q1": interval_json(r.as_ref(), true),
                    "cpu_q1_over_qn": interval_json(c.as_ref(), true),
                }));
            }
        }
    }
    let _ = writeln!(
        md,
        "\nRatios: Hodges-Lehmann estimate [95 % hierarchical bootstrap interval] (boots \
         resampled, then repetitions); \"won\"/\"lost\" only when the interval excludes 1."
    );
    if !errors.is_empty() {
        let _ = writeln!(md, "\nProblems during the run:");
        for e in &errors {
            let _ = writeln!(md, "- {e}");
        }
    }
    let json = json!({
        "mode": super_mode_key(o.mode),
        "command": o.command,
        "file_mib": o.file_mib,
        "reps": o.reps,
        "repeat": o.repeat,
        "runtime_secs": o.runtime_secs,
        "memory_mib": o.memory_mib,
        "window": o.window,
        "vcpus": (o.mode == Mode::Multiqueue).then_some(o.vcpus),
        "load_avg": loads,
        "rows": jrows,
        "errors": errors,
    });
    Report { markdown: md, json }
}

/// `vmbench dax ...` / `vmbench multiqueue ...`: runs the boots and returns the table.
pub(super) fn command(dax: bool, args: &[String]) -> Result<String> {
    let o = parse(if dax { Mode::Dax } else { Mode::Multiqueue }, args)?;
    let started = Instant::now();
    let share = o.work.join("share");
    eprintln!(
        "vmbench: preparing {} MiB files in {}",
        o.file_mib,
        share.display()
    );
    prepare_dir(&share.join("bench"), o.file_mib)?;
    let vs = variants(o.mode, o.vcpus);
    let mut runs: BTreeMap<&'static str, Vec<RunValues>> = BTreeMap::new();
    for rep in 0..o.reps {
        // Rotate the order so that no setup always goes first.
        for k in 0..vs.len() {
            let v = &vs[(k + rep) % vs.len()];
            let r = run_boot(&o, v, rep, &share).unwrap_or_else(|e| {
                eprintln!("vmbench: {} rep={rep}: {e}", v.key);
                RunValues {
                    errors: vec![format!("{} rep={rep}: {e}", v.key)],
                    ..RunValues::default()
                }
            });
            eprintln!(
                "vmbench: {} rep={rep} ({:.0} s, load {:?}): {:?} cpu/unit {:?}",
                v.key, r.elapsed_s, r.load_avg, r.values, r.cpu
            );
            runs.entry(v.key).or_default().push(r);
        }
    }
    let rep = report(&o, &runs, started.elapsed());
    if let Some(p) = &o.markdown_out {
        std::fs::write(p, &rep.markdown)
            .map_err(super::io_err(format!("writing {}", p.display())))?;
    }
    if let Some(p) = &o.json_out {
        let text = serde_json::to_string_pretty(&rep.json).unwrap_or_else(|_| "{}".into());
        std::fs::write(p, format!("{text}\n"))
            .map_err(super::io_err(format!("writing {}", p.display())))?;
    }
    Ok(rep.markdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: Mode) -> Opts {
        Opts {
            mode,
            ours: "/x".into(),
            reference: "/y".into(),
            work: "/w".into(),
            reps: 1,
            repeat: 2,
            runtime_secs: 3,
            file_mib: 64,
            window: "256M".into(),
            memory_mib: 1024,
            accel: AccelChoice::Tcg,
            markdown_out: None,
            json_out: None,
            command: String::new(),
            ours_args: Vec::new(),
            only_jobs: None,
            vcpus: 4,
        }
    }

    #[test]
    fn the_dax_script_measures_memory_and_runs_tmpfs_jobs_only_where_asked() {
        let o = opts(Mode::Dax);
        let vs = variants(Mode::Dax, 4);
        let nodax = vs.iter().find(|v| v.tmpfs).unwrap();
        let s = guest_script(&o, nodax);
        assert!(s.contains("mem.cached_growth_kib"));
        assert!(s.contains("run_job tmpfs-seqread-1m 1"));
        assert!(s.contains("mount -t tmpfs -o size=80m"));
        let dax = vs.iter().find(|v| v.dax).unwrap();
        let s = guest_script(&o, dax);
        assert!(!s.contains("tmpfs"));
        assert!(s.contains("run_job randread-4k-mmap 1"));
        assert!(!s.contains("run_job randread-4k-mmap 2"));
    }

    #[test]
    fn multiqueue_jobs_run_a_fio_job_pinned_to_each_vcpu() {
        let mut o = opts(Mode::Multiqueue);
        for n in [4, 2] {
            o.vcpus = n;
            for j in jobs(Mode::Multiqueue, false) {
                let t = job_text(&o, &j, "/data/bench");
                assert!(t.contains(&format!("numjobs={n}\n")), "{t}");
                assert!(t.contains(&format!("cpus_allowed=0-{}\n", n - 1)), "{t}");
                assert!(t.contains("cpus_allowed_policy=split\n"), "{t}");
                assert!(t.contains("runtime=3\n") && t.contains("size=64m"), "{t}");
            }
            let vs = variants(Mode::Multiqueue, n);
            assert_eq!(
                vs.iter().map(|v| (v.queues, v.smp)).collect::<Vec<_>>(),
                [(n, n), (1, n)]
            );
        }
        let dax = job_text(&opts(Mode::Dax), &jobs(Mode::Dax, false)[1], "/data/bench");
        assert!(!dax.contains("numjobs"), "{dax}");
    }

    #[test]
    fn jobs_selects_a_job_and_its_tmpfs_twin() {
        let mut o = opts(Mode::Dax);
        o.only_jobs = Some(vec!["randread-4k-mmap".into()]);
        let names = |tmpfs| -> Vec<&str> { selected(&o, tmpfs).iter().map(|j| j.name).collect() };
        assert_eq!(names(false), ["randread-4k-mmap"]);
        assert_eq!(names(true), ["tmpfs-randread-4k-mmap"]);
        let nodax = variants(Mode::Dax, 4)
            .into_iter()
            .find(|v| v.tmpfs)
            .unwrap();
        let s = guest_script(&o, &nodax);
        assert!(!s.contains("seqread") && s.contains("run_job tmpfs-randread-4k-mmap 0"));
    }

    #[test]
    fn targets_need_the_whole_interval() {
        let r = |ratio, low, high| RatioInterval {
            ratio,
            low,
            high,
            n_a: 3,
            n_b: 3,
            boots_a: 3,
            boots_b: 3,
        };
        assert!(target(Some(&r(12.0, 10.5, 14.0)), 10.0).starts_with("met"));
        assert!(target(Some(&r(11.0, 9.0, 14.0)), 10.0).starts_with("estimate met"));
        assert!(target(Some(&r(8.0, 7.0, 9.0)), 10.0).starts_with("NOT"));
        assert_eq!(target(None, 10.0), "n/a");
    }
}
