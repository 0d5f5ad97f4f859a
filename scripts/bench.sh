#!/usr/bin/env bash
# Benchmarks virtiofsd-kr against the reference virtiofsd in real guests, side by side.
#
#   scripts/bench.sh [--quick] [--json] [--out DIR] [vmbench options...]
#   scripts/bench.sh --micro [vmbench micro options...]
#   scripts/bench.sh --backend cephfs [--quick] [--out DIR] [vmbench options...]
#   scripts/bench.sh --density [vmbench density options...]
#   scripts/bench.sh --dax [vmbench dax options...]
#   scripts/bench.sh --multiqueue [vmbench multiqueue options...]
#
# Builds our daemon as it ships (cargo build --profile dist -p virtiofsd-kr: release with fat
# LTO, as the reference's own release profile has, and opt-level s, which it has not; see
# Cargo.toml) and the driver (vm-tests' vmbench),
# installs the reference daemon with `cargo install virtiofsd --locked` into
# .cache/reference-virtiofsd (only when it is missing; needs libseccomp-dev and libcap-ng-dev,
# checked here and installed by scripts/setup.sh), then runs vmbench: per cache mode and
# repetition one guest boot served by both daemons (a share each, each on its own
# vhost-user-fs-pci), every fio job and the metadata job run on one share and right after on
# the other (A B, then B A, ...), ratios from those pairs; the same jobs on the host.
# --separate-boots boots a guest per daemon instead (A B, then B A, ...), as the CephFS mode
# always does. Every ratio comes with a 95 % bootstrap interval and is called won or
# lost only when that excludes 1.0; beside every figure, the daemon's CPU time per operation
# (or per MiB, per file) inside that job's window, and its ratio with its interval.
#
# Output: a Markdown table on stdout, or with --json one JSON object on stdout. Progress goes
# to stderr. Both are also saved in --out DIR (default target/vmbench/): last.md, last.json,
# last.log.
#
# --micro runs `vmbench micro` instead: no guest; each daemon driven over its socket by the
# test frontend with the FUSE requests of the metadata job and of 4 KiB reads/writes, per
# request wall and daemon CPU time (about a minute; table also in DIR/micro.md). Its options:
# --rounds N, --count N, --group all|meta|io, --strace DIR. It runs pinned to one CPU (driver
# and daemons: taskset -c ${BENCH_MICRO_CPU:-0}; BENCH_MICRO_CPU=none unpins): unpinned, a
# request's round trip depends on whether the scheduler put the daemon on the driver's CPU
# (a cross-CPU wake-up in a VM costs an IPI), which swung the reference's 4 KiB READ between
# 21 and 53 us from run to run on this 2-vCPU machine.
# With --backend cephfs, --micro drives ours --backend cephfs and the reference over the
# ceph-fuse mount of the bench volume (set up as below; ceph-fuse's CPU counted with the
# reference), unpinned unless BENCH_MICRO_CPU is given; table in DIR/ceph-micro.md.
#
# --backend cephfs compares the daemons on a CephFS volume of the dev cluster
# (scripts/ceph-dev-cluster.sh start, CEPH_DEV_PORT as usual; left running): a fresh volume
# /volumes/bench-N with its own cephx identity (`ceph fs authorize ... rw`), mounted on the
# host with Debian's ceph-fuse as that identity (target/vmbench-mnt/ceph). Two vmbench runs on it,
# each with its A B / B A alternation: (1) ours with --backend cephfs on the volume against
# the reference virtiofsd serving the ceph-fuse mount (host jobs: the same fio jobs on the
# ceph-fuse mount); (2) ours passthrough against the reference, both serving that mount. In
# both, ceph-fuse's CPU time is counted as the CPU of each daemon serving its mount
# (--count-cpu), so "CPU" is the whole host cost of a guest's I/O either way. Tables in
# DIR/ceph.md (also on stdout), DIR/ceph-native.{md,json}, DIR/ceph-passthrough.{md,json},
# DIR/ceph.json (both). The volume is removed afterwards; --fs does not apply.
# --ceph-native-only skips run 2 (the native comparison alone takes half the time).
#
# --density runs `vmbench density`: N daemons of each kind (default 32) connected to test
# frontends, idle and then each sent one GETATTR every few ms: the CPU of all of them per
# second, CPU per request and PSS per daemon (about 2 minutes; DIR/density.md and .json).
# Its options: --n N, --rounds N, --idle-secs S, --load-secs S, --interval-us US.
#
# --dax runs `vmbench dax` in the modern rig (QEMU 11.1 from .cache/trixie-root, Debian
# trixie's 6.12 guest, both made by scripts/setup.sh; TCG here): per repetition one boot each
# of ours with a DAX window (dax=always), ours without DAX and the reference virtiofsd (no
# DAX), in rotating order; in each, the guest's page cache grown by reading the file once,
# then sequential 1 MiB read (one pass), 4 KiB random read (psync, O_DIRECT) and 4 KiB random
# read through mmap; the no-DAX boot also runs the jobs on a copy in the guest's own tmpfs
# (the limit). Ratios DAX / no DAX, DAX / reference and DAX / tmpfs with 95 % intervals, the
# issue's targets (psync >= 10x, mmap >= 20x no DAX, sequential >= 0.8 x tmpfs), each daemon's
# CPU per operation over each job's window (DIR/dax.md and .json, about 25 minutes). Its
# options: --reps N (3), --repeat N (3), --runtime S (4), --file-mib N (128), --window SIZE
# (256M), --memory MIB (1536).
# --multiqueue runs `vmbench multiqueue`: ours, 4 vCPUs, fio with 4 jobs (one pinned per
# vCPU) on vhost-user-fs-pci with num-request-queues=4 against 1, same rig (DIR/multiqueue.md
# and .json, about 15 minutes). Same options, and --vcpus N (2-16) for N vCPUs, jobs and
# queues (a host with fewer CPUs than 4 runs TCG vCPUs on shared CPUs). Both also take --ours-arg ARG (a flag for our
# daemon in every setup, e.g. --ours-arg --overlap-threads=0) and --jobs a,b (only those jobs).
#
# Options:
#   --backend B     passthrough (default: a host folder) or cephfs (see above)
#   --quick         cache=auto only, 3 boots with every job run 3 times on each daemon
#                   (--repeat 3), 2 s fio jobs, 256 MiB files, host jobs once (~12 min)
#   --json          JSON on stdout instead of the table
#   --out DIR       where last.md/last.json/last.log go
#   --no-setup      skip scripts/setup.sh (apt packages, guest image)
#   --fs image|root where the share and the host jobs' folder live. image (default): a fresh
#                   journaled ext4 in a sparse file (target/vmbench-fs.img, 8 GiB), on a loop
#                   device with direct I/O, mounted at target/vmbench-fs for the run and
#                   removed after it (needs root). root: target/vmbench on the filesystem of
#                   the checkout, as it is (docs/benchmarks.md says why the default is not).
# Everything else is passed to vmbench (target/release/vmbench --help): --reps N, --repeat N,
# --count-cpu ours|reference:PID (count another process's CPU as that daemon's, e.g.
# ceph-fuse under a reference serving its mount), --ours-arg ARG, --reference-arg ARG,
# --cache auto,always,never,metadata, --runtime SECS, --file-mib N, --jobs a,b, --no-meta,
# --no-host, --strace DIR (one boot per daemon), --accel auto|kvm|tcg, --separate-boots.
#
# Environment: REFERENCE_VIRTIOFSD=/path/to/virtiofsd uses that binary instead.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO/target/vmbench"
SETUP=1
MICRO=0
BACKEND=passthrough
DENSITY=0
MODERN=""
FS=image
CEPH_RUNS=both
PASS=()

