#!/usr/bin/env bash
# Builds the test guest into .cache/guest/ at the repository root:
#   vmlinux          uncompressed guest kernel (ELF, booted through PVH by QEMU -kernel)
#   vmlinuz          the original Debian bzImage (fallback)
#   initramfs.cpio   busybox-static + virtio/fuse/virtiofs modules + fio + attr tools, /init
#   initramfs-base.cpio  the same without fio and the libraries only fio needs (boots ~1 s
#                    faster under TCG); append fio.cpio to it to get fio back
#   fio.cpio         fio and the libraries only it needs (a newc archive to concatenate)
#   kernel-version   the kernel release string (e.g. 6.1.0-56-amd64)
#
# The kernel comes from the Debian package that `linux-image-amd64` depends on, fetched
# with `apt-get download` and unpacked with `dpkg-deb -x` (nothing is installed in /boot).
# Idempotent: every step is skipped when its outputs exist and are newer than its inputs.
#
# Environment:
#   GUEST_DIR   output folder (default: <repo>/.cache/guest)
#   FORCE=1     rebuild everything
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GUEST_DIR="${GUEST_DIR:-$REPO/.cache/guest}"
FORCE="${FORCE:-0}"
SELF="$REPO/scripts/build-guest.sh"

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb depmod cpio busybox fio setfattr getfattr ldd xz gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool' (run scripts/setup.sh)"
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || BUSYBOX="$(command -v busybox)"
if ldd "$BUSYBOX" 2>&1 | grep -q '=>'; then
    die "$BUSYBOX is not statically linked (install busybox-static)"
fi

mkdir -p "$GUEST_DIR"
cd "$GUEST_DIR"

# newer OUT IN...: true when OUT exists and is newer than every IN (and FORCE is off).
up_to_date() {
    local out="$1"; shift
    [ "$FORCE" = 1 ] && return 1
    [ -e "$out" ] || return 1
    local in
    for in in "$@"; do
        [ -e "$in" ] || continue
        [ "$in" -nt "$out" ] && return 1
    done
    return 0
}

# ---------------------------------------------------------------------------------------
# 1. Kernel package
# ---------------------------------------------------------------------------------------
KPKG="$(apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9].*-amd64$/ {print $2; exit}')"
if [ -z "$KPKG" ]; then
    # Fall back to what is already downloaded.
    KPKG="$(ls -1 linux-image-*-amd64_*.deb 2>/dev/null | sed 's/_.*//' | sort -V | tail -1 || true)"
fi
[ -n "$KPKG" ] || die "cannot find the versioned kernel package (apt-get update?)"
KREL="${KPKG#linux-image-}"

DEB="$(ls -1 "${KPKG}"_*.deb 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$DEB" ] || [ "$FORCE" = 1 ]; then
    log "downloading $KPKG"
    rm -f "${KPKG}"_*.deb
    # The cache folder belongs to root; let apt download as root instead of its _apt user.
    apt-get -o APT::Sandbox::User=root download "$KPKG" >&2
    DEB="$(ls -1 "${KPKG}"_*.deb | sort -V | tail -1)"
fi

ROOT="$GUEST_DIR/kernel-root"
if ! up_to_date "$ROOT/.unpacked" "$DEB"; then
    log "unpacking $DEB"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    dpkg-deb -x "$DEB" "$ROOT"
    touch "$ROOT/.unpacked"
fi

MODDIR="$ROOT/lib/modules/$KREL"
[ -d "$MODDIR" ] || die "no modules for $KREL in $DEB"
if ! up_to_date "$MODDIR/modules.dep" "$ROOT/.unpacked"; then
    log "depmod $KREL"
    depmod -b "$ROOT" "$KREL"
fi

VMLINUZ_SRC="$ROOT/boot/vmlinuz-$KREL"
[ -f "$VMLINUZ_SRC" ] || die "no $VMLINUZ_SRC"
if ! up_to_date vmlinuz "$VMLINUZ_SRC"; then
    cp -f "$VMLINUZ_SRC" vmlinuz
