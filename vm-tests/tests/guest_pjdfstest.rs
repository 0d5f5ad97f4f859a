//! pjdfstest (the POSIX file system test suite others wrote) in a real guest over the daemon,
//! on both backends (a host directory, and a CephFS volume of the dev cluster with
//! `--backend cephfs`) and with cache=auto and cache=never: one combination per guest boot.
//! Every failure must be on `vm-tests/pjdfstest-expected-failures.txt`, with its reason.
//!
//! Needs root and QEMU; the CephFS cases also need the dev cluster (started when it is not
//! running). The suite's binary comes from `scripts/setup.sh`.

mod common;

use std::time::Duration;

use common::ceph::CephVolume;
use common::pjdfstest::{self, Combination};
use vm_tests::workload::temp_share;
use vm_tests::{CacheMode, VmBuilder};

/// The suite makes a few thousand requests; CephFS round trips under TCG take longer.
const TIMEOUT: Duration = Duration::from_secs(900);

fn host(cache: CacheMode) {
    let share = temp_share();
    pjdfstest::run(
        VmBuilder::new()
            .name(&format!("pjdfstest-host-{cache}"))
            .share(share.path()),
        Combination {
            backend: "host",
            cache,
        },
        TIMEOUT,
    );
}

fn cephfs(cache: CacheMode) {
    let volume = CephVolume::create(&format!("pjd-{cache}"));
    pjdfstest::run(
        VmBuilder::new()
            .name(&format!("pjdfstest-cephfs-{cache}"))
            .ceph_share(volume.share()),
        Combination {
            backend: "cephfs",
            cache,
        },
        TIMEOUT,
    );
}

#[test]
fn pjdfstest_host_cache_auto() {
    host(CacheMode::Auto);
}

#[test]
fn pjdfstest_host_cache_never() {
    host(CacheMode::Never);
}

#[test]
fn pjdfstest_cephfs_cache_auto() {
    cephfs(CacheMode::Auto);
}

#[test]
fn pjdfstest_cephfs_cache_never() {
    cephfs(CacheMode::Never);
}

/// The list parses, every line has a scope this file runs, and scopes mean what they say.
#[test]
fn expected_failures_list_is_well_formed() {
    let text = std::fs::read_to_string(pjdfstest::expectations_file()).unwrap();
    let combos = [
        ("host", CacheMode::Auto),
        ("host", CacheMode::Never),
        ("cephfs", CacheMode::Auto),
        ("cephfs", CacheMode::Never),
    ]
    .map(|(backend, cache)| Combination { backend, cache });
    for e in pjdfstest::parse_expectations(&text) {
        assert!(
            combos.iter().any(|c| c.in_scope(&e.scope)),
            "{}: scope {:?} matches no combination",
            e.test,
            e.scope
        );
        assert!(
            pjdfstest::GROUPS.iter().any(|g| e.test.starts_with(g)),
            "{} is in no group the test runs",
            e.test
        );
    }
    let c = Combination {
        backend: "cephfs",
        cache: CacheMode::Never,
    };
    assert!(c.in_scope("all") && c.in_scope("cephfs") && c.in_scope("cephfs/never"));
    assert!(c.in_scope("host/auto,cephfs/*"));
    assert!(!c.in_scope("host") && !c.in_scope("cephfs/auto"));
}