log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --json) PASS+=(--json); shift ;;
        --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
        --no-setup) SETUP=0; shift ;;
        --micro) MICRO=1; shift ;;
        --backend)
            case "${2:-}" in
                passthrough|cephfs) BACKEND="$2" ;;
                *) die "--backend ${2:-}: passthrough or cephfs" ;;
            esac
            shift 2 ;;
        --density) DENSITY=1; shift ;;
        --ceph-native-only) CEPH_RUNS=native; shift ;;
        --dax) MODERN=dax; shift ;;
        --multiqueue) MODERN=multiqueue; shift ;;
        --fs)
            case "${2:-}" in
                image|root) FS="$2" ;;
                *) die "--fs ${2:-}: image or root" ;;
            esac
            shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) PASS+=("$1"); shift ;;
    esac
done

START=$(date +%s)
cd "$REPO"

if [ "$SETUP" = 1 ]; then
    # apt packages and the guest image; the daemon is built below.
    "$REPO/scripts/setup.sh" --no-build >&2
fi

for pkg in libseccomp-dev libcap-ng-dev fio qemu-system-x86; do
    # QEMU 7.2 may live in .cache/qemu-7.2 instead (setup.sh never removes a host package).
    [ "$pkg" = qemu-system-x86 ] && [ -x "$REPO/.cache/qemu-7.2/usr/bin/qemu-system-x86_64" ] \
        && continue
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' \
        || die "apt package $pkg is missing: run scripts/setup.sh"
