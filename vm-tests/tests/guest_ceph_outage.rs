//! An MDS outage under a running guest. In its own test binary, so that no other Ceph test
//! runs while the cluster's only MDS is down (it is shared by every CephFS test).
//!
//! The guest runs `vmtest-helper io-loop`: round after round it stats a file, reads one,
//! overwrites one and creates + unlinks a new one (each call timed, errno recorded), and a
//! watchdog line is printed every 2 s while a call is stuck. The test kills the MDS (SIGKILL,
//! like a crash), keeps it down for 30 s (`VMTEST_MDS_OUTAGE_SECS`), starts it again the way
//! `scripts/ceph-dev-cluster.sh` does and waits until it is active. A guard restarts the MDS
//! whatever happens, so a failing test never leaves the cluster without one.
//!
//! Asserted: the outage was felt (some call failed or was held up); every failure is EIO or
//! ETIMEDOUT; the daemon stays alive through it and exits 0 when the guest powers off; once
//! the MDS is active the guest's calls succeed again within [`RECOVERY_LIMIT`]. What the calls
//! did (failed with which errno, or blocked and for how long) is printed and is part of every
//! assertion message.
//!
//! Needs root, QEMU and the single-node dev cluster (`scripts/ceph-dev-cluster.sh start`,
//! started here when it is not running; the test fails, never skips, when it cannot start).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::ceph::{self, CephVolume, MdsOutage};
use common::host_view::HostView;
use vm_tests::workload::{failed_checks, script, HELPER};
use vm_tests::{CacheMode, ResultEntry, VmBuilder};

/// How long the MDS stays down, unless `VMTEST_MDS_OUTAGE_SECS` says otherwise.
const DEFAULT_OUTAGE: Duration = Duration::from_secs(30);

fn outage_length() -> Duration {
    std::env::var("VMTEST_MDS_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_OUTAGE)
}
/// How long after the MDS is active again the guest's calls must all succeed.
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);
/// Consecutive all-ok rounds that count as recovered.
const RECOVERED_ROUNDS: usize = 3;
/// A call held up at least this long counts as affected by the outage.
const HELD_UP: Duration = Duration::from_secs(2);

fn helper() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_vmtest-helper"))
}

/// One call of a round: `stat=ok/3` or `create=EIO/5012`.
#[derive(Debug, Clone)]
struct Call {
    op: String,
    result: String,
    took: Duration,
}

impl Call {
    fn ok(&self) -> bool {
        self.result == "ok"
    }
}

/// One `@@VMTEST round=N at=MS op=RESULT/MS ...` line, with when the host read it.
#[derive(Debug, Clone)]
struct Round {
    number: u64,
    calls: Vec<Call>,
    /// When the host read the line (the round's end).
    ended: Instant,
}

impl Round {
    fn parse(e: &ResultEntry) -> Option<Round> {
        let mut parts = e.value.split_whitespace();
        let number = parts.next()?.parse().ok()?;
        let mut calls = Vec::new();
        for p in parts {
            if p.starts_with("at=") {
                continue;
            }
            let (op, rest) = p.split_once('=')?;
            let (result, ms) = rest.rsplit_once('/')?;
            calls.push(Call {
                op: op.to_string(),
                result: result.to_string(),
                took: Duration::from_millis(ms.parse().ok()?),
            });
        }
        Some(Round {
            number,
            calls,
            ended: e.at,
        })
    }

    fn all_ok(&self) -> bool {
        self.calls.len() == 4 && self.calls.iter().all(Call::ok)
    }

    /// When the round began: its end minus the time its calls took.
    fn began(&self) -> Instant {
        let total: Duration = self.calls.iter().map(|c| c.took).sum();
        self.ended.checked_sub(total).unwrap_or(self.ended)
    }
}

fn rounds(results: &vm_tests::GuestResults) -> Vec<Round> {
    results
        .entries
        .iter()
        .filter(|e| e.key == "round")
        .filter_map(Round::parse)
        .collect()
}

