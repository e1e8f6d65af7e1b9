"""Detect a row's shape and normalise it into a `Record`, reporting every problem found.

Shapes differ only in where the turns live; everything after this module sees one
record model. Field paths in problems use the column names *as they appear in the
file* (after `columns:` remapping is undone), because that is what the user edits.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tuneline.data.records import Record, joined_content
from tuneline.data.sources import Issue, Loc, _tname

SHAPES = ("alpaca", "chat", "sharegpt", "prompt_completion", "text", "preference")
# Shapes that read the same way; a file mixing them is not "mixed schemas".
FAMILY = {"sharegpt": "chat"}
REQUIRED = {
    "alpaca": "instruction and output (or response)",
    "chat": "messages (or conversations)",
    "sharegpt": "conversations (or messages)",
    "prompt_completion": "prompt and completion (or input and output)",
    "text": "text",
    "preference": "chosen and rejected (plus prompt, unless they are full conversations)",
}
DEFAULT_ROLES = {
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}
DROP_ROLES = ("drop", "skip")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def detect_shape(row: dict[str, Any]) -> str | None:
    """Shape from the keys present (after column remapping); None when nothing fits."""
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "messages" in row or "conversations" in row:
        msgs = row.get("messages", row.get("conversations"))
        if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict) and "from" in msgs[0]:
            return "sharegpt"
        return "chat"
    if "instruction" in row and ("output" in row or "response" in row):
        return "alpaca"
    if ("prompt" in row and "completion" in row) or ("input" in row and "output" in row):
        return "prompt_completion"
    if "text" in row:
        return "text"
    return None


def family(shape: str | None) -> str | None:
    return FAMILY.get(shape, shape) if shape else None


def majority_shape(rows: list[tuple[Any, Loc]]) -> tuple[str | None, Loc | None]:
    """The file's shape is what most rows look like, so one broken row cannot redefine it."""
    counts: Counter[str] = Counter()
    first: dict[str, Loc] = {}
    for row, loc in rows:
        s = family(detect_shape(row)) if isinstance(row, dict) else None
        if s:
            counts[s] += 1
            first.setdefault(s, loc)
    if not counts:
        return None, None
    best = max(counts, key=counts.__getitem__)  # ties: the shape seen first (Counter keeps order)
    return best, first[best]


class RowContext:
    """Collects the problems of one row; knows the original column names for field paths."""

    def __init__(self, loc: Loc, names: dict[str, str], key: str, role_map: dict[str, str]):
        self.loc = loc
        self.names = names
        self.key = key
        self.role_map = role_map
        self.issues: list[Issue] = []

    def name(self, canonical: str) -> str:
        return self.names.get(canonical, canonical)

    def err(self, path: str, message: str, reason: str) -> None:
        self.issues.append(Issue(self.loc.at(path), message, reason, record=self.loc.at()))


def remap_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """`columns: {prompt: question}` reads the file's `question` as the canonical `prompt`."""
    if not columns:
        return row
    out = dict(row)
    for canonical, col in columns.items():
        if canonical in ("role", "content"):
            continue  # message-level keys, applied inside message lists
        if col in row:
            out.pop(col, None)
            out[canonical] = row[col]
    return out


# ---------------------------------------------------------------- messages


def _content(ctx: RowContext, value: Any, path: str) -> str | None:
    """Message content: a string, or OpenAI-style parts of which only text is supported."""
    if isinstance(value, str):
        if "\x00" in value:
            ctx.err(path, "contains a NUL character (\\u0000); remove it", "NUL byte")
            return None
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts = []
        for k, part in enumerate(value):
            if part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
                ctx.err(
                    f"{path}[{k}]",
                    f"only text content parts are supported (got type {part.get('type')!r}); "
                    "drop non-text parts",
                    "wrong type",
                )
                return None
            texts.append(part["text"])
        return "".join(texts)
    ctx.err(path, f"expected a string, got {_tname(value)}", "wrong type")
    return None


