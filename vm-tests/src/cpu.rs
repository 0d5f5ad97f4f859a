//! What a set of processes costs the host: CPU time and proportional memory, read from
//! `/proc`, for the benchmarks.
//!
//! A daemon is counted with every process below it (the namespace sandbox forks the server
//! as a child; a CephFS reference is `virtiofsd` plus `ceph-fuse`, passed as a second root).
//! [`tree_cpu_seconds`] is `utime + stime` of `/proc/PID/stat` of each process plus `cutime +
//! cstime` (children it has reaped), so a child that exits between two reads moves from one
//! term to the other without a jump; but it counts in clock ticks (10 ms), as much as a short
//! job's whole window. [`CpuSampler`] therefore records a [`RunTimeTally`] over time, the
//! threads' run time in nanoseconds (`schedstat`), so a caller can read what was spent in any
//! window afterwards (a benchmark job's begin and end as the guest reported them).
//!
//! This module only reads `/proc`; it starts and stops nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/PID/stat` times.
pub fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf has no memory effects; a non-positive result (unknown) is checked.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (t > 0).then_some(t as f64)
}

/// Fields of `/proc/PID/stat` after the command name (which may hold spaces and `)`).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// `utime + stime` of process `pid` (all its threads, exited ones included), in seconds.
pub fn own_cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    // After the name: state is field 0, utime 11, stime 12, cutime 13, cstime 14.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks()?)
}

/// `utime + stime + cutime + cstime` of `pid`, in seconds.
fn cpu_with_reaped_children(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    let mut ticks = 0u64;
    for i in 11..=14 {
        // cutime and cstime are signed in the kernel's format; never negative in practice.
        ticks += f.get(i)?.parse::<i64>().ok()?.max(0) as u64;
    }
    Some(ticks as f64 / clock_ticks()?)
}

/// Parent pid of `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Direct children of `pid`: from `/proc/PID/task/*/children` when the kernel has it, else
/// by scanning every process's parent.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut have_children_files = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                have_children_files = true;
                out.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    if !have_children_files {
        if let Ok(procs) = std::fs::read_dir("/proc") {
            out.extend(
                procs
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|p| parent_of(*p) == Some(pid)),
            );
        }
    }
    out
}

/// `roots` and every process below them, each once.
pub fn process_tree(roots: &[u32]) -> Vec<u32> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(p) = todo.pop() {
        if seen.insert(p) {
            todo.extend(children_of(p));
        }
    }
    seen.into_iter().collect()
}

/// CPU seconds of `roots` and their descendants (see the module doc); `None` when none of
/// the roots exists any more.
pub fn tree_cpu_seconds(roots: &[u32]) -> Option<f64> {
    let mut any = false;
    let mut total = 0.0;
    for p in process_tree(roots) {
        if let Some(s) = cpu_with_reaped_children(p) {
            any = true;
            total += s;
        }
    }
    any.then_some(total)
}

/// Run time of every live thread of `roots` and their descendants, in nanoseconds
/// (`/proc/PID/task/*/schedstat`). Unlike `utime + stime` (clock ticks, 10 ms) it resolves
/// the microseconds an idle daemon spends, but a thread that has exited no longer counts:
/// for windows in which no thread exits (idle or steadily loaded daemons).
pub fn tree_run_ns(roots: &[u32]) -> u64 {
    process_tree(roots)
        .into_iter()
        .filter_map(threads_run_ns)
        .flatten()
        .map(|(_, ns)| ns)
        .sum()
}

/// Each live thread of process `pid` with its run time in nanoseconds (the first field of
/// `/proc/PID/task/TID/schedstat`); `None` when the process does not exist.
fn threads_run_ns(pid: u32) -> Option<Vec<(u32, u64)>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|t| {
                let tid = t.file_name().to_str()?.parse::<u32>().ok()?;
                let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
                Some((tid, stat.split_whitespace().next()?.parse::<u64>().ok()?))
            })
            .collect(),
    )
}

