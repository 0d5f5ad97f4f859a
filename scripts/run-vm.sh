#!/usr/bin/env bash
# Boots the test guest with a directory shared through virtiofsd-kr, runs a command in it and
# prints the command's output.
#
#   scripts/run-vm.sh [options] -- COMMAND...
#
# Options:
#   --shared-dir DIR     directory to share (default: a fresh temp dir with hello.txt)
#   --cephfs-volume NAME serve the CephFS volume NAME instead (--backend cephfs): starts the
#                        dev cluster (scripts/ceph-dev-cluster.sh), creates the volume with
#                        `virtiofsd-kr volume create` if it does not exist (with hello.txt),
#                        and serves it with `virtiofsd-kr volume serve NAME` (its own
#                        identity client.vol-NAME, its quota and rate limits)
#   --cache MODE         auto|always|never|metadata (default auto)
#   --accel MODE         auto|kvm|tcg (default auto: KVM when it can run the guest, else TCG)
#   --sandbox MODE       pass --sandbox MODE to the daemon (default: the daemon's default)
#   --daemon-arg ARG     pass ARG to the daemon (repeatable)
#   --timeout SECS       hard limit for the guest (default 300)
#   --memory MIB         guest memory (default 1024)
#   --no-fio             boot the smaller initramfs without fio (about 1 s faster under TCG)
#   --qemu VERSION       7.2 (default: the host's Debian 12 QEMU) or 11.1 (Debian trixie-backports,
#                        run from .cache/trixie-root by scripts/qemu11.sh; setup.sh builds it)
#   --kernel VERSION     guest kernel: 6.1 (default, Debian 12) or 6.12 (Debian trixie)
#   --queues N           request queues (vhost-user-fs-pci num-request-queues; default 1)
#   --dax-window SIZE    give the guest a DAX window of SIZE (e.g. 256M): passes --dax-window
#                        and --tag to the daemon and uses QEMU 11.1's generic
#                        vhost-user-test-device-pci (the only device with a shared memory
#                        region); needs --qemu 11.1
#   --mount-opts OPTS    mount options of the share in the guest (e.g. dax=always)
#   --smp N              guest vCPUs (default 2)
#   --no-setup           do not run scripts/setup.sh first
#   --keep               keep the work directory (logs) afterwards
#
# The share is mounted at /data in the guest. COMMAND runs under busybox sh: a single argument
# is taken as a shell command line (pipes allowed), several arguments as one quoted command.
# Exit status: the command's status when it fails; 1 when the guest does not power off, the
# daemon does not exit 0, or anything else goes wrong.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED_DIR=""
CEPH_VOLUME=""
CACHE=auto
ACCEL=auto
SANDBOX=""
DAEMON_ARGS=()
TIMEOUT=300
MEMORY=1024
SETUP=1
KEEP=0
NO_FIO=0
QEMU_VERSION=7.2
KERNEL_VERSION=6.1
QUEUES=1
DAX_WINDOW=""
MOUNT_OPTS=""
SMP=2

die() { echo "run-vm: error: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --shared-dir) SHARED_DIR="${2:?}"; shift 2 ;;
        --cephfs-volume) CEPH_VOLUME="${2:?}"; shift 2 ;;
        --cache) CACHE="${2:?}"; shift 2 ;;
        --accel) ACCEL="${2:?}"; shift 2 ;;
        --sandbox) SANDBOX="${2:?}"; shift 2 ;;
        --daemon-arg) DAEMON_ARGS+=("${2:?}"); shift 2 ;;
        --timeout) TIMEOUT="${2:?}"; shift 2 ;;
        --memory) MEMORY="${2:?}"; shift 2 ;;
        --no-setup) SETUP=0; shift ;;
        --no-fio) NO_FIO=1; shift ;;
        --qemu) QEMU_VERSION="${2:?}"; shift 2 ;;
        --kernel) KERNEL_VERSION="${2:?}"; shift 2 ;;
        --queues) QUEUES="${2:?}"; shift 2 ;;
        --dax-window) DAX_WINDOW="${2:?}"; shift 2 ;;
        --mount-opts) MOUNT_OPTS="${2:?}"; shift 2 ;;
        --smp) SMP="${2:?}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) echo "run-vm: unknown option $1" >&2; usage ;;
    esac
