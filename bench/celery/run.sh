#!/usr/bin/env bash
# Run the Celery+Redis peer benchmark: ./run.sh [bench_celery.py options]
# e.g. ./run.sh --tasks 20000 --duration 10 --json
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
py="${PYTHON:-python3}"

log() { echo "[run.sh] $*" >&2; }

# 1. virtualenv with the pinned requirements (reinstalled when they change).
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$py" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing requirements"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
  echo "$want" > "$stamp"
fi

# 2. Redis on 127.0.0.1:6379 (started without persistence if not answering).
redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(timeout 3 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
  else
    "$venv/bin/python" -c 'import redis,sys; sys.exit(0 if redis.Redis(host="127.0.0.1",port=6379,socket_timeout=3).ping() else 1)' 2>/dev/null
  fi
}
if ! redis_up; then
  command -v redis-server >/dev/null 2>&1 || { log "redis-server not installed (apt-get install redis-server)"; exit 1; }
  log "starting redis-server on 127.0.0.1:6379 (no persistence)"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || { log "redis did not come up (see /var/log/redis/ci.log)"; exit 1; }
fi

# 3. The benchmark (it owns and flushes one Redis DB, 15 by default).
cd "$here"
exec "$venv/bin/python" "$here/bench_celery.py" "$@"