fi
echo "$KREL" > kernel-version.tmp
if ! cmp -s kernel-version.tmp kernel-version 2>/dev/null; then mv -f kernel-version.tmp kernel-version; else rm -f kernel-version.tmp; fi

# ---------------------------------------------------------------------------------------
# 2. vmlinux: find a compressed payload inside the bzImage and decompress it.
# ---------------------------------------------------------------------------------------
is_elf() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = "7f454c46" ]; }

# try_payload OFFSET DECOMPRESSOR...: decompress from byte OFFSET of vmlinuz to vmlinux.tmp.
try_payload() {
    local off="$1"; shift
    tail -c "+$((off + 1))" vmlinuz | "$@" > vmlinux.tmp 2>/dev/null || true
    [ -s vmlinux.tmp ] && is_elf vmlinux.tmp
}

extract_vmlinux() {
    local magic off
    # name|grep -P pattern|decompressor
    local formats=(
        'xz|\xfd7zXZ\x00|xz -dc --single-stream'
        'zstd|\x28\xb5\x2f\xfd|zstd -dc'
        'gzip|\x1f\x8b\x08|gzip -dc'
        'lzma|\x5d\x00\x00\x00|xz -dc --format=lzma'
    )
    local fmt name pat cmd
    for fmt in "${formats[@]}"; do
        IFS='|' read -r name pat cmd <<<"$fmt"
        command -v "${cmd%% *}" >/dev/null 2>&1 || continue
        for off in $(LC_ALL=C grep -obUaP "$pat" vmlinuz 2>/dev/null | cut -d: -f1 | head -20); do
            # shellcheck disable=SC2086
            if try_payload "$off" $cmd; then
                log "vmlinux: $name payload at offset $off"
                return 0
            fi
        done
    done
    return 1
}

if ! up_to_date vmlinux vmlinuz; then
    log "extracting vmlinux from the bzImage"
    if extract_vmlinux; then
        mv -f vmlinux.tmp vmlinux
    else
        rm -f vmlinux.tmp
        die "could not find a decompressible ELF payload in vmlinuz"
    fi
fi
is_elf vmlinux || die "vmlinux is not an ELF file"

# ---------------------------------------------------------------------------------------
# 3. initramfs
# ---------------------------------------------------------------------------------------
# Modules wanted (their dependencies come from modules.dep, loaded first).
WANT_MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
              virtio_mmio fuse virtiofs)
EXTRA_BINS=(fio setfattr getfattr)

if [ -f initramfs-base.cpio ] && [ -f fio.cpio ] && up_to_date initramfs.cpio "$MODDIR/modules.dep" "$BUSYBOX" "$SELF" \
        $(for b in "${EXTRA_BINS[@]}"; do command -v "$b"; done); then
    log "up to date: $GUEST_DIR (kernel $KREL)"
    exit 0
fi

log "building initramfs"
STAGE="$GUEST_DIR/initramfs-root"
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,mnt,data,etc,lib/modules,vmtest}
cp "$BUSYBOX" "$STAGE/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$STAGE/bin/$applet" ] || ln -s busybox "$STAGE/bin/$applet"
done

# Resolve the module list in dependency order from modules.dep.
declare -A SEEN=()
ORDER=()
mod_path() { # name -> relative path in modules.dep
    local n="$1" alt="${1//_/-}"
    awk -F: -v a="/$n.ko" -v b="/$alt.ko" '
        { p=$1; sub(/\.(xz|zst|gz)$/, "", p)
          if (substr(p, length(p)-length(a)+1) == a || substr(p, length(p)-length(b)+1) == b) { print $1; exit } }' \
        "$MODDIR/modules.dep"
}
add_mod() { # relative path
    local rel="$1" dep
    [ -n "${SEEN[$rel]:-}" ] && return 0
    SEEN[$rel]=1
    for dep in $(awk -F: -v r="$rel" '$1 == r { print $2; exit }' "$MODDIR/modules.dep"); do
        add_mod "$dep"
    done
    ORDER+=("$rel")
}
for m in "${WANT_MODULES[@]}"; do
    rel="$(mod_path "$m")"
    if [ -z "$rel" ]; then
        # Built into the kernel: nothing to load.
        if grep -q "/$m.ko" "$MODDIR/modules.builtin" 2>/dev/null; then continue; fi
        die "module $m not found for $KREL"
    fi
    add_mod "$rel"