def norm_messages(ctx: RowContext, value: Any, path: str) -> list[tuple[dict[str, str], int]] | None:
    """A list of {role, content} / {from, value} -> [(message, original index)], roles mapped."""
    if not isinstance(value, list):
        ctx.err(path, f"expected a list of {{role, content}} messages, got {_tname(value)}", "wrong type")
        return None
    role_key_name = ctx.names.get("role")
    content_key_name = ctx.names.get("content")
    out: list[tuple[dict[str, str], int]] = []
    ok = True
    for j, m in enumerate(value):
        p = f"{path}[{j}]"
        if not isinstance(m, dict):
            ctx.err(p, f"expected a message object {{role, content}}, got {_tname(m)}", "wrong type")
            ok = False
            continue
        rk = _first_key(m, (role_key_name, "role", "from"))
        ck = _first_key(m, (content_key_name, "content", "value"))
        if rk is None or ck is None:
            missing = "role (or from)" if rk is None else "content (or value)"
            ctx.err(
                p,
                f"missing required field {missing}; each message needs a role and a content",
                "missing field",
            )
            ok = False
            continue
        role = map_role(ctx, m[rk], f"{p}.{rk}")
        content = _content(ctx, m[ck], f"{p}.{ck}")
        if role is None or content is None:
            ok = False
            continue
        if role in DROP_ROLES:
            continue
        out.append(({"role": role, "content": content}, j))
    return out if ok else None


def _first_key(m: dict[str, Any], keys: tuple[str | None, ...]) -> str | None:
    for k in keys:
        if k is not None and k in m:
            return k
    return None


def map_role(ctx: RowContext, raw: Any, path: str) -> str | None:
    if not isinstance(raw, str):
        ctx.err(path, f"expected a role name string, got {_tname(raw)}", "wrong type")
        return None
    if raw in ctx.role_map:
        return ctx.role_map[raw]
    mapped = DEFAULT_ROLES.get(raw.strip().lower())
    if mapped is None:
        ctx.err(
            path,
            f"unknown role {raw!r}; map it with {ctx.key}.role_map (e.g. role_map: {{{raw}: assistant}}, "
            "or 'drop' to remove such turns)",
            "unknown role",
        )
    return mapped


def check_turns(
    ctx: RowContext,
    msgs: list[tuple[dict[str, str], int]],
    path: str,
    *,
    end: str,
    what: str = "conversation",
) -> None:
    """System first (optional), then user/assistant alternation, ending with `end`."""
    expected = "user"
    prev = None
    n_assistant = 0
    for pos, (m, j) in enumerate(msgs):
        role = m["role"]
        if role == "system":
            if pos != 0:
                ctx.err(
                    f"{path}[{j}].role",
                    "system turn must be the first message; move it to the start (or drop it)",
                    "system not first",
                )
            continue
        if role != expected:
            if prev is None:
                why = f"the {what} must start with a user turn (after an optional system turn), got {role}"
            else:
                why = f"two {role} turns in a row ({path}[{prev}] and [{j}]); merge them or add the missing {expected} turn"
            ctx.err(f"{path}[{j}].role", why, "broken alternation")
        if role == "assistant":
            n_assistant += 1
            if not m["content"].strip():
                ctx.err(
                    f"{path}[{j}].content",
                    "assistant content is empty or whitespace-only; write the reply or drop the record",
                    "empty assistant content",
                )
        elif not joined_content(m).strip():
            ctx.err(
                f"{path}[{j}].content",
                "user content is empty or whitespace-only; fill it in or drop the record",
                "empty user content",
            )
        expected = "assistant" if role == "user" else "user"
        prev = j
    last = next((m["role"] for m, _ in reversed(msgs) if m["role"] != "system"), None)
    if end == "assistant":
        if n_assistant == 0:
            ctx.err(
                path,
                "no assistant turn to learn from; add the assistant reply or drop the record",
                "no assistant turn",
            )
        elif last != "assistant":
            ctx.err(
                f"{path}[{msgs[-1][1]}].role",
                "the conversation ends with a user turn; the last turn must be the assistant reply (remove the trailing turn)",
                "broken alternation",
            )
    elif last != "user" and msgs:
        ctx.err(
            f"{path}[{msgs[-1][1]}].role",
            "the prompt must end with a user turn (the chosen/rejected replies follow it)",
            "broken alternation",
        )


def _plain(msgs: list[tuple[dict[str, str], int]]) -> list[dict[str, str]]:
    return [m for m, _ in msgs]


def _str_field(ctx: RowContext, row: dict[str, Any], canonical: str, *, required: bool) -> str | None:
    """A string field; None/missing allowed when optional. Reports wrong types and NULs."""
    name = ctx.name(canonical)
    if canonical not in row or row[canonical] is None:
        if required:
            ctx.err(name, f"missing required field {name!r}", "missing field")
        return None
    return _content(ctx, row[canonical], name)


def _system(ctx: RowContext, row: dict[str, Any]) -> list[tuple[dict[str, str], int]]:
    s = _str_field(ctx, row, "system", required=False)
    return [({"role": "system", "content": s}, -1)] if s and s.strip() else []


# ---------------------------------------------------------------- shapes


