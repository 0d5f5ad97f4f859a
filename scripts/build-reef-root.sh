#!/usr/bin/env bash
# Builds the Ceph Reef (18.2) server root that `scripts/ceph-dev-cluster.sh --release reef`
# runs its cluster daemons from, without touching host packages:
#   .cache/reef-root/   a debootstrapped Debian trixie (minbase) with trixie's ceph-mon,
#                       ceph-osd, ceph-mds, ceph-mgr and ceph-common (18.2.x)
# The daemon under test and the test tools keep the host's libcephfs and ceph CLI (bookworm's
# Pacific 16.2): Reef is only the cluster they are clients of.
#
# Idempotent: skipped when the root's ceph-mon is there (a second run takes well under a
# second). Needs root (debootstrap, chroot), debootstrap, and network access to
# deb.debian.org. About 2 minutes and 0.9 GB the first time.
#
# Environment:
#   CEPH_DEV_REEF_ROOT  the root (default <repo>/.cache/reef-root)
#   MIRROR              Debian mirror (default http://deb.debian.org/debian)
#   FORCE=1             rebuild it
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${CEPH_DEV_REEF_ROOT:-$REPO/.cache/reef-root}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
FORCE="${FORCE:-0}"
READY="$ROOT/.virtiofsd-kr-ready"
PACKAGES=(ceph-mon ceph-osd ceph-mds ceph-mgr ceph-common)

log() { echo "build-reef-root: $*" >&2; }
die() { echo "build-reef-root: error: $*" >&2; exit 1; }

if [ "$FORCE" != 1 ] && [ -f "$READY" ] && [ -x "$ROOT/usr/bin/ceph-mon" ]; then
    log "up to date: $(cat "$READY")"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot)"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing (scripts/setup.sh installs it)"

# Serialise concurrent builds (two test processes may ask for the root at once).
mkdir -p "$(dirname "$ROOT")"
exec 8>"$ROOT.lock"
flock 8
if [ "$FORCE" != 1 ] && [ -f "$READY" ] && [ -x "$ROOT/usr/bin/ceph-mon" ]; then
    exit 0
fi

in_root() { # runs a command in the root with /proc and /dev bound (private mounts)
    unshare -m --propagation private sh -c '
        r="$1"; shift
        mount -t proc proc "$r/proc"
        mount --rbind /dev "$r/dev"
        exec chroot "$r" "$@"' in-root "$ROOT" "$@"
}

if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ ! -f "$ROOT/.debootstrapped" ] || [ "$FORCE" = 1 ]; then
    log "debootstrap trixie (minbase) into $ROOT"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >&2 || die "debootstrap failed (see above)"
    touch "$ROOT/.debootstrapped"
fi
log "installing ${PACKAGES[*]} (trixie) in the root"
in_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${PACKAGES[@]}" >&2
in_root apt-get clean
version="$(in_root ceph-mon --version | head -1)"
case "$version" in
    *"version 18."*) ;;
    *) die "the root's ceph-mon is not Reef (18.x): $version" ;;
esac
echo "$version" > "$READY"
log "ready: $version"
