"""A minimal Strata agent loop for the example fleet (Python 3 standard library only).

Strata starts each replica with STRATA_URL and STRATA_TOKEN in its environment.
`run(handle)` leases one task at a time (long poll), calls `handle(task)`, and
completes the task with the returned result; `Fail(error, retryable)` raised by
the handler reports a failed attempt instead. The loop ends on SIGTERM, or when
its token stops working (a newer replica took over).
"""

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

URL = os.environ["STRATA_URL"].rstrip("/")
TOKEN = os.environ["STRATA_TOKEN"]
NAME = os.environ.get("STRATA_AGENT_NAME", "agent")
_stopping = False


class Fail(Exception):
    """Raise from a handler to fail the attempt."""

    def __init__(self, error, retryable=True):
        super().__init__(error)
        self.error = error
        self.retryable = retryable


def say(msg):
    print(f"{NAME}: {msg}", flush=True)


def call(method, path, body=None):
    """Sends one request; returns (status, JSON body). Retries while the server is unreachable."""
    data = None if body is None else json.dumps(body).encode()
    while True:
        req = urllib.request.Request(URL + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=65) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")
        except OSError:
            if _stopping:
                sys.exit(0)
            time.sleep(0.2)


def submit(capability, input, **extra):
    status, body = call("POST", "/v1/tasks", {"capability": capability, "input": input, **extra})
    if status != 201:
        raise Fail({"message": f"could not submit a {capability} task", "problem": body}, retryable=True)
    return body["id"]


def run(handle):
    def stop(*_):
        global _stopping
        _stopping = True

    signal.signal(signal.SIGTERM, stop)
    say("ready")
    while not _stopping:
        status, body = call("POST", "/v1/tasks/lease", {"wait_ms": 1000, "max": 1})
        if status == 401:
            say("my token no longer works; exiting")
            return
        if status != 200:
            say(f"lease refused: {body}")
            time.sleep(1)
            continue
        for task in body["tasks"]:
            lease = task["lease_id"]
            try:
                result = handle(task)
            except Fail as f:
                call("POST", f"/v1/tasks/{task['id']}/fail",
                     {"lease_id": lease, "error": f.error, "retryable": f.retryable})
                say(f"failed {task['id']} (attempt {task['attempt']}): {f.error}")
                continue
            status, out = call("POST", f"/v1/tasks/{task['id']}/complete", {"lease_id": lease, "result": result})
            if status != 200:
                say(f"could not complete {task['id']}: {out}")
    say("stopping")
