//! Several request queues: Debian trixie's 6.12 guest (which spreads requests over the
//! request queues, one per CPU here) with 4 vCPUs and 4 request queues under QEMU 11.1. The
//! POSIX suite passes; with one writer pinned to each vCPU every request queue carries
//! requests (the daemon's per-queue counters, logged at exit); and one byte limit holds for
//! the daemon as a whole, whatever queue the bytes come through.

mod common;

use std::time::Duration;

use common::host_view::LocalDirView;
use common::posix_suite;
use vm_tests::workload::{script, temp_share};
use vm_tests::{VmBuilder, VmOutcome};

const QUEUES: usize = 4;

/// The daemon's `requests per queue (0: hiprio): 0=N 1=N ...` line, as numbers by queue.
fn requests_per_queue(out: &VmOutcome) -> Vec<u64> {
    let log = &out.daemon.as_ref().expect("a daemon").log;
    let line = log
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once("requests per queue (0: hiprio): ")
                .map(|(_, r)| r)
        })
        .unwrap_or_else(|| panic!("no per-queue counts in the daemon log\n{}", out.report()));
    line.split_whitespace()
        .map(|kv| {
            kv.split_once('=')
                .and_then(|(_, n)| n.parse().ok())
                .unwrap_or_else(|| panic!("bad per-queue count {kv:?}"))
        })
        .collect()
}

fn mq_guest(name: &str) -> VmBuilder {
    VmBuilder::new()
        .name(name)
        .modern()
        .smp(4)
        .request_queues(QUEUES as u32)
        .daemon_arg("--log-level=info")
}

#[test]
fn posix_suite_passes_on_four_request_queues() {
    let share = temp_share();
    let view = LocalDirView::new(share.path());
    let out = posix_suite::posix_operations(mq_guest("mq-posix").share(share.path()), &view);
    let counts = requests_per_queue(&out);
    eprintln!("multiqueue POSIX suite: requests per queue (0: hiprio) {counts:?}");
    assert_eq!(
        counts.len(),
        1 + 16,
        "the daemon offers 16 request queues by default"
    );
    let used: u64 = counts[1..=QUEUES].iter().sum();
    assert!(used > 100, "{counts:?}\n{}", out.report());
    assert!(
        counts[QUEUES + 1..].iter().all(|&n| n == 0),
        "requests on queues QEMU did not configure: {counts:?}"
    );
}

#[test]
fn every_queue_carries_requests_and_one_byte_limit_holds_across_them() {
    const MIB_PER_WRITER: u64 = 12;
    const LIMIT_MIB: f64 = 8.0;
    let share = temp_share();
    let writers: String = (0..QUEUES)
        .map(|c| {
            format!(
                "taskset -c {c} dd if=/dev/zero of=/data/w{c} bs=65536 count={} 2>/dev/null &\n",
                MIB_PER_WRITER * 16
            )
        })
        .collect();
    let body = format!(
        r#"
check cpus {QUEUES} "$(nproc)"
r mq_start 1
{writers}wait
r mq_done 1
sync
for c in 0 1 2 3; do r "size_$c" "$(stat -c %s /data/w$c)"; done
"#
    );
    let vm = mq_guest("mq-limit")
        .share(share.path())
        .cache(vm_tests::CacheMode::Never)
        .daemon_arg(&format!("--rate-limit-bytes={}MiB", LIMIT_MIB as u64))
        .daemon_arg("--rate-limit-bytes-burst=1MiB")
        .workload(&script(&body))
        .timeout(Duration::from_secs(400))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let wait = Duration::from_secs(300);
    let start = vm
        .wait_for("mq_start", wait)
        .unwrap_or_else(|e| panic!("{e}"));
    let done = vm
        .wait_for("mq_done", wait)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = vm.wait().unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    for c in 0..QUEUES {
        out.expect(&format!("size_{c}"), &(MIB_PER_WRITER << 20).to_string());
    }
    let secs = (done.at - start.at).as_secs_f64();
    let total = (MIB_PER_WRITER * QUEUES as u64) as f64;
    let rate = total / secs;
    let counts = requests_per_queue(&out);
    eprintln!(
        "multiqueue: {total} MiB by {QUEUES} pinned writers in {secs:.2} s = {rate:.2} MiB/s \
         under a {LIMIT_MIB} MiB/s limit; requests per queue (0: hiprio) {counts:?}"
    );
    for q in 1..=QUEUES {
        assert!(
            counts[q] > 0,
            "request queue {q} carried no request: {counts:?}\n{}",
            out.report()
        );
    }
    // One budget for the daemon: 4 queues together stay at the limit (1 MiB of burst).
    assert!(
        rate <= LIMIT_MIB * 1.15,
        "{rate:.2} MiB/s through {QUEUES} queues exceeds the {LIMIT_MIB} MiB/s limit"
    );
}
