"""Conversation -> text + supervised character spans: the one rendering every caller uses.

SFT tokenization, preference pairs, evaluation prompts, the formatted examples and the
preview all render through `Renderer`, so a template quirk is handled once for all of
them instead of working in training and failing (or silently differing) elsewhere:

- templates that reject a system role (Gemma) get the system text folded into the
  first user turn;
- an alpaca `input` on a user turn is a separate "### Input:" block for templates that
  render `message['input']` and is joined onto the user text for every other template;
- the end of each trained assistant turn is found by *prefix rendering*:
  render(messages[:i], add_generation_prompt=True) must be a prefix of the full text,
  and the turn ends where render(messages[:i+1]) stops agreeing with it (cf. nanochat
  `render_conversation`, torchtune). The span covers the content and its end-of-turn
  token(s) but not formatting whitespace after them. Templates that are not
  prefix-stable fall back to locating the content; failing that the record is a
  DataError, never silently mis-masked.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tuneline.data.records import joined_content
from tuneline.errors import ConfigError, DataError, Problem
from tuneline.tokenize.templates import compile_template, render, template_variables
from tuneline.tokenize.tool_templates import require_tools_support, turn_in_text

# A template that reads an alpaca `input` off the message renders it itself.
_USES_INPUT = re.compile(r"""message\s*\[\s*['"]input['"]\s*\]|message\.input\b""")
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]


def where(meta: dict[str, Any]) -> str:
    src = meta.get("source") or meta.get("file") or "record"
    line = meta.get("line")
    return f"{src}:{line}" if line is not None else str(src)


