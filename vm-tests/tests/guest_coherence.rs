//! Coherence between two guests, each with its own daemon, sharing one host directory: the
//! delay until one guest sees what the other wrote and closed, per cache mode (the measurement
//! itself is in `common/coherence.rs`, shared with `guest_ceph_coherence.rs`). For
//! `cache=never` and `cache=auto` every change must become visible (within 10 s); for
//! `cache=always` the wait is bounded and the outcome is only recorded.

mod common;

use common::coherence::{alternating_appends, coherence};
use common::host_view::LocalDirView;
use vm_tests::workload::temp_share;
use vm_tests::{CacheMode, ShareBackend};

fn on_a_host_directory(cache: CacheMode, poll_secs: u32) {
    let share = temp_share();
    let view = LocalDirView::new(share.path());
    coherence(
        "passthrough",
        ShareBackend::Passthrough(share.path().to_path_buf()),
        &view,
        cache,
        poll_secs,
    );
}

#[test]
fn two_guests_cache_never() {
    on_a_host_directory(CacheMode::Never, 10);
}

#[test]
fn two_guests_cache_auto() {
    on_a_host_directory(CacheMode::Auto, 10);
}

#[test]
fn two_guests_cache_always_recorded() {
    // Only recorded: with cache=always a guest may keep its cached view.
    on_a_host_directory(CacheMode::Always, 5);
}

#[test]
fn two_guests_appending_in_turns_keep_every_line() {
    let share = temp_share();
    let view = LocalDirView::new(share.path());
    alternating_appends(
        "passthrough",
        ShareBackend::Passthrough(share.path().to_path_buf()),
        &view,
        CacheMode::Auto,
    );
}
