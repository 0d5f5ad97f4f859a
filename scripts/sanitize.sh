#!/usr/bin/env bash
# The frontend hostile suite against the daemon built with AddressSanitizer: the hand-written
# hostile requests and descriptor chains of virtiofsd-kr/tests/frontend.rs and the handle,
# open-flag and inode-count attacks of virtiofsd-kr/tests/hostile_handles.rs, through the
# project's test VMM (vm_tests::frontend), each daemon they start being the ASan build.
#
# The daemon is built on nightly with -Zsanitizer=address, debug assertions (integer overflow
# panics) and frame pointers, for the explicit target (so build scripts and proc macros are
# not instrumented) in its own target directory (target/asan, so the normal build is not
# thrown away); the tests themselves are the ordinary stable release build. The harness
# (virtiofsd-kr/tests/common/mod.rs) gives each daemon ASAN_OPTIONS that make the first error
# fatal (exit 86), checks leaks where LeakSanitizer can run (--sandbox none with
# --seccomp none|log), stops daemons with SIGTERM, and fails the test on a sanitizer report, a
# panic or exit status 86 (docs/security.md, "Sanitizer run").
#
# Usage: scripts/sanitize.sh [cargo test filter and args after --]
# A report from a confined daemon is unsymbolized: symbolize it with
#   llvm-symbolizer --obj=target/asan/x86_64-unknown-linux-gnu/release/virtiofsd-kr 0xOFFSET
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
DIR=target/asan
BIN="$PWD/$DIR/$TARGET/release/virtiofsd-kr"

rustup run nightly rustc --version >/dev/null 2>&1 \
    || { echo "sanitize: no nightly toolchain (scripts/setup.sh installs it); the sanitized run cannot run" >&2; exit 1; }

echo "== sanitize: build the daemon with AddressSanitizer (nightly, $DIR)"
RUSTFLAGS="-Zsanitizer=address -Cdebug-assertions=on -Cforce-frame-pointers=yes" \
    cargo +nightly build --release -p virtiofsd-kr --bin virtiofsd-kr \
    --target "$TARGET" --target-dir "$DIR"

# Never pass with an uninstrumented daemon: the ASan runtime must answer for itself.
# (Captured first: grep -q stopping early would give the binary SIGPIPE and fail the pipe.)
runtime_help="$(ASAN_OPTIONS=help=1 "$BIN" --version 2>&1 || true)"
if ! grep -q "Available flags for AddressSanitizer" <<<"$runtime_help"; then
    echo "sanitize: $BIN has no AddressSanitizer runtime" >&2
    exit 1
fi

echo "== sanitize: frontend hostile suite against the ASan daemon"
export VIRTIOFSD_KR_SANITIZED_BIN="$BIN"
cargo test --release -p virtiofsd-kr --test frontend --test hostile_handles "$@"
echo "sanitize: frontend and hostile_handles passed against the AddressSanitizer daemon"