done
: > "$STAGE/lib/modules/load-order"
for rel in "${ORDER[@]}"; do
    base="$(basename "$rel")"
    case "$base" in
        *.ko.xz) xz -dc "$MODDIR/$rel" > "$STAGE/lib/modules/${base%.xz}"; base="${base%.xz}" ;;
        *.ko.zst) zstd -qdc "$MODDIR/$rel" > "$STAGE/lib/modules/${base%.zst}"; base="${base%.zst}" ;;
        *.ko.gz) gzip -dc "$MODDIR/$rel" > "$STAGE/lib/modules/${base%.gz}"; base="${base%.gz}" ;;
        *) cp "$MODDIR/$rel" "$STAGE/lib/modules/$base" ;;
    esac
    echo "$base" >> "$STAGE/lib/modules/load-order"
done
log "modules: $(tr '\n' ' ' < "$STAGE/lib/modules/load-order")"
echo "$KREL" > "$STAGE/lib/modules/kernel-version"

# Dynamic programs and every library ldd lists (kept at their host paths).
copy_with_libs() {
    local bin="$1" lib
    mkdir -p "$STAGE$(dirname "$bin")"
    cp -L "$bin" "$STAGE$bin"
    for lib in $(ldd "$bin" | awk '/=>/ && $3 ~ /^\// {print $3} /^[ \t]*\/[^ ]*ld-linux/ {print $1}'); do
        [ -e "$STAGE$lib" ] && continue
        mkdir -p "$STAGE$(dirname "$lib")"
        cp -L "$lib" "$STAGE$lib"
    done
}
for b in "${EXTRA_BINS[@]}"; do
    copy_with_libs "$(command -v "$b")"
done
# Files only fio needs: fio itself and the libraries no other program uses.
lib_list() { ldd "$1" | awk '/=>/ && $3 ~ /^\// {print $3} /^[ \t]*\/[^ ]*ld-linux/ {print $1}'; }
FIO_BIN="$(command -v fio)"
{
    echo ".$FIO_BIN"
    comm -23 <(lib_list "$FIO_BIN" | sort -u) \
        <(for b in "${EXTRA_BINS[@]}"; do [ "$b" = fio ] || lib_list "$(command -v "$b")"; done | sort -u) \
        | sed 's|^|.|'
} | LC_ALL=C sort -u > "$GUEST_DIR/fio-only.list"
# /lib64 and /usr/lib are reached through the same paths as on the host (Debian is merged-/usr,
# ldd prints /lib/... and /lib64/...), so no symlinks are needed beyond what was copied.
echo 'root:x:0:0:root:/root:/bin/sh' > "$STAGE/etc/passwd"
echo 'root:x:0:' > "$STAGE/etc/group"

cat > "$STAGE/init" <<'INIT'
#!/bin/sh
# vm-tests guest init: load modules, mount the virtio-fs share, run the workload, power off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
mount -t proc proc /proc
# The kernel printed its boot on the console (no `quiet`), so a guest that hangs while booting
# shows where; from here on only warnings and worse, as with `quiet`. Then the first line the
# host waits for: the kernel's boot is over (vm-tests boots a guest again when it never comes).
echo 4 > /proc/sys/kernel/printk
echo "@@VMTEST-INIT"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mkdir -p /root

say() { echo "@@VMTEST $*"; }
finish() {
    echo "@@VMTEST-EXIT $1"
    sync
    poweroff -f
    sleep 5
    echo o > /proc/sysrq-trigger
}

