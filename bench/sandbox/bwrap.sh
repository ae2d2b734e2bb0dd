#!/usr/bin/env bash
# Sandbox start-up, side by side: Strata's cold `run` of `true`, warm-pool run
# and persistent `exec` (on the layer and through the HTTP API), bubblewrap
# running `true` with the same namespaces (user, pid, net, ipc, uts, cgroup)
# and binds (/usr read-only, /proc, /dev, tmpfs /tmp and /workspace), and a
# bare fork/exec of `true` as the floor — all timed by the same loop in one
# process, over the same number of runs — plus the density of idle persistent
# sandboxes. Prints p50/p99 and the ratios (`strata bench sandbox --compare`).
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
nice -n 19 cargo build --release -q -p strata-cli --bins
"$CARGO_TARGET_DIR/release/strata" bench sandbox --runs "$runs" --compare
