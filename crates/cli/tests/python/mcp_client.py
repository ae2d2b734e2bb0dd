"""Drives Strata's MCP server with the official Python `mcp` client.

Usage: mcp_client.py URL ADMIN_TOKEN NARROW_TOKEN STRATA_BIN

The server must have a connection named `ev` (server-everything) and an agent
whose token NARROW_TOKEN holds only the scope `agent.get`. Every check raises
on failure; the last line printed is a JSON summary the Rust test reads.
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

URL, ADMIN, NARROW, STRATA = sys.argv[1:5]
MCP_URL = URL.rstrip("/") + "/mcp"


def http_client(token, mode="auto"):
    return Client(
        streamable_http_client(MCP_URL, http_client=httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})),
        mode=mode,
        cache=None,
    )


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def problem_code(result):
    check(result.is_error, f"expected a tool error, got {result}")
    return (result.structured_content or {}).get("code")


async def as_operator(client, suffix):
    names = {t.name for t in (await client.list_tools()).tools}
    for want in ("agent.create", "agent.list", "task.submit", "tool.call", "ev.echo"):
        check(want in names, f"{want} missing from tools/list: {sorted(names)}")
    create = next(t for t in (await client.list_tools()).tools if t.name == "agent.create")
    check(create.input_schema.get("type") == "object", f"agent.create's schema: {create.input_schema}")
    check("name" in create.input_schema.get("properties", {}), "agent.create's schema lacks name")

    made = await client.call_tool("agent.create", {"name": f"mcp-{suffix}"}, meta={"idempotencyKey": f"k-{suffix}"})
    check(not made.is_error, f"agent.create failed: {made}")
    agent_id = made.structured_content["id"]
    check(agent_id.startswith("agt_"), f"agent.create answered {made.structured_content}")
    again = await client.call_tool("agent.create", {"name": f"mcp-{suffix}"}, meta={"idempotencyKey": f"k-{suffix}"})
    check(not again.is_error and again.structured_content["id"] == agent_id, f"replay gave {again}")

    listed = await client.call_tool("agent.list", {})
    check(not listed.is_error, f"agent.list failed: {listed}")
    check(any(a["id"] == agent_id for a in listed.structured_content["items"]), "the new agent is not listed")

    missing = await client.call_tool("agent.get", {"id": "agt_doesnotexist"})
    check(problem_code(missing) == "not_found", f"agent.get of a missing id: {missing}")
    bad = await client.call_tool("agent.create", {"name": 7})
    check(problem_code(bad) == "invalid_request", f"agent.create with a number for a name: {bad}")

    # What the gateway knows of an upstream tool reaches the client as MCP hints.
    tools = {t.name: t for t in (await client.list_tools()).tools}
    hints = tools["ev.echo"].annotations
    check(hints is not None and hints.read_only_hint is True and hints.idempotent_hint is True,
          f"ev.echo's annotations: {hints}")
    toggle = tools["ev.toggle-simulated-logging"].annotations
    check(toggle is not None and toggle.read_only_hint is False, f"ev.toggle-simulated-logging's annotations: {toggle}")

    echoed = await client.call_tool("ev.echo", {"message": f"through strata {suffix}"})
    check(not echoed.is_error, f"ev.echo failed: {echoed}")
    text = " ".join(getattr(c, "text", "") for c in echoed.content)
    check(f"through strata {suffix}" in text, f"ev.echo answered {echoed}")
    # The upstream's outputSchema is relayed; the client checks the structured
    # content it gets back against it.
    weather_tool = next(t for t in (await client.list_tools()).tools if t.name == "ev.get-structured-content")
    check("temperature" in (weather_tool.output_schema or {}).get("properties", {}),
          f"ev.get-structured-content's output schema: {weather_tool.output_schema}")
    weather = await client.call_tool("ev.get-structured-content", {"location": "Chicago"})
    check(not weather.is_error and isinstance(weather.structured_content.get("temperature"), (int, float)),
          f"ev.get-structured-content answered {weather}")
    bad_args = await client.call_tool("ev.echo", {"message": 1})
    check(problem_code(bad_args) == "invalid_arguments", f"ev.echo with bad arguments: {bad_args}")
    return agent_id


async def as_narrow_agent(client):
    names = sorted(t.name for t in (await client.list_tools()).tools)
    check(names == ["agent.get"], f"a token scoped to agent.get lists {names}")
    refused = await client.call_tool("agent.create", {"name": "sneaky"})
    check(problem_code(refused) == "forbidden", f"an out-of-scope call: {refused}")
    upstream = await client.call_tool("ev.echo", {"message": "x"})
    check(problem_code(upstream) == "forbidden", f"an ungranted upstream tool: {upstream}")


async def refused_without_a_valid_token():
    accepted = False
    try:
        async with http_client("not-a-token") as client:
            await client.list_tools()
            accepted = True
    except Exception as e:  # the transport's error for the 401
        return type(e).__name__
    check(not accepted, "a bad token was accepted")


async def main():
    summary = {}
    for mode in ("auto", "legacy"):
        async with http_client(ADMIN, mode) as client:
            version = client.protocol_version
            summary[mode] = {"protocol_version": version, "agent": await as_operator(client, mode)}
        async with http_client(NARROW, mode) as client:
            await as_narrow_agent(client)
    summary["bad_token"] = await refused_without_a_valid_token()

    stdio = StdioServerParameters(command=STRATA, args=["mcp", "--url", URL, "--token", ADMIN])
    async with Client(stdio, cache=None) as client:
        summary["stdio"] = {"protocol_version": client.protocol_version, "agent": await as_operator(client, "stdio")}
    print(json.dumps(summary))


asyncio.run(main())