done
[ $# -gt 0 ] || { echo "run-vm: no command given" >&2; usage; }
case "$CACHE" in auto|always|never|metadata) ;; *) die "bad --cache $CACHE" ;; esac
case "$ACCEL" in auto|kvm|tcg) ;; *) die "bad --accel $ACCEL" ;; esac
case "$QEMU_VERSION" in 7.2|11.1) ;; *) die "bad --qemu $QEMU_VERSION (7.2 or 11.1)" ;; esac
case "$KERNEL_VERSION" in 6.1|6.12) ;; *) die "bad --kernel $KERNEL_VERSION (6.1 or 6.12)" ;; esac
case "$QUEUES" in [1-9]|1[0-6]) ;; *) die "bad --queues $QUEUES (1 to 16)" ;; esac
case "$SMP" in [1-9]|[1-9][0-9]) ;; *) die "bad --smp $SMP" ;; esac
case "$MOUNT_OPTS" in *[[:space:]]*) die "--mount-opts must not contain spaces" ;; esac
if [ -n "$DAX_WINDOW" ] && [ "$QEMU_VERSION" != 11.1 ]; then
    die "--dax-window needs --qemu 11.1 (QEMU 7.2's vhost-user-fs-pci has no shared memory region)"
fi

if [ "$SETUP" = 1 ]; then
    "$REPO/scripts/setup.sh" >&2
fi

GUEST_DIR="$REPO/.cache/guest"
KERNEL_DIR="$GUEST_DIR"
[ "$KERNEL_VERSION" = 6.12 ] && KERNEL_DIR="$REPO/.cache/guest-6.12"
KERNEL="$KERNEL_DIR/vmlinux"
[ -f "$KERNEL" ] || KERNEL="$KERNEL_DIR/vmlinuz"
[ -f "$KERNEL" ] || die "guest kernel $KERNEL_VERSION missing in $KERNEL_DIR: run scripts/setup.sh"
INITRAMFS="$GUEST_DIR/initramfs.cpio"
if [ "$NO_FIO" = 1 ] && [ -f "$GUEST_DIR/initramfs-base.cpio" ]; then
    INITRAMFS="$GUEST_DIR/initramfs-base.cpio"
fi
[ -f "$KERNEL" ] && [ -f "$INITRAMFS" ] || die "guest image missing in $GUEST_DIR: run scripts/setup.sh"
DAEMON="${VIRTIOFSD_KR_BIN:-$REPO/target/release/virtiofsd-kr}"
[ -x "$DAEMON" ] || die "daemon $DAEMON missing: run scripts/setup.sh (cargo build --release -p virtiofsd-kr)"
if [ "$QEMU_VERSION" = 11.1 ]; then
    QEMU="$REPO/scripts/qemu11.sh"
    [ -x "$REPO/.cache/trixie-root/usr/bin/qemu-system-x86_64" ] \
        || die "QEMU 11.1 missing in .cache/trixie-root: run scripts/setup.sh"
    # The KVM probe below runs the host's QEMU; QEMU 11.1 here runs under TCG unless asked.
    [ "$ACCEL" = auto ] && ACCEL=tcg
else
    # Where installing QEMU 7.2 on the host would remove a package, setup.sh unpacks it here.
    QEMU="$REPO/.cache/qemu-7.2/usr/bin/qemu-system-x86_64"
    [ -x "$QEMU" ] || QEMU="$(command -v qemu-system-x86_64)" \
        || die "qemu-system-x86_64 missing: run scripts/setup.sh"
fi

