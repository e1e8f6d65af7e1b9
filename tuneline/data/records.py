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


@dataclass
class Record:
    """A normalised training example.

    - chat: `messages` alternate user/assistant after an optional leading system turn
      and end with an assistant turn.
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
        )

    def content_key(self) -> str:
        """Hash of the content only (not provenance): equal records dedup to one."""
        payload = {"k": self.kind, "m": self.messages, "t": self.text, "c": self.chosen, "r": self.rejected}
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