# The modules are those of the kernel this initramfs was built for; another kernel (the 6.12
# guest of the modern rig) has virtio-fs built in and loads none.
if [ "$(uname -r)" = "$(cat /lib/modules/kernel-version 2>/dev/null)" ]; then
    while read -r m; do
        [ -n "$m" ] || continue
        insmod "/lib/modules/$m" 2>/tmp/insmod.err || {
            grep -q 'File exists' /tmp/insmod.err || { echo "insmod $m failed: $(cat /tmp/insmod.err)"; }
        }
    done < /lib/modules/load-order
fi

TAG=""; MNT=/data; CMD=""; OPTS=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmtest.tag=*) TAG="${arg#vmtest.tag=}" ;;
        vmtest.mnt=*) MNT="${arg#vmtest.mnt=}" ;;
        vmtest.opts=*) OPTS="${arg#vmtest.opts=}" ;;
    esac
done
export VMTEST_TAG="$TAG" VMTEST_MNT="$MNT" VMTEST_OPTS="$OPTS"

if [ -n "$TAG" ]; then
    mkdir -p "$MNT"
    tries=0
    until mount -t virtiofs ${OPTS:+-o "$OPTS"} "$TAG" "$MNT" 2>/tmp/mount.err; do
        tries=$((tries + 1))
        if [ "$tries" -ge 20 ]; then
            echo "@@VMTEST-ERROR mount of virtiofs tag $TAG on $MNT failed: $(cat /tmp/mount.err)"
            finish 125
        fi
        sleep 0.1
    done
    say "mounted=$MNT${OPTS:+ opts=$OPTS}"
fi
echo "@@VMTEST-READY"

if [ -f /vmtest/workload.sh ]; then
    cd /
    sh /vmtest/workload.sh
    rc=$?
else
    echo "@@VMTEST-ERROR no /vmtest/workload.sh in the initramfs"
    rc=126
fi
cd /
[ -n "$TAG" ] && { sync; umount "$MNT" 2>/dev/null; }
finish "$rc"
INIT
chmod 755 "$STAGE/init"

# Build the archive; /dev/console must be a device node inside it.
FAKEROOT_LIST="$GUEST_DIR/initramfs.list"
(
    cd "$STAGE"
    find . -mindepth 1 | LC_ALL=C sort > "$FAKEROOT_LIST"
)
[ "$(id -u)" = 0 ] || die "building the initramfs needs root (mknod /dev/console); run scripts/setup.sh as root"
rm -f "$STAGE/dev/console" "$STAGE/dev/null"
mknod -m 600 "$STAGE/dev/console" c 5 1
mknod -m 666 "$STAGE/dev/null" c 1 3
printf './dev/console\n./dev/null\n' >> "$FAKEROOT_LIST"
(cd "$STAGE" && cpio --quiet -o -H newc -R 0:0 < "$FAKEROOT_LIST") > initramfs.cpio.tmp
LC_ALL=C grep -vxF -f "$GUEST_DIR/fio-only.list" "$FAKEROOT_LIST" > "$FAKEROOT_LIST.base"
(cd "$STAGE" && cpio --quiet -o -H newc -R 0:0 < "$FAKEROOT_LIST.base") > initramfs-base.cpio.tmp
(cd "$STAGE" && cpio --quiet -o -H newc -R 0:0 < "$GUEST_DIR/fio-only.list") > fio.cpio.tmp
mv -f initramfs-base.cpio.tmp initramfs-base.cpio
mv -f fio.cpio.tmp fio.cpio
mv -f initramfs.cpio.tmp initramfs.cpio
rm -f "$FAKEROOT_LIST" "$FAKEROOT_LIST.base" "$GUEST_DIR/fio-only.list"
log "initramfs.cpio: $(du -h initramfs.cpio | cut -f1), initramfs-base.cpio: $(du -h initramfs-base.cpio | cut -f1), fio.cpio: $(du -h fio.cpio | cut -f1) (kernel $KREL)"
