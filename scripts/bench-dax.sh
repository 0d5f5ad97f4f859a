#!/usr/bin/env bash
# DAX read bandwidth against FUSE READs of the same file, through the real daemon and the
# project's test VMM (vm-tests/src/bin/dax-bench.rs). Usage: scripts/bench-dax.sh [--size-mib N] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-guest
cargo build --release -p virtiofsd-kr -p vm-tests --bin dax-bench --bin virtiofsd-kr
export VIRTIOFSD_KR_BIN="$PWD/target/release/virtiofsd-kr"
exec target/release/dax-bench "$@"