def normalise(ctx: RowContext, row: dict[str, Any], shape: str) -> Record | None:
    """One row -> Record, or None with the row's problems in ctx.issues."""
    from tuneline.data.feedback import read_label

    fn = _NORMALISERS[family(shape) or shape]
    rec = fn(ctx, row)
    label = read_label(ctx, row, family(shape) or shape)
    if ctx.issues:
        return None
    assert rec is not None
    rec.meta = {"source": ctx.loc.source, "line": ctx.loc.n, "shape": shape}
    if label is not None:  # desirable / undesirable answer (KTO); resolved per method by the loader
        rec.meta["label"] = label
    return rec


def _chat(ctx: RowContext, row: dict[str, Any]) -> Record | None:
    canonical = "messages" if "messages" in row else "conversations"
    if canonical not in row:
        ctx.err(
            ctx.name("messages"), "missing required field 'messages' (or 'conversations')", "missing field"
        )
        return None
    from tuneline.data.tools import is_tool_row, tool_chat

    if is_tool_row(row, canonical, ctx.names.get("role")):
        return tool_chat(ctx, row, canonical)
    path = ctx.name(canonical)
    msgs = norm_messages(ctx, row[canonical], path)
    if msgs is None:
        return None
    if not any(m["role"] == "system" for m, _ in msgs):
        msgs = _system(ctx, row) + msgs
    check_turns(ctx, msgs, path, end="assistant")
    return Record(messages=_plain(msgs), kind="chat")


def _alpaca(ctx: RowContext, row: dict[str, Any]) -> Record | None:
    instruction = _str_field(ctx, row, "instruction", required=True)
    ctx_in = "input" if row.get("input") not in (None, "") else "context"
    extra = _str_field(ctx, row, ctx_in, required=False)
    out_key = "output" if "output" in row else "response"
    if out_key not in row or row[out_key] is None:
        ctx.err(
            ctx.name("output"),
            f"missing required field {ctx.name('output')!r} (or 'response')",
            "missing field",
        )
        return None
    output = row[out_key]
    history = _history(ctx, row)
    if instruction is None or history is None:
        return None
    # The context stays a separate `input` so the alpaca template can render its "### Input:"
    # block; every other template gets it joined onto the instruction (one user turn).
    user = {"role": "user", "content": instruction}
    if extra and extra.strip():
        user["input"] = extra
    if not joined_content(user).strip():
        ctx.err(
            ctx.name("instruction"),
            "instruction is empty; write the task or drop the record",
            "empty user content",
        )
        return None
    msgs = [*_system(ctx, row), *history, (user, 0)]
    if isinstance(output, list) and len(output) >= 2 and all(isinstance(o, str) for o in output):
        # LlamaFactory "ranking" alpaca (oasst rm): output = [chosen, rejected, ...], best first.
        out = ctx.name(out_key)
        return _pair(ctx, msgs, [output[0]], [output[1]], out, sides=(f"{out}[0]", f"{out}[1]"))
    reply = _content(ctx, output, ctx.name(out_key))
    if reply is None:
        return None
    if not reply.strip():
        ctx.err(
            ctx.name(out_key),
            "output is empty or whitespace-only; write the reply or drop the record",
            "empty assistant content",
        )
        return None
    msgs.append(({"role": "assistant", "content": reply}, 0))
    return Record(messages=_plain(msgs), kind="chat")


def _history(ctx: RowContext, row: dict[str, Any]) -> list[tuple[dict[str, str], int]] | None:
    """LlamaFactory alpaca `history`: [[user, assistant], ...] turns before the instruction."""
    h = row.get("history")
    if h in (None, []):
        return []
    name = ctx.name("history")
    if not isinstance(h, list):
        ctx.err(name, f"expected a list of [user, assistant] pairs, got {_tname(h)}", "wrong type")
        return None
    out = []
    for j, pair in enumerate(h):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            ctx.err(f"{name}[{j}]", "expected a [user, assistant] pair of strings", "wrong type")
            return None
        out += [({"role": "user", "content": pair[0]}, j), ({"role": "assistant", "content": pair[1]}, j)]
    return out


def _prompt_completion(ctx: RowContext, row: dict[str, Any]) -> Record | None:
    pk, ck = ("prompt", "completion") if "prompt" in row or "completion" in row else ("input", "output")
    prompt = _turns(ctx, row, pk, "user")
    completion = _turns(ctx, row, ck, "assistant")
    if prompt is None or completion is None:
        return None
    msgs = prompt if any(m["role"] == "system" for m, _ in prompt) else _system(ctx, row) + prompt
    msgs = msgs + completion
    if not isinstance(row[pk], str) or not isinstance(row[ck], str):
        check_turns(ctx, msgs, ctx.name(pk), end="assistant")
    return Record(messages=_plain(msgs), kind="chat")


