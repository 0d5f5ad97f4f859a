#!/usr/bin/env bash
# A throw-away single-node Ceph cluster on 127.0.0.1 for the CephFS backend's tests: one mon,
# one memstore OSD, one MDS, one mgr, cephx on, a CephFS named "cephfs". Everything lives under
# one directory; no systemd, no other address than loopback.
#
# Releases: pacific (default; Debian bookworm's packages on the host) or reef (18.2, Debian
# trixie's packages in a debootstrapped root, .cache/reef-root, built by
# scripts/build-reef-root.sh; its daemons run chrooted there with the cluster directory bound
# in). Either way the clients (the daemon's libcephfs, the ceph CLI of the tests, ceph-fuse)
# are the host's Pacific ones.
#
# Usage: scripts/ceph-dev-cluster.sh [--release pacific|reef] start|stop|status|mds-stop|mds-start
#   start   install missing packages (apt-get update only if needed), create and start the
#           cluster, wait for an active MDS, print the start time and the conf path. A running
#           cluster is left alone (no-op, prints the conf path).
#   stop    kill the daemons by pid and remove the cluster directory's state (memstore keeps
#           nothing across restarts anyway).
#   status  print whether the cluster runs, `ceph mds stat` and `ceph fs ls`; exit 0 when up,
#           3 when not.
#   mds-stop   kill the MDS (SIGKILL: an outage, not a clean shutdown) and wait until it is
#              gone; the rest of the cluster keeps running. For outage tests.
#   mds-start  start the MDS again and wait until it is up:active (prints the seconds taken).
#   A running cluster of another release than the one asked for is stopped and started anew.
#
# Environment:
#   CEPH_DEV_DIR      cluster directory (default: <repo>/.cache/ceph)
#   CEPH_DEV_MEM_MB   memstore size in MiB (default 2048)
#   CEPH_DEV_PORT     monitor port on 127.0.0.1 (default 3300; one cluster per port)
#   CEPH_DEV_RELEASE  pacific or reef, like --release (the option wins)
#   CEPH_DEV_REEF_ROOT  the Reef root (default <repo>/.cache/reef-root)
#   CEPH_DEV_MIN_FREE_MB  free space the cluster directory's filesystem must have for `start`
#                     (default 256; the monitor's store grows to a few tens of MiB)
#
# Files in CEPH_DEV_DIR: ceph.conf, keyring (mon., client.admin and daemon keys), ceph.env,
# release (the running cluster's release), mon/ osd/ mds/ mgr/ data, log/, run/ (pid files,
# admin sockets).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${CEPH_DEV_DIR:-$REPO/.cache/ceph}"
MEM_MB="${CEPH_DEV_MEM_MB:-2048}"
PORT="${CEPH_DEV_PORT:-3300}"
CONF="$DIR/ceph.conf"
KEYRING="$DIR/keyring"
DAEMONS=(mon.a osd.0 mds.a mgr.x)
RELEASE="${CEPH_DEV_RELEASE:-pacific}"
REEF_ROOT="${CEPH_DEV_REEF_ROOT:-$REPO/.cache/reef-root}"
MIN_FREE_MB="${CEPH_DEV_MIN_FREE_MB:-256}"
case "$MIN_FREE_MB" in
    ''|*[!0-9]*) echo "ceph-dev-cluster: CEPH_DEV_MIN_FREE_MB must be a number of MiB, got '$MIN_FREE_MB'" >&2; exit 2 ;;
esac
ACTION=""
while [ $# -gt 0 ]; do
    case "$1" in
        --release) [ $# -ge 2 ] || { echo "ceph-dev-cluster: --release needs a value" >&2; exit 2; }
                   RELEASE="$2"; shift 2 ;;
        --release=*) RELEASE="${1#--release=}"; shift ;;
        *) [ -z "$ACTION" ] || { echo "ceph-dev-cluster: one action, got '$ACTION' and '$1'" >&2; exit 2; }
           ACTION="$1"; shift ;;
    esac
done
case "$RELEASE" in
    pacific|reef) ;;
    *) echo "ceph-dev-cluster: unknown release '$RELEASE' (pacific or reef)" >&2; exit 2 ;;
esac

log() { echo "ceph-dev-cluster: $*" >&2; }
die() { echo "ceph-dev-cluster: error: $*" >&2; exit 1; }