WORK="$(mktemp -d /tmp/run-vm.XXXXXX)"
QEMU_PID=""
DAEMON_PID=""
cleanup() {
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null || true
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then echo "run-vm: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

BACKEND_ARGS=()
SERVE_PREFIX=()
if [ -n "$CEPH_VOLUME" ]; then
    [ -z "$SHARED_DIR" ] || die "--shared-dir and --cephfs-volume exclude each other"
    CEPH_CONF="$("$REPO/scripts/ceph-dev-cluster.sh" start)" || die "the Ceph dev cluster did not start"
    CEPH_ADMIN=(--ceph-conf "$CEPH_CONF" --ceph-keyring "$(dirname "$CEPH_CONF")/keyring"
        --keyring-dir "$(dirname "$CEPH_CONF")/volume-keyrings")
    if ! INFO="$("$DAEMON" volume inspect "$CEPH_VOLUME" "${CEPH_ADMIN[@]}" 2>/dev/null)"; then
        INFO="$("$DAEMON" volume create "$CEPH_VOLUME" "${CEPH_ADMIN[@]}")" \
            || die "volume create $CEPH_VOLUME failed"
        NEW_VOLUME=1
    fi
    # `volume serve` resolves the volume's root, identity and keyring and becomes the daemon.
    SERVE_PREFIX=(volume serve "$CEPH_VOLUME" "${CEPH_ADMIN[@]}")
    BACKEND_ARGS=()
    echo "run-vm: serving CephFS volume $CEPH_VOLUME (virtiofsd-kr volume serve)" >&2
else
    if [ -z "$SHARED_DIR" ]; then
        SHARED_DIR="$WORK/share"
        mkdir -p "$SHARED_DIR"
        echo "hello from the host" > "$SHARED_DIR/hello.txt"
    fi
    [ -d "$SHARED_DIR" ] || die "--shared-dir $SHARED_DIR is not a directory"
    SHARED_DIR="$(cd "$SHARED_DIR" && pwd)"
    BACKEND_ARGS=(--shared-dir "$SHARED_DIR")
fi

# ---- the workload, in a small cpio appended to the base initramfs
sq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
if [ $# -eq 1 ]; then
    CMDLINE="$1"
else
    CMDLINE=""
    for a in "$@"; do CMDLINE="$CMDLINE $(sq "$a")"; done
fi
make_initrd() { # workload-text output
    local stage="$WORK/overlay"
    rm -rf "$stage"; mkdir -p "$stage/vmtest"
    printf '%s\n' "$1" > "$stage/vmtest/workload.sh"
    chmod 755 "$stage/vmtest/workload.sh"
    cp "$INITRAMFS" "$2"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >> "$2"
}
PRELUDE=""
# A new CephFS volume starts empty: the guest leaves the usual hello file in it.
[ "${NEW_VOLUME:-0}" = 1 ] && PRELUDE='echo "hello from CephFS" > /data/hello.txt'
make_initrd "$PRELUDE
cd /data 2>/dev/null || true
$CMDLINE" "$WORK/initrd.cpio"

accel_args() {
    case "$1" in
        kvm) echo "-accel kvm -cpu host" ;;
        tcg) echo "-accel tcg,thread=multi -cpu max" ;;
    esac
}

# ---- accelerator: probe KVM once (cached like the Rust harness does) for --accel auto
if [ "$ACCEL" = auto ]; then
    if ! { exec 8<>/dev/kvm; } 2>/dev/null; then
        ACCEL=tcg
    else
        exec 8>&-
        kver="$(cat "$GUEST_DIR/kernel-version" 2>/dev/null || true)"
        key="guest=$kver kernel-bytes=$(stat -c %s "$KERNEL") host=$(cat /proc/sys/kernel/osrelease)"
        cached="$(cat "$GUEST_DIR/accel-probe" 2>/dev/null || true)"
        if [ "${cached% result=*}" = "$key" ] && [ -n "$cached" ]; then
            ACCEL="${cached##* result=}"
        else
            echo "run-vm: probing whether KVM can run the guest" >&2
            make_initrd 'echo "@@VMTEST probe=ok"' "$WORK/probe.cpio"
            # A QEMU that aborts under KVM is an expected probe outcome: run it in a subshell so
            # bash's "Aborted" job notice does not reach the user.
            # shellcheck disable=SC2046
            ( timeout -k 5 30 "$QEMU" -M q35 $(accel_args kvm) -m 512M -smp 1 \
                -kernel "$KERNEL" -initrd "$WORK/probe.cpio" \
                -append "console=ttyS0 panic=-1 quiet" -nodefaults -display none \
                -serial stdio -no-reboot </dev/null > "$WORK/probe.log" 2>&1; exit $? ) 2>/dev/null || true
            echo "run-vm: KVM probe: $(grep -q '@@VMTEST probe=ok' "$WORK/probe.log" && echo booted || echo failed)" >&2
            if grep -q '@@VMTEST probe=ok' "$WORK/probe.log" \
                && ! grep -qE 'KVM internal error|emulation failure|failed to set MSR' "$WORK/probe.log"; then
                ACCEL=kvm
            else
                ACCEL=tcg
            fi
            echo "$key result=$ACCEL" > "$GUEST_DIR/accel-probe" 2>/dev/null || true
        fi
    fi
fi
case "$ACCEL" in kvm|tcg) ;; *) ACCEL=tcg ;; esac

