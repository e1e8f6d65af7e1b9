"""Chat templates and tools: the project's tools-capable ChatML, the check that a template
renders tools at all, and locating an assistant turn when tools break prefix rendering.

A template that ignores `tools` would train the model on calls to functions it was never
shown, so such a template is refused up front rather than rendered.
"""

from __future__ import annotations

import re
from typing import Any

from tuneline.errors import ConfigError, Problem

# Hermes / Qwen2.5-style ChatML with tools: schemas in the system turn, each call a JSON
# object between <tool_call> tags, results in a `tool` turn between <tool_response> tags.
# Without tools it renders exactly like `chatml`. The tags are plain text, so a tokenizer
# needs only ChatML's two control tokens and a decoded answer keeps them.
CHATML_TOOLS = (
    "{%- set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}{% if sys %}{{- sys + '\\n\\n' }}{% endif %}"
    "{{- '<tools>' }}"
    "{%- for tool in tools %}{%- set fn = tool['function'] if tool['function'] is defined else tool %}"
    "{{- '\\n' + (fn | tojson) }}{%- endfor %}"
    '{{- \'\\n</tools>\\nCall one as <tool_call>{"name": ..., "arguments": {...}}</tool_call>'
    "<|im_end|>\\n' }}"
    "{%- elif sys %}{{- '<|im_start|>system\\n' + sys + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{{- '<|im_start|>assistant\\n' }}{% if message['content'] %}{{- message['content'] + '\\n' }}{% endif %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{- '<tool_call>{\"name\": \"' + fn['name'] + '\", \"arguments\": ' + (fn['arguments'] | tojson) + '}</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>tool\\n<tool_response>' + message['content'] + '</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_READS_TOOLS = re.compile(r"\btools\b")
_READS_CALLS = re.compile(r"\btool_calls\b")


def supports_tools(template: str | None) -> bool:
    """A template renders tools if it reads both the schemas and the assistant's calls."""
    return bool(template and _READS_TOOLS.search(template) and _READS_CALLS.search(template))


def require_tools_support(template: str | None, meta: dict[str, Any]) -> None:
    """ConfigError naming the template and the fix when a record with tools meets a template without."""
    if supports_tools(template):
        return
    from tuneline.tokenize.templates import builtin_name

    name = builtin_name(template or "")
    label = f"'{name}'" if name else "in use (the tokenizer's own or template.jinja_path)"
    src = meta.get("source") or meta.get("file") or "a record"
    at = f"{src}:{meta['line']}" if meta.get("line") is not None else str(src)
    raise ConfigError(
        [
            Problem(
                "template.name",
                f"the chat template {label} does not render tools or tool calls, but {at} has a tools "
                "list; set template.name: chatml-tools (ChatML with Hermes-style tool calls), "
                "template.name: tokenizer for a model whose own template supports tools (Qwen2.5, "
                "Llama-3.1, Mistral v3, Hermes), or template.jinja_path to such a template",
            )
        ]
    )


def turn_in_text(
    renderer: Any, msgs: list[dict[str, Any]], i: int, text: str, cursor: int, tools: list[dict]
) -> tuple[int, int] | None:
    """Where assistant turn i sits in `text` when the whole conversation is not prefix-stable.

    Some templates move the tool schemas (and the system text) with the conversation: Mistral
    puts them at the last user turn, so render(messages[:i]) is not a prefix of the full text;
    the turn itself still renders the same. It is what render(messages[:i+1]) has after the
    end of render(messages[:i], generation prompt) -- where the longest tail of that prefix
    render that occurs in it ends -- found in the full text after the previous turn.
    """
    import jinja2

    try:
        before = renderer.raw(msgs[:i], agp=True, tools=tools)
        upto = renderer.raw(msgs[: i + 1], tools=tools)
    except jinja2.TemplateError:
        return None
    if upto.startswith(before):
        start = len(before)
    else:
        # The turn before it is last in both renders, so they end alike up to the turn.
        lo, hi = 0, len(before)
        while lo < hi:  # longest k with before[-k:] in upto (a shorter tail occurs if a longer one does)
            mid = (lo + hi + 1) // 2
            if before[-mid:] in upto:
                lo = mid
            else:
                hi = mid - 1
        tail = before[-lo:] if lo else ""
        content = (msgs[i - 1].get("content") or "") if i else ""
        if not tail or (content.strip() and content.strip()[-16:] not in tail):
            return None  # the tail must reach into the previous turn's text
        start = upto.rfind(tail) + len(tail)
    if len(upto) == start:
        return None
    turn = upto[start:]
    for needle in (turn, turn.rstrip()):
        pos = text.find(needle, cursor) if needle else -1
        if pos >= 0:
            return pos, pos + len(needle)
    return None


def require_tools_for(records: Any, template: str | None) -> None:
    """Refuse, before anything runs, a template without tools support for data that has tools."""
    for recs in records.splits.values():
        for rec in recs:
            if rec.tools is not None:
                require_tools_support(template, rec.meta)
                return
