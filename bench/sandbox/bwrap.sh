#!/usr/bin/env bash
# Sandbox start-up, side by side: Strata's cold `run` of `true` and persistent
# `exec`, bubblewrap running `true` with the same namespaces (user, pid, net,
# ipc, uts, cgroup) and binds (/usr read-only, /proc, /dev, tmpfs /tmp and
# /workspace), and a bare fork/exec of `true` as the floor — all timed by the
# same loop in one process, over the same number of runs. Prints p50/p99 and
# the ratios.
#
#   bench/sandbox/bwrap.sh [RUNS]        (default 500; needs root and bwrap)
#
# bubblewrap is Debian's `bubblewrap` package: apt-get install bubblewrap.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-500}"
if ! command -v bwrap >/dev/null; then
  echo "bwrap is not installed: apt-get install bubblewrap" >&2
  exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
nice -n 19 cargo build --release -q -p strata-compute --bins --example bench_sandbox
"$CARGO_TARGET_DIR/release/examples/bench_sandbox" --runs "$runs" --compare
