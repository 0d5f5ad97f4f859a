//! A file being executed in the guest, opened for writing, many times over: every open must
//! fail with ETXTBSY (`O_WRONLY`, `O_RDWR` and `O_RDONLY|O_TRUNC`, pjdfstest's
//! `open::etxtbsy` sequence, run by `vmtest-helper exec-busy`), the program must keep running
//! and the file must keep its bytes, on both backends.
//!
//! What this guards: the guest kernel checks ETXTBSY for `O_RDONLY|O_TRUNC` only after the
//! FUSE OPEN, in `handle_truncate`. A backend that negotiates FUSE_ATOMIC_O_TRUNC is handed
//! the O_TRUNC in that OPEN and empties the file before the guest refuses the open; the running
//! program then dies of SIGBUS on its next page, and when it dies before the guest's check the
//! open even succeeds (the CephFS backend did that: pjdfstest `open::etxtbsy` failed about
//! once in 15 runs on cache=auto, and the file was emptied in every run).
//!
//! `ETXTBSY_ROUNDS` sets the rounds per guest (default 20). Needs root and QEMU; the CephFS
//! cases also need the dev cluster (started when it is not running).

mod common;

use std::path::Path;
use std::time::Duration;

use common::ceph::CephVolume;
use vm_tests::workload::{script, temp_share, HELPER};
use vm_tests::{CacheMode, VmBuilder};

const TIMEOUT: Duration = Duration::from_secs(600);

/// coreutils' `sleep`, as pjdfstest's case runs it (busybox's copied under another name exits
/// at once).
const SLEEP: &str = "/usr/bin/sleep";

fn rounds() -> u64 {
    std::env::var("ETXTBSY_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

fn run(guest: VmBuilder, cache: CacheMode) {
    let n = rounds();
    let body = format!(
        r#"
mkdir /data/etx; check mkdir 0 "$?"
{HELPER} exec-busy /opt/etx/sleep /data/etx {n} > /etx.log 2>&1
r exec_busy_rc "$?"
grep busy-fail /etx.log | sed 's/^/@@ETX /'
r exec_busy "$(tail -n 1 /etx.log)"
"#
    );
    let out = guest
        .cache(cache)
        .program(Path::new(SLEEP), "/opt/etx/sleep")
        .and_then(|g| g.program(Path::new(env!("CARGO_BIN_EXE_vmtest-helper")), HELPER))
        .unwrap_or_else(|e| panic!("{e}"))
        .timeout(TIMEOUT)
        .workload(&script(&body))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let fails: Vec<&str> = out
        .serial
        .iter()
        .filter_map(|l| l.text.split_once("@@ETX ").map(|(_, r)| r.trim_end()))
        .collect();
    eprintln!(
        "{} ({n} rounds): {}; {} bad rounds",
        out.name,
        out.value("exec_busy"),
        fails.len()
    );
    out.expect("exec_busy_rc", "0");
    out.check(
        out.value("exec_busy")
            == format!("refused={}/{} intact={n}/{n} alive={n}/{n}", 3 * n, 3 * n),
        &format!(
            "every open for writing of an executing file must fail with ETXTBSY and leave it \
             intact and running:\n  {}",
            fails.join("\n  ")
        ),
    );
    out.assert_checks_passed();
}

#[test]
fn etxtbsy_cephfs_cache_auto() {
    let volume = CephVolume::create("etx-auto");
    run(
        VmBuilder::new()
            .name("etxtbsy-cephfs-auto")
            .ceph_share(volume.share()),
        CacheMode::Auto,
    );
}

#[test]
fn etxtbsy_cephfs_cache_never() {
    let volume = CephVolume::create("etx-never");
    run(
        VmBuilder::new()
            .name("etxtbsy-cephfs-never")
            .ceph_share(volume.share()),
        CacheMode::Never,
    );
}

#[test]
fn etxtbsy_host_cache_auto() {
    let share = temp_share();
    run(
        VmBuilder::new()
            .name("etxtbsy-host-auto")
            .share(share.path()),
        CacheMode::Auto,
    );
}
