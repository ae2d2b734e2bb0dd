"""Drives the real `mem0ai` MemoryClient against Strata's /compat/mem0 API.

Run by crates/cli/tests/mem0_e2e.rs with STRATA_URL and STRATA_TOKEN set;
exits non-zero (an AssertionError or the client's exception) on any mismatch.
"""

import os
import sys

os.environ.setdefault("MEM0_TELEMETRY", "False")

from mem0 import MemoryClient  # noqa: E402

url = os.environ["STRATA_URL"].rstrip("/") + "/compat/mem0"
client = MemoryClient(api_key=os.environ["STRATA_TOKEN"], host=url)

added = client.add("I adopted a golden retriever named Biscuit.", user_id="alice", metadata={"topic": "pets"})
assert added["results"][0]["event"] == "ADD", added
dog = added["results"][0]["id"]
assert dog.startswith("mem_"), added

again = client.add([{"role": "user", "content": "I adopted a golden retriever named Biscuit."}], user_id="alice")
assert again["results"][0]["event"] == "NONE" and again["results"][0]["id"] == dog, again

cello = client.add([{"role": "user", "content": "I play the cello in an orchestra."}], user_id="alice")
assert cello["results"][0]["event"] == "ADD", cello
client.add("I collect vintage typewriters.", user_id="bob")

# The test server has no embedding model: recall is lexical and graph.
found = client.search("what is the golden retriever called?", filters={"user_id": "alice"}, top_k=5)
hits = found["results"]
assert hits and hits[0]["id"] == dog, found
assert all(h["user_id"] == "alice" for h in hits), found
assert hits[0]["score"] > 0, found
assert hits[0]["metadata"] == {"topic": "pets"}, found

page = client.get_all(filters={"user_id": "alice"})
assert page["count"] == 2 and len(page["results"]) == 2, page
assert {m["id"] for m in page["results"]} >= {dog}, page
first = client.get_all(filters={"user_id": "alice"}, page=1, page_size=1)
second = client.get_all(filters={"user_id": "alice"}, page=2, page_size=1)
assert first["next"] and len(first["results"]) == 1 and len(second["results"]) == 1, (first, second)
assert first["results"][0]["id"] != second["results"][0]["id"], (first, second)

got = client.get(dog)
assert got["memory"] == "User adopted a golden retriever named Biscuit.", got
assert got["user_id"] == "alice", got

updated = client.update(dog, text="User adopted a beagle named Biscuit.")
assert updated["memory"] == "User adopted a beagle named Biscuit." and updated["version"] == 2, updated

history = client.history(dog)
assert [h["event"] for h in history] == ["ADD", "UPDATE"], history
assert history[1]["old_memory"] == "User adopted a golden retriever named Biscuit.", history
assert history[1]["new_memory"] == "User adopted a beagle named Biscuit.", history

deleted = client.delete(dog)
assert "deleted" in deleted["message"].lower(), deleted
assert client.get_all(filters={"user_id": "alice"})["count"] == 1
assert [h["event"] for h in client.history(dog)] == ["ADD", "UPDATE", "DELETE"]
try:
    client.get(dog)
except Exception as e:  # the client raises its MemoryNotFoundError (or an HTTP error)
    assert "404" in str(e) or "not" in str(e).lower(), e
else:
    raise AssertionError("a deleted memory must not be found")

client.delete_all(user_id="bob")
assert client.get_all(filters={"user_id": "bob"})["count"] == 0

print("mem0 client: add, search, get_all, get, update, history, delete, delete_all OK")
sys.exit(0)
