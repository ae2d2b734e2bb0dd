#!/usr/bin/env bash
# Strata and Celery 5 + Redis on the same machine, one after the other, with the
# ratio of each figure: ./bench/compare.sh [--tasks N] [--duration S] [--batch N] [--database URL]
# Needs a release build of strata (built here if missing) and Redis (run.sh starts it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
tasks=20000 duration=10 batch=32 database=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) tasks="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --database) database=(--database "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
strata="$root/target/release/strata"
[ -x "$strata" ] || (cd "$root" && cargo build --release -p strata-cli)
out="$(mktemp -d)"
echo "[compare] strata: $tasks tasks, ${duration}s phases, batch $batch" >&2
"$strata" bench tasks --agents 8 --tasks "$tasks" --duration "${duration}s" --batch "$batch" \
  --rate 1000 "${database[@]}" --json > "$out/strata.json"
echo "[compare] celery: same workload" >&2
"$here/celery/run.sh" --tasks "$tasks" --duration "$duration" --workers 8 --json > "$out/celery.json"
python3 - "$out/strata.json" "$out/celery.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
c = json.load(open(sys.argv[2]))
rows = [
    ("burn-down, tasks/s", s.get("burn_down_tasks_per_sec"), c.get("burn_down_tasks_per_sec"), True),
    ("sustained, tasks/s", s.get("sustained_tasks_per_sec"), c.get("sustained_tasks_per_sec"), True),
    ("p50 submit->lease/start at 1000/s, ms", s.get("p50_submit_to_lease_ms"), c.get("p50_submit_to_start_ms"), False),
    ("p99 submit->lease/start at 1000/s, ms", s.get("p99_submit_to_lease_ms"), c.get("p99_submit_to_start_ms"), False),
]
print(f"{'measure':<40} {'strata':>10} {'celery':>10} {'strata vs celery':>16}")
for name, a, b, higher in rows:
    if not (a and b):
        ratio = "-"
    elif higher:
        ratio = f"{a / b:.2f}x"
    else:
        ratio = f"{b / a:.1f}x lower"
    print(f"{name:<40} {a!s:>10} {b!s:>10} {ratio:>16}")
print("Strata: durable SQLite/PostgreSQL commits, every transition audited;"
      " Celery: Redis without persistence (see bench/celery/README.md).")
PY
