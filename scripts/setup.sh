#!/usr/bin/env bash
# Idempotent set-up of a Debian bookworm machine for building and testing virtiofsd-kr:
#   1. apt packages (apt-get update only when something is missing); nothing installed is
#      ever removed: where the host's Debian 12 QEMU 7.2 cannot be installed without removing
#      a package (qemu-utils from bookworm-backports breaks qemu-system-common << 8.0), QEMU
#      7.2 is unpacked into .cache/qemu-7.2 instead (its libraries on the host) and the
#      scripts and the harness run it from there,
#   2. the test guest (kernel + initramfs in .cache/guest/, scripts/build-guest.sh),
#   3. the modern guest rig: QEMU 11.1 from Debian trixie-backports in a debootstrapped trixie
#      root (.cache/trixie-root, run by scripts/qemu11.sh; host packages untouched) and
#      Debian trixie's 6.12 guest kernel (.cache/guest-6.12), scripts/build-modern-rig.sh
#      (about 70 s and 0.6 GB the first time),
#   4. the Ceph Reef (18.2) server root for `scripts/ceph-dev-cluster.sh --release reef`: a
#      debootstrapped trixie with trixie's ceph daemons (.cache/reef-root,
#      scripts/build-reef-root.sh; about 2 minutes and 0.9 GB the first time),
#   5. pjdfstest 0.2.2 (the POSIX conformance suite of vm-tests/tests/guest_pjdfstest.rs),
#      `cargo install`ed statically linked (it runs in the busybox guest) into
#      .cache/pjdfstest/bin (a few minutes the first time),
#   6. cargo build --release -p virtiofsd-kr.
# Runs as root (uses sudo for apt when not root). Needs no stdin. Takes seconds when
# everything is already in place.
#
# Options:
#   --no-build   skip the cargo build of the daemon
#   --no-guest   skip building the guest images (both rigs)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD=1
GUEST=1
FUZZ=1
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        --no-guest) GUEST=0 ;;
        --no-fuzz) FUZZ=0 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "setup: unknown option $arg" >&2; exit 2 ;;
    esac
done

log() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo"
    SUDO=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
    qemu-system-x86 busybox-static fio cpio libseccomp-dev libcap-ng-dev fuse3 attr kmod
    xz-utils zstd gzip coreutils util-linux findutils grep
    gcc g++ libc6-dev pkg-config ca-certificates strace debootstrap
    docker.io tar libacl1-dev acl
)

# Serialise concurrent runs (tests and scripts may call setup.sh at the same time).
mkdir -p "$REPO/.cache"
exec 9>"$REPO/.cache/setup.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

installed() {
    dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# QEMU 7.2 unpacked beside the host's packages (see private_qemu below).
PRIVATE_QEMU="$REPO/.cache/qemu-7.2"
PRIVATE_QEMU_DEBS=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)

missing=()
for p in "${PACKAGES[@]}"; do
    if [ "$p" = qemu-system-x86 ] && [ -x "$PRIVATE_QEMU/usr/bin/qemu-system-x86_64" ]; then
        continue
    fi
    installed "$p" || missing+=("$p")
done

apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -q </dev/null >&2
        apt_updated=1
    fi
}

# What installing "$@" would remove (package names, one per line): apt's simulation.
would_remove() {
    apt-get install -s -q --no-install-recommends "$@" </dev/null 2>/dev/null \
        | awk '$1 == "Remv" { print $2 }'
}