done

log "building virtiofsd-kr (dist profile) and vmbench (release)"
cargo build --profile dist -q -p virtiofsd-kr </dev/null >&2
OURS="$REPO/target/dist/virtiofsd-kr"
cargo build --release -q -p vm-tests --bin vmbench </dev/null >&2

REF_ROOT="$REPO/.cache/reference-virtiofsd"
REF="${REFERENCE_VIRTIOFSD:-$REF_ROOT/bin/virtiofsd}"
if [ ! -x "$REF" ]; then
    [ -z "${REFERENCE_VIRTIOFSD:-}" ] || die "REFERENCE_VIRTIOFSD=$REF is not executable"
    log "installing the reference virtiofsd into $REF_ROOT (cargo install virtiofsd --locked)"
    cargo install -q virtiofsd --locked --root "$REF_ROOT" </dev/null >&2
fi
[ -x "$REF" ] || die "reference daemon $REF missing after the install"

mkdir -p "$OUT"
if [ -n "$MODERN" ]; then
    [ "$(id -u)" = 0 ] || die "--$MODERN runs QEMU 11.1 from the trixie root (unshare, chroot) and needs root"
    [ -x "$REPO/.cache/trixie-root/usr/bin/qemu-system-x86_64" ] \
        || die "the modern rig (.cache/trixie-root) is missing: run scripts/setup.sh"
    [ -f "$REPO/.cache/guest-6.12/vmlinux" ] \
        || die "the 6.12 guest kernel (.cache/guest-6.12) is missing: run scripts/setup.sh"
    log "running vmbench $MODERN ${PASS[*]:-} (log: $OUT/$MODERN.log)"
    set +e
    "$REPO/target/release/vmbench" "$MODERN" \
        --ours "$OURS" --reference "$REF" \
        --work "$REPO/target/vmbench" --markdown-out "$OUT/$MODERN.md" \
        --json-out "$OUT/$MODERN.json" "${PASS[@]}" </dev/null 2> >(tee "$OUT/$MODERN.log" >&2)
    rc=$?
    set -e
    wait
    log "finished in $(( $(date +%s) - START )) s (exit $rc); table in $OUT/$MODERN.md"
    exit "$rc"
fi
if [ "$DENSITY" = 1 ]; then
    log "running vmbench density ${PASS[*]:-}"
    set +e
    "$REPO/target/release/vmbench" density \
        --ours "$OURS" --reference "$REF" \
        --work "$REPO/target/vmbench" --markdown-out "$OUT/density.md" \
        --json-out "$OUT/density.json" "${PASS[@]}" </dev/null
    rc=$?
    set -e
    log "finished in $(( $(date +%s) - START )) s (exit $rc); table in $OUT/density.md"
    exit "$rc"
fi
if [ "$MICRO" = 1 ] && [ "$BACKEND" != cephfs ]; then
    PIN=()
    if [ "${BENCH_MICRO_CPU:-0}" != none ]; then
        command -v taskset >/dev/null || die "taskset (util-linux) is missing; BENCH_MICRO_CPU=none runs unpinned"
        PIN=(taskset -c "${BENCH_MICRO_CPU:-0}")
    fi
    log "running ${PIN[*]:-} vmbench micro ${PASS[*]:-}"
    set +e
    "${PIN[@]}" "$REPO/target/release/vmbench" micro \
        --ours "$OURS" --reference "$REF" \
        --work "$REPO/target/vmbench" --markdown-out "$OUT/micro.md" \
        "${PASS[@]}" </dev/null
    rc=$?
    set -e
    log "finished in $(( $(date +%s) - START )) s (exit $rc); table in $OUT/micro.md"
    exit "$rc"
fi

