"""Tool-calling conversations: OpenAI `tools`/`tool_calls`/`tool` turns and ShareGPT
`function_call`/`observation` turns, normalised into one record form and validated.

Normal form (what every chat template with tools support reads):
- `Record.tools`: [{"type": "function", "function": {"name", "description", "parameters"}}];
- an assistant call turn: {"role": "assistant", "content": "", "tool_calls": [{"id", "type":
  "function", "function": {"name", "arguments": {...}}}]} with arguments parsed to an object
  (templates serialise them with `tojson`; a string would be rendered as a quoted string);
- a result turn: {"role": "tool", "content", "tool_call_id", "name"}, linked to its call.

Ids missing in the data get `call00001`-style ids (nine characters, which Mistral's
template requires), so a result always names its call. Problems use the file's field
paths, like every other shape.
"""

from __future__ import annotations

import json
from typing import Any

from tuneline.data.records import Record
from tuneline.data.sources import _tname

# Roles that carry a tool result; `function_call` is an assistant call written as JSON text.
RESULT_ROLES = ("tool", "observation", "ipython", "function")
CALL_ROLES = ("function_call",)


def _role_of(m: Any, role_key: str | None) -> Any:
    if not isinstance(m, dict):
        return None
    for k in (role_key, "role", "from"):
        if k is not None and k in m:
            return m[k]
    return None


def is_tool_row(row: dict[str, Any], canonical: str, role_key: str | None = None) -> bool:
    """Whether a chat row uses tools at all (schemas, calls or results); others stay plain chat."""
    tools = row.get("tools")
    if tools not in (None, "", [], "[]"):
        return True
    msgs = row.get(canonical)
    if not isinstance(msgs, list):
        return False
    for m in msgs:
        role = _role_of(m, role_key)
        if isinstance(m, dict) and (m.get("tool_calls") or role in RESULT_ROLES or role in CALL_ROLES):
            return True
    return False


def _json(value: Any) -> tuple[Any, str | None]:
    """(parsed value, None) or (None, why it is not JSON)."""
    if not isinstance(value, str):
        return value, None
    try:
        return json.loads(value), None
    except json.JSONDecodeError as e:
        return None, f"{e.msg} at line {e.lineno} column {e.colno}"


def parse_tools(ctx: Any, value: Any, path: str) -> list[dict[str, Any]] | None:
    """`tools`: a list (or a JSON string of one) of function schemas, bare or OpenAI-wrapped."""
    if value in (None, ""):
        return None
    parsed, why = _json(value)
    if why:
        ctx.err(
            path, f"is not valid JSON ({why}); write the tools as a JSON list of function schemas", "bad JSON"
        )
        return None
    if not isinstance(parsed, list):
        ctx.err(path, f"expected a list of function schemas, got {_tname(parsed)}", "wrong type")
        return None
    out = []
    for k, tool in enumerate(parsed):
        p = f"{path}[{k}]"
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            ctx.err(
                p,
                "expected a function schema with a non-empty 'name' ({name, description, parameters}, "
                'or {"type": "function", "function": {...}})',
                "bad tool schema",
            )
            continue
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            ctx.err(
                f"{p}.parameters", f"expected a JSON schema object, got {_tname(params)}", "bad tool schema"
            )
            continue
        out.append({"type": "function", "function": {**fn, "parameters": params}})
    return out


