#!/usr/bin/env python3
"""A deliberately broken MCP server over stdio, for the gateway's tests.

Its tools misbehave on purpose: `huge` answers with megabytes on one line,
`garbage` answers with a result of the wrong shape, `notjson` writes a line
that is not JSON, `echo_env` answers with the value of $TOKEN, and `count`
behaves, `stall` answers late, and `grow` adds a tool and announces
`tools/list_changed`. `spoof` first sends the gateway a *request* carrying the
call's own id, and `stray` first answers ids nobody asked for (the call's id
with a suffix, a number, and the call's id again after its real answer); both
then answer as `count` does. Each tools/call appends a line to $COUNT_FILE
(when set), so a test can tell whether a call reached the upstream at all.
"""
import json
import os
import sys
import time

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "additionalProperties": False}
TOOLS = [{"name": n, "description": d, "inputSchema": SCHEMA} for n, d in [
    ("huge", "answers with megabytes"),
    ("garbage", "answers with a malformed result"),
    ("notjson", "writes a line that is not JSON"),
    ("echo_env", "answers with the TOKEN environment variable"),
    ("fail_env", "fails with an error message holding the TOKEN environment variable"),
    ("count", "answers with how many calls it has seen"),
    ("grow", "adds the tool `extra` and announces tools/list_changed"),
    ("stall", "answers after three seconds"),
    ("spoof", "sends a request with the call's own id before answering"),
    ("stray", "answers ids nobody asked for around its real answer"),
]]
calls = 0


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    msg = json.loads(line)
    mid, method = msg.get("id"), msg.get("method")
    if mid is None:
        continue  # a notification
    if method == "initialize":
        version = msg.get("params", {}).get("protocolVersion", "2025-06-18")
        send({"jsonrpc": "2.0", "id": mid, "result": {
            "protocolVersion": version, "capabilities": {"tools": {"listChanged": True}},
            "serverInfo": {"name": "hostile", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        calls += 1
        if os.environ.get("COUNT_FILE"):
            with open(os.environ["COUNT_FILE"], "a") as f:
                f.write("call\n")
        name = msg["params"]["name"]
        if name == "huge":
            send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": "x" * (3 * 1024 * 1024)}]}})
        elif name == "garbage":
            send({"jsonrpc": "2.0", "id": mid, "result": {"content": "not-an-array", "isError": "maybe"}})
        elif name == "notjson":
            sys.stdout.write("this is not JSON-RPC\n")
            sys.stdout.flush()
        elif name == "echo_env":
            token = os.environ.get("TOKEN", "")
            send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": "token=" + token}]}})
        elif name == "stall":
            time.sleep(3)
            send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": "late"}]}})
        elif name == "grow":
            TOOLS.append({"name": "extra", "description": "appeared later", "inputSchema": SCHEMA})
            send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": "grown"}]}})
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        elif name == "spoof":
            send({"jsonrpc": "2.0", "id": mid, "method": "ping"})
            send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": str(calls)}]}})
        elif name == "stray":
            wrong = {"content": [{"type": "text", "text": "stray"}]}
            send({"jsonrpc": "2.0", "id": str(mid) + "9", "result": wrong})
            send({"jsonrpc": "2.0", "id": 424242, "result": wrong})
            send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": str(calls)}]}})
            send({"jsonrpc": "2.0", "id": mid, "result": wrong})
        elif name == "fail_env":
            token = os.environ.get("TOKEN", "")
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32000, "message": "failed with token " + token}})
        else:
            send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": str(calls)}]}})
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
    else:
        send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "method not found"}})