# ---- CephFS mode (--backend cephfs) -------------------------------------------------------
CEPH_DIR="${CEPH_DEV_DIR:-$REPO/.cache/ceph}"
# The mountpoints live apart from any --out (which takes ceph-fuse.log and the tables): an
# --out of target/vmbench-ceph, the old mountpoint, made the mountpoint non-empty and
# ceph-fuse refused to mount.
CEPH_MNT="$REPO/target/vmbench-mnt/ceph"
CEPH_ADMIN_MNT="$REPO/target/vmbench-mnt/ceph-admin"
CEPH_FUSE_PID=""
CEPH_VOLUME=""

# ceph-fuse, foreground in the background (its pid is ours to count and to stop), as
# client.$1 with keyring $2, the CephFS directory $3 as the root, on $4. Waits for the mount.
ceph_fuse_mount() {
    local id="$1" keyring="$2" root="$3" mnt="$4" i
    mkdir -p "$mnt"
    mountpoint -q "$mnt" && { umount "$mnt" || die "$mnt is mounted and cannot be unmounted"; }
    ceph-fuse -f -c "$CEPH_DIR/ceph.conf" -n "client.$id" -k "$keyring" -r "$root" \
        --admin_socket= --log_file="$CEPH_DIR/log/ceph-fuse-$id.log" "$mnt" \
        </dev/null >>"$OUT/ceph-fuse.log" 2>&1 &
    CEPH_FUSE_PID=$!
    for i in $(seq 1 200); do
        mountpoint -q "$mnt" && return 0
        kill -0 "$CEPH_FUSE_PID" 2>/dev/null || die "ceph-fuse exited (see $OUT/ceph-fuse.log)"
        sleep 0.1
    done
    die "ceph-fuse did not mount $mnt within 20 s (see $OUT/ceph-fuse.log)"
}

# Unmounts $1 and waits (bounded) for ceph-fuse pid $2 to exit.
ceph_fuse_umount() {
    local mnt="$1" pid="$2" i
    mountpoint -q "$mnt" && umount "$mnt" 2>/dev/null
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
}

ceph_cleanup() {
    if [ -n "$CEPH_FUSE_PID" ]; then
        # The bench's files go with the run (memstore keeps them in memory); the identity too.
        rm -rf "${CEPH_MNT:?}/share" "${CEPH_MNT:?}/host" 2>/dev/null || true
        ceph_fuse_umount "$CEPH_MNT" "$CEPH_FUSE_PID"
    fi
    if [ -n "$CEPH_VOLUME" ]; then
        ceph -c "$CEPH_DIR/ceph.conf" auth rm "client.$CEPH_VOLUME" >/dev/null 2>&1 || true
    fi
}