class _Calls:
    """Tool calls of one record: names allowed, ids handed out, calls still waiting for a result."""

    def __init__(self, ctx: Any, tools: list[dict[str, Any]] | None, tools_path: str):
        self.ctx = ctx
        self.names = [t["function"]["name"] for t in tools] if tools is not None else None
        self.tools_path = tools_path
        self.n = 0
        self.pending: list[dict[str, Any]] = []

    def call(self, raw: Any, path: str) -> dict[str, Any] | None:
        """One call ({id?, type, function: {name, arguments}} or {name, arguments}) -> normal form."""
        ctx = self.ctx
        fn = raw.get("function") if isinstance(raw, dict) and isinstance(raw.get("function"), dict) else raw
        fpath = f"{path}.function" if fn is not raw else path
        if not isinstance(fn, dict):
            ctx.err(
                path, f"expected a tool call object {{name, arguments}}, got {_tname(raw)}", "bad tool call"
            )
            return None
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            ctx.err(f"{fpath}.name", "a tool call needs the name of the function it calls", "bad tool call")
            return None
        args, why = _json(fn.get("arguments", fn.get("parameters", {})))
        if why:
            ctx.err(
                f"{fpath}.arguments",
                f"is not valid JSON ({why}); write the arguments as a JSON object",
                "bad tool arguments",
            )
            return None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            ctx.err(
                f"{fpath}.arguments",
                f"expected a JSON object of arguments, got {_tname(args)}",
                "bad tool arguments",
            )
            return None
        if self.names is None:
            ctx.err(
                self.tools_path,
                f"the record calls {name!r} ({path}) but has no '{self.tools_path}' list; add the function "
                "schemas the assistant may call",
                "call to unknown function",
            )
            return None
        if name not in self.names:
            ctx.err(
                f"{fpath}.name",
                f"calls {name!r}, which is not in the record's tools {self.names}; fix the name or add its schema",
                "call to unknown function",
            )
            return None
        self.n += 1
        cid = (
            raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"] else None
        )
        call = {
            "id": cid or f"call{self.n:05d}",
            "type": "function",
            "function": {"name": name, "arguments": args},
        }
        self.pending.append(call)
        return call

    def result(self, m: dict[str, Any], content: str, path: str, role_path: str) -> dict[str, Any] | None:
        """A result turn, linked to the waiting call it answers (by id or name, else the next one)."""
        ctx = self.ctx
        if not self.pending:
            ctx.err(
                role_path,
                "a tool result with no preceding tool call; add the assistant turn that calls the tool "
                "(tool_calls / function_call) before it, or drop or rename such turns with the data's "
                "role_map (e.g. role_map: {tool: drop})",
                "result without call",
            )
            return None
        cid, name = m.get("tool_call_id"), m.get("name")
        match = None
        for call in self.pending:
            if (cid and call["id"] == cid) or (not cid and (not name or call["function"]["name"] == name)):
                match = call
                break
        if match is None:
            want = f"tool_call_id {cid!r}" if cid else f"name {name!r}"
            waiting = [(c["id"], c["function"]["name"]) for c in self.pending]
            ctx.err(
                f"{path}.{'tool_call_id' if cid else 'name'}",
                f"{want} answers none of the calls waiting for a result {waiting}; fix it to the call's id/name",
                "result without call",
            )
            return None
        self.pending.remove(match)
        return {
            "role": "tool",
            "content": content,
            "tool_call_id": match["id"],
            "name": match["function"]["name"],
        }


def _text(ctx: Any, value: Any, path: str) -> str | None:
    """Content text; a tool result given as JSON data is kept as its JSON text."""
    from tuneline.data.shapes import _content

    if isinstance(value, dict | int | float | bool) or (
        isinstance(value, list) and not all(isinstance(p, dict) and "type" in p for p in value)
    ):
        return json.dumps(value, ensure_ascii=False)
    return _content(ctx, value, path)


