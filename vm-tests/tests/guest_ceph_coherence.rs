//! Two guests with two daemons (so two libcephfs clients) on one CephFS volume: what one
//! writes and closes, the other reads. The delay is printed per cache mode (run with
//! `--nocapture` or `--show-output` to see it) and is part of every assertion message. For
//! `cache=never` and `cache=auto` every change must become visible within 10 s; for
//! `cache=always` and `cache=metadata` the outcome is only recorded. The measurement is the one of
//! `guest_coherence.rs` (`common/coherence.rs`); only the backend differs.
//!
//! Needs root, QEMU and the single-node dev cluster (`scripts/ceph-dev-cluster.sh start`,
//! started here when it is not running; the tests fail, never skip, when it cannot start).

mod common;

use common::ceph::CephVolume;
use common::coherence::{alternating_appends, coherence};
use vm_tests::{CacheMode, ShareBackend};

fn on_a_ceph_volume(cache: CacheMode, poll_secs: u32) {
    let volume = CephVolume::create(&format!("coh{cache}"));
    let view = volume.view();
    // Both daemons connect as the volume's tenant: two clients of one identity, as two pods of
    // one tenant would.
    coherence(
        "cephfs",
        ShareBackend::CephFs(volume.share()),
        &view,
        cache,
        poll_secs,
    );
}

#[test]
fn cephfs_coherence_cache_never() {
    on_a_ceph_volume(CacheMode::Never, 10);
}

#[test]
fn cephfs_coherence_cache_auto() {
    on_a_ceph_volume(CacheMode::Auto, 10);
}

#[test]
fn cephfs_coherence_cache_metadata_recorded() {
    // Only recorded: attributes and names are cached for a day, so appends and new files may
    // stay unseen.
    on_a_ceph_volume(CacheMode::Metadata, 5);
}

#[test]
fn cephfs_coherence_cache_always_recorded() {
    // Only recorded: with cache=always a guest may keep its cached view.
    on_a_ceph_volume(CacheMode::Always, 5);
}

#[test]
fn two_pods_appending_in_turns_keep_every_line() {
    let volume = CephVolume::create("appends");
    let view = volume.view();
    alternating_appends(
        "cephfs",
        ShareBackend::CephFs(volume.share()),
        &view,
        CacheMode::Auto,
    );
}