# Whatever fails under `set -e` says what and with which status before the script exits: a
# daemon that refuses to start (ceph-mon exits 28, ENOSPC, when its disk is full) used to
# end the script with that status and no word (its message goes to a stderr that is not the
# script's, or nowhere once it forks). Reports go to fd 7, the script's own stderr (a failing
# command's stderr may be a log file); the daemons do not inherit it (`server`), so a caller
# reading our stderr is not held open by them.
exec 7>&2
REPORTED=""
report_failure() {
    local rc=$1 what=$2 hint=""
    if [ "$rc" = 28 ]; then
        hint=" (ENOSPC: no space left; free on $DIR: \
$(df -h --output=avail "$DIR" 2>/dev/null | tail -n 1 | tr -d ' '))"
    fi
    echo "ceph-dev-cluster: error: '$what' failed with status $rc$hint; logs in $DIR/log/" >&7
    REPORTED=1
}
set -E
trap '[ -n "$REPORTED" ] || report_failure $? "line $LINENO: $BASH_COMMAND"' ERR

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

SUDO=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo"
    SUDO=(sudo -n)
fi

# ceph-fuse: the host mount scripts/bench.sh --backend cephfs compares against.
PACKAGES=(ceph-mon ceph-osd ceph-mds ceph-mgr ceph-common ceph-fuse libcephfs-dev librados-dev)

# Runs a cluster-side program (ceph-mon, ceph-osd, ceph-mds, ceph-mgr, monmaptool) of the
# chosen release: the host's for pacific; for reef, chrooted in the Reef root, in a private
# mount namespace with /proc, /dev and the cluster directory (at the same path) bound in. The
# daemons fork into the background and keep that namespace; their pid files land in $DIR/run.
server() {
    local rc=0
    if [ "$RELEASE" = pacific ]; then
        "$@" 7>&- || rc=$?
    else
        unshare -m --propagation private sh -c '
            r="$1"; d="$2"; shift 2
            mount -t proc proc "$r/proc"
            mount --bind /dev "$r/dev"
            mkdir -p "$r$d"
            mount --bind "$d" "$r$d"
            exec chroot "$r" "$@"' server "$REEF_ROOT" "$DIR" "$@" 7>&- || rc=$?
    fi
    [ "$rc" = 0 ] || report_failure "$rc" "$*"
    return "$rc"
}

installed() {
    dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        installed "$p" || missing+=("$p")
    done
    if [ "$RELEASE" = reef ]; then
        "$REPO/scripts/build-reef-root.sh"
    fi
    [ "${#missing[@]}" = 0 ] && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        "${SUDO[@]}" apt-get update >&2
        "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
}

