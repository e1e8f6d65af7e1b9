"""Generate the offline KTO demo: answers about the Lorekeep world, each labelled desirable or not.

The same true answers as the DPO demo (data/lorekeep_prefs.jsonl), closed courteously
(label: true) or curtly (label: false), but unpaired: each question is answered once, and a
fact's two questions get opposite closings, so no prompt has both. The SFT chat data never
shows a closing, so the SFT model that KTO starts from has no reason to favour either kind:
the only thing to learn is the tone the labels reward. Deterministic: rerunning writes
byte-identical files.

    python scripts/make_kto_data.py  # writes data/lorekeep_kto.jsonl
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_demo_data import ANSWERS, CLOSINGS, QUESTIONS, realms, write_jsonl


def labelled_answers(world: list[dict[str, str]], rng: random.Random) -> list[dict]:
    """Per fact, two phrasings of its question: one answered courteously, one curtly (which is
    which is drawn), every closing used equally often."""
    rows = []
    for facts in world:
        for attr, qs in QUESTIONS.items():
            answer = ANSWERS[attr].format(**facts)
            courteous, curt = CLOSINGS[(len(rows) // 2) % len(CLOSINGS)]
            first, second = rng.sample(qs, 2)
            good_first = rng.random() < 0.5
            for q, good in ((first, good_first), (second, not good_first)):
                closing = courteous if good else curt
                rows.append(
                    {
                        "messages": [
                            {"role": "user", "content": q.format(**facts)},
                            {"role": "assistant", "content": f"{answer} {closing}"},
                        ],
                        "label": good,
                    }
                )
    rng.shuffle(rows)
    return rows


def main() -> None:
    world = realms(random.Random(1234), 30)  # the world of make_demo_data.py (same seed, same draws)
    write_jsonl("lorekeep_kto.jsonl", labelled_answers(world, random.Random(7)))


if __name__ == "__main__":
    main()
