"""Generate the shipped tool-calling demo dataset: the Lorekeeper answers from a lore archive.

The same world as scripts/make_demo_data.py, but the assistant does not know the facts:
it calls `lookup_lore(realm, topic)` or `travel_days(destination, mode)`, reads the tool's
result and answers from it. Every argument is either copied from the question or read from
its wording: each question opens with the realm it asks about ("Kaen: who rules it?"),
copied into `realm` / `destination`, and its words say the topic (capital, ruler, ...) or
the way of travel (road, river, sea, foot). Sized for a tiny model on a CPU: four realms
(a realm name a model sees often enough to learn to copy), two phrasings per question kind
with a few closings so that no question repeats, and short schemas with the allowed
values as enums. A held-out question (an unseen combination of realm, phrasing and
closing) shows whether the model learned to call, not to recite.
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
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": params}},
    }


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
# A few realms, each asked every kind of question with each closing: no question repeats
# (4 realms x 18 questions x 8 closings = 576, of which 540 are asked).
N_REALMS = 4
CLOSINGS = [
    "",
    " Thanks.",
    " Be brief.",
    " Check the archive.",
    " Quickly.",
    " Please.",
    " I wonder.",
    " Tell me.",
]


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
    world, seen = [], set()  # the first realms of data/lorekeep.jsonl whose names start apart
    for facts in realms(random.Random(1234), 30):
        if facts["realm"][0] not in seen and len(world) < N_REALMS:
            seen.add(facts["realm"][0])
            world.append(facts)
    rng = random.Random(2024)
    asked = []  # (question, call, result, answer)
    for facts in world:
        realm = facts["realm"]
        for topic, qs in LORE_QUESTIONS.items():
            call = {"name": "lookup_lore", "arguments": {"realm": realm, "topic": topic}}
            result, answer = {topic: facts[topic]}, ANSWERS[topic].format(**facts)
            asked += [(q.format(**facts) + c, call, result, answer) for q in qs for c in CLOSINGS]
        for mode in MODES:
            days = rng.randint(2, 19)  # one fact per realm and way of travel
            call = {"name": "travel_days", "arguments": {"destination": realm, "mode": mode}}
            answer = TRAVEL_ANSWER.format(mode=mode, realm=realm, days=days)
            qs = [q.format(verb=TRAVEL_VERBS[mode], mode=mode, realm=realm) for q in TRAVEL_QUESTIONS]
            asked += [(q + c, call, {"days": days}, answer) for q in qs for c in CLOSINGS]
    asked = rng.sample(asked, 540)  # in a random order
    # Two exchanges per conversation: the schemas are a large part of each sample's tokens, so a
    # second call in the same context teaches twice as much for little more compute on a CPU.
    rows = [
        {"tools": TOOLS, "messages": exchange(1, *asked[i]) + exchange(2, *asked[i + 1])}
        for i in range(0, len(asked) - 1, 2)
    ]
    write_jsonl("lorekeep_tools.jsonl", rows)


if __name__ == "__main__":
    main()