ceph_bench() {
    [ "$(id -u)" = 0 ] || die "--backend cephfs mounts ceph-fuse and needs root"
    local out_abs
    out_abs="$(cd "$OUT" && pwd)"
    case "$out_abs/" in
        "$REPO/target/vmbench-mnt/"*) die "--out $OUT is under the bench's mountpoints ($REPO/target/vmbench-mnt): choose another directory" ;;
    esac
    command -v ceph-fuse >/dev/null || die "ceph-fuse is missing: scripts/ceph-dev-cluster.sh start installs it"
    "$REPO/scripts/ceph-dev-cluster.sh" start >&2
    command -v ceph-fuse >/dev/null || die "ceph-fuse is missing after the cluster's set-up"
    local conf="$CEPH_DIR/ceph.conf" keyring rc1 rc2 count_cpu_ok=0
    CEPH_VOLUME="bench-$(date +%s)"
    trap ceph_cleanup EXIT
    # The volume directory, made through an admin mount (as an operator does).
    ceph_fuse_mount admin "$CEPH_DIR/keyring" / "$CEPH_ADMIN_MNT"
    mkdir -p "$CEPH_ADMIN_MNT/volumes/$CEPH_VOLUME/share"
    ceph_fuse_umount "$CEPH_ADMIN_MNT" "$CEPH_FUSE_PID"
    CEPH_FUSE_PID=""
    rmdir "$CEPH_ADMIN_MNT" 2>/dev/null || true
    mkdir -p "$CEPH_DIR/tenants"
    keyring="$CEPH_DIR/tenants/$CEPH_VOLUME.keyring"
    ceph -c "$conf" fs authorize cephfs "client.$CEPH_VOLUME" "/volumes/$CEPH_VOLUME" rw \
        >"$keyring" || die "ceph fs authorize failed"
    # The host mount the other daemons serve: the volume's own identity, as a tenant would.
    ceph_fuse_mount "$CEPH_VOLUME" "$keyring" "/volumes/$CEPH_VOLUME" "$CEPH_MNT"
    log "volume /volumes/$CEPH_VOLUME as client.$CEPH_VOLUME; ceph-fuse (pid $CEPH_FUSE_PID) on $CEPH_MNT"
    local vmbench="$REPO/target/release/vmbench"
    local fuse_cpu=()
    # Not `--help | grep -q`: with pipefail, grep's early exit makes that pipeline fail.
    local help
    help=$("$vmbench" --help 2>&1 || true)
    if [[ "$help" == *--count-cpu* ]]; then
        count_cpu_ok=1
    else
        log "this vmbench has no --count-cpu: ceph-fuse's CPU is not added to the daemons' (see ceph-fuse CPU below)"
    fi
    local fuse_cpu0 fuse_cpu1
    fuse_cpu0=$(awk '{ print $14 + $15 }' "/proc/$CEPH_FUSE_PID/stat")
    [ "$count_cpu_ok" = 1 ] && fuse_cpu=(--count-cpu "reference:$CEPH_FUSE_PID")
    if [ "$MICRO" = 1 ]; then
        # No guest: the FUSE requests of the metadata job and of 4 KiB I/O straight to ours
        # (libcephfs) and to the reference (on the ceph-fuse mount), ceph-fuse's CPU counted
        # with the reference. Unpinned unless BENCH_MICRO_CPU is set: ceph-fuse and the
        # cluster run wherever the scheduler puts them, and so may ours' libcephfs threads.
        local pin=()
        if [ -n "${BENCH_MICRO_CPU:-}" ] && [ "$BENCH_MICRO_CPU" != none ]; then
            pin=(taskset -c "$BENCH_MICRO_CPU")
        fi
        [ "$count_cpu_ok" = 1 ] || die "this vmbench has no --count-cpu"
        log "vmbench micro: ours --backend cephfs against the reference over ceph-fuse ${pin[*]:-(unpinned)}"
        set +e
        "${pin[@]}" "$vmbench" micro --ours "$OURS" --reference "$REF" --work "$CEPH_MNT" \
            --ours-ceph "$conf,$CEPH_VOLUME,$keyring,/volumes/$CEPH_VOLUME/share" "${fuse_cpu[@]}" \
            --markdown-out "$OUT/ceph-micro.md" "${PASS[@]}" </dev/null
        rc1=$?
        set -e
        log "finished in $(( $(date +%s) - START )) s (exit $rc1); table in $OUT/ceph-micro.md"
        return "$rc1"
    fi
    log "run 1 of 2: ours --backend cephfs against the reference over ceph-fuse"
    set +e
    "$vmbench" --ours "$OURS" --reference "$REF" --work "$CEPH_MNT" \
        --ours-ceph "$conf,$CEPH_VOLUME,$keyring,/volumes/$CEPH_VOLUME/share" "${fuse_cpu[@]}" \
        --markdown-out "$OUT/ceph-native.md" --json-out "$OUT/ceph-native.json" \
        "${PASS[@]}" </dev/null 2>&1 >/dev/null | tee "$OUT/last.log" >&2
    rc1=${PIPESTATUS[0]}
    [ "$count_cpu_ok" = 1 ] && fuse_cpu=(--count-cpu "reference:$CEPH_FUSE_PID" --count-cpu "ours:$CEPH_FUSE_PID")
    if [ "$CEPH_RUNS" = native ]; then
        log "run 2 of 2 skipped (--ceph-native-only)"
        rm -f "$OUT/ceph-passthrough.md" "$OUT/ceph-passthrough.json"
        rc2=0
    else
        log "run 2 of 2: ours passthrough against the reference, both over ceph-fuse"
        "$vmbench" --ours "$OURS" --reference "$REF" --work "$CEPH_MNT" --no-host "${fuse_cpu[@]}" \
            --markdown-out "$OUT/ceph-passthrough.md" --json-out "$OUT/ceph-passthrough.json" \
            "${PASS[@]}" </dev/null 2>&1 >/dev/null | tee -a "$OUT/last.log" >&2
        rc2=${PIPESTATUS[0]}
    fi
    set -e
    fuse_cpu1=$(awk '{ print $14 + $15 }' "/proc/$CEPH_FUSE_PID/stat")
    {
        echo "# CephFS: ours native and ours passthrough against the reference over ceph-fuse"
        echo
        echo "Volume /volumes/$CEPH_VOLUME (dev cluster, $(ceph-fuse --version 2>/dev/null | head -1))," \
            "ceph-fuse as client.$CEPH_VOLUME; ceph-fuse CPU over both runs:" \
            "$(awk -v t="$(( fuse_cpu1 - fuse_cpu0 ))" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }') s."
        echo
        echo "## 1. ours --backend cephfs (\"ours\") vs reference virtiofsd over ceph-fuse"
        echo
        cat "$OUT/ceph-native.md" 2>/dev/null || echo "(run 1 failed: exit $rc1)"
        echo
        echo "## 2. ours passthrough over ceph-fuse (\"ours\") vs reference virtiofsd over ceph-fuse"
        echo
        cat "$OUT/ceph-passthrough.md" 2>/dev/null || echo "(run 2 not run or failed: exit $rc2)"
    } >"$OUT/ceph.md"
    {
        printf '{"volume":"/volumes/%s","ceph_fuse_cpu_ticks":%s,"native_vs_reference":' \
            "$CEPH_VOLUME" "$(( fuse_cpu1 - fuse_cpu0 ))"
        cat "$OUT/ceph-native.json" 2>/dev/null || printf null
        printf ',"passthrough_vs_reference":'
        cat "$OUT/ceph-passthrough.json" 2>/dev/null || printf null
        printf '}\n'
    } >"$OUT/ceph.json"
    if printf '%s\n' "${PASS[@]}" | grep -qx -- --json; then cat "$OUT/ceph.json"; else cat "$OUT/ceph.md"; fi
    log "finished in $(( $(date +%s) - START )) s (exits $rc1 $rc2); results in $OUT/ceph.md and $OUT/ceph.json"
    [ "$rc1" = 0 ] && [ "$rc2" = 0 ]
}