def _turns(
    ctx: RowContext, row: dict[str, Any], canonical: str, role: str
) -> list[tuple[dict[str, str], int]] | None:
    """A field that is either a string (one `role` turn) or a list of messages."""
    name = ctx.name(canonical)
    if canonical not in row or row[canonical] is None:
        ctx.err(name, f"missing required field {name!r}", "missing field")
        return None
    v = row[canonical]
    if isinstance(v, dict):
        v = [v]
    if isinstance(v, list):
        return norm_messages(ctx, v, name)
    text = _content(ctx, v, name)
    if text is None:
        return None
    if not text.strip():
        reason = "empty assistant content" if role == "assistant" else "empty user content"
        ctx.err(name, f"{name} is empty or whitespace-only; fill it in or drop the record", reason)
        return None
    return [({"role": role, "content": text}, 0)]


def _text(ctx: RowContext, row: dict[str, Any]) -> Record | None:
    text = _str_field(ctx, row, "text", required=True)
    if text is None:
        return None
    if not text.strip():
        ctx.err(ctx.name("text"), "text is empty or whitespace-only; drop the record", "empty text")
        return None
    return Record(kind="text", text=text)


def parse_transcript(s: str) -> list[dict[str, str]] | None:
    """hh-rlhf style "\\n\\nHuman: ...\\n\\nAssistant: ..." -> messages; None if not one."""
    if "Human:" not in s or "Assistant:" not in s:
        return None
    parts = _HH_TURN.split(s if s.startswith("\n\n") else "\n\n" + s.lstrip("\n"))
    if len(parts) < 3 or parts[0].strip():
        return None
    return [
        {"role": "user" if who == "Human" else "assistant", "content": text}
        for who, text in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _pref_side(
    ctx: RowContext, row: dict[str, Any], canonical: str
) -> tuple[list[tuple[dict[str, str], int]] | None, bool]:
    """chosen/rejected -> (turns, is_full_conversation)."""
    name = ctx.name(canonical)
    v = row[canonical]
    if isinstance(v, str):
        conv = parse_transcript(v)
        if conv is not None:
            return [(m, j) for j, m in enumerate(conv)], True
        if "\x00" in v:
            ctx.err(name, "contains a NUL character (\\u0000); remove it", "NUL byte")
            return None, False
        return [({"role": "assistant", "content": v}, 0)], False
    if isinstance(v, dict):
        msgs = norm_messages(ctx, [v], name)
        return msgs, False
    if isinstance(v, list):
        msgs = norm_messages(ctx, v, name)
        if msgs is None:
            return None, False
        full = bool(msgs) and msgs[0][0]["role"] != "assistant"
        return msgs, full
    ctx.err(name, f"expected a string, a message or a list of messages, got {_tname(v)}", "wrong type")
    return None, False


def _preference(ctx: RowContext, row: dict[str, Any]) -> Record | None:
    for k in ("chosen", "rejected"):
        if row.get(k) is None:
            ctx.err(ctx.name(k), f"missing required field {ctx.name(k)!r}", "missing field")
    if ctx.issues:
        return None
    chosen, c_full = _pref_side(ctx, row, "chosen")
    rejected, r_full = _pref_side(ctx, row, "rejected")
    if chosen is None or rejected is None:
        return None
    pk = next((k for k in ("prompt", "messages", "conversations") if row.get(k) is not None), None)
    if c_full and r_full:
        # Both sides are whole conversations sharing the prompt (hh-rlhf, ultrafeedback):
        # the prompt is their common prefix, cut back to end at a user turn.
        cm, rm = _plain(chosen), _plain(rejected)
        i = 0
        while i < min(len(cm), len(rm)) and cm[i] == rm[i]:
            i += 1
        while i > 0 and cm[i - 1]["role"] != "user":
            i -= 1
        if i == 0:
            ctx.err(
                ctx.name("chosen"),
                "chosen and rejected share no prompt ending in a user turn; give a separate 'prompt' field",
                "broken alternation",
            )
            return None
        prompt = chosen[:i]
        chosen, rejected = chosen[i:], rejected[i:]
        ppath = ctx.name("chosen")
        if not any(m["role"] == "system" for m, _ in prompt):
            prompt = _system(ctx, row) + prompt
    elif c_full != r_full:
        ctx.err(
            ctx.name("rejected" if c_full else "chosen"),
            "chosen and rejected must have the same form (both replies, or both full conversations)",
            "wrong type",
        )
        return None
    else:
        if pk is None:
            ctx.err(
                ctx.name("prompt"),
                "missing required field 'prompt' (or 'conversations'/'messages'); chosen/rejected are replies "
                "and need the prompt they answer",
                "missing field",
            )
            return None
        ppath = ctx.name(pk)
        prompt = _turns(ctx, row, pk, "user")
        if prompt is None:
            return None
        if not any(m["role"] == "system" for m, _ in prompt):
            prompt = _system(ctx, row) + prompt
    return _pair(ctx, prompt, chosen, rejected, ppath)


def _pair(
    ctx: RowContext,
    prompt: list[tuple[dict[str, str], int]],
    chosen: list[Any],
    rejected: list[Any],
    ppath: str,
    sides: tuple[str, str] | None = None,
) -> Record | None:
    """Validate prompt + both replies; plain strings in chosen/rejected become assistant turns."""
    cpath, rpath = sides or (ctx.name("chosen"), ctx.name("rejected"))

    def turns(side: list[Any]) -> list[tuple[dict[str, str], int]]:
        return [(({"role": "assistant", "content": s}, 0) if isinstance(s, str) else s) for s in side]

    c, r = turns(chosen), turns(rejected)
    check_turns(ctx, prompt, ppath, end="user", what="prompt")
    for name, side, path in (("chosen", c, cpath), ("rejected", r, rpath)):
        if not side:
            ctx.err(path, f"{name} has no assistant reply after the prompt", "no assistant turn")
            continue
        if side[0][0]["role"] != "assistant":
            ctx.err(
                f"{path}[{side[0][1]}].role",
                f"{name} must start with the assistant reply",
                "broken alternation",
            )
            continue
        # Reuse the alternation check on a synthetic [user, *side] so errors keep side indexes.
        sub = RowContext(ctx.loc, ctx.names, ctx.key, ctx.role_map)
        check_turns(sub, [({"role": "user", "content": "x"}, -1), *side], path, end="assistant")
        ctx.issues += sub.issues
    cm, rm = _plain(c), _plain(r)
    if not ctx.issues and cm == rm:
        ctx.err(
            cpath,
            f"chosen and rejected ({rpath}) are identical; the pair carries no preference signal, drop it",
            "chosen == rejected",
        )
    if ctx.issues:
        return None
    return Record(messages=_plain(prompt), kind="preference", chosen=cm, rejected=rm)


_NORMALISERS = {
    "alpaca": _alpaca,
    "chat": _chat,
    "prompt_completion": _prompt_completion,
    "text": _text,
    "preference": _preference,
}


def parse_rows(
    rows: list[tuple[Any, Loc]],
    *,
    fmt: str,
    columns: dict[str, str],
    role_map: dict[str, str],
    key: str,
    label: str,
) -> tuple[list[Record], list[Issue], str | None]:
    """Normalise one file's rows. Returns records, problems and the file's shape."""
    names = {canonical: col for canonical, col in columns.items()}
    mapped = [(remap_columns(r, columns) if isinstance(r, dict) else r, loc) for r, loc in rows]
    issues: list[Issue] = []
    if fmt == "auto":
        shape, first = majority_shape(mapped)
        if shape is None:
            keys = sorted(mapped[0][0].keys()) if mapped and isinstance(mapped[0][0], dict) else []
            issues.append(
                Issue(
                    label,
                    f"cannot tell the data shape from the columns {keys}; expected one of: "
                    + "; ".join(f"{s}: {REQUIRED[s]}" for s in SHAPES if s != "sharegpt")
                    + f". Rename columns with {key}.columns (e.g. columns: {{output: answer}}) or set {key}.format",
                    "unknown shape",
                    True,
                )
            )
            return [], issues, None
    else:
        shape, first = fmt, None
    records: list[Record] = []
    for row, loc in mapped:
        ctx = RowContext(loc, names, key, role_map)
        if not isinstance(row, dict):
            ctx.err(
                "",
                f"record is not an object (got {_tname(row)}); every record must be a mapping",
                "not an object",
            )
            issues += ctx.issues
            continue
        if fmt == "auto":
            own = family(detect_shape(row))
            if own is not None and own != family(shape):
                where = f" (first at {first.at()})" if first else ""
                ctx.err(
                    "",
                    f"mixed schemas: this record looks like {own} ({REQUIRED[own]}) but the file's records are "
                    f"{shape}{where}; it lacks {REQUIRED[shape]}. Fix the record or put each shape in its own source",
                    "mixed schemas",
                )
                issues += ctx.issues
                continue
        rec = normalise(ctx, row, detect_shape(row) if fmt == "auto" and detect_shape(row) else shape)
        if rec is None:
            issues += ctx.issues
        else:
            records.append(rec)
    return records, issues, shape