# Unpacks Debian 12's QEMU 7.2 (and the firmware it loads) into $PRIVATE_QEMU, and installs
# only the libraries it needs on the host. QEMU finds its modules (accel-tcg) and firmware
# relative to its binary, so .cache/qemu-7.2/usr/bin/qemu-system-x86_64 runs as installed.
private_qemu() {
    local debs="$PRIVATE_QEMU.debs" libs=() p
    mapfile -t libs < <(apt-get install -s -q --no-install-recommends qemu-system-x86 </dev/null \
        2>/dev/null | awk -v own=" ${PRIVATE_QEMU_DEBS[*]} " \
        '$1 == "Inst" && index(own, " " $2 " ") == 0 { print $2 }')
    if [ "${#libs[@]}" -gt 0 ]; then
        log "installing QEMU 7.2's libraries: ${libs[*]}"
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends --no-remove "${libs[@]}" \
            </dev/null >&2
    fi
    rm -rf "$debs" "$PRIVATE_QEMU.tmp"
    mkdir -p "$debs" "$PRIVATE_QEMU.tmp"
    (cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "${PRIVATE_QEMU_DEBS[@]}" </dev/null >&2) \
        || die "apt-get download ${PRIVATE_QEMU_DEBS[*]} failed"
    for p in "$debs"/*.deb; do
        dpkg-deb -x "$p" "$PRIVATE_QEMU.tmp"
    done
    "$PRIVATE_QEMU.tmp/usr/bin/qemu-system-x86_64" --version >/dev/null \
        || die "the unpacked QEMU in $PRIVATE_QEMU.tmp does not run"
    rm -rf "$PRIVATE_QEMU" "$debs"
    mv "$PRIVATE_QEMU.tmp" "$PRIVATE_QEMU"
    log "QEMU 7.2 unpacked: $("$PRIVATE_QEMU/usr/bin/qemu-system-x86_64" --version | head -1)"
}

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    apt_update
    removed="$(would_remove "${missing[@]}")"
    if [ -n "$removed" ] && printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86; then
        rest=()
        for p in "${missing[@]}"; do
            [ "$p" = qemu-system-x86 ] || rest+=("$p")
        done
        if [ "${#rest[@]}" -eq 0 ] || [ -z "$(would_remove "${rest[@]}")" ]; then
            log "installing qemu-system-x86 on this host would remove: $(echo $removed);" \
                "unpacking QEMU 7.2 into .cache/qemu-7.2 instead"
            private_qemu
            missing=("${rest[@]}")
            removed=""
        fi
    fi
    [ -z "$removed" ] || die "installing ${missing[*]} would remove installed packages:" \
        "$(echo $removed); install them yourself, or remove those first"
    if [ "${#missing[@]}" -gt 0 ]; then
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends --no-remove "${missing[@]}" \
            </dev/null >&2
    fi
fi

if [ "$GUEST" = 1 ]; then
    guest_dir="$REPO/.cache/guest"
    if [ ! -f "$guest_dir/initramfs.cpio" ] || [ ! -f "$guest_dir/vmlinux" ]; then
        # The kernel package name comes from the apt lists: make sure they exist.
        if ! apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-[0-9]'; then
            apt_update
        fi
    fi
    if [ "$(id -u)" = 0 ]; then
        "$REPO/scripts/build-guest.sh"
    else
        "${SUDO[@]}" "$REPO/scripts/build-guest.sh"
    fi
    if [ "$(id -u)" = 0 ]; then
        "$REPO/scripts/build-modern-rig.sh"
    else
        "${SUDO[@]}" "$REPO/scripts/build-modern-rig.sh"
    fi
fi

if [ "$GUEST" = 1 ]; then
    if [ "$(id -u)" = 0 ]; then
        "$REPO/scripts/build-reef-root.sh"
    else
        "${SUDO[@]}" "$REPO/scripts/build-reef-root.sh"
    fi
    # pjdfstest links libacl (libacl1-dev has the static archive); +crt-static makes one
    # binary that needs no library in the guest. Its own build directory keeps the
    # workspace's target/ out of it.
    pjd_version=0.2.2
    pjd="$REPO/.cache/pjdfstest/bin/pjdfstest"
    if [ ! -x "$pjd" ] || [ "$(cat "$REPO/.cache/pjdfstest/version" 2>/dev/null)" != "$pjd_version" ]; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found (pjdfstest is built with cargo install)"
        log "building pjdfstest $pjd_version (static) into .cache/pjdfstest"
        RUSTFLAGS="-C target-feature=+crt-static" cargo install pjdfstest --version "$pjd_version" \
            --locked --force --root "$REPO/.cache/pjdfstest" --target x86_64-unknown-linux-gnu \
            --target-dir "$REPO/.cache/pjdfstest-build" </dev/null >&2
        rm -rf "$REPO/.cache/pjdfstest-build"
        if ldd "$pjd" 2>&1 | grep -q '=>'; then
            die "$pjd is not statically linked"
        fi
        echo "$pjd_version" > "$REPO/.cache/pjdfstest/version"
    fi
fi

if [ "$FUZZ" = 1 ]; then
    # libFuzzer needs nightly (-Zsanitizer, sancov); g++ builds libFuzzer itself.
    command -v rustup >/dev/null 2>&1 || die "rustup not found (the fuzz targets need Rust nightly)"
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        log "installing Rust nightly (minimal profile) for the fuzz targets"
        rustup toolchain install nightly --profile minimal </dev/null >&2
    fi
    if ! command -v cargo-fuzz >/dev/null 2>&1; then
        log "installing cargo-fuzz"
        cargo install cargo-fuzz --locked </dev/null >&2
    fi
fi

if [ "$BUILD" = 1 ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install a Rust toolchain, 1.80 or newer)"
    (cd "$REPO" && cargo build --release -q -p virtiofsd-kr </dev/null)
    [ -x "$REPO/target/release/virtiofsd-kr" ] || [ -n "${CARGO_TARGET_DIR:-}" ] \
        || die "target/release/virtiofsd-kr was not built"
fi
log "ready"
