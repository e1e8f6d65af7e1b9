"""The one internal record model every dataset shape is normalised into.

Formatting and tokenization only ever see `Record`s, so a new source shape is a
loader change, never a template or masking change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
Kind = Literal["chat", "text", "preference"]


def joined_content(message: dict[str, Any]) -> str:
    """A turn's text with an alpaca `input` joined on, as one user turn shows it to any template
    that has no separate input block."""
    extra = message.get("input")
    return f"{message['content']}\n\n{extra}" if extra else message["content"]


def joined_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Turns as plain {role, content}, alpaca inputs joined onto their user turn."""
    return [{"role": m["role"], "content": joined_content(m)} for m in messages]


@dataclass
class Record:
    """A normalised training example.

    - chat: `messages` alternate user/assistant after an optional leading system turn
      and end with an assistant turn. An alpaca user turn may carry its context as a
      separate `input` key, so the alpaca template can render its "### Input:" block;
      every other template sees it joined onto the content (`joined_content`).
    - text: raw `text` for continued pretraining; `messages` is empty.
    - preference: `messages` is the prompt (ends with a user turn); `chosen` and
      `rejected` are the assistant continuation(s).
    `meta` carries provenance (source, line) so later errors can point back at the file.
    """

    messages: list[dict[str, str]] = field(default_factory=list)
    kind: Kind = "chat"
    text: str | None = None
    chosen: list[dict[str, str]] | None = None
    rejected: list[dict[str, str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Function schemas the conversation may call ({"type": "function", "function": {...}});
    # assistant turns then may carry `tool_calls` and `tool` turns their results.
    tools: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return cls(
            messages=list(d.get("messages") or []),
            kind=d.get("kind", "chat"),
            text=d.get("text"),
            chosen=d.get("chosen"),
            rejected=d.get("rejected"),
            meta=dict(d.get("meta") or {}),
            tools=d.get("tools"),
        )

    def content_key(self) -> str:
        """Hash of the content only (not provenance): equal records dedup to one."""
        # Inputs joined: the same text stored either way is the same record (and keeps its split).
        payload = {
            "k": self.kind,
            "m": joined_messages(self.messages),
            "t": self.text,
            "c": self.chosen,
            "r": self.rejected,
        }
        if self.tools is not None:  # calls, results and schemas are content too
            payload["m"], payload["tools"] = self.messages, self.tools
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def fingerprint(records: list[Record]) -> str:
    """Order-sensitive hash of the normalised records of one split (lineage + cache key)."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.content_key().encode())
    return h.hexdigest()[:16]


@dataclass
class RecordSet:
    """Normalised, validated, split records plus what a person needs for lineage."""

    splits: dict[str, list[Record]]
    info: dict[str, Any] = field(default_factory=dict)  # sources, counts, dropped, dedup, shapes

    @property
    def fingerprints(self) -> dict[str, str]:
        return {name: fingerprint(recs) for name, recs in self.splits.items()}

    @property
    def kind(self) -> Kind:
        for recs in self.splits.values():
            if recs:
                return recs[0].kind
        return "chat"

    def to_jsonable(self) -> dict[str, Any]:
        return {
            "splits": {k: [r.to_dict() for r in v] for k, v in self.splits.items()},
            "info": self.info,
        }

    @classmethod
    def from_jsonable(cls, d: dict[str, Any]) -> RecordSet:
        return cls(
            splits={k: [Record.from_dict(r) for r in v] for k, v in d["splits"].items()},
            info=d.get("info", {}),
        )