/// Waits until `pred` holds for the guest's rounds, up to `timeout` or until the guest ends.
fn wait_rounds(
    vm: &vm_tests::RunningVm,
    timeout: Duration,
    pred: impl Fn(&[Round]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if pred(&rounds(&vm.results())) {
            return true;
        }
        if vm.ended() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[test]
fn mds_outage_calls_fail_or_wait_then_recover() {
    let volume = CephVolume::create("outage");
    // cache=never: every guest call reaches the daemon, so what is measured is the daemon and
    // its libcephfs client, not the guest's own caches.
    let mut vm = VmBuilder::new()
        .name("ceph-outage")
        .ceph_share(volume.share())
        .cache(CacheMode::Never)
        .timeout(Duration::from_secs(900))
        .daemon_exit_timeout(Duration::from_secs(60))
        .program(helper(), HELPER)
        .unwrap()
        .workload(&script(
            "mkdir -p /data/io\n/bin/vmtest-helper io-loop /data/io\nr loop_exit \"$?\"\nsync\n",
        ))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));

    let warmed_up = wait_rounds(&vm, Duration::from_secs(300), |r| {
        r.len() >= 5 && r.iter().rev().take(3).all(Round::all_ok)
    });
    if !warmed_up {
        let out = vm.kill_and_wait().unwrap_or_else(|e| panic!("{e}"));
        panic!(
            "the guest's io-loop never got going before the outage\n{}",
            out.report()
        );
    }

    // The outage. The guard restarts the MDS even if something below panics.
    let outage_for = outage_length();
    let mut outage = MdsOutage::begin();
    let killed_at = outage.stopped_at;
    let mut daemon_died_at = None;
    let mut revived_by_someone_at = None;
    while killed_at.elapsed() < outage_for {
        if daemon_died_at.is_none() && !vm.daemon_running() {
            daemon_died_at = Some(killed_at.elapsed());
        }
        if revived_by_someone_at.is_none() && ceph::mds_pid().is_some() {
            // Another process's `ceph-dev-cluster.sh start` brought the MDS back.
            revived_by_someone_at = Some(killed_at.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let restart_began = Instant::now();
    let to_active = outage.end();
    let active_at = Instant::now();
    drop(outage);
    let to_active = to_active.unwrap_or_else(|e| panic!("restarting the MDS: {e}"));

    // Recovery: RECOVERED_ROUNDS consecutive all-ok rounds begun after the MDS was active.
    let recovered = wait_rounds(&vm, RECOVERY_LIMIT, |r| {
        let after: Vec<&Round> = r.iter().filter(|x| x.began() >= active_at).collect();
        after.len() >= RECOVERED_ROUNDS
            && after
                .iter()
                .rev()
                .take(RECOVERED_ROUNDS)
                .all(|x| x.all_ok())
    });
    if daemon_died_at.is_none() && !vm.daemon_running() {
        daemon_died_at = Some(killed_at.elapsed());
    }
    let _ = vm.send_line("stop");
    let out = if recovered {
        vm.wait()
    } else {
        // Calls still stuck: do not wait for the guest's whole timeout.
        vm.kill_and_wait()
    }
    .unwrap_or_else(|e| panic!("{e}"));

    // What happened, for the output and every assertion message.
    let all = rounds(&out.results);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut longest: Option<(Duration, String)> = None;
    let mut affected = 0usize;
    for r in &all {
        for c in &r.calls {
            if !c.ok() {
                *errors.entry(format!("{}={}", c.op, c.result)).or_default() += 1;
            }
            if !c.ok() || c.took >= HELD_UP {
                affected += 1;
            }
            if longest.as_ref().map_or(true, |(d, _)| c.took > *d) {
                longest = Some((
                    c.took,
                    format!("round {} {} -> {}", r.number, c.op, c.result),
                ));
            }
        }
    }
    let first_ok_after = all
        .iter()
        .find(|r| r.began() >= active_at && r.all_ok())
        .map(|r| r.ended.saturating_duration_since(active_at));
    let during: Vec<String> = all
        .iter()
        .filter(|r| r.ended >= killed_at && r.began() <= active_at)
        .map(|r| {
            format!(
                "round {} (+{} .. +{}): {}",
                r.number,
                secs(r.began().saturating_duration_since(killed_at)),
                secs(r.ended.saturating_duration_since(killed_at)),
                r.calls
                    .iter()
                    .map(|c| format!("{}={}/{}ms", c.op, c.result, c.took.as_millis()))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect();
    let blocked = out.results.get_all("blocked");
    // A call answered ETIMEDOUT may still have happened in the cluster afterwards: a create
    // the guest was told failed leaves its `new-N` file behind (the guest unlinks only after a
    // successful create). Recorded, not asserted.
    let leftovers: Vec<String> = volume
        .view()
        .list("io")
        .map(|names| {
            names
                .into_iter()
                .filter(|n| n.starts_with("new-"))
                .collect()
        })
        .unwrap_or_else(|e| vec![format!("(listing failed: {e})")]);
    let summary = format!(
        "MDS killed, restarted after {}{} (active {} later, {} after the kill); {} rounds in all; \
         calls that failed: {:?}; calls failed or held up >= {}: {affected}; longest call: {}; \
         first all-ok round {} after the MDS was active; daemon {}; watchdog saw {} stuck \
         moments (last: {:?}); files of failed creates left in the volume: {:?};\nrounds during \
         the outage:\n  {}",
        secs(restart_began.saturating_duration_since(killed_at)),
        match revived_by_someone_at {
            Some(t) => format!(" (but another process revived it after {})", secs(t)),
            None => String::new(),
        },
        secs(to_active),
        secs(active_at.saturating_duration_since(killed_at)),
        all.len(),
        errors,
        secs(HELD_UP),
        longest
            .as_ref()
            .map(|(d, w)| format!("{} ({w})", secs(*d)))
            .unwrap_or_default(),
        first_ok_after.map(secs).unwrap_or_else(|| "never".into()),
        match daemon_died_at {
            Some(t) => format!("DIED {} after the kill", secs(t)),
            None => "stayed up".into(),
        },
        blocked.len(),
        blocked.last(),
        leftovers,
        if during.is_empty() {
            "(none)".to_string()
        } else {
            during.join("\n  ")
        },
    );
    eprintln!("mds outage: {summary}");

    assert!(
        daemon_died_at.is_none(),
        "the daemon must survive the outage: {summary}\n{}",
        out.report()
    );
    out.check(
        affected > 0,
        &format!("the outage was not felt at all (was the MDS really down?): {summary}"),
    );
    let unexpected: Vec<&String> = errors
        .keys()
        .filter(|k| !(k.ends_with("=EIO") || k.ends_with("=ETIMEDOUT")))
        .collect();
    out.check(
        unexpected.is_empty(),
        &format!(
            "calls may fail only with EIO or ETIMEDOUT during an outage, got {unexpected:?}: \
             {summary}"
        ),
    );
    out.check(
        recovered,
        &format!(
            "the guest's calls must all succeed again within {} of the MDS being active: \
             {summary}",
            secs(RECOVERY_LIMIT)
        ),
    );
    let failed = failed_checks(&out.results);
    out.check(
        failed.is_empty(),
        &format!("failed checks {failed:?}: {summary}"),
    );
    out.assert_ok();
    // The cluster is usable again for whoever comes next.
    ceph::wait_mds_active(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
}