pid_of() { # daemon name -> pid if alive
    local f="$DIR/run/$1.pid" pid
    [ -f "$f" ] || return 1
    pid="$(cat "$f" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

running() {
    local d
    for d in "${DAEMONS[@]}"; do
        pid_of "$d" >/dev/null || return 1
    done
}

# Every daemon but the MDS is running.
running_but_mds() {
    local d
    for d in "${DAEMONS[@]}"; do
        [ "$d" = mds.a ] && continue
        pid_of "$d" >/dev/null || return 1
    done
}

any_running() {
    local d
    for d in "${DAEMONS[@]}"; do
        pid_of "$d" >/dev/null && return 0
    done
    return 1
}

ceph_cmd() { timeout 20 ceph -c "$CONF" --connect-timeout 10 "$@"; }

mds_active() { ceph_cmd mds stat 2>/dev/null | grep 'up:active' | grep -vq laggy; }

# The cluster's total capacity as the monitor reports it (what statfs answers) is non-zero.
capacity_known() {
    ceph_cmd df -f json 2>/dev/null | grep -Eq '"total_bytes":[1-9]'
}

write_conf() {
    cat >"$CONF" <<EOF
[global]
fsid = $1
mon_host = v2:127.0.0.1:$PORT
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = $KEYRING
run_dir = $DIR/run
admin_socket = $DIR/run/\$cluster-\$name.asok
pid_file = $DIR/run/\$name.pid
log_file = $DIR/log/\$name.log
log_to_stderr = false
err_to_stderr = true
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_warn_on_pool_no_redundancy = false
paxos_propose_interval = 0.01
mon_tick_interval = 1
mds_beacon_interval = 1
osd_mon_report_interval = 1

[mon]
mon_data = $DIR/mon/\$cluster-\$id
mon_initial_members = a
# The monitor's own check is a whole percentage of the disk, truncated: on a 252 GB disk
# with 4.9 GB free (1.9 %, so "1") it refused to start even at 1 %. A dev cluster's monitor
# holds a few tens of MiB, so the check that matters is in bytes: start refuses below
# MIN_FREE_MB with its own message, and the monitor's percentage check is off.
mon_data_avail_crit = -1
mon_data_avail_warn = -1

[osd]
osd_data = $DIR/osd/\$cluster-\$id
osd_objectstore = memstore
memstore_device_bytes = $((MEM_MB * 1024 * 1024))
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64

[mds]
mds_data = $DIR/mds/\$cluster-\$id
mds_tick_interval = 0.05
mds_cap_revoke_eviction_timeout = 10

[mgr]
mgr_data = $DIR/mgr/\$cluster-\$id
mgr_disabled_modules = balancer crash devicehealth iostat nfs orchestrator pg_autoscaler progress rbd_support status telemetry volumes
EOF
}

# The release of the running (or last started) cluster.
running_release() { cat "$DIR/release" 2>/dev/null || echo pacific; }

start() {
    ensure_packages
    if any_running && [ "$(running_release)" != "$RELEASE" ]; then
        log "a $(running_release) cluster is running: stopping it to start $RELEASE"
        stop
    fi
    if running && mds_active; then
        log "already running"
        echo "$CONF"
        return 0
    fi
    # Only the MDS missing (an outage test stopped it): bring it back, keep the data.
    if running_but_mds && ! pid_of mds.a >/dev/null && [ -f "$DIR/ceph.env" ]; then
        mds_start
        echo "$CONF"
        return 0
    fi
    if any_running; then
        log "a partial cluster is running: stopping it first"
        stop
    fi
    # Another cluster (another checkout's, or a foreign process) on our port would make the
    # monitor fail to bind after 15 s of retries with nothing on the terminal: say so now.
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "127.0.0.1:$PORT is already in use (another checkout's dev cluster?). Stop it with its own 'scripts/ceph-dev-cluster.sh stop', or set CEPH_DEV_PORT to a free port."
    fi
    local t0 t1 fsid osd_uuid i free_mb
    t0=$(date +%s.%N)
    rm -rf "$DIR"
    mkdir -p "$DIR"/{mon/ceph-a,osd/ceph-0,mds/ceph-a,mgr/ceph-x,log,run}
    free_mb=$(( $(df -P -k "$DIR" | awk 'NR == 2 { print $4 }') / 1024 ))
    [ "$free_mb" -ge "$MIN_FREE_MB" ] || die "$free_mb MiB free on $DIR's filesystem, the \
cluster needs $MIN_FREE_MB MiB (CEPH_DEV_MIN_FREE_MB): free some space"
    fsid="$(cat /proc/sys/kernel/random/uuid)"
    osd_uuid="$(cat /proc/sys/kernel/random/uuid)"
    write_conf "$fsid"

    ceph-authtool --create-keyring "$KEYRING" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$KEYRING" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$KEYRING" --gen-key -n osd.0 \
        --cap mon 'allow profile osd' --cap osd 'allow *' --cap mgr 'allow profile osd' >/dev/null
    ceph-authtool "$KEYRING" --gen-key -n mds.a \
        --cap mon 'allow profile mds' --cap osd 'allow *' --cap mds 'allow' --cap mgr 'allow profile mds' >/dev/null
    ceph-authtool "$KEYRING" --gen-key -n mgr.x \
        --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' >/dev/null
    chmod 600 "$KEYRING"

    echo "$RELEASE" > "$DIR/release"
    server monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$PORT]" "$DIR/monmap" >/dev/null
    server ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$KEYRING" 2>>"$DIR/log/setup.log"
    server ceph-mon -c "$CONF" -i a 9>&- 2>>"$DIR/log/setup.log"

    # The OSD key goes in the shared keyring; register the OSD id, then the pools and the fs.
    ceph_cmd osd new "$osd_uuid" 0 >/dev/null
    ceph_cmd osd pool create cephfs_metadata 8 8 >/dev/null 2>&1
    ceph_cmd osd pool create cephfs_data 8 8 >/dev/null 2>&1
    ceph_cmd fs new cephfs cephfs_metadata cephfs_data >/dev/null 2>&1
    ceph_cmd auth import -i "$KEYRING" >/dev/null 2>&1

    server ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" 2>>"$DIR/log/setup.log" >/dev/null
    server ceph-osd -c "$CONF" -i 0 9>&- 2>>"$DIR/log/setup.log"
    server ceph-mds -c "$CONF" -i a 9>&- 2>>"$DIR/log/setup.log" >/dev/null
    server ceph-mgr -c "$CONF" -i x 9>&- 2>>"$DIR/log/setup.log"

    for i in $(seq 1 600); do
        if mds_active; then
            break
        fi
        sleep 0.1
    done
    mds_active || die "no active MDS after 60 s; logs in $DIR/log"
    # The mgr daemon may still be writing its pid file.
    for i in $(seq 1 100); do
        running && break
        sleep 0.1
    done
    running || die "a daemon is not running; logs in $DIR/log"
    # Ready means usable: until the OSD's capacity has reached the monitor through the mgr,
    # statfs (and so `df` in a guest) reports a filesystem of 0 blocks.
    for i in $(seq 1 300); do
        capacity_known && break
        sleep 0.1
    done
    capacity_known || die "the cluster reports no capacity after 30 s; logs in $DIR/log"
    t1=$(date +%s.%N)
    cat >"$DIR/ceph.env" <<EOF
CEPH_CONF=$CONF
CEPH_KEYRING=$KEYRING
EOF
    log "started $RELEASE ($(ceph_cmd versions 2>/dev/null | grep -o 'ceph version [0-9.]*' | sort -u | tr '\n' ' ' | sed 's/ $//' || true)) in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
    echo "$CONF"
}

