//! POSIX file operations from a real guest through virtio-fs, each checked in the guest and,
//! where it leaves a trace, again on the host directory afterwards. The suite itself
//! (`common/posix_suite.rs`) also runs on a CephFS volume in `guest_ceph_posix.rs`.

mod common;

use common::host_view::LocalDirView;
use common::posix_suite;
use vm_tests::workload::temp_share;
use vm_tests::{CacheMode, VmBuilder};

#[test]
fn posix_operations_cache_auto() {
    let share = temp_share();
    let view = LocalDirView::new(share.path());
    posix_suite::posix_operations(
        VmBuilder::new().name("posix-auto").share(share.path()),
        &view,
    );
}

#[test]
fn mmap_with_cache_always() {
    let share = temp_share();
    let view = LocalDirView::new(share.path());
    posix_suite::mmap_with_cache_always(
        VmBuilder::new().name("mmap-always").share(share.path()),
        &view,
    );
}

/// The host directory's filesystem stores 64-bit seconds: 2^32 s comes back exact.
const HOST_TIME_2_32: i64 = 1 << 32;

#[test]
fn posix_edges_cache_auto() {
    let share = temp_share();
    posix_suite::posix_edges(
        VmBuilder::new().name("edges-auto").share(share.path()),
        CacheMode::Auto,
        HOST_TIME_2_32,
    );
}

#[test]
fn posix_edges_cache_never() {
    let share = temp_share();
    posix_suite::posix_edges(
        VmBuilder::new().name("edges-never").share(share.path()),
        CacheMode::Never,
        HOST_TIME_2_32,
    );
}