def with_system(msgs: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    if system_prompt and (not msgs or msgs[0].get("role") != "system"):
        return [{"role": "system", "content": system_prompt}, *msgs]
    return msgs


def common_prefix_len(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    n = min(len(a), len(b))
    lo, hi = 0, n  # binary search on prefix equality (C-speed slicing)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int, int]]  # (start, end, terminator_start) chars of trained turns
    content: list[tuple[int, int]] | None  # message content regions (only when special literals present)
    kind: str
    meta: dict[str, Any]
    index: int


class Renderer:
    """Compiled template, template variables and the tokenizer's special-token strings."""

    def __init__(self, tokenizer: Any, template: str | None = None, *, train_on: str = "all_assistant"):
        self.tok = tokenizer
        self.train_on = train_on
        template = template if template is not None else tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        self.template = template
        self.compiled = compile_template(template) if template else None
        self.vars = template_variables(tokenizer)
        self.uses_input = bool(template and _USES_INPUT.search(template))
        added = tokenizer.added_tokens_decoder  # id -> AddedToken
        self.special_strs = sorted(
            {t.content for t in added.values() if t.content.strip()}, key=len, reverse=True
        )
        self.special_re = (
            re.compile("|".join(map(re.escape, self.special_strs))) if self.special_strs else None
        )
        self.special_first_chars = {s[0] for s in self.special_strs}
        self.stats: Counter = Counter()
        self._folds_system: bool | None = None

    def specials_in(self, text: str) -> list[str]:
        return self.special_re.findall(text) if self.special_re else []

    # ---- messages the template accepts

    def _require_template(self) -> Any:
        if self.compiled is None:
            raise ConfigError(
                [Problem("template.name", "the tokenizer has no chat template; call prepare_tokenizer first")]
            )
        return self.compiled

    def raw(self, msgs: list[dict[str, Any]], agp: bool = False, tools: list[dict] | None = None) -> str:
        """The template applied as is (messages already prepared)."""
        return render(self._require_template(), msgs, self.vars, add_generation_prompt=agp, tools=tools)

    def folds_system(self) -> bool:
        """Whether the template rejects a system turn but renders the same conversation without it."""
        if self._folds_system is None:
            import jinja2

            try:
                self.raw([{"role": "system", "content": "S"}, *_PROBE])
                self._folds_system = False
            except jinja2.TemplateError:
                try:
                    self.raw(_PROBE)
                    self._folds_system = True
                except jinja2.TemplateError:
                    self._folds_system = False
        return self._folds_system

    def prepare(self, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The conversation as this template can render it (same meaning, template's layout)."""
        if not self.uses_input and any(m.get("input") for m in msgs):
            msgs = [
                {k: v for k, v in {**m, "content": joined_content(m)}.items() if k != "input"} for m in msgs
            ]
        if msgs and msgs[0]["role"] == "system" and len(msgs) > 1 and self.folds_system():
            merged = {**msgs[1], "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}
            msgs = [merged, *msgs[2:]]
            self.stats["system_merged"] += 1
        return msgs

    def text(
        self,
        msgs: list[dict[str, Any]],
        meta: dict[str, Any],
        *,
        agp: bool = False,
        prepared: bool = False,
        tools: list[dict] | None = None,
    ) -> str:
        """Prepare and render; a template error names the record."""
        import jinja2

        if tools is not None:
            require_tools_support(self.template, meta)
        try:
            return self.raw(msgs if prepared else self.prepare(msgs), agp, tools)
        except jinja2.TemplateError as e:
            raise DataError([Problem(where(meta), f"chat template rejects this conversation: {e}")]) from e

    # ---- supervised spans

    def chat_spans(
        self,
        msgs: list[dict[str, Any]],
        meta: dict[str, Any],
        *,
        prepared: bool = False,
        from_turn: int | None = None,
        tools: list[dict] | None = None,
    ) -> tuple[str, list[tuple[int, int, int]], list[dict[str, Any]]]:
        """(text, spans of the trained assistant turns, the messages as rendered).

        from_turn: spans of every assistant turn from that message index on (a preference
        completion), regardless of `train_on`.
        """
        import jinja2

        if not prepared:
            msgs = self.prepare(msgs)
        text = self.text(msgs, meta, prepared=True, tools=tools)
        turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant" and i >= (from_turn or 0)]
        if self.train_on == "last_assistant" and from_turn is None:
            turns = turns[-1:]
        spans: list[tuple[int, int, int]] = []
        cursor = 0
        for i in turns:
            span = None
            try:
                prefix = self.raw(msgs[:i], agp=True, tools=tools)
            except jinja2.TemplateError:
                prefix = None
            if prefix is not None and len(prefix) >= cursor and text.startswith(prefix):
                start = len(prefix)
                full_i = text if i == len(msgs) - 1 else self.raw(msgs[: i + 1], tools=tools)
                end = common_prefix_len(full_i, text)
                if end > start:
                    span = (start, end)
            if span is None and tools is not None:
                span = turn_in_text(self, msgs, i, text, cursor, tools)
                self.stats["prefix_fallbacks"] += span is not None
            if span is None:
                span = self._locate(text, msgs[i]["content"], cursor)
                if span is not None:
                    # The end is still where render(messages[:i+1]) stops agreeing, when that is
                    # past the content (keeps the real terminator, e.g. "<|end|>\n<|endoftext|>").
                    full_i = text if i == len(msgs) - 1 else self.raw(msgs[: i + 1], tools=tools)
                    agree = common_prefix_len(full_i, text)
                    if agree >= span[0] + len(msgs[i]["content"].strip()):
                        span = (span[0], agree)
                if span is None:
                    raise DataError(
                        [
                            Problem(
                                where(meta),
                                f"cannot locate assistant turn {i} in the rendered conversation: the chat "
                                "template is not prefix-stable and rewrites the content",
                            )
                        ]
                    )
                self.stats["prefix_fallbacks"] += 1
            start, end = span
            end = self._snap(text, start, end)
            seg = text[start:end]
            stripped = seg.rstrip()
            if stripped != seg and self.special_re and any(stripped.endswith(s) for s in self.special_strs):
                end = start + len(stripped)  # formatting whitespace after the end-of-turn token
            spans.append((start, end, self._terminator_start(text, start, end)))
            cursor = end
        return text, spans, msgs

    def _terminator_start(self, text: str, start: int, end: int) -> int:
        """Start of the trailing run of special tokens (and whitespace) that closes a turn."""
        pos = end
        while pos > start:
            p = len(text[start:pos].rstrip()) + start
            for s in self.special_strs:
                if text.endswith(s, start, p):
                    pos = p - len(s)
                    break
            else:
                break
        # Whitespace right before the terminator belongs to it (" </s>" in Llama-2 chat).
        return len(text[start:pos].rstrip()) + start if pos < end else end

    def _snap(self, text: str, start: int, end: int) -> int:
        """Never end a span inside a special token ("<|" shared by "<|endoftext|>" and "<|user|>")."""
        if not self.special_re or not self.special_strs:
            return end
        longest = len(self.special_strs[0])
        for m in self.special_re.finditer(text, max(start, end - longest), min(len(text), end + longest)):
            if m.start() < end < m.end():
                return max(start, m.start())
        return end

    def _locate(self, text: str, content: str, cursor: int) -> tuple[int, int] | None:
        needle = content.strip()
        if not needle:
            return None
        pos = text.find(needle, cursor)
        if pos < 0:
            return None
        end = pos + len(needle)
        if self.special_strs:  # extend over the terminator that follows the content
            tail = re.match(
                r"(?:[ \t]*(?:" + "|".join(map(re.escape, self.special_strs)) + r"))+", text[end:]
            )
            if tail:
                end += tail.end()
        return pos, end

    # ---- where message text sits (for escaping special-token strings typed in data)

    def has_special_literal(self, msgs: list[dict[str, Any]]) -> bool:
        if not self.special_re:
            return False
        for m in msgs:
            for key in ("content", "input"):
                c = m.get(key) or ""
                if any(ch in c for ch in self.special_first_chars) and self.special_re.search(c):
                    return True
        return False

    def content_regions(self, text: str, msgs: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """Where message contents sit in the rendered text, in order."""
        regions = []
        cursor = 0
        for m in msgs:
            for key in ("content", "input"):
                c = m.get(key) or ""
                for needle in (c, c.strip()):
                    if not needle:
                        continue
                    pos = text.find(needle, cursor)
                    if pos >= 0:
                        regions.append((pos, pos + len(needle)))
                        cursor = pos + len(needle)
                        break
        return regions

    def chat_record(
        self,
        msgs: list[dict[str, Any]],
        meta: dict[str, Any],
        index: int,
        *,
        escape: bool,
        tools: list[dict] | None = None,
    ) -> Rendered:
        """A conversation ready for the encoder: text, trained spans, and content regions to escape."""
        text, spans, msgs = self.chat_spans(msgs, meta, tools=tools)
        content = self.content_regions(text, msgs) if escape and self.has_special_literal(msgs) else None
        return Rendered(text, spans, content, "chat", meta, index)

    def prompt_record(
        self,
        msgs: list[dict[str, Any]],
        meta: dict[str, Any],
        index: int,
        *,
        escape: bool,
        tools: list[dict] | None = None,
    ) -> Rendered:
        """A prompt ending in the generation prompt (what inference feeds the model)."""
        prepared = self.prepare(msgs)
        text = self.text(prepared, meta, agp=True, prepared=True, tools=tools)
        content = (
            self.content_regions(text, prepared) if escape and self.has_special_literal(prepared) else None
        )
        return Rendered(text, [], content, "prompt", meta, index)


def render_conversation(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
    system_prompt: str | None = None,
    meta: dict[str, Any] | None = None,
) -> str:
    """Text of one conversation exactly as training renders it (use instead of apply_chat_template)."""
    return Renderer(tokenizer).text(
        with_system(messages, system_prompt), meta or {}, agp=add_generation_prompt
    )
