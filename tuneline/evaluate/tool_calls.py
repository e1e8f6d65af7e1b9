"""Tool calls in generated text, per template format, and the held-out turn they are scored on.

A model tuned on a template writes calls the way that template renders them, so the
parser follows the format: Hermes / Qwen2.5 / `chatml-tools` put each call as JSON between
`<tool_call>` tags, Llama-3.1 answers with one JSON object {"name", "parameters"}, Mistral
writes `[TOOL_CALLS]` and a JSON list (the marker is a control token, so a decoded answer
may have lost it). `auto` picks by the markers present. A call is (name, arguments) with the
arguments parsed, so two calls are equal when their JSON is, whatever the spacing or key order.
"""

from __future__ import annotations

import json
import re
from typing import Any

FORMATS = ("auto", "hermes", "llama3_json", "mistral")
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

Call = dict[str, Any]  # {"name": str, "arguments": dict}


def _call(obj: Any) -> Call | None:
    """{"name", "arguments"|"parameters"} (arguments as an object or its JSON text) -> Call."""
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return {"name": obj["name"], "arguments": args}


def _json_calls(text: str) -> list[Call] | None:
    """One JSON object or a list of them (Llama-3.1 may also separate calls with ';')."""
    text = text.strip()
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parts = [p for p in text.split(";") if p.strip()]
        if len(parts) < 2:
            return None
        try:
            parsed = [json.loads(p) for p in parts]
        except json.JSONDecodeError:
            return None
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = [_call(c) for c in items]
    return calls if calls and all(c is not None for c in calls) else None  # type: ignore[return-value]


def parse_tool_calls(text: str, fmt: str = "auto") -> list[Call] | None:
    """The calls a generated answer makes, or None when it makes none that parse."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown tool call format {fmt!r}; one of {FORMATS}")
    if fmt == "auto":
        if "<tool_call>" in text:
            fmt = "hermes"
        elif "[TOOL_CALLS]" in text:
            fmt = "mistral"
        else:
            fmt = "llama3_json"
    if fmt == "hermes":
        bodies = _HERMES.findall(text)
        if not bodies:
            return None
        calls = [_json_calls(b) for b in bodies]
        if any(c is None or len(c) != 1 for c in calls):
            return None
        return [c[0] for c in calls]  # type: ignore[index]
    if fmt == "mistral":
        _, _, rest = text.rpartition("[TOOL_CALLS]")
        return _json_calls(rest)
    return _json_calls(text.removeprefix("<|python_tag|>"))


def format_for_template(template: str | None) -> str:
    """The call format a chat template writes, judged by its markers; `auto` when unsure."""
    t = template or ""
    if "<tool_call>" in t:
        return "hermes"
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if '"parameters": ' in t and "ipython" in t:
        return "llama3_json"
    return "auto"


def reference_text(calls: list[dict[str, Any]]) -> str:
    """The calls of an assistant turn as the reference string metrics receive: a JSON list."""
    out = []
    for c in calls:
        parsed = _call(c)
        if parsed is not None:
            out.append(parsed)
    return json.dumps(out, ensure_ascii=False, sort_keys=True)


def reference_calls(reference: str) -> list[Call] | None:
    """A reference written by `reference_text` -> its calls; None for a plain-text reference."""
    if not reference.startswith("["):
        return None
    try:
        parsed = json.loads(reference)
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, list) or not parsed:
        return None
    calls = [_call(c) for c in parsed]
    return calls if all(c is not None for c in calls) else None  # type: ignore[return-value]


def _key(call: Call, with_args: bool) -> str:
    return json.dumps([call["name"], call["arguments"] if with_args else None], sort_keys=True)


def judge_call(prediction: str, reference: str, fmt: str = "auto") -> tuple[int, int, int, int]:
    """(reference is a call, prediction parses, names right, names and arguments right) as 0/1."""
    ref = reference_calls(reference)
    if ref is None:
        return 0, 0, 0, 0
    pred = parse_tool_calls(prediction, fmt)
    if pred is None:
        return 1, 0, 0, 0
    names = sorted(_key(c, False) for c in pred) == sorted(_key(c, False) for c in ref)
    full = sorted(_key(c, True) for c in pred) == sorted(_key(c, True) for c in ref)
    return 1, 1, int(names), int(full)


def tool_prompt_and_reference(record: Any) -> tuple[list[dict[str, Any]], str] | None:
    """A held-out record with tools -> (the turns before its first tool call, that call as the
    reference); a record whose assistant never calls a tool is scored on its final answer."""
    msgs = record.messages
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and m.get("tool_calls"):
            return msgs[:i], reference_text(m["tool_calls"])
    if msgs and msgs[-1]["role"] == "assistant":
        return msgs[:-1], msgs[-1]["content"]
    return None
