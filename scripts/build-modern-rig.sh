#!/usr/bin/env bash
# Builds the modern guest rig beside the default one, without touching host packages:
#   .cache/trixie-root/   a debootstrapped Debian trixie (minbase) with qemu-system-x86 11.1
#                         from trixie-backports; run it through scripts/qemu11.sh
#   .cache/guest-6.12/    Debian trixie's 6.12 kernel (virtio, virtio_pci, fuse and virtiofs
#                         built in): vmlinux (PVH), vmlinuz, kernel-version. The guests boot
#                         the same initramfs as the 6.1 kernel (.cache/guest/), whose /init
#                         loads modules only for the kernel they were built for.
#
# Idempotent: each part is skipped when present (a second run takes well under a second).
# Needs root (debootstrap, chroot), debootstrap, and network access to deb.debian.org.
# About 70 s and 0.6 GB the first time.
#
# Environment:
#   MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   FORCE=1  rebuild both parts
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="$REPO/.cache/trixie-root"
KDIR="$REPO/.cache/guest-6.12"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
FORCE="${FORCE:-0}"
READY="$ROOT/.virtiofsd-kr-ready"

log() { echo "build-modern-rig: $*" >&2; }
die() { echo "build-modern-rig: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot)"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing (scripts/setup.sh installs it)"

in_root() { # runs a command in the trixie root with /proc, /dev and /sys bound (private mounts)
    unshare -m --propagation private sh -c '
        r="$1"; shift
        mount -t proc proc "$r/proc"
        mount --rbind /dev "$r/dev"
        mount --rbind /sys "$r/sys"
        exec chroot "$r" "$@"' in-root "$ROOT" "$@"
}

# ---- 1. trixie root with QEMU 11.1
if [ "$FORCE" = 1 ] || [ ! -f "$READY" ] || [ ! -x "$ROOT/usr/bin/qemu-system-x86_64" ]; then
    if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ ! -f "$ROOT/.debootstrapped" ] || [ "$FORCE" = 1 ]; then
        log "debootstrap trixie (minbase) into $ROOT"
        rm -rf "$ROOT"
        mkdir -p "$ROOT"
        debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >&2 \
            || die "debootstrap failed (see above)"
        touch "$ROOT/.debootstrapped"
    fi
    echo "deb $MIRROR trixie-backports main" > "$ROOT/etc/apt/sources.list.d/backports.list"
    log "installing qemu-system-x86 from trixie-backports in the root"
    in_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -t trixie-backports qemu-system-x86 >&2
    in_root apt-get clean
    version="$(in_root qemu-system-x86_64 --version | head -1)"
    case "$version" in
        *"version 11."*|*"version 1[2-9]."*) ;;
        *) die "the root's QEMU is not 11.1 or newer: $version" ;;
    esac
    echo "$version" > "$READY"
    log "QEMU ready: $version"
fi

# ---- 2. Debian trixie's 6.12 kernel
if [ "$FORCE" = 1 ] || [ ! -f "$KDIR/vmlinux" ] || [ ! -f "$KDIR/kernel-version" ]; then
    mkdir -p "$KDIR"
    # The versioned package that trixie's linux-image-amd64 depends on (not backports').
    kpkg="$(in_root apt-cache depends -t trixie linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9].*-amd64$/ {print $2; exit}')"
    case "$kpkg" in
        linux-image-6.12.*) ;;
        *) die "trixie's linux-image-amd64 does not depend on a 6.12 kernel package: '$kpkg'" ;;
    esac
    log "downloading $kpkg"
    rm -rf "$ROOT/tmp/kernel" && mkdir -p "$ROOT/tmp/kernel"
    in_root sh -c "cd /tmp/kernel && apt-get -o APT::Sandbox::User=root download -t trixie $kpkg" >&2
    deb="$(ls -1 "$ROOT"/tmp/kernel/"$kpkg"_*.deb | head -1)"
    rm -rf "$KDIR/unpacked"
    mkdir -p "$KDIR/unpacked"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$KDIR/unpacked" ./boot
    rm -rf "$ROOT/tmp/kernel"
    krel="${kpkg#linux-image-}"
    cp -f "$KDIR/unpacked/boot/vmlinuz-$krel" "$KDIR/vmlinuz"
    config="$KDIR/unpacked/boot/config-$krel"
    for opt in CONFIG_VIRTIO_FS CONFIG_FUSE_FS CONFIG_VIRTIO_PCI CONFIG_FUSE_DAX; do
        grep -q "^$opt=y" "$config" || die "$krel: $opt is not built in"
    done
    # The uncompressed ELF (PVH entry) boots faster under TCG: its payload is xz or zstd.
    rm -f "$KDIR/vmlinux.tmp"
    for fmt in 'xz|\xfd7zXZ\x00|xz -dc --single-stream' 'zstd|\x28\xb5\x2f\xfd|zstd -dc'; do
        IFS='|' read -r _ pat cmd <<<"$fmt"
        for off in $(LC_ALL=C grep -obUaP "$pat" "$KDIR/vmlinuz" 2>/dev/null | cut -d: -f1 | head -20); do
            # shellcheck disable=SC2086
            tail -c "+$((off + 1))" "$KDIR/vmlinuz" | $cmd > "$KDIR/vmlinux.tmp" 2>/dev/null || true
            if [ "$(head -c 4 "$KDIR/vmlinux.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
                break 2
            fi
        done
    done
    [ -s "$KDIR/vmlinux.tmp" ] && [ "$(head -c 4 "$KDIR/vmlinux.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] \
        || die "no ELF payload found in $KDIR/vmlinuz"
    mv -f "$KDIR/vmlinux.tmp" "$KDIR/vmlinux"
    rm -rf "$KDIR/unpacked"
    echo "$krel" > "$KDIR/kernel-version"
    log "guest kernel ready: $krel"
fi
log "up to date: $(cat "$READY"), guest kernel $(cat "$KDIR/kernel-version")"
