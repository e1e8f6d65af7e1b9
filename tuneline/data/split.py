"""Split assignment, dedup, leakage removal and weighted mixing.

Split membership is a pure function of (seed, record content), never of position:
appending records to a file, or reordering it, never moves an existing record
between train and eval, so eval numbers stay comparable across dataset versions.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

from tuneline.data.records import Record, joined_content

EVAL_SPLITS = ("validation", "test")


def split_point(key: str, seed: int) -> float:
    """A uniform number in [0, 1) derived from the content key and the seed."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def assign_split(point: float, validation: float, test: float) -> str:
    """test takes [0, test), validation [test, test+validation), train the rest."""
    if point < test:
        return "test"
    if point < test + validation:
        return "validation"
    return "train"


def apply_weight(records: list[Record], weight: float, rng: random.Random) -> list[Record]:
    """weight multiplies a source's train size: 2.0 repeats every record twice, 0.5 keeps a
    seeded half, 1.5 repeats all once plus a seeded half. Whole copies first so up-sampling
    never drops a record."""
    if weight == 1.0 or not records:
        return list(records)
    target = round(weight * len(records))
    full, rest = divmod(target, len(records))
    out = list(records) * full
    if rest:
        out += rng.sample(records, rest)
    return out


def prompt_key(r: Record) -> str | None:
    """The input side of a record, to count eval prompts seen in train with another answer."""
    if r.kind == "text":
        return None
    msgs = r.messages if r.kind == "preference" else r.messages[:-1]
    h = hashlib.blake2b(digest_size=16)
    for m in msgs:
        if m["role"] != "system":
            h.update(m["role"].encode())
            h.update(b"\x00")
            h.update(joined_content(m).encode())
            h.update(b"\x01")
    return h.hexdigest()


def count_prompt_overlap(eval_records: Iterable[Record], train_prompts: set[str]) -> int:
    return sum(1 for r in eval_records if (k := prompt_key(r)) is not None and k in train_prompts)
