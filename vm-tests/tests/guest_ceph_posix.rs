//! The guest POSIX suite of `guest_posix.rs`, unchanged, on a CephFS volume served with
//! `--backend cephfs`: the same guest script, and the same host-side checks made through an
//! admin libcephfs mount of the volume instead of the host directory.
//!
//! Needs root, QEMU and the single-node dev cluster (`scripts/ceph-dev-cluster.sh start`,
//! started here when it is not running; the tests fail, never skip, when it cannot start).

mod common;

use std::time::Duration;

use common::ceph::CephVolume;
use common::posix_suite;
use vm_tests::{CacheMode, VmBuilder};

/// CephFS round trips under TCG make the suite slower than on a host directory.
const CEPH_GUEST_TIMEOUT: Duration = Duration::from_secs(900);

#[test]
fn posix_operations_cephfs_cache_auto() {
    let volume = CephVolume::create("posix");
    let view = volume.view();
    let out = posix_suite::posix_operations(
        VmBuilder::new()
            .name("ceph-posix-auto")
            .ceph_share(volume.share())
            .timeout(CEPH_GUEST_TIMEOUT),
        &view,
    );
    // For the record: the quota-less volume's statfs is the cluster's (libcephfs reports
    // 4 MiB blocks).
    eprintln!("statfs of /data in the guest: {}", out.value("statfs"));
}

#[test]
fn mmap_cephfs_cache_always() {
    let volume = CephVolume::create("mmap");
    let view = volume.view();
    posix_suite::mmap_with_cache_always(
        VmBuilder::new()
            .name("ceph-mmap-always")
            .ceph_share(volume.share())
            .timeout(CEPH_GUEST_TIMEOUT),
        &view,
    );
}

/// CephFS stores seconds in 32 unsigned bits: later times are clamped to the last one.
const CEPH_TIME_MAX: i64 = u32::MAX as i64;

#[test]
fn posix_edges_cephfs_cache_auto() {
    let volume = CephVolume::create("edges-auto");
    posix_suite::posix_edges(
        VmBuilder::new()
            .name("ceph-edges-auto")
            .ceph_share(volume.share())
            .timeout(CEPH_GUEST_TIMEOUT),
        CacheMode::Auto,
        CEPH_TIME_MAX,
    );
}

#[test]
fn posix_edges_cephfs_cache_never() {
    let volume = CephVolume::create("edges-never");
    posix_suite::posix_edges(
        VmBuilder::new()
            .name("ceph-edges-never")
            .ceph_share(volume.share())
            .timeout(CEPH_GUEST_TIMEOUT),
        CacheMode::Never,
        CEPH_TIME_MAX,
    );
}