if [ "$BACKEND" = cephfs ]; then
    ceph_bench
    exit $?
fi
# ---- end of the CephFS mode ---------------------------------------------------------------

WORK="$REPO/target/vmbench"
if [ "$FS" = image ]; then
    # The checkout's filesystem is whatever the machine has; on this one an ext4 without a
    # journal, whose inode allocator skips every inode freed in the last minutes: after one
    # boot's 10,000 unlinks each create costs ~0.8 ms of host time in either daemon, which
    # hides the daemons behind the host. A fresh journaled ext4, as a host's data
    # filesystem would be, for every run.
    [ "$(id -u)" = 0 ] || die "--fs image mounts a filesystem image and needs root (or use --fs root)"
    IMG="$REPO/target/vmbench-fs.img"
    MNT="$REPO/target/vmbench-fs"
    mkdir -p "$MNT"
    if mountpoint -q "$MNT"; then
        umount "$MNT" || die "$MNT is mounted (a previous run?) and cannot be unmounted"
    fi
    rm -f "$IMG"
    truncate -s 8G "$IMG"
    mkfs.ext4 -q -F -L vmbench "$IMG" >&2 || die "mkfs.ext4 $IMG failed (or use --fs root)"
    LOOP=$(losetup --direct-io=on --find --show "$IMG") \
        || die "no loop device for $IMG (modprobe loop, or use --fs root)"
    cleanup_fs() {
        umount "$MNT" 2>/dev/null || true
        losetup -d "$LOOP" 2>/dev/null || true
        rm -f "$IMG"
    }
    trap cleanup_fs EXIT
    mount "$LOOP" "$MNT" || die "mounting $LOOP on $MNT failed (or use --fs root)"
    WORK="$MNT/vmbench"
    log "share and host folder on a fresh journaled ext4: $LOOP ($IMG, direct I/O) on $MNT"
fi
log "running vmbench ${PASS[*]:-} (log: $OUT/last.log)"
set +e
"$REPO/target/release/vmbench" \
    --ours "$OURS" --reference "$REF" \
    --work "$WORK" \
    --markdown-out "$OUT/last.md" --json-out "$OUT/last.json" \
    "${PASS[@]}" </dev/null 2> >(tee "$OUT/last.log" >&2)
rc=$?
set -e
wait
log "finished in $(( $(date +%s) - START )) s (exit $rc); results in $OUT/last.md and $OUT/last.json"
exit "$rc"