def tool_chat(ctx: Any, row: dict[str, Any], canonical: str) -> Record | None:
    """A chat row with tools -> Record(tools=...), every problem of the row in ctx.issues."""
    from tuneline.data.shapes import _first_key, _system, map_role

    path = ctx.name(canonical)
    tools_path = ctx.name("tools")
    tools = parse_tools(ctx, row.get("tools"), tools_path)
    value = row[canonical]
    if not isinstance(value, list):
        ctx.err(path, f"expected a list of messages, got {_tname(value)}", "wrong type")
        return None
    calls = _Calls(ctx, tools, tools_path)
    msgs: list[tuple[dict[str, Any], int]] = []
    for j, m in enumerate(value):
        p = f"{path}[{j}]"
        if not isinstance(m, dict):
            ctx.err(p, f"expected a message object {{role, content}}, got {_tname(m)}", "wrong type")
            continue
        rk = _first_key(m, (ctx.names.get("role"), "role", "from"))
        ck = _first_key(m, (ctx.names.get("content"), "content", "value"))
        if rk is None:
            ctx.err(p, "missing required field role (or from); each message needs a role", "missing field")
            continue
        raw = m[rk]
        if isinstance(raw, str) and raw not in ctx.role_map and raw in CALL_ROLES:
            # ShareGPT: the call is the turn's JSON text, one call or a list of them.
            parsed, why = _json(m.get(ck) if ck else None)
            if why or parsed is None:
                ctx.err(
                    f"{p}.{ck or 'value'}",
                    f"is not valid JSON ({why or 'missing'}); a {raw} turn is a JSON object "
                    '{"name": ..., "arguments": {...}} (or a list of them)',
                    "bad tool call",
                )
                continue
            items = parsed if isinstance(parsed, list) else [parsed]
            made = [
                calls.call(c, f"{p}.{ck}" + (f"[{k}]" if isinstance(parsed, list) else ""))
                for k, c in enumerate(items)
            ]
            if all(made):
                msgs.append(({"role": "assistant", "content": "", "tool_calls": made}, j))
            continue
        if isinstance(raw, str) and raw not in ctx.role_map and raw in RESULT_ROLES:
            content = _text(ctx, m.get(ck) if ck else "", f"{p}.{ck or 'content'}")
            res = calls.result(m, content, p, f"{p}.{rk}") if content is not None else None
            if res is not None:
                msgs.append((res, j))
            continue
        role = map_role(ctx, raw, f"{p}.{rk}")
        if role is None or role in ("drop", "skip"):
            continue
        tc = m.get("tool_calls")
        if role == "assistant" and tc:
            if not isinstance(tc, list):
                ctx.err(
                    f"{p}.tool_calls", f"expected a list of tool calls, got {_tname(tc)}", "bad tool call"
                )
                continue
            made = [calls.call(c, f"{p}.tool_calls[{k}]") for k, c in enumerate(tc)]
            content = _text(ctx, m.get(ck) or "", f"{p}.{ck or 'content'}")
            if all(made) and content is not None:
                msgs.append(({"role": "assistant", "content": content, "tool_calls": made}, j))
            continue
        if ck is None:
            ctx.err(p, "missing required field content (or value)", "missing field")
            continue
        content = _text(ctx, m[ck], f"{p}.{ck}")
        if content is not None:
            msgs.append(({"role": role, "content": content}, j))
    if ctx.issues:
        return None
    if not any(m["role"] == "system" for m, _ in msgs):
        msgs = _system(ctx, row) + msgs
    check_tool_turns(ctx, msgs, path)
    if ctx.issues:
        return None
    has_calls = any(m.get("tool_calls") for m, _ in msgs)
    return Record(messages=[m for m, _ in msgs], kind="chat", tools=tools if (tools or has_calls) else None)


def check_tool_turns(ctx: Any, msgs: list[tuple[dict[str, Any], int]], path: str) -> None:
    """system?, then user -> assistant, where a call turn is followed by one result per call
    before the assistant goes on; the record ends with an assistant turn (an answer or a call)."""
    prev: str | None = None  # user | answer | call | result
    open_calls: list[str] = []
    for pos, (m, j) in enumerate(msgs):
        role = m["role"]
        at = f"{path}[{j}]"
        if role == "system":
            if pos != 0:
                ctx.err(
                    f"{at}.role",
                    "system turn must be the first message; move it to the start",
                    "system not first",
                )
            continue
        kind = (
            "call"
            if m.get("tool_calls")
            else ("result" if role == "tool" else ("user" if role == "user" else "answer"))
        )
        if open_calls and kind != "result":
            ctx.err(
                f"{at}.role",
                f"tool call(s) {open_calls} have no result before this {role} turn; add their tool turns",
                "missing tool result",
            )
            return
        allowed = {
            None: ("user",),
            "user": ("answer", "call"),
            "answer": ("user",),
            "call": ("result",),
            "result": ("result", "answer", "call"),
        }[prev]
        if kind not in allowed:
            expect = " or ".join(
                "a tool call" if a == "call" else f"a {a} turn" if a != "answer" else "an assistant reply"
                for a in allowed
            )
            ctx.err(
                f"{at}.role",
                f"a {role} turn here breaks the conversation order; expected {expect}",
                "broken alternation",
            )
            return
        if kind == "answer" and not m["content"].strip():
            ctx.err(
                f"{at}.content",
                "assistant content is empty; write the reply or drop the record",
                "empty assistant content",
            )
        if kind == "user" and not m["content"].strip():
            ctx.err(
                f"{at}.content", "user content is empty; fill it in or drop the record", "empty user content"
            )
        if kind == "call":
            open_calls = [c["id"] for c in m["tool_calls"]]
        elif kind == "result":
            open_calls = [c for c in open_calls if c != m["tool_call_id"]]
        prev = kind
    if prev in ("answer", "call"):
        return
    last = msgs[-1][1] if msgs else None
    ctx.err(
        f"{path}[{last}].role" if last is not None else path,
        "the conversation must end with an assistant turn (a reply or a tool call); remove the trailing turn",
        "broken alternation",
    )