# ---- the daemon
SOCK="$WORK/vhost-fs.sock"
case "$SOCK" in *,*) die "socket path $SOCK contains a comma" ;; esac
DARGS=("${SERVE_PREFIX[@]}" --socket-path "$SOCK" "${BACKEND_ARGS[@]}" --cache "$CACHE")
[ -n "$SANDBOX" ] && DARGS+=(--sandbox "$SANDBOX")
DARGS+=("${DAEMON_ARGS[@]}")
if [ -n "$DAX_WINDOW" ]; then
    # The generic device takes its configuration space (tag, queue count) from the daemon.
    DARGS+=(--dax-window "$DAX_WINDOW" --tag share --request-queues "$QUEUES")
    FS_DEVICE="vhost-user-test-device-pci,chardev=vfs0,virtio-id=26,num_vqs=$((QUEUES + 1)),vq_size=128,config_size=40"
else
    FS_DEVICE="vhost-user-fs-pci,chardev=vfs0,tag=share,num-request-queues=$QUEUES"
fi
"$DAEMON" "${DARGS[@]}" > "$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 1 500); do
    [ -S "$SOCK" ] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.02
done
if [ ! -S "$SOCK" ]; then
    cat "$WORK/daemon.log" >&2
    die "the daemon did not create $SOCK"
fi

# ---- the guest
echo "run-vm: booting (accel=$ACCEL, cache=$CACHE, share=${SHARED_DIR:-cephfs:$CEPH_VOLUME})" >&2
echo "run-vm: $("$QEMU" --version | head -1), guest kernel $(cat "$KERNEL_DIR/kernel-version" 2>/dev/null || echo "$KERNEL_VERSION"), queues=$QUEUES${DAX_WINDOW:+, dax window $DAX_WINDOW}${MOUNT_OPTS:+, mount -o $MOUNT_OPTS}" >&2
set +e
# shellcheck disable=SC2046
timeout -k 5 "$TIMEOUT" "$QEMU" -name run-vm -M q35,memory-backend=mem \
    -object "memory-backend-memfd,id=mem,size=${MEMORY}M,share=on" -m "${MEMORY}M" -smp "$SMP" \
    $(accel_args "$ACCEL") \
    -kernel "$KERNEL" -initrd "$WORK/initrd.cpio" \
    -append "console=ttyS0 panic=-1 quiet i8042.noaux=1 i8042.nokbd=1 vmtest.tag=share vmtest.mnt=/data${MOUNT_OPTS:+ vmtest.opts=$MOUNT_OPTS}" \
    -chardev "socket,id=vfs0,path=$SOCK" -device "$FS_DEVICE" \
    -nodefaults -display none -serial stdio -no-reboot </dev/null 2>"$WORK/qemu.err" \
    | tee "$WORK/serial.log" | awk '
        /@@VMTEST-EXIT / { on = 0; next }
        on { sub(/\r$/, ""); print; fflush() }
        /@@VMTEST-READY/ { on = 1 }'
QEMU_RC=${PIPESTATUS[0]}
set -e
QEMU_PID=""

EXIT_LINE="$(grep -a '@@VMTEST-EXIT ' "$WORK/serial.log" | tail -1 | tr -d '\r' || true)"
CMD_RC="${EXIT_LINE##*@@VMTEST-EXIT }"

DAEMON_RC=""
for _ in $(seq 1 500); do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        set +e; wait "$DAEMON_PID"; DAEMON_RC=$?; set -e
        break
    fi
    sleep 0.02
done
if [ -z "$DAEMON_RC" ]; then
    kill "$DAEMON_PID" 2>/dev/null || true
    DAEMON_RC="did not exit within 10 s (killed)"
fi
DAEMON_PID=""

echo "run-vm: accelerator: $ACCEL" >&2
fail=0
if grep -qaE 'KVM internal error|emulation failure|failed to set MSR' "$WORK/serial.log" "$WORK/qemu.err"; then
    echo "run-vm: KVM could not run the guest; use --accel tcg" >&2
    fail=1
fi
if [ -z "$EXIT_LINE" ]; then
    echo "run-vm: the guest did not finish the command (qemu status $QEMU_RC); serial log:" >&2
    tail -40 "$WORK/serial.log" >&2
    [ -s "$WORK/qemu.err" ] && { echo "run-vm: qemu stderr:" >&2; cat "$WORK/qemu.err" >&2; }
    fail=1
fi
if [ "$DAEMON_RC" = 0 ]; then
    echo "run-vm: daemon exited 0" >&2
else
    echo "run-vm: daemon exit status: $DAEMON_RC; its log:" >&2
    cat "$WORK/daemon.log" >&2
    fail=1
fi
if [ -n "$EXIT_LINE" ] && [ "$CMD_RC" != 0 ]; then
    echo "run-vm: command exited $CMD_RC" >&2
    case "$CMD_RC" in ''|*[!0-9]*) exit 1 ;; esac
    exit "$CMD_RC"
fi
exit "$fail"
