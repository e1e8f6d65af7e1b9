"""Records -> the fine-tuning API's chat JSONL, refusing before any upload what the API rejects.

One line per conversation: `{"messages": [...]}` (plus `tools` when the record declares them),
roles system/user/assistant/tool. `tokenize.train_on` becomes per-message `weight` on assistant
turns: `all_assistant` trains on every assistant turn (weight 1), `last_assistant` on the final
one only (earlier ones weight 0), the same supervision the local backend masks for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tuneline.data.records import Record, joined_content
from tuneline.errors import DataError, Problem

ROLES = ("system", "user", "assistant", "tool")
# The API refuses a training file with fewer examples.
MIN_TRAIN_EXAMPLES = 10


def where(record: Record) -> str:
    src = record.meta.get("source") or record.meta.get("file") or "record"
    line = record.meta.get("line")
    return f"{src}:{line}" if line is not None else str(src)


@dataclass
class ChatFiles:
    """The converted splits as JSONL text, ready to upload."""

    train: str
    validation: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"train": self.train, "validation": self.validation, "counts": dict(self.counts)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatFiles:
        return cls(train=d["train"], validation=d.get("validation"), counts=dict(d.get("counts") or {}))


def _message(m: dict[str, Any], at: str, problems: list[Problem]) -> dict[str, Any] | None:
    role = m.get("role")
    if role not in ROLES:
        problems.append(Problem(at, f"role '{role}' is not one the API accepts ({', '.join(ROLES)})"))
        return None
    out: dict[str, Any] = {"role": role}
    content = joined_content(m) if isinstance(m.get("content"), str) else m.get("content")
    if m.get("tool_calls"):
        if role != "assistant":
            problems.append(Problem(at, "only assistant turns may carry tool_calls"))
            return None
        out["tool_calls"] = m["tool_calls"]
        if content:
            out["content"] = content
    elif not isinstance(content, str) or not content.strip():
        problems.append(Problem(at, f"{role} turn has no text content; the API rejects empty turns"))
        return None
    else:
        out["content"] = content
    if role == "tool":
        if not m.get("tool_call_id"):
            problems.append(Problem(at, "tool turn without tool_call_id; the API needs the call it answers"))
            return None
        out["tool_call_id"] = m["tool_call_id"]
    if m.get("name") and role != "tool":
        out["name"] = m["name"]
    return out


def to_example(record: Record, train_on: str, problems: list[Problem]) -> dict[str, Any] | None:
    """One JSONL example, or None with the reasons appended to `problems` (file:line first)."""
    at = where(record)
    if record.kind != "chat":
        problems.append(
            Problem(at, f"a {record.kind} record; the openai backend fine-tunes chat records only")
        )
        return None
    n_before = len(problems)
    messages = [_message(m, f"{at} messages[{i}]", problems) for i, m in enumerate(record.messages)]
    if len(problems) > n_before:
        return None
    assistant = [i for i, m in enumerate(messages) if m and m["role"] == "assistant"]
    if not assistant:
        problems.append(Problem(at, "no assistant turn: the API needs at least one answer to train on"))
        return None
    if messages[-1]["role"] != "assistant":  # type: ignore[index]
        problems.append(
            Problem(at, "the last turn is not the assistant's; nothing after it would be learned")
        )
        return None
    last = assistant[-1]
    for i in assistant:
        messages[i]["weight"] = 1 if (train_on == "all_assistant" or i == last) else 0  # type: ignore[index]
    example: dict[str, Any] = {"messages": messages}
    if record.tools:
        example["tools"] = record.tools
    return example


def convert_split(records: list[Record], train_on: str) -> tuple[list[dict[str, Any]], list[Problem]]:
    problems: list[Problem] = []
    examples = [e for r in records if (e := to_example(r, train_on, problems)) is not None]
    return examples, problems


def to_jsonl(examples: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in examples)


def convert_records(
    splits: dict[str, list[Record]], train_on: str, *, validation_split: str = "validation"
) -> ChatFiles:
    """The training file (split `train`) and the validation file, or a DataError listing every
    record the API would reject, with its file:line, before anything is uploaded."""
    train, problems = convert_split(splits.get("train", []), train_on)
    valid, vproblems = convert_split(splits.get(validation_split, []), train_on)
    problems += vproblems
    if not problems and len(train) < MIN_TRAIN_EXAMPLES:
        problems.append(
            Problem(
                "data",
                f"{len(train)} training examples; the fine-tuning API needs at least {MIN_TRAIN_EXAMPLES}",
            )
        )
    if problems:
        raise DataError(problems, header=f"data the fine-tuning API would reject ({len(problems)} problems)")
    return ChatFiles(
        train=to_jsonl(train),
        validation=to_jsonl(valid) if valid else None,
        counts={"train": len(train), validation_split: len(valid)},
    )
