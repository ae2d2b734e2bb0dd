#!/usr/bin/env python3
"""Peer benchmark: Celery 5 (prefork pool) with a Redis broker, measured the
same way `strata bench tasks` measures Strata's task queue.

Workloads (no-op tasks: the task body returns its input)
--------------------------------------------------------
1. burn-down  -- N tasks (--tasks) are enqueued on queue ``bench`` while the
   worker only consumes a warm-up queue.  The worker is then told (remote
   control ``add_consumer``) to consume ``bench``; the clock starts just
   before that command and stops when the N-th completion is counted.
   Reported: completions/s.
2. sustained  -- --submitters processes call ``apply_async`` as fast as they
   can for --duration seconds while the worker consumes.  Reported:
   completions/s counted inside that window (the backlog left when the window
   closes is reported too, then drained or purged before the next phase).
3. latency    -- --submitters processes together offer a fixed --rate
   (tasks/s, evenly interleaved) for --duration seconds.  Each task carries
   its submit time (``time.time()`` just before ``apply_async``); the task
   body pushes ``time.time() - submitted`` (ms) onto a Redis list when it
   *starts*.  Reported: p50/p99 submit-to-start latency and the offered rate
   actually achieved.

How completions are counted
---------------------------
A Redis counter (``INCR bench:done``) bumped by a ``task_success`` signal
handler in the worker child.  Celery sends that signal *after* the result has
been written to the result backend, so a counted task is a finished task
whose result is stored.  The driver only polls ``GET bench:done`` (every
20 ms), so it never fetches results one by one and result collection is not
the bottleneck.  Cost: one extra Redis round trip per task inside the worker,
i.e. the figures are slightly pessimistic for Celery (a few percent).
Task results ARE stored (Redis result backend, Celery's default behaviour when
a backend is configured) unless --no-results is given; the driver itself runs
with no result backend so it does not subscribe to per-task result channels.

Celery configuration (throughput-leaning, all documented here)
--------------------------------------------------------------
* pool: prefork, concurrency = --workers (default 8)
* worker_prefetch_multiplier = --prefetch (default 32): each worker process
  may have up to 32 reserved messages, i.e. 256 in flight for 8 processes
  (Celery's default is 4; larger helps tiny tasks, hurts fairness)
* -O default (not ``fair``): the main process writes reserved tasks to child
  pipes ahead of time, which helps throughput of very short tasks; use
  --optimization fair to compare
* --without-gossip --without-mingle --without-heartbeat, no task events,
  task_track_started off: less broker chatter
* broker and result backend: Redis DB --redis-db (default 15), FLUSHDB'd
  before and after the run (only that DB is touched)

Durability: NOT comparable with Strata, stated plainly
-------------------------------------------------------
Strata commits every task transition (enqueue, start, finish) durably before
acknowledging it.  This Celery setup does not:
* Redis here runs with ``--save "" --appendonly no``: no persistence at all;
  a Redis restart loses every queued task and every result.
* task_acks_late = False (Celery's default; --acks-late flips it): a message
  is acknowledged when the worker hands it to a pool process, before it runs;
  a worker crash loses the tasks it had accepted.
* results expire (result_expires = 1 day, Celery's default).
Even with --acks-late and Redis AOF ``appendfsync always`` Celery would not
fsync per transition the way Strata does.  The comparison therefore sets a
durable system against a volatile one; ratios must be read with that caveat.

Measurement caveats
-------------------
Driver, submitters, worker and Redis share the same (2-core) machine, so the
figures include the client's own cost and contend with whatever else runs.
Python submitters cap the offered load in the sustained phase; the report
gives submitted/s next to completed/s so this is visible.

Usage: ./run.sh [--tasks 20000] [--duration 10] [--workers 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from celery import Celery, signals

# ---------------------------------------------------------------------------
# Shared configuration (driver, submitters and worker all import this module;
# the worker gets its settings through the environment).
# ---------------------------------------------------------------------------

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "15"))
BROKER = f"{REDIS_URL.rstrip('/')}/{REDIS_DB}"
ROLE = os.environ.get("BENCH_ROLE", "driver")
STORE_RESULTS = os.environ.get("BENCH_STORE_RESULTS", "1") == "1"

QUEUE = "bench"
WARM_QUEUE = "bench-warm"
DONE_KEY = "bench:done"
FAIL_KEY = "bench:failed"
LAT_KEY = "bench:lat"

app = Celery("bench_celery", broker=BROKER)
app.conf.update(
    # Only the worker stores results; the driver has no backend, so
    # apply_async does not SUBSCRIBE to a result channel per task.
    result_backend=BROKER if (ROLE == "worker" and STORE_RESULTS) else None,
    task_ignore_result=not STORE_RESULTS,
    task_acks_late=os.environ.get("BENCH_ACKS_LATE", "0") == "1",
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "32")),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_track_started=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=5,
    broker_transport_options={"visibility_timeout": 3600},
)

_redis_client = None
_redis_pid = None


def rds():
    """A redis-py client for this process (re-created after fork)."""
    global _redis_client, _redis_pid
    if _redis_client is None or _redis_pid != os.getpid():
        import redis

        _redis_client = redis.Redis.from_url(BROKER, socket_timeout=30, socket_connect_timeout=5)
        _redis_pid = os.getpid()
    return _redis_client


@app.task(name="bench.noop")
def noop(x):
    return x


@app.task(name="bench.stamp")
def stamp(submitted):
    rds().rpush(LAT_KEY, (time.time() - submitted) * 1000.0)
    return submitted


@signals.task_success.connect
def _count_success(sender=None, **_kw):
    # Fired in the pool process after the result is stored.
    if sender is not None and sender.name.startswith("bench."):
        rds().incr(DONE_KEY)


@signals.task_failure.connect
def _count_failure(sender=None, **_kw):
    if sender is not None and sender.name.startswith("bench."):
        rds().incr(FAIL_KEY)


@signals.worker_ready.connect
def _parent_watchdog(**_kw):
    """In the worker's main process: exit if the driver disappears (e.g. it
    was SIGKILLed) or the maximum lifetime passes, so no worker is left
    behind."""
    parent = int(os.environ.get("BENCH_PARENT_PID", "0"))
    max_life = float(os.environ.get("BENCH_WORKER_MAX_SECONDS", "0"))
    if not parent:
        return
    started = time.monotonic()

    def watch():
        while True:
            time.sleep(1.0)
            orphaned = os.getppid() != parent
            expired = max_life and time.monotonic() - started > max_life
            if orphaned or expired:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(15)
                os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="bench-watchdog", daemon=True).start()


# ---------------------------------------------------------------------------
# Submitter processes (spawned, so each has its own broker connection).
# ---------------------------------------------------------------------------


def _submitter(idx, count, mode, n_tasks, rate, duration, go, t0, ready_q, result_q):
    """mode 'fill': send n_tasks noop tasks; 'flood': send noops until
    t0+duration; 'paced': together with the other count-1 submitters offer
    `rate` stamp tasks/s -- this one sends slots idx, idx+count, ... of the
    schedule t0 + slot/rate, so the load is evenly interleaved.  A paced
    submitter that falls behind sends as fast as it can but still stops at
    t0+duration, so the achieved rate shows the shortfall."""
    parent = os.getppid()
    try:
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=3)
            ready_q.put(idx)
            if not go.wait(60):
                result_q.put((idx, 0, 0.0, 0.0, "no go signal"))
                return
            start = t0.value
            end = start + duration
            sent = 0
            max_lag = 0.0
            now = time.time()
            while now < start:
                time.sleep(start - now)
                now = time.time()
            if mode == "fill":
                for i in range(n_tasks):
                    if i % 1000 == 0 and os.getppid() != parent:
                        return  # the driver is gone
                    noop.apply_async((i,), queue=QUEUE, producer=producer)
                sent = n_tasks
            elif mode == "flood":
                while time.time() < end:
                    noop.apply_async((sent,), queue=QUEUE, producer=producer)
                    sent += 1
            else:  # paced
                interval = 1.0 / rate
                slot = idx
                while True:
                    due = start + slot * interval
                    now = time.time()
                    if due >= end or now >= end:
                        break
                    if due > now:
                        time.sleep(due - now)
                    else:
                        max_lag = max(max_lag, now - due)
                    stamp.apply_async((time.time(),), queue=QUEUE, producer=producer)
                    sent += 1
                    slot += count
            result_q.put((idx, sent, max_lag, time.time(), None))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # reported to the driver
        result_q.put((idx, 0, 0.0, 0.0, repr(exc)))


def run_submitters(mode, count, *, n_tasks=0, rate=0.0, duration=0.0, timeout=600.0,
                   sample_at_end=False):
    """Start `count` submitters, wait until all are connected, release them at
    the same instant t0.  Returns a dict: t0, sent, max_lag (s), last (time
    the last submitter finished) and, with sample_at_end, done_at_end and
    backlog_at_end read by a driver thread at exactly t0+duration."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    t0 = ctx.Value("d", 0.0)
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    per = [n_tasks // count + (1 if i < n_tasks % count else 0) for i in range(count)]
    procs = [
        ctx.Process(
            target=_submitter,
            args=(i, count, mode, per[i], rate, duration, go, t0, ready_q, result_q),
            daemon=True,
        )
        for i in range(count)
    ]
    out = {}
    sampler = None
    try:
        for p in procs:
            p.start()
        for _ in procs:
            ready_q.get(timeout=60)
        out["t0"] = t0.value = time.time() + 0.05
        go.set()
        if sample_at_end:
            def sample():
                time.sleep(max(0.0, out["t0"] + duration - time.time()))
                out["done_at_end"] = done_count()
                out["backlog_at_end"] = queue_len()
                out["sampled_at"] = time.time()

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        results = []
        deadline = time.monotonic() + timeout
        while len(results) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{mode} submitters did not finish in {timeout:.0f}s")
            results.append(result_q.get(timeout=left))
        errors = [r[4] for r in results if r[4]]
        if errors:
            raise RuntimeError(f"submitter failed: {errors[0]}")
        if sampler is not None:
            sampler.join(timeout=30)
        out.update(
            sent=sum(r[1] for r in results),
            max_lag=max(r[2] for r in results),
            last=max(r[3] for r in results),
        )
        return out
    finally:
        for p in procs:
            if out.get("last") is not None:  # finished normally: let it exit
                p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def log(msg):
    print(f"[bench-celery {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_duration(text):
    text = str(text).strip().lower()
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * mult
    return float(text)


def done_count():
    return int(rds().get(DONE_KEY) or 0)


def wait_done(target, timeout, what):
    """Poll the completion counter until it reaches target.  Returns the time
    (time.time()) at which it was seen to do so, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done_count() >= target:
            return time.time()
        time.sleep(0.02)
    failed = int(rds().get(FAIL_KEY) or 0)
    log(f"timeout waiting for {what}: {done_count()}/{target} done, {failed} failed")
    return None


def queue_len(name=QUEUE):
    return int(rds().llen(name))


def purge(name=QUEUE):
    with app.connection_for_write() as conn:
        return conn.default_channel.queue_purge(name) or 0


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


class Worker:
    """The Celery worker subprocess; stop() is idempotent and always kills it."""

    def __init__(self, args, logdir):
        self.node = f"bench-{os.getpid()}@{socket.gethostname()}"
        self.logfile = os.path.join(logdir, "worker.log")
        env = dict(os.environ)
        here = os.path.dirname(os.path.abspath(__file__))
        env.update(
            BENCH_ROLE="worker",
            BENCH_REDIS_URL=REDIS_URL,
            BENCH_REDIS_DB=str(REDIS_DB),
            BENCH_STORE_RESULTS="1" if STORE_RESULTS else "0",
            BENCH_ACKS_LATE="1" if args.acks_late else "0",
            BENCH_PREFETCH=str(args.prefetch),
            BENCH_PARENT_PID=str(os.getpid()),
            # Safety net only (the main one is the parent-death check).
            BENCH_WORKER_MAX_SECONDS=str(
                3 * args.max_runtime + 2 * args.drain_timeout + 4 * args.duration + 300
            ),
            PYTHONPATH=here + os.pathsep + env.get("PYTHONPATH", ""),
        )
        cmd = [
            sys.executable, "-m", "celery", "-A", "bench_celery", "worker",
            "-P", "prefork", "-c", str(args.workers), "-O", args.optimization,
            "-Q", WARM_QUEUE, "-n", self.node, "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        self._log = open(self.logfile, "wb")
        self.proc = subprocess.Popen(
            cmd, cwd=here, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; log: {self.logfile}\n{self.tail()}")
            replies = app.control.ping(destination=[self.node], timeout=1.0)
            if any(self.node in r for r in replies):
                return
        raise TimeoutError(f"worker not ready after {timeout}s; log: {self.logfile}\n{self.tail()}")

    def add_consumer(self, queue):
        replies = app.control.add_consumer(queue, destination=[self.node], reply=True, timeout=5.0)
        if not any(self.node in r for r in replies):
            raise RuntimeError(f"worker did not confirm add_consumer({queue}): {replies}")

    def tail(self, n=30):
        try:
            with open(self.logfile, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # warm shutdown
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:  # whatever is left of the group (pool children included)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def phase_burn_down(args, worker, res):
    n = args.tasks
    log(f"burn-down: enqueuing {n} tasks on '{QUEUE}' (worker not consuming it yet)")
    base = done_count()
    r = run_submitters("fill", args.submitters, n_tasks=n, timeout=args.max_runtime)
    sent, fill_s = r["sent"], r["last"] - r["t0"]
    qlen = queue_len()
    log(f"burn-down: enqueued {sent} in {fill_s:.1f}s ({sent / fill_s:.0f}/s); queue length {qlen}")
    if qlen != n:
        raise RuntimeError(f"queue holds {qlen} messages, expected {n} (worker consumed early?)")
    t0 = time.time()
    worker.add_consumer(QUEUE)
    end = wait_done(base + n, args.max_runtime, "burn-down")
    if end is None:
        raise TimeoutError("burn-down did not finish")
    secs = end - t0
    res.update(
        burn_down_tasks_per_sec=round(n / secs, 1),
        burn_down_seconds=round(secs, 3),
        burn_down_enqueue_per_sec=round(sent / fill_s, 1),
    )
    log(f"burn-down: {n} tasks in {secs:.2f}s = {n / secs:.0f} tasks/s")


def drain(expected_total, what, args):
    """Wait for the backlog to be consumed; purge if it takes too long."""
    end = wait_done(expected_total, args.drain_timeout, what)
    if end is None:
        purged = purge()
        log(f"{what}: purged {purged} queued tasks after {args.drain_timeout:.0f}s drain timeout")
        time.sleep(1.0)  # let in-flight tasks finish
        return False
    return True


def phase_sustained(args, worker, res):
    log(f"sustained: {args.submitters} submitters flooding for {args.duration:.0f}s")
    base = done_count()
    r = run_submitters(
        "flood", args.submitters, duration=args.duration, timeout=args.duration + 120,
        sample_at_end=True,
    )
    # Completions inside the window: a driver thread read the counter (and
    # the queue length) at t0+duration.
    sent = r["sent"]
    window = r["sampled_at"] - r["t0"]
    completed = r["done_at_end"] - base
    backlog = r["backlog_at_end"]
    res.update(
        sustained_tasks_per_sec=round(completed / window, 1),
        sustained_submitted_per_sec=round(sent / args.duration, 1),
        sustained_backlog_at_end=backlog,
        sustained_window_seconds=round(window, 3),
    )
    log(
        f"sustained: submitted {sent} ({sent / args.duration:.0f}/s), completed {completed} "
        f"in {window:.2f}s = {completed / window:.0f} tasks/s; backlog {backlog}"
    )
    res["sustained_drained"] = drain(base + sent, "sustained drain", args)


def phase_latency(args, worker, res):
    log(f"latency: offering {args.rate:.0f} tasks/s for {args.duration:.0f}s ({args.submitters} submitters)")
    rds().delete(LAT_KEY)
    base = done_count()
    r = run_submitters(
        "paced", args.submitters, rate=args.rate, duration=args.duration,
        timeout=args.duration + 120, sample_at_end=True,
    )
    sent, max_lag = r["sent"], r["max_lag"]
    window = r["sampled_at"] - r["t0"]
    completed_rate = (r["done_at_end"] - base) / window
    saturated = completed_rate < 0.9 * sent / args.duration
    drained = drain(base + sent, "latency drain", args)
    if not drained:
        log("latency: WARNING the backlog was purged, so the slowest tasks are missing from the percentiles")
    vals = sorted(float(v) for v in rds().lrange(LAT_KEY, 0, -1))
    res.update(
        offered_rate=args.rate,
        offered_rate_achieved=round(sent / args.duration, 1),
        latency_phase_completed_per_sec=round(completed_rate, 1),
        latency_worker_saturated=saturated,
        submitter_max_lag_ms=round(max_lag * 1000, 2),
        latency_samples=len(vals),
        latency_drained=drained,
        p50_submit_to_start_ms=round(pct(vals, 50), 3),
        p90_submit_to_start_ms=round(pct(vals, 90), 3),
        p99_submit_to_start_ms=round(pct(vals, 99), 3),
        max_submit_to_start_ms=round(vals[-1], 3) if vals else None,
    )
    log(
        f"latency: {len(vals)} samples, p50 {pct(vals, 50):.2f} ms, p99 {pct(vals, 99):.2f} ms "
        f"(achieved {sent / args.duration:.0f}/s, max submitter lag {max_lag * 1000:.1f} ms)"
    )
    if saturated:
        log(
            f"latency: the worker completed only {completed_rate:.0f}/s of the offered load, so "
            "these latencies are mostly queueing delay (try a lower --rate)"
        )


def table(res):
    def f(key, unit=""):
        v = res.get(key)
        if v is None:
            return "-"
        return f"{v:,.1f}{unit}" if isinstance(v, float) else f"{v}{unit}"

    rows = [
        ("peer", f"celery {res['celery_version']} (kombu {res['kombu_version']}, redis-py {res['redis_py_version']}, redis-server {res['redis_server_version']})"),
        ("worker", f"prefork x{res['workers']}, prefetch x{res['prefetch_multiplier']}, -O {res['optimization']}, acks_late={res['acks_late']}, results={'stored' if res['results_stored'] else 'ignored'}"),
        ("burn-down", f"{f('burn_down_tasks_per_sec')} tasks/s  ({res['tasks']} tasks in {f('burn_down_seconds', ' s')})"),
        ("sustained", f"{f('sustained_tasks_per_sec')} tasks/s completed  (submitted {f('sustained_submitted_per_sec')}/s by {res['submitters']} submitters, backlog at end {f('sustained_backlog_at_end')})"),
        ("latency", f"p50 {f('p50_submit_to_start_ms', ' ms')}  p99 {f('p99_submit_to_start_ms', ' ms')}  max {f('max_submit_to_start_ms', ' ms')}  (offered {f('offered_rate')}/s, achieved {f('offered_rate_achieved')}/s, {f('latency_samples')} samples)"
                    + ("  SATURATED: worker completed only " + f('latency_phase_completed_per_sec') + "/s, latency is queueing delay" if res.get("latency_worker_saturated") else "")),
        ("machine", f"{res['cpus']} cpus, loadavg at start {res['loadavg_start']}, at end {res.get('loadavg_end')}"),
        ("durability", res["durability"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main():
    global REDIS_URL, REDIS_DB, BROKER, STORE_RESULTS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000, help="burn-down size (default 100000)")
    ap.add_argument("--duration", type=parse_duration, default=10.0,
                    help="sustained and latency phase length, seconds or e.g. 10s (default 10)")
    ap.add_argument("--workers", type=int, default=8, help="prefork concurrency (default 8)")
    ap.add_argument("--submitters", type=int, default=4, help="submitter processes (default 4)")
    ap.add_argument("--rate", type=float, default=1000.0, help="offered load in the latency phase, tasks/s (default 1000)")
    ap.add_argument("--prefetch", type=int, default=32, help="worker_prefetch_multiplier (default 32)")
    ap.add_argument("--optimization", choices=("default", "fair"), default="default", help="worker -O profile (default 'default')")
    ap.add_argument("--acks-late", action="store_true", help="task_acks_late=True (ack after the task ran)")
    ap.add_argument("--no-results", action="store_true", help="do not store results (ignore_result)")
    ap.add_argument("--phases", default="burn,sustained,latency", help="comma list of burn,sustained,latency")
    ap.add_argument("--redis-url", default=REDIS_URL, help="Redis server (default redis://127.0.0.1:6379)")
    ap.add_argument("--redis-db", type=int, default=REDIS_DB, help="Redis DB owned (and flushed) by the bench (default 15)")
    ap.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to wait for a backlog before purging it")
    ap.add_argument("--max-runtime", type=float, default=1800.0, help="cap for the enqueue and the burn-down waits, seconds (default 1800)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout (table goes to stderr)")
    args = ap.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = set(phases) - {"burn", "sustained", "latency"}
    if bad or args.tasks < 1 or args.workers < 1 or args.submitters < 1 or args.rate <= 0 or args.duration <= 0:
        ap.error(f"bad arguments (unknown phases: {sorted(bad)})" if bad else "sizes must be positive")

    # Re-point the module configuration if the CLI overrides it (the worker
    # and the spawned submitters read it from the environment).
    REDIS_URL, REDIS_DB = args.redis_url, args.redis_db
    BROKER = f"{REDIS_URL.rstrip('/')}/{REDIS_DB}"
    STORE_RESULTS = not args.no_results
    os.environ.update(BENCH_REDIS_URL=REDIS_URL, BENCH_REDIS_DB=str(REDIS_DB),
                      BENCH_STORE_RESULTS="1" if STORE_RESULTS else "0")
    app.conf.broker_url = BROKER
    app.conf.task_ignore_result = not STORE_RESULTS

    # Ctrl-C and SIGTERM unwind through the finally blocks (SIGINT explicitly:
    # a shell starting us in the background may have set it to "ignore").
    def _interrupt(*_):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    import celery
    import kombu
    import redis

    try:
        info = rds().info("server")
    except redis.RedisError as exc:
        sys.exit(f"Redis at {REDIS_URL} is not answering ({exc}); start it (see run.sh)")

    res = {
        "peer": "celery",
        "celery_version": celery.__version__,
        "kombu_version": kombu.__version__,
        "redis_py_version": redis.__version__,
        "redis_server_version": info.get("redis_version"),
        "python_version": platform.python_version(),
        "broker": "redis",
        "workers": args.workers,
        "pool": "prefork",
        "prefetch_multiplier": args.prefetch,
        "optimization": args.optimization,
        "acks_late": args.acks_late,
        "results_stored": STORE_RESULTS,
        "submitters": args.submitters,
        "tasks": args.tasks,
        "duration_s": args.duration,
        "offered_rate": args.rate,
        "completion_counting": "redis INCR in task_success signal (after result stored)",
        "durability": (
            "volatile: Redis runs without RDB/AOF (a Redis restart loses queue and results); acks_late="
            + ("True (ack after run)" if args.acks_late else "False (ack before run: a worker crash loses accepted tasks)")
            + "; Strata commits every transition durably"
        ),
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "phases": phases,
    }

    logdir = tempfile.mkdtemp(prefix="bench-celery-")
    worker = None
    ok = False
    try:
        rds().flushdb()
        log(f"flushed Redis DB {REDIS_DB}; starting worker (prefork x{args.workers}); log {logdir}/worker.log")
        worker = Worker(args, logdir)
        worker.wait_ready()
        # Warm-up: fork/connect every pool process, import everything.
        warm = 4 * args.workers
        for i in range(warm):
            noop.apply_async((i,), queue=WARM_QUEUE)
        if wait_done(warm, 60, "warm-up") is None:
            raise TimeoutError(f"warm-up tasks did not run; worker log:\n{worker.tail()}")
        log("worker ready and warm")

        if "burn" in phases:
            phase_burn_down(args, worker, res)
        else:
            worker.add_consumer(QUEUE)
        if "sustained" in phases:
            phase_sustained(args, worker, res)
        if "latency" in phases:
            phase_latency(args, worker, res)
        res["failed_tasks"] = int(rds().get(FAIL_KEY) or 0)
        res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        ok = True
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        # Cleanup is bounded (about 20 s at worst); don't let a second Ctrl-C cut it short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if worker is not None:
            worker.stop()
            if not ok:
                log(f"worker log tail:\n{worker.tail()}")
        try:
            rds().flushdb()
        except Exception as exc:  # noqa: BLE001 - best effort cleanup
            log(f"could not flush Redis DB {REDIS_DB}: {exc}")
        if ok:
            shutil.rmtree(logdir, ignore_errors=True)
    if not ok:
        sys.exit(1)

    if args.json:
        print(table(res), file=sys.stderr)
        print(json.dumps(res))
    else:
        print(table(res))


if __name__ == "__main__":
    main()