/// The run time of a process set so far, precise to the scheduler's nanoseconds
/// (`/proc/PID/task/TID/schedstat`) and, unlike [`tree_run_ns`], never going back when a
/// thread or process exits: every thread ever seen counts with the last run time read for it.
/// What an exiting thread ran after the read before its exit, and a thread born and gone
/// between two reads, are missed (a daemon's threads live as long as it does; a CephFS
/// reference's `ceph-fuse` too).
#[derive(Debug, Default)]
pub struct RunTimeTally {
    /// Last run time read per thread id.
    last: HashMap<u32, u64>,
    /// Run time of threads whose id a newer thread now has.
    reused: u64,
}

impl RunTimeTally {
    /// Reads every live thread of `roots` and their descendants; returns the set's run time
    /// so far in seconds, `None` when none of the roots exists any more.
    pub fn sample(&mut self, roots: &[u32]) -> Option<f64> {
        let mut any = false;
        for p in process_tree(roots) {
            let Some(threads) = threads_run_ns(p) else {
                continue;
            };
            any = true;
            for (tid, ns) in threads {
                let last = self.last.entry(tid).or_insert(0);
                if ns < *last {
                    // Less than before: another thread with the same id.
                    self.reused += *last;
                }
                *last = ns;
            }
        }
        any.then(|| (self.reused + self.last.values().sum::<u64>()) as f64 / 1e9)
    }
}

/// A `kB` field of `/proc/PID/smaps_rollup` (`Pss`, `Rss`, `Pss_Anon`, ...).
pub fn smaps_rollup_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Proportional set size of `roots` and their descendants, in KiB.
pub fn tree_pss_kib(roots: &[u32]) -> Option<u64> {
    let v: Vec<u64> = process_tree(roots)
        .into_iter()
        .filter_map(|p| smaps_rollup_kib(p, "Pss"))
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// CPU seconds of a process set over time.
#[derive(Debug, Clone, Default)]
pub struct CpuTrace {
    /// (when, cumulative CPU seconds), in time order.
    pub points: Vec<(Instant, f64)>,
}

impl CpuTrace {
    /// Cumulative CPU seconds at `t`, linear between the samples around it; `None` outside
    /// the trace.
    pub fn at(&self, t: Instant) -> Option<f64> {
        let i = self.points.partition_point(|(at, _)| *at <= t);
        if i == 0 {
            return None;
        }
        let (t0, c0) = self.points[i - 1];
        if t0 == t {
            return Some(c0);
        }
        let (t1, c1) = *self.points.get(i)?;
        let span = (t1 - t0).as_secs_f64();
        if span <= 0.0 {
            return Some(c1);
        }
        Some(c0 + (c1 - c0) * (t - t0).as_secs_f64() / span)
    }

    /// CPU seconds spent between `from` and `to`.
    pub fn between(&self, from: Instant, to: Instant) -> Option<f64> {
        Some((self.at(to)? - self.at(from)?).max(0.0))
    }

    /// The last cumulative value (what the whole run cost).
    pub fn last(&self) -> Option<f64> {
        self.points.last().map(|p| p.1)
    }
}

/// Samples the run time of a process set ([`RunTimeTally`]) every `interval` in a thread until
/// stopped or until every root is gone. Roots can be added while it runs
/// ([`CpuSampler::add_root`]).
pub struct CpuSampler {
    roots: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<CpuTrace>>,
}

impl CpuSampler {
    pub fn start(roots: &[u32], interval: Duration) -> CpuSampler {
        let roots = Arc::new(Mutex::new(roots.to_vec()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&roots), Arc::clone(&stop));
        let handle = std::thread::spawn(move || {
            let mut trace = CpuTrace::default();
            let mut tally = RunTimeTally::default();
            loop {
                let now_roots = r.lock().map(|g| g.clone()).unwrap_or_default();
                let at = Instant::now();
                match tally.sample(&now_roots) {
                    Some(c) => trace.points.push((at, c)),
                    None => break,
                }
                if s.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(interval);
            }
            trace
        });
        CpuSampler {
            roots,
            stop,
            handle: Some(handle),
        }
    }

    /// Counts `pid` (and what runs below it) too from the next sample on.
    pub fn add_root(&self, pid: u32) {
        if let Ok(mut g) = self.roots.lock() {
            if !g.contains(&pid) {
                g.push(pid);
            }
        }
    }

    /// Takes one last sample and returns the trace.
    pub fn finish(mut self) -> CpuTrace {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// CPU seconds the hypervisor ran someone else while this machine had work (steal), from the
/// first line of `/proc/stat`.
fn steal_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let steal: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(steal as f64 / clock_ticks()?)
}

/// CPU seconds (with reaped children) of every process that is not this one, not below it,
/// not below one of `work` and not a kernel thread, by pid.
fn others_cpu_seconds(work: &[u32]) -> BTreeMap<u32, f64> {
    let roots: Vec<u32> = std::iter::once(std::process::id())
        .chain(work.iter().copied())
        .collect();
    let ours: BTreeSet<u32> = process_tree(&roots).into_iter().collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| !ours.contains(p) && *p != 2 && parent_of(*p) != Some(2))
        .filter_map(|p| Some((p, cpu_with_reaped_children(p)?)))
        .collect()
}

/// What else ran on the machine while a benchmark did: the CPU time of every process that is
/// not the bench or below it (other tenants, a build, a stray busy loop), and the CPU time the
/// hypervisor gave to others (steal), each as average CPUs over the window. Kernel threads
/// are left out: their work is mostly the bench's own I/O (a loop device's workers). A
/// process that starts inside the window counts whole; one that exits inside it counts only
/// through its parent, when that reaps it. Processes outside the bench that do its work (the
/// storage cluster a CephFS bench reads from, a `--count-cpu` FUSE client) are named at the
/// start and left out with everything below them.
#[derive(Debug, Clone)]
pub struct OtherLoad {
    at: Instant,
    work: Vec<u32>,
    others: BTreeMap<u32, f64>,
    steal_s: f64,
}

/// What [`OtherLoad::finish`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OtherLoadReading {
    /// Average CPUs busy in processes outside the bench.
    pub other_cpus: f64,
    /// Average CPUs stolen by the hypervisor.
    pub steal_cpus: f64,
}

