"""A worker: counts the words of one part.

Two deliberate failures show Strata's failure handling: a part containing
"flaky" fails its first attempt (Strata retries it with backoff), and a part
containing "poison" fails every attempt (its attempts run out, and the
supervision policy escalates it to the reviewer).
"""

from strata_agent import Fail, run, say


def work(task):
    text = task["input"]["text"]
    if "poison" in text:
        raise Fail({"message": "cannot parse this part"})
    if "flaky" in text and task["attempt"] == 1:
        raise Fail({"message": "transient failure, try again"})
    words = len(text.split())
    say(f"counted {words} words in part {task['input']['part']} (attempt {task['attempt']})")
    return {"words": words}


run(work)
