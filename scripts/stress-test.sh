#!/usr/bin/env bash
# Runs one test command again and again while busy loops keep every core occupied, and counts
# passes and failures: a test whose outcome depends on the timing between two processes or
# threads (nothing ordering them) passes on a quiet machine and fails here, as it would on a
# loaded CI machine (2 cores, guests under TCG, other test binaries beside it).
#
# Usage: scripts/stress-test.sh [-n RUNS] [-j LOOPS] [-t SECONDS] -- COMMAND [ARGS...]
#   -n RUNS     how many times COMMAND runs (default 20)
#   -j LOOPS    busy loops beside it (default: one per core)
#   -t SECONDS  the most the busy loops (and the runs) may last (default 600); a run started
#               later is not started, and the loops end by themselves at this limit even if
#               this script is killed
# Example (build first, so no compiler runs under the load):
#   cargo test --release -p virtiofsd-kr --test sandbox --no-run
#   scripts/stress-test.sh -n 20 -- cargo test --release -p virtiofsd-kr --test sandbox \
#       -- supervisor_forwards
# Everything runs under `nice -n 10`, the busy loops too, so a shared machine stays usable.
# Exit status: 0 if every run passed, 1 otherwise. Each failing run's output is kept in
# $STRESS_LOG_DIR (default: a temporary directory, printed).
set -euo pipefail

runs=20
loops=$(nproc)
budget=600
while getopts "n:j:t:" opt; do
    case "$opt" in
        n) runs=$OPTARG ;;
        j) loops=$OPTARG ;;
        t) budget=$OPTARG ;;
        *) echo "usage: $0 [-n RUNS] [-j LOOPS] [-t SECONDS] -- COMMAND [ARGS...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[[ ${1:-} == -- ]] && shift
if [[ $# -eq 0 ]]; then
    echo "usage: $0 [-n RUNS] [-j LOOPS] [-t SECONDS] -- COMMAND [ARGS...]" >&2
    exit 2
fi
logs=${STRESS_LOG_DIR:-$(mktemp -d /tmp/stress-test.XXXXXX)}
mkdir -p "$logs"

busy=()
stop_loops() {
    for pid in "${busy[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${busy[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_loops EXIT
for _ in $(seq "$loops"); do
    # `timeout` bounds each loop even if this script dies without running its trap.
    timeout "$budget" nice -n 10 sh -c 'while :; do :; done' &
    busy+=("$!")
done

end=$((SECONDS + budget))
passed=0
failed=0
for i in $(seq "$runs"); do
    if ((SECONDS >= end)); then
        echo "time budget of ${budget}s used up after $((i - 1)) runs" >&2
        break
    fi
    if nice -n 10 "$@" >"$logs/run-$i.log" 2>&1; then
        passed=$((passed + 1))
        rm -f "$logs/run-$i.log"
    else
        failed=$((failed + 1))
        echo "run $i failed: $logs/run-$i.log" >&2
    fi
done
echo "under $loops busy loop(s): $passed passed, $failed failed ($*)"
[[ $failed -eq 0 ]]
