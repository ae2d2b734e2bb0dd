"""The planner: splits a job into one `work` subtask per part."""

from strata_agent import run, say, submit


def plan(task):
    job = task["input"]
    ids = []
    for i, text in enumerate(job["parts"]):
        ids.append(submit("work", {"text": text, "part": i}, parent=task["id"], max_attempts=2,
                          backoff={"initial_ms": 200, "max_ms": 1000}))
    say(f"split {task['id']} into {len(ids)} work tasks")
    return {"subtasks": ids}


run(plan)
