"""Generate the shipped tool-calling demo dataset: the Lorekeeper answers from a lore archive.

The same world as scripts/make_demo_data.py, but the assistant does not know the facts:
it calls `lookup_lore(realm, topic)` or `travel_days(destination, mode)`, reads the tool's
result and answers from it. Every argument is either copied from the question or read from
its wording: each question ends with the realm it asks about (copied into `realm` /
`destination`), and its words say the topic (capital, ruler, ...) or the way of travel
(road, river, sea, foot). So a held-out question (another realm with that wording) shows
whether the model learned to call -- the right function, the realm copied, the topic or
mode chosen -- rather than to recite a memorised call. The world is small enough for a
tiny model on a CPU: two phrasings per question kind, short schemas with the allowed
values as enums, and a realm always in the same place, so copying it is a matter of
position rather than search.
OpenAI-style records, two exchanges each: `tools` schemas, then per question an assistant
`tool_calls` turn, a `tool` result turn and the answer.
Deterministic: rerunning writes byte-identical files.

    python scripts/make_tool_data.py  # writes data/lorekeep_tools.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_data import ANSWERS, realms, write_jsonl

TOPICS = ["capital", "ruler", "export", "emblem", "color"]
MODES = ["road", "river", "sea", "foot"]


def _fn(name: str, params: dict[str, dict]) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": params}}}


TOOLS = [
    _fn("lookup_lore", {"realm": {"type": "string"}, "topic": {"enum": TOPICS}}),
    _fn("travel_days", {"destination": {"type": "string"}, "mode": {"enum": MODES}}),
]
# Each question opens with the realm it asks about: written like that, the name is the very
# token the call writes (" Velen" inside a sentence is another token of the tiny tokenizer).
LORE_QUESTIONS = {
    "capital": ["{realm}: what is its capital?", "{realm}: which city is its capital?"],
    "ruler": ["{realm}: who rules it?", "{realm}: who is its ruler?"],
    "export": ["{realm}: what is its main export?", "{realm}: which good does it trade?"],
    "emblem": ["{realm}: which animal is its emblem?", "{realm}: what animal is on its flag?"],
    "color": ["{realm}: what color is its flag?", "{realm}: which color is its banner?"],
}
TRAVEL_VERBS = {"road": "ride", "river": "row", "sea": "sail", "foot": "walk"}
TRAVEL_QUESTIONS = ["{realm}: how many days to {verb} there?", "{realm}: how long by {mode}?"]
TRAVEL_ANSWER = "By {mode}, {realm} is {days} days away."


def exchange(n: int, question: str, call: dict, result: dict, answer: str) -> list[dict]:
    """Question, the call (arguments as JSON text, as OpenAI writes them), its result, the answer."""
    cid = f"call{n:05d}"
    fn = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
    return [
        {"role": "user", "content": question},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": cid, "type": "function", "function": fn}],
        },
        {"role": "tool", "tool_call_id": cid, "name": call["name"], "content": json.dumps(result)},
        {"role": "assistant", "content": answer},
    ]


def main() -> None:
    world = realms(random.Random(1234), 30)  # the realms of data/lorekeep.jsonl
    rng = random.Random(2024)
    asked = []  # (question, call, result, answer)
    for facts in world:
        realm = facts["realm"]
        for topic, qs in LORE_QUESTIONS.items():
            call = {"name": "lookup_lore", "arguments": {"realm": realm, "topic": topic}}
            result, answer = {topic: facts[topic]}, ANSWERS[topic].format(**facts)
            asked += [(q.format(**facts), call, result, answer) for q in qs]
        for mode in MODES:
            days = rng.randint(2, 19)  # one fact per realm and way of travel
            call = {"name": "travel_days", "arguments": {"destination": realm, "mode": mode}}
            answer = TRAVEL_ANSWER.format(mode=mode, realm=realm, days=days)
            qs = [q.format(verb=TRAVEL_VERBS[mode], mode=mode, realm=realm) for q in TRAVEL_QUESTIONS]
            asked += [(q, call, {"days": days}, answer) for q in qs]
    rng.shuffle(asked)
    # Two exchanges per conversation: the schemas are a large part of each sample's tokens, so a
    # second call in the same context teaches twice as much for little more compute on a CPU.
    rows = [
        {"tools": TOOLS, "messages": exchange(1, *asked[i]) + exchange(2, *asked[i + 1])}
        for i in range(0, len(asked) - 1, 2)
    ]
    write_jsonl("lorekeep_tools.jsonl", rows)


if __name__ == "__main__":
    main()