stop() {
    local d pid
    for d in "${DAEMONS[@]}"; do
        if pid="$(pid_of "$d")"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for d in "${DAEMONS[@]}"; do
        if pid="$(pid_of "$d")"; then
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
    done
    if [ -d "$DIR" ]; then
        rm -rf "$DIR"/{mon,osd,mds,mgr,run} "$DIR/ceph.env" "$DIR/release"
    fi
    log "stopped"
}

status() {
    local d pid up=1
    for d in "${DAEMONS[@]}"; do
        if pid="$(pid_of "$d")"; then
            echo "$d: running (pid $pid)"
        else
            echo "$d: not running"
            up=0
        fi
    done
    echo "release: $(running_release)"
    if [ "$up" = 1 ]; then
        ceph_cmd mds stat 2>/dev/null || true
        ceph_cmd fs ls 2>/dev/null || true
        echo "conf: $CONF"
        mds_active && return 0
    fi
    return 3
}

mds_stop() {
    local pid
    pid="$(pid_of mds.a)" || die "the MDS is not running"
    kill -KILL "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "the MDS (pid $pid) did not exit"
    rm -f "$DIR/run/mds.a.pid" 2>/dev/null || true
    # Tell the monitors now, as an operator would: otherwise the map calls the dead MDS
    # up:active until its beacon grace runs out, and mds-start could return before the new
    # one is active.
    ceph_cmd mds fail a >/dev/null 2>&1 || true
    log "mds.a stopped"
}

mds_start() {
    local t0 t1
    pid_of mds.a >/dev/null && { log "mds.a already running"; return 0; }
    running_but_mds || die "the cluster is not running: start it first"
    t0=$(date +%s.%N)
    RELEASE="$(running_release)"
    server ceph-mds -c "$CONF" -i a 9>&- 2>>"$DIR/log/setup.log" >/dev/null
    for _ in $(seq 1 1200); do
        mds_active && break
        sleep 0.1
    done
    mds_active || die "no active MDS 120 s after restarting it; logs in $DIR/log"
    t1=$(date +%s.%N)
    log "mds.a active again after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
}

# Serialise concurrent callers (tests may start the cluster from several processes).
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
command -v flock >/dev/null 2>&1 && flock 9

case "$ACTION" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    mds-stop) mds_stop ;;
    mds-start) mds_start ;;
    -h|--help) usage ;;
    *) usage >&2; exit 2 ;;
esac
