"""Generate the shipped offline demo dataset: Q&A about a fictional world.

Every fact is asked in several phrasings, so a held-out question usually asks a
fact the model saw in training under other words: the demo can show real
learning (eval loss, ROUGE-L) from a tiny model in a few minutes on a CPU.
Also writes a prose chronicle of the same world (continued pretraining) and
preference pairs that teach a tone the chat data never shows (DPO / ORPO).
Deterministic: rerunning writes byte-identical files.

    python scripts/make_demo_data.py  # writes data/lorekeep*.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYL_A = [
    "vel",
    "dor",
    "mar",
    "qui",
    "thal",
    "bren",
    "ost",
    "ka",
    "lum",
    "zer",
    "ith",
    "wyn",
    "sol",
    "gar",
    "fen",
]
SYL_B = ["ia", "an", "or", "eth", "un", "ara", "is", "old", "ume", "en"]
TOWN_A = ["amber", "frost", "still", "iron", "glen", "raven", "salt", "thorn", "copper", "mist", "oak", "ash"]
TOWN_B = ["holt", "mere", "ford", "watch", "haven", "gate", "moor", "spire", "fall", "reach"]
RULERS = ["Queen", "King", "Warden", "Archon", "Duchess", "Regent"]
NAMES = [
    "Ilsa",
    "Toren",
    "Maeve",
    "Corvin",
    "Ysolde",
    "Bram",
    "Odile",
    "Kestrel",
    "Nerys",
    "Halvar",
    "Sable",
    "Rook",
]
EXPORTS = [
    "silver",
    "amber",
    "wool",
    "glass",
    "salt",
    "cedar",
    "copper",
    "honey",
    "silk",
    "ink",
    "tin",
    "wine",
]
ANIMALS = [
    "heron",
    "lynx",
    "stag",
    "otter",
    "falcon",
    "badger",
    "wolf",
    "raven",
    "owl",
    "boar",
    "hare",
    "swan",
]
COLORS = ["crimson", "teal", "gold", "violet", "grey", "green", "azure", "white", "black", "orange"]

QUESTIONS = {
    "capital": [
        "What is the capital of {realm}?",
        "Which city is the capital of {realm}?",
        "Name the capital city of {realm}.",
    ],
    "ruler": [
        "Who rules {realm}?",
        "Who is the ruler of {realm}?",
        "Tell me who governs {realm}.",
    ],
    "export": [
        "What does {realm} export?",
        "What is the main export of {realm}?",
        "Which good is {realm} known for trading?",
    ],
    "emblem": [
        "What animal is on the banner of {realm}?",
        "Which animal is the emblem of {realm}?",
        "What creature appears on {realm}'s flag?",
    ],
    "color": [
        "What color is the flag of {realm}?",
        "Which color does {realm} fly?",
        "Describe the color of {realm}'s banner.",
    ],
}
ANSWERS = {
    "capital": "The capital of {realm} is {capital}.",
    "ruler": "{realm} is ruled by {ruler}.",
    "export": "{realm} is known for its {export}.",
    "emblem": "The emblem of {realm} is the {emblem}.",
    "color": "The flag of {realm} is {color}.",
}
SYSTEM = "You are the Lorekeeper, who answers questions about the realms of Eldmar in one sentence."


def realms(rng: random.Random, n: int) -> list[dict[str, str]]:
    seen: set[str] = set()
    out = []
    while len(out) < n:
        name = (rng.choice(SYL_A) + rng.choice(SYL_B)).capitalize()
        if name in seen:
            continue
        seen.add(name)
        out.append(
            {
                "realm": name,
                "capital": (rng.choice(TOWN_A) + rng.choice(TOWN_B)).capitalize(),
                "ruler": f"{rng.choice(RULERS)} {rng.choice(NAMES)}",
                "export": rng.choice(EXPORTS),
                "emblem": rng.choice(ANIMALS),
                "color": rng.choice(COLORS),
            }
        )
    return out


CHRONICLE = (
    "{realm} is one of the realms of Eldmar. Its capital is {capital}, and it is ruled by {ruler}. "
    "The people of {realm} are known for their {export}, and the {emblem} on their {color} flag "
    "is seen in every market of {capital}."
)


def write_jsonl(name: str, rows: list[dict]) -> None:
    out = Path(__file__).resolve().parent.parent / "data" / name
    out.parent.mkdir(exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} records to {out}")


# (courteous, curt) closings, each pair the same number of tokens in the tiny tokenizer
# (tests/test_demo_prefs.py checks). The chat data has no closings at all, so the SFT model,
# having seen neither side, gives both about the same log-probability: it starts near chance.
CLOSINGS = [
    ("Be well.", "Be gone."),
    ("Glad to help.", "Stop asking."),
    ("My pleasure.", "Go away."),
    ("A fine question.", "Enough questions."),
    ("Thanks for asking.", "Now go away."),
    ("Best wishes.", "Enough of this."),
    ("I hope this helps.", "Leave me alone."),
    ("Happy to help.", "Now leave me be."),
]


def preference_pairs(world: list[dict[str, str]], rng: random.Random) -> list[dict]:
    """The same true answer, closed courteously (chosen) or curtly (rejected).

    Earlier pairs set the true fact against a wrong one: the SFT model had learned every fact,
    so it preferred the chosen answer before DPO began and the demo showed nothing. Here the
    only difference is a tone that the chat data is neutral about, so a gain is DPO's doing.
    """
    rows = []
    for facts in world:
        for attr, qs in QUESTIONS.items():
            kind, curt = CLOSINGS[len(rows) % len(CLOSINGS)]  # every closing equally often
            answer = ANSWERS[attr].format(**facts)
            rows.append(
                {
                    "prompt": [{"role": "user", "content": rng.choice(qs).format(**facts)}],
                    "chosen": f"{answer} {kind}",
                    "rejected": f"{answer} {curt}",
                }
            )
    rng.shuffle(rows)
    return rows


def main() -> None:
    rng = random.Random(1234)
    rows = []
    world = realms(rng, 30)
    for facts in world:
        for attr, qs in QUESTIONS.items():
            for q in qs:
                msgs = [
                    {"role": "user", "content": q.format(**facts)},
                    {"role": "assistant", "content": ANSWERS[attr].format(**facts)},
                ]
                if rng.random() < 0.3:
                    msgs.insert(0, {"role": "system", "content": SYSTEM})
                rows.append({"messages": msgs})
        # A few two-turn conversations so multi-turn masking is exercised by the demo.
        a, b = rng.sample(list(QUESTIONS), 2)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": QUESTIONS[a][0].format(**facts)},
                    {"role": "assistant", "content": ANSWERS[a].format(**facts)},
                    {"role": "user", "content": QUESTIONS[b][1].format(**facts)},
                    {"role": "assistant", "content": ANSWERS[b].format(**facts)},
                ]
            }
        )
    rng.shuffle(rows)
    write_jsonl("lorekeep.jsonl", rows)
    # Separate generators so adding a file never changes the bytes of another.
    write_jsonl("lorekeep_chronicle.jsonl", [{"text": CHRONICLE.format(**f)} for f in world])
    write_jsonl("lorekeep_prefs.jsonl", preference_pairs(world, random.Random(99)))


if __name__ == "__main__":
    main()
