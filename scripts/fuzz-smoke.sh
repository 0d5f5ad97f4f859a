#!/usr/bin/env bash
# CI smoke of the fuzz targets (fuzz/, cargo-fuzz + libFuzzer on nightly): builds them once
# with AddressSanitizer and debug assertions, then runs each for a bounded time on a scratch
# copy of its committed seeds. Fails on a crash, a hang (-timeout), a leak or running out of
# memory, and prints the input and the command that reproduces it.
#
# Usage: scripts/fuzz-smoke.sh [TARGET...]     (default: every target)
# Environment: FUZZ_SECONDS (per target, default 30), FUZZ_RSS_MB (default 2048),
#              FUZZ_KEEP (set: keep the scratch corpora and logs)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

TARGETS=(fuse_request fuse_session virtqueue journal_replay metrics_http docker_plugin)
[ "$#" -gt 0 ] && TARGETS=("$@")
SECONDS_EACH="${FUZZ_SECONDS:-30}"
RSS_MB="${FUZZ_RSS_MB:-2048}"

command -v cargo-fuzz >/dev/null 2>&1 || { echo "fuzz-smoke: cargo-fuzz missing (scripts/setup.sh installs it)" >&2; exit 1; }
rustup run nightly rustc --version >/dev/null 2>&1 || { echo "fuzz-smoke: no nightly toolchain (scripts/setup.sh installs it)" >&2; exit 1; }

echo "== fuzz build (ASan, debug assertions)"
cargo +nightly fuzz build -a
BIN="$REPO/fuzz/target/x86_64-unknown-linux-gnu/release"

# Shares and journals on a tmpfs where there is one: the targets fsync (the journal), and on a
# busy disk one fsync took over libFuzzer's 10 s timeout (seen in the long run: a "timeout"
# whose input runs in 0.05 s; stack in Journal::compact's fsync), a false hang.
tmp=/tmp; [ -d /dev/shm ] && [ -w /dev/shm ] && tmp=/dev/shm
work="$(mktemp -d "$tmp/vkr-fuzz-smoke.XXXXXX")"
[ -n "${FUZZ_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
export FUZZ_SHARE_DIR="$work/shares"
mkdir -p "$FUZZ_SHARE_DIR"

dict_of() {
    case "$1" in
        fuse_request|fuse_session) echo "$REPO/fuzz/dict/fuse.dict" ;;
        *) if [ -f "$REPO/fuzz/dict/$1.dict" ]; then echo "$REPO/fuzz/dict/$1.dict"; fi ;;
    esac
}

failed=()
for t in "${TARGETS[@]}"; do
    [ -x "$BIN/$t" ] || { echo "fuzz-smoke: no binary for target $t" >&2; failed+=("$t"); continue; }
    corpus="$work/corpus/$t"; art="$work/artifacts/$t"; log="$work/$t.log"
    mkdir -p "$corpus" "$art"
    cp "$REPO/fuzz/seeds/$t"/* "$corpus/"
    dict="$(dict_of "$t")"
    echo "== fuzz $t (${SECONDS_EACH}s)"
    set +e
    "$BIN/$t" "$corpus" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb="$RSS_MB" \
        -detect_leaks=1 -max_len=65536 -print_final_stats=1 -artifact_prefix="$art/" \
        ${dict:+-dict="$dict"} >"$log" 2>&1
    rc=$?
    set -e
    grep -E '^#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb' "$log" | sed 's/^/   /' || true
    if [ "$rc" != 0 ]; then
        failed+=("$t")
        echo "fuzz-smoke: $t FAILED (exit $rc); last lines of its log:" >&2
        grep -v '^#[0-9]' "$log" | tail -n 40 >&2
        for a in "$art"/*; do
            [ -e "$a" ] || continue
            keep="$REPO/fuzz/artifacts/$t/$(basename "$a")"
            mkdir -p "$(dirname "$keep")"; cp "$a" "$keep"
            echo "fuzz-smoke: reproduce with: cargo +nightly fuzz run -a $t $keep" >&2
        done
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: ${#TARGETS[@]} targets, ${SECONDS_EACH}s each: no crash, hang or leak"
