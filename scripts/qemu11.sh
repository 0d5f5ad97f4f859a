#!/usr/bin/env bash
# Runs QEMU 11.1 (qemu-system-x86_64 from Debian trixie-backports) out of the debootstrapped
# trixie root that scripts/build-modern-rig.sh builds in .cache/trixie-root, without
# installing it on the host: a private mount namespace (unshare -m) binds /proc, /dev, /sys
# and the host folders QEMU needs at their own paths inside the root, then chroot runs
# QEMU there. Nothing stays mounted when QEMU exits; the process id is QEMU's own (every step
# execs the next), so a caller can signal or wait for it as for a host QEMU.
#
#   scripts/qemu11.sh [QEMU ARGUMENTS...]
#
# Bound at the same path: /tmp, $TMPDIR, the repository's .cache/ (guest kernels and
# initramfs) and every folder in QEMU11_BIND (colon-separated): sockets, kernels, images and
# initrds given to QEMU must live under one of them. Needs root (mount namespaces, chroot).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${QEMU11_ROOT:-$REPO/.cache/trixie-root}"
if [ ! -x "$ROOT/usr/bin/qemu-system-x86_64" ]; then
    echo "qemu11: no QEMU in $ROOT: run scripts/setup.sh (scripts/build-modern-rig.sh)" >&2
    exit 127
fi
binds=(/tmp "$REPO/.cache")
[ -n "${TMPDIR:-}" ] && binds+=("$TMPDIR")
if [ -n "${QEMU11_BIND:-}" ]; then
    IFS=: read -ra extra <<<"$QEMU11_BIND"
    binds+=("${extra[@]}")
fi
exec unshare -m --propagation private /bin/sh -c '
    r="$1"; n="$2"; shift 2
    mount -t proc proc "$r/proc" && mount --rbind /dev "$r/dev" && mount --rbind /sys "$r/sys" \
        || { echo "qemu11: cannot bind /proc, /dev, /sys into $r" >&2; exit 126; }
    while [ "$n" -gt 0 ]; do
        d="$1"; shift; n=$((n - 1))
        [ -d "$d" ] || continue
        mkdir -p "$r$d" && mount --bind "$d" "$r$d" \
            || { echo "qemu11: cannot bind $d into $r" >&2; exit 126; }
    done
    exec chroot "$r" /usr/bin/qemu-system-x86_64 "$@"' qemu11 "$ROOT" "${#binds[@]}" "${binds[@]}" "$@"
