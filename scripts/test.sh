#!/usr/bin/env bash
# Runs every test of virtiofsd-kr: set-up, formatting, lints, unit tests, the vhost-user
# frontend tests and the guest tests (real Linux guests under QEMU, KVM or TCG).
# Usage: scripts/test.sh [extra cargo test args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# Set-up installs what the tests need and never removes what the machine had: a package
# installed before it and gone after it fails the run (the machine's own qemu-utils from
# bookworm-backports once went that way, silently, with Debian 12's QEMU 7.2).
# Each step's time, printed at the end (also after a failure): CI has 90 minutes and this
# run must stay well under half of them, so the log says where the time went.
step_name=""
step_start=$SECONDS
timings=()
step() {
    [ -n "$step_name" ] && timings+=("$step_name: $((SECONDS - step_start)) s")
    step_name="$1"
    step_start=$SECONDS
    [ -z "$1" ] || echo "== $1"
}
# Free space too: the run needs about 5 GB in the checkout (.cache, target, fuzz/target), and
# a CI machine once had 4.9 GB left when the CephFS tests began.
free_space() { df -h --output=avail . 2>/dev/null | tail -n 1 | tr -d ' '; }
free_at_start="$(free_space)"
print_timings() {
    step ""
    echo "== time per step (total $SECONDS s; free space here $free_at_start at the start, $(free_space) now)"
    printf '   %s\n' "${timings[@]}"
}

installed_packages() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 2>/dev/null | awk '$1 == "ii" { print $2 }' | sort
}
before_setup="$(installed_packages)"
step "setup (scripts/setup.sh)"
scripts/setup.sh
gone="$(comm -23 <(echo "$before_setup") <(installed_packages))"
if [ -n "$gone" ]; then
    echo "test: scripts/setup.sh removed installed packages: $(echo $gone)" >&2
    exit 1
fi
echo "== setup: no installed package removed ($(echo "$before_setup" | wc -l) before)"
# The CephFS tests start a single-node cluster (scripts/ceph-dev-cluster.sh); stop it at the
# end whatever happens, so no Ceph daemon outlives the run.
trap 'print_timings; scripts/ceph-dev-cluster.sh stop >/dev/null 2>&1 || true' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
# The fuzz crate is outside the workspace (cargo-fuzz builds it on nightly at the end): check
# it against the daemon's API now, so a change that breaks it fails here, not 20 minutes on.
cargo clippy --manifest-path fuzz/Cargo.toml --bins -- -D warnings

# One profile for everything: the guest tests and the frontend tests drive the release
# daemon, so unit tests build in release too instead of compiling the workspace twice.
step "cargo test"
export VIRTIOFSD_KR_BIN="$PWD/target/release/virtiofsd-kr"
cargo build --release -p virtiofsd-kr
# Includes guest_pjdfstest.rs: pjdfstest on both backends, cache=auto and never (~5 min).
cargo test --workspace --release "$@" -- --skip two_guests_ --skip cephfs_coherence_
# The two-guest coherence tests (a host directory, and a CephFS volume with two libcephfs
# clients) print how long a write takes to become visible in the other guest for each cache
# mode; show that output even when they pass.
step "two-guest coherence tests"
cargo test --workspace --release --test guest_coherence --test guest_ceph_coherence "$@" -- --show-output
# The CephFS guest suites again against a Ceph Reef (18.2) cluster: its daemons come from
# Debian trixie's packages in .cache/reef-root (scripts/ceph-dev-cluster.sh --release reef),
# while the daemon under test keeps the host's Pacific libcephfs, a client of another release.
# cluster_runs_the_release_asked_for checks the cluster is Reef; pjdfstest on CephFS with
# cache=auto too. About 3 min.
step "CephFS guest suites against Ceph Reef"
scripts/ceph-dev-cluster.sh stop >/dev/null 2>&1
CEPH_DEV_RELEASE=reef cargo test --release -p vm-tests --test guest_ceph --test guest_ceph_posix "$@"
CEPH_DEV_RELEASE=reef cargo test --release -p vm-tests --test guest_pjdfstest "$@" -- pjdfstest_cephfs_cache_auto
scripts/ceph-dev-cluster.sh stop >/dev/null 2>&1
# The frontend hostile suite (tests/frontend.rs, tests/hostile_handles.rs) again, against the
# daemon built with AddressSanitizer on nightly: a memory error, a leak (where LeakSanitizer
# runs) or a panic in the daemon fails it (docs/security.md, "Sanitizer run"). About 1 min
# plus the ASan build of the daemon (about 3.5 min of CPU when cold).
step "sanitizer run"
scripts/sanitize.sh
# Coverage-guided fuzzing of everything a guest (and an admin client) sends: each target of
# fuzz/ for 30 s on its seeds under AddressSanitizer; fails on a crash, hang or leak
# (docs/security.md). About 2.5 min plus the nightly ASan build (a few minutes when cold).
step "fuzz smoke"
scripts/fuzz-smoke.sh
