#!/usr/bin/env bash
# The long fuzz run: every target in turn, in rounds, for FUZZ_TOTAL_SECONDS in all (default
# 3600), at the lowest priority (nice 19), one libFuzzer job at a time. Corpora persist in
# .cache/fuzz/corpus/TARGET (seeded from fuzz/seeds), findings land in
# .cache/fuzz/artifacts/TARGET, logs in .cache/fuzz/logs, and .cache/fuzz/summary.tsv gets one
# line per slice: time, target, seconds, executions, cov, ft, corpus size, exit code. The
# totals for docs/security.md: scripts/fuzz-long.sh --summary
#
# Usage: scripts/fuzz-long.sh [--summary] [TARGET...]
# Environment: FUZZ_TOTAL_SECONDS (3600), FUZZ_SLICE_SECONDS (300), FUZZ_RSS_MB (2048),
#              FUZZ_NO_BUILD (set: use the binaries already built)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
OUT="$REPO/.cache/fuzz"
SUMMARY="$OUT/summary.tsv"

if [ "${1:-}" = --summary ]; then
    [ -f "$SUMMARY" ] || { echo "no $SUMMARY yet" >&2; exit 1; }
    awk -F'\t' '{ ex[$2] += $4; s[$2] += $3; if ($5 > cov[$2]) cov[$2] = $5; if ($6 > ft[$2]) ft[$2] = $6;
                   if ($8 != 0) bad[$2]++ ; n[$2]++ }
         END { printf "%-16s %8s %12s %8s %8s %6s %s\n", "target", "seconds", "executions", "cov", "ft", "slices", "failed";
               for (t in ex) { printf "%-16s %8d %12d %8d %8d %6d %d\n", t, s[t], ex[t], cov[t], ft[t], n[t], bad[t]; te += ex[t] }
               printf "total executions: %d\n", te }' "$SUMMARY"
    exit 0
fi

TARGETS=(fuse_request fuse_session virtqueue journal_replay metrics_http docker_plugin)
[ "$#" -gt 0 ] && TARGETS=("$@")
TOTAL="${FUZZ_TOTAL_SECONDS:-3600}"
SLICE="${FUZZ_SLICE_SECONDS:-300}"
RSS_MB="${FUZZ_RSS_MB:-2048}"
BIN="$REPO/fuzz/target/x86_64-unknown-linux-gnu/release"
mkdir -p "$OUT/logs" "$OUT/shares"
# Shares and journals on a tmpfs where there is one (see fuzz-smoke.sh: an fsync on a busy disk
# can outlast libFuzzer's timeout and look like a hang).
if [ -z "${FUZZ_SHARE_DIR:-}" ]; then
    FUZZ_SHARE_DIR="$OUT/shares"
    [ -d /dev/shm ] && [ -w /dev/shm ] && FUZZ_SHARE_DIR=/dev/shm/vkr-fuzz-long-shares
fi
export FUZZ_SHARE_DIR
mkdir -p "$FUZZ_SHARE_DIR"

[ -n "${FUZZ_NO_BUILD:-}" ] || nice -n 19 cargo +nightly fuzz build -a

dict_of() {
    case "$1" in
        fuse_request|fuse_session) echo "$REPO/fuzz/dict/fuse.dict" ;;
        *) if [ -f "$REPO/fuzz/dict/$1.dict" ]; then echo "$REPO/fuzz/dict/$1.dict"; fi ;;
    esac
}

spent=0
while [ "$spent" -lt "$TOTAL" ]; do
    for t in "${TARGETS[@]}"; do
        [ "$spent" -lt "$TOTAL" ] || break
        slice=$(( TOTAL - spent < SLICE ? TOTAL - spent : SLICE ))
        corpus="$OUT/corpus/$t"; art="$OUT/artifacts/$t"
        mkdir -p "$corpus" "$art"
        cp -n "$REPO/fuzz/seeds/$t"/* "$corpus/" 2>/dev/null || true
        dict="$(dict_of "$t")"
        log="$OUT/logs/$t-$(date -u +%Y%m%dT%H%M%S).log"
        start=$(date +%s)
        set +e
        nice -n 19 "$BIN/$t" "$corpus" -max_total_time="$slice" -timeout=10 \
            -rss_limit_mb="$RSS_MB" -detect_leaks=1 -max_len=65536 -print_final_stats=1 \
            -artifact_prefix="$art/" ${dict:+-dict="$dict"} >"$log" 2>&1
        rc=$?
        set -e
        took=$(( $(date +%s) - start ))
        spent=$(( spent + took ))
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
        cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
        ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
        if [ -z "$execs" ]; then execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$last"); fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$took" "${execs:-0}" \
            "${cov:-0}" "${ft:-0}" "$(ls "$corpus" | wc -l)" "$rc" >>"$SUMMARY"
        if [ "$rc" != 0 ]; then
            echo "fuzz-long: $t exited $rc; see $log and $art" >&2
        fi
    done
done
"$0" --summary