impl OtherLoad {
    /// Starts a window now (`None` where `/proc` cannot tell); `work` are the processes
    /// outside the bench's own tree that serve it.
    pub fn start(work: &[u32]) -> Option<OtherLoad> {
        Some(OtherLoad {
            steal_s: steal_seconds()?,
            others: others_cpu_seconds(work),
            work: work.to_vec(),
            at: Instant::now(),
        })
    }

    /// Ends the window.
    pub fn finish(&self) -> Option<OtherLoadReading> {
        let secs = self.at.elapsed().as_secs_f64();
        let steal_s = steal_seconds()?;
        if secs <= 0.0 {
            return None;
        }
        let other: f64 = others_cpu_seconds(&self.work)
            .iter()
            .map(|(p, s)| (s - self.others.get(p).copied().unwrap_or(0.0)).max(0.0))
            .sum();
        Some(OtherLoadReading {
            other_cpus: other / secs,
            steal_cpus: ((steal_s - self.steal_s) / secs).max(0.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn burn(seconds: f64) {
        let pid = std::process::id();
        let start = own_cpu_seconds(pid).unwrap();
        let mut x = 1u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while own_cpu_seconds(pid).unwrap() < start + seconds {
            assert!(Instant::now() < deadline, "CPU time did not grow");
            for i in 0..100_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
        }
        assert_ne!(x, 0);
    }

    #[test]
    fn own_cpu_grows_while_computing_and_missing_processes_have_none() {
        let pid = std::process::id();
        let before = own_cpu_seconds(pid).unwrap();
        burn(0.05);
        assert!(own_cpu_seconds(pid).unwrap() >= before + 0.05);
        assert_eq!(own_cpu_seconds(u32::MAX), None);
        assert_eq!(tree_cpu_seconds(&[u32::MAX]), None);
    }

    #[test]
    fn a_child_and_its_cpu_are_counted_with_the_parent() {
        // A shell child that spins: its CPU shows in the tree's sum, not in our own.
        let mut child = Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let me = std::process::id();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tree = Vec::new();
        while Instant::now() < deadline {
            tree = process_tree(&[me]);
            let child_cpu = own_cpu_seconds(child.id()).unwrap_or(0.0);
            if tree.contains(&child.id()) && child_cpu >= 0.1 {
                let total = tree_cpu_seconds(&[me]).unwrap();
                let mine = own_cpu_seconds(me).unwrap();
                assert!(
                    total >= mine + child_cpu - 0.02,
                    "{total} {mine} {child_cpu}"
                );
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child never showed in the tree with CPU time: {tree:?}");
    }

    #[test]
    fn trace_interpolates_inside_and_knows_nothing_outside() {
        let t0 = Instant::now();
        let trace = CpuTrace {
            points: vec![
                (t0, 1.0),
                (t0 + Duration::from_secs(1), 2.0),
                (t0 + Duration::from_secs(3), 2.5),
            ],
        };
        assert_eq!(trace.at(t0), Some(1.0));
        assert_eq!(trace.at(t0 + Duration::from_millis(500)), Some(1.5));
        assert_eq!(trace.at(t0 + Duration::from_secs(2)), Some(2.25));
        assert_eq!(trace.at(t0 + Duration::from_secs(3)), Some(2.5));
        assert_eq!(trace.at(t0 + Duration::from_secs(4)), None);
        assert_eq!(
            trace.between(t0 + Duration::from_millis(500), t0 + Duration::from_secs(2)),
            Some(0.75)
        );
        assert_eq!(trace.last(), Some(2.5));
        assert_eq!(CpuTrace::default().at(t0), None);
    }

    #[test]
    fn sampler_sees_a_process_work_in_the_window_it_worked() {
        // A busy child of its own, not this test process: the other tests of this binary run
        // on threads of this process at the same time and would add their CPU to the window
        // (seen: 0.40 s in a 0.2 s window under a loaded CI run).
        let mut child = Command::new("sh")
            .args(["-c", "sleep 0.3; while :; do :; done"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let sampler = CpuSampler::start(&[pid], Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(500));
        let (from, c0) = (Instant::now(), own_cpu_seconds(pid).unwrap());
        let deadline = from + Duration::from_secs(30);
        while own_cpu_seconds(pid).unwrap() < c0 + 0.2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (to, c1) = (Instant::now(), own_cpu_seconds(pid).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        let trace = sampler.finish();
        let _ = child.kill();
        let _ = child.wait();
        assert!(c1 - c0 >= 0.2, "the child did not run");
        let spent = trace.between(from, to).unwrap();
        // Clock-tick resolution (10 ms) and the sampling interval at both ends.
        assert!((spent - (c1 - c0)).abs() < 0.06, "{spent} {}", c1 - c0);
    }

    /// The tests that detach busy processes run one at a time: each would be the other's
    /// other load.
    static DETACHED_LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_process_named_as_the_benchs_work_is_not_other_load() {
        let _one = DETACHED_LOAD.lock().unwrap_or_else(|p| p.into_inner());
        // A busy loop outside our tree (init adopts it), as a storage cluster's daemon is,
        // with a child of its own.
        let out = Command::new("sh")
            .args([
                "-c",
                "(sh -c 'end=$(($(date +%s) + 3)); while [ $(date +%s) -lt $end ]; do :; done'; \
                 true) >/dev/null 2>&1 & echo $!",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let named = OtherLoad::start(&[pid]).unwrap();
        let unnamed = OtherLoad::start(&[]).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let (named, unnamed) = (named.finish().unwrap(), unnamed.finish().unwrap());
        // Gone, and reaped (the reaper's cutime takes their CPU time then), before the next
        // test's window opens.
        let tree = process_tree(&[pid]);
        let _ = Command::new("kill")
            .args(tree.iter().map(u32::to_string))
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tree.iter().any(|p| stat_fields(*p).is_some()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(unnamed.other_cpus > 0.5, "{unnamed:?}");
        assert!(
            named.other_cpus < unnamed.other_cpus - 0.4,
            "named {named:?} unnamed {unnamed:?}"
        );
    }

    #[test]
    fn a_process_outside_the_bench_shows_as_other_load_and_our_own_child_does_not() {
        // Busy for 2 s; `outside` detaches it (its shell exits, init adopts it).
        let busy = |outside: bool| {
            let lp = "end=$(($(date +%s) + 2)); while [ $(date +%s) -lt $end ]; do :; done";
            let script = if outside {
                format!("({lp}) >/dev/null 2>&1 &")
            } else {
                lp.to_string()
            };
            Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        };
        let _one = DETACHED_LOAD.lock().unwrap_or_else(|p| p.into_inner());
        let w = OtherLoad::start(&[]).unwrap();
        let mut mine = busy(false);
        mine.wait().unwrap();
        let quiet = w.finish().unwrap();
        let w = OtherLoad::start(&[]).unwrap();
        busy(true).wait().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let loaded = w.finish().unwrap();
        assert!(loaded.other_cpus > 0.5, "{loaded:?}");
        assert!(
            loaded.other_cpus > quiet.other_cpus + 0.4,
            "quiet {quiet:?} loaded {loaded:?}"
        );
    }

    #[test]
    fn run_time_agrees_with_utime_plus_stime() {
        // A single-threaded busy child (this test process has threads that come and go,
        // and an exited thread's run time leaves the schedstat sum).
        let mut child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(50));
        let (ns0, s0) = (tree_run_ns(&[pid]), own_cpu_seconds(pid).unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        while own_cpu_seconds(pid).unwrap() < s0 + 0.3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (ns1, s1) = (tree_run_ns(&[pid]), own_cpu_seconds(pid).unwrap());
        let _ = child.kill();
        let _ = child.wait();
        let by_ns = (ns1 - ns0) as f64 / 1e9;
        // Clock ticks are 10 ms; the two reads are not at the same instant.
        assert!(s1 - s0 >= 0.3, "the child did not run");
        assert!((by_ns - (s1 - s0)).abs() < 0.05, "{by_ns} {}", s1 - s0);
        assert_eq!(tree_run_ns(&[u32::MAX]), 0);
    }

    #[test]
    fn a_process_that_exits_keeps_its_run_time_in_the_tally() {
        // A shell whose child busy-loops until this test has seen it run 0.3 s, then is
        // killed and reaped by the shell (which then becomes a `sleep`): by CPU, not by the clock, so a
        // busy machine only makes it slower.
        let mut sh = Command::new("sh")
            .args(["-c", "(while :; do :; done) & wait; exec sleep 60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = sh.id();
        let mut tally = RunTimeTally::default();
        let mut seen = Vec::new();
        let mut killed = false;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let total = tally.sample(&[pid]).unwrap();
            seen.push(total);
            let children: Vec<u32> = process_tree(&[pid]).into_iter().skip(1).collect();
            if (killed && children.is_empty()) || Instant::now() > deadline {
                break;
            }
            if total >= 0.3 && !killed {
                for c in children {
                    // SAFETY: kill has no memory effects; `c` is a child of our own shell.
                    unsafe { libc::kill(c as i32, libc::SIGKILL) };
                }
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let live = tree_run_ns(&[pid]) as f64 / 1e9;
        let ticks = tree_cpu_seconds(&[pid]).unwrap();
        let _ = sh.kill();
        let _ = sh.wait();
        let total = *seen.last().unwrap();
        assert!(killed && total >= 0.3, "the child did not run: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "went back: {seen:?}");
        // Gone from the live threads, kept in the tally, and (reaped) in the shell's cutime.
        assert!(live < 0.1, "{live}");
        assert!((total - ticks).abs() < 0.05, "tally {total}, ticks {ticks}");
        assert_eq!(RunTimeTally::default().sample(&[u32::MAX]), None);
    }

    #[test]
    fn pss_of_this_process_is_read() {
        let pss = tree_pss_kib(&[std::process::id()]).expect("smaps_rollup readable");
        assert!(pss > 100, "{pss} KiB");
        assert_eq!(tree_pss_kib(&[u32::MAX]), None);
    }
}
