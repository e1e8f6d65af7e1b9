"""Records -> token ids + loss labels, exactly as the trainer will see them.

How masks are found (the robust way, cf. nanochat `render_conversation`, torchtune):
the whole conversation is rendered once with the chat template; every trained
assistant turn's character span is located by *prefix rendering* --
render(messages[:i], add_generation_prompt=True) must be a prefix of the full text,
and the turn ends where render(messages[:i+1]) stops agreeing with it. The span
covers the assistant content and its end-of-turn token(s) (so the model learns to
stop) but not formatting whitespace after them. The full text is then tokenized
*once* (batched, Rust fast path) with offsets, and tokens overlapping a span are
supervised -- the same rule as transformers' `return_assistant_tokens_mask`. Hence
the training ids are by construction identical to tokenizing the rendered text with
the saved tokenizer, which is what inference does.

Templates that are not prefix-stable (e.g. ones that rewrite earlier turns) fall
back to locating the assistant content in the rendered text; if that fails too the
record is reported as a DataError, never silently mis-masked.
"""

from __future__ import annotations

import copy
import gc
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tuneline.config.template import TemplateConfig, TokenizeConfig
from tuneline.data.records import Record, RecordSet
from tuneline.errors import ConfigError, DataError, Problem
from tuneline.tokenize.templates import (
    BUILTIN_CONTROL_TOKENS,
    builtin_name,
    compile_template,
    render,
    resolve_chat_template,
    template_variables,
)
from tuneline.tokenize.tokenized import TokenizedDataset, TokenizedSplit

log = logging.getLogger("tuneline")

IGNORE_INDEX = -100

# Tokens that are meant as padding or are explicitly unused; using one as pad keeps
# pad != eos without growing the vocabulary (no embedding resize needed).
_PAD_CANDIDATES = (
    "<|pad|>",
    "<pad>",
    "[PAD]",
    "<|finetune_right_pad_id|>",
    "<|finetune_right_pad|>",
    "<unk>",
)
_RESERVED_RE = re.compile(
    r"^<\|?(reserved_special_token_\d+|placeholder\d+|dummy_?\d+|unused\d+)\|?>$|^\[unused\d+\]$"
)


# --------------------------------------------------------------------------- tokenizer prep


def prepare_tokenizer(tokenizer: Any, template_cfg: TemplateConfig, base_dir: str = ".") -> Any:
    """Make the tokenizer train-ready and self-describing for inference.

    - sets `chat_template` so save_pretrained carries the exact training format;
    - adds a built-in template's control tokens (<|im_start|>, <|eot_id|>, ...) if the
      vocab lacks them, so the end-of-turn is ONE token a generation can stop on
      (the model's embeddings must then be resized: see `tokenizer.tuneline_prep`);
    - picks a pad token that is not EOS, from tokens the vocab already has (pad/unk/
      reserved), so a collator masking pad can never mask the stop token. If none
      exists pad stays == eos: harmless here because labels are built explicitly and
      never derived from pad ids, and we refuse to grow the vocab just for padding.
    """
    template = resolve_chat_template(tokenizer, template_cfg, base_dir)
    tokenizer.chat_template = template
    added: list[str] = []
    name = builtin_name(template)
    if name:
        vocab = tokenizer.get_vocab()
        missing = [t for t in BUILTIN_CONTROL_TOKENS[name] if t not in vocab]
        if missing:
            from tokenizers import AddedToken

            tokenizer.add_tokens(
                [AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True
            )
            added += missing
    pad_note = _ensure_pad(tokenizer)
    tokenizer.tuneline_prep = {
        "template": name or ("jinja_path" if template_cfg.jinja_path else "tokenizer"),
        "added_tokens": added,
        "vocab_size": len(tokenizer),
        "needs_resize": bool(added),
        "pad_token": tokenizer.pad_token,
        "pad": pad_note,
        "end_of_turn_token_ids": end_of_turn_token_ids(tokenizer),
    }
    return tokenizer


def _ensure_pad(tokenizer: Any) -> str:
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return "kept"
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template or ""
    for cand in _PAD_CANDIDATES:
        if cand in vocab and cand != eos and cand not in template:
            tokenizer.pad_token = cand
            return f"set to existing {cand!r}"
    reserved = sorted(
        (tid, tok)
        for tok, tid in vocab.items()
        if _RESERVED_RE.match(tok) and tok != eos and tok not in template
    )
    if reserved:
        tokenizer.pad_token = reserved[-1][
            1
        ]  # the last reserved token is the least likely to be claimed later
        return f"set to reserved {reserved[-1][1]!r}"
    if tokenizer.pad_token is None and eos is not None:
        tokenizer.pad_token = eos
    return "pad == eos (no unused token in vocab); safe: labels never derive from pad ids"


def end_of_turn_token_ids(tokenizer: Any) -> list[int]:
    """Token ids a generation should stop on: the template's end-of-turn token(s), then EOS.

    Derived from the saved chat template itself (rendering a dummy turn and reading
    the special tokens that close it), so it works on a reloaded tokenizer too.
    """
    ids: list[int] = []
    template = tokenizer.chat_template
    if isinstance(template, str) and template:
        try:
            enc = _Encoder(tokenizer, TokenizeConfig(), template=template)
            msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
            text, spans, _ = enc.chat_spans(msgs, {})
            _s, e, t = spans[-1]
            for tok in enc.specials_in(text[t:e]):
                tid = tokenizer.convert_tokens_to_ids(tok)
                if isinstance(tid, int) and tid not in ids:
                    ids.append(tid)
        except (DataError, ValueError, IndexError, TypeError) as e:
            # Generation then stops on EOS only; say so, a model that never stops is a classic failure.
            log.warning(
                "could not find the end-of-turn token of the chat template (%s); stopping on EOS only", e
            )
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# --------------------------------------------------------------------------- encoder


def _where(meta: dict[str, Any]) -> str:
    src = meta.get("source") or meta.get("file") or "record"
    line = meta.get("line")
    return f"{src}:{line}" if line is not None else str(src)


def _common_prefix_len(a: str, b: str) -> int:
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
class _Rendered:
    text: str
    spans: list[tuple[int, int, int]]  # (start, end, terminator_start) chars of trained turns
    content: list[tuple[int, int]] | None  # message content regions (only when special literals present)
    kind: str
    meta: dict[str, Any]
    index: int


class _Encoder:
    """Per-split rendering + tokenizing state (compiled template, special-token tables)."""

    def __init__(self, tokenizer: Any, cfg: TokenizeConfig, template: str | None = None):
        self.tok = tokenizer
        self.cfg = cfg
        template = template if template is not None else tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        self.template = template
        self.compiled = compile_template(template) if template else None
        self.vars = template_variables(tokenizer)
        added = tokenizer.added_tokens_decoder  # id -> AddedToken
        self.added_ids = {i for i, t in added.items() if t.content.strip()}
        self.special_strs = sorted(
            {t.content for t in added.values() if t.content.strip()}, key=len, reverse=True
        )
        self.special_re = (
            re.compile("|".join(map(re.escape, self.special_strs))) if self.special_strs else None
        )
        self.special_first_chars = {s[0] for s in self.special_strs}
        self.bos_id = tokenizer.bos_token_id
        self.bos_str = tokenizer.bos_token
        self.auto_bos = self._adds_bos()
        self.eos_id = tokenizer.eos_token_id
        self.stats: Counter = Counter()
        self._plain_cache: dict[str, list[int]] = {}

    def _adds_bos(self) -> bool:
        return adds_bos(self.tok)

    def specials_in(self, text: str) -> list[str]:
        return self.special_re.findall(text) if self.special_re else []

    # ---- rendering

    def _render(self, msgs: list[dict[str, Any]], agp: bool = False) -> str:
        return render(self.compiled, msgs, self.vars, add_generation_prompt=agp)

    def chat_spans(
        self, msgs: list[dict[str, Any]], meta: dict[str, Any]
    ) -> tuple[str, list[tuple[int, int, int]], list[dict[str, Any]]]:
        import jinja2

        try:
            text = self._render(msgs)
        except jinja2.TemplateError as e:
            if msgs and msgs[0]["role"] == "system" and len(msgs) > 1:
                # Templates like Gemma's reject a system role: fold it into the first user turn.
                merged = {**msgs[1], "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}
                msgs = [merged, *msgs[2:]]
                self.stats["system_merged"] += 1
                try:
                    text = self._render(msgs)
                except jinja2.TemplateError as e2:
                    raise DataError(
                        [Problem(_where(meta), f"chat template rejects this conversation: {e2}")]
                    ) from e2
            else:
                raise DataError(
                    [Problem(_where(meta), f"chat template rejects this conversation: {e}")]
                ) from e
        turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        if self.cfg.train_on == "last_assistant":
            turns = turns[-1:]
        spans: list[tuple[int, int, int]] = []
        cursor = 0
        for i in turns:
            span = None
            try:
                prefix = self._render(msgs[:i], agp=True)
            except jinja2.TemplateError:
                prefix = None
            if prefix is not None and len(prefix) >= cursor and text.startswith(prefix):
                start = len(prefix)
                full_i = text if i == len(msgs) - 1 else self._render(msgs[: i + 1])
                end = _common_prefix_len(full_i, text)
                if end > start:
                    span = (start, end)
            if span is None:
                span = self._locate(text, msgs[i]["content"], cursor)
                if span is not None:
                    # The end is still where render(messages[:i+1]) stops agreeing, when that is
                    # past the content (keeps the real terminator, e.g. "<|end|>\n<|endoftext|>").
                    full_i = text if i == len(msgs) - 1 else self._render(msgs[: i + 1])
                    agree = _common_prefix_len(full_i, text)
                    if agree >= span[0] + len(msgs[i]["content"].strip()):
                        span = (span[0], agree)
                if span is None:
                    raise DataError(
                        [
                            Problem(
                                _where(meta),
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

    def content_regions(self, text: str, msgs: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """Where message contents sit in the rendered text (for escaping injected specials)."""
        regions = []
        cursor = 0
        for m in msgs:
            c = m.get("content") or ""
            for needle in (c, c.strip()):
                if not needle:
                    continue
                pos = text.find(needle, cursor)
                if pos >= 0:
                    regions.append((pos, pos + len(needle)))
                    cursor = pos + len(needle)
                    break
        return regions

    # ---- tokenizing

    def encode_batch(self, texts: list[str]) -> list[Any]:
        """Batched Rust encode with offsets, no special tokens added, no truncation."""
        backend = getattr(self.tok, "backend_tokenizer", None) or getattr(self.tok, "_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch"):
            raise ConfigError(
                [
                    Problem(
                        "model.tokenizer",
                        "a fast (tokenizers-backed) tokenizer is required for offset-exact masks",
                    )
                ]
            )
        if backend.truncation is not None or backend.padding is not None:
            backend = copy.deepcopy(backend)
            backend.no_truncation()
            backend.no_padding()
        prev = backend.encode_special_tokens
        backend.encode_special_tokens = False
        try:
            encs = backend.encode_batch(texts, add_special_tokens=False)
        finally:
            backend.encode_special_tokens = prev
        return encs

    def plain_ids(self, literal: str) -> list[int]:
        """A special-token string encoded as ordinary text (never the control token)."""
        if literal not in self._plain_cache:
            nl = self.tok.encode("\n", add_special_tokens=False, split_special_tokens=True)
            ids = self.tok.encode("\n" + literal, add_special_tokens=False, split_special_tokens=True)
            # The leading newline stops SentencePiece from adding a word-start space.
            ids = (
                ids[len(nl) :]
                if ids[: len(nl)] == nl
                else self.tok.encode(literal, add_special_tokens=False, split_special_tokens=True)
            )
            self._plain_cache[literal] = ids
        return self._plain_cache[literal]


def _with_system(msgs: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    if system_prompt and (not msgs or msgs[0].get("role") != "system"):
        return [{"role": "system", "content": system_prompt}, *msgs]
    return msgs


def tokenize_split(
    records: list[Record], tokenizer: Any, cfg: TokenizeConfig, *, system_prompt: str | None = None
) -> TokenizedSplit:
    """Tokenize one split; every dropped/truncated sample is counted, none vanish silently."""
    # Millions of small lists make the cyclic GC rescan everything repeatedly (~35% of
    # the runtime at 50k records); nothing here creates reference cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _tokenize_split(records, tokenizer, cfg, system_prompt)
    finally:
        if was_enabled:
            gc.enable()


def _tokenize_split(
    records: list[Record], tokenizer: Any, cfg: TokenizeConfig, system_prompt: str | None
) -> TokenizedSplit:
    enc = _Encoder(tokenizer, cfg)
    stats: Counter = enc.stats
    rendered: list[_Rendered] = []
    problems: list[Problem] = []
    for idx, rec in enumerate(records):
        if rec.kind == "text":
            text = rec.text or ""
            rendered.append(_Rendered(text, [(0, len(text), len(text))], None, "text", rec.meta, idx))
            continue
        if rec.kind == "preference":
            raise DataError(
                [
                    Problem(
                        _where(rec.meta),
                        "preference records are not tokenized for SFT; use format_preference_split "
                        "(prompt/chosen/rejected strings rendered with the same template)",
                    )
                ]
            )
        if enc.compiled is None:
            raise ConfigError(
                [Problem("template.name", "the tokenizer has no chat template; call prepare_tokenizer first")]
            )
        msgs = _with_system(rec.messages, system_prompt)
        text, spans, msgs = enc.chat_spans(msgs, rec.meta)
        content = None
        if not cfg.allow_special_tokens_in_text and enc.special_re:
            if any(
                any(ch in (m.get("content") or "") for ch in enc.special_first_chars)
                and enc.special_re.search(m.get("content") or "")
                for m in msgs
            ):
                content = enc.content_regions(text, msgs)
        rendered.append(_Rendered(text, spans, content, "chat", rec.meta, idx))

    encoded = enc.encode_batch([r.text for r in rendered])
    L = cfg.max_length
    out_ids: list[list[int]] = []
    out_labels: list[list[int]] = []
    kept: list[int] = []
    n_straddle = 0
    n_supervised = 0
    for r, encoding in zip(rendered, encoded, strict=True):
        ids = encoding.ids
        # Token ranges of trained spans: a token is supervised iff it overlaps a span
        # (char_to_token: the rule of transformers' return_assistant_tokens_mask).
        tspans: list[tuple[int, int, int]] = []
        for s, e, t in r.spans:
            a = _token_at(encoding, s, e, 1)
            z = _token_at(encoding, e - 1, s - 1, -1)
            if a is None or z is None or z < a:
                continue
            b = z + 1
            tt = b
            if t < e:
                k = _token_at(encoding, t, e, 1)
                if k is not None:
                    tt = k if encoding.token_to_chars(k)[0] >= t else k + 1
            if encoding.token_to_chars(a)[0] < s:
                n_straddle += 1
            tspans.append((a, b, max(a, min(tt, b))))
        if r.content:
            ids, tspans, n_esc = _escape_specials(enc, ids, encoding.offsets, tspans, r.content, r.text)
            stats["special_tokens_escaped"] += n_esc
        # BOS: exactly one when the model expects it (template may already write it).
        if enc.auto_bos and (not ids or ids[0] != enc.bos_id):
            ids.insert(0, enc.bos_id)
            tspans = [(a + 1, b + 1, t + 1) for a, b, t in tspans]
        while len(ids) > 1 and enc.bos_id is not None and ids[0] == enc.bos_id and ids[1] == enc.bos_id:
            ids.pop(0)
            tspans = [(max(a - 1, 0), b - 1, max(t - 1, 0)) for a, b, t in tspans]
            stats["double_bos_removed"] += 1
        if r.kind == "text" and enc.eos_id is not None:
            ids.append(enc.eos_id)
            tspans = [(a, len(ids), len(ids) - 1) for a, _b, _t in tspans] or [(0, len(ids), len(ids) - 1)]
        if cfg.train_on_inputs and r.kind == "chat":
            sup = [(0, len(ids))]
        else:
            sup = [(a, b) for a, b, _ in tspans]
        if len(ids) > L:
            if cfg.overflow == "drop":
                stats["dropped_too_long"] += 1
                continue
            if cfg.overflow == "error":
                problems.append(
                    Problem(
                        _where(r.meta),
                        f"{len(ids)} tokens > tokenize.max_length {L} "
                        "(set tokenize.overflow: truncate|drop or raise max_length)",
                    )
                )
                continue
            ids, sup = _truncate(ids, tspans, sup, L, r.kind, cfg.train_on_inputs)
            stats["truncated"] += 1
        labels = [IGNORE_INDEX] * len(ids)
        count = 0
        for a, b in sup:
            a = max(a, 1)  # position 0 is never predicted by a causal LM; keeps packing boundaries clean
            if b > a:
                labels[a:b] = ids[a:b]
                count += b - a
        if count == 0:
            stats["dropped_no_supervised"] += 1
            continue
        n_supervised += count
        out_ids.append(ids)
        out_labels.append(labels)
        kept.append(r.index)
    if problems:
        raise DataError(problems, header=f"{len(problems)} sample(s) exceed tokenize.max_length {L}")
    tokens = sum(len(x) for x in out_ids)
    supervised = n_supervised
    split_stats: dict[str, Any] = {
        "n_in": len(records),
        "n_out": len(out_ids),
        "dropped_too_long": stats["dropped_too_long"],
        "truncated": stats["truncated"],
        "dropped_no_supervised": stats["dropped_no_supervised"],
        "supervised_tokens": supervised,
        "tokens": tokens,
        "max_len": max((len(x) for x in out_ids), default=0),
        "mean_len": round(tokens / len(out_ids), 2) if out_ids else 0.0,
        "supervised_fraction": round(supervised / tokens, 4) if tokens else 0.0,
        "special_tokens_escaped": stats["special_tokens_escaped"],
        "prefix_fallbacks": stats["prefix_fallbacks"],
        "system_merged": stats["system_merged"],
        "double_bos_removed": stats["double_bos_removed"],
        "boundary_straddles": n_straddle,
    }
    return TokenizedSplit(input_ids=out_ids, labels=out_labels, stats=split_stats, record_index=kept)


def _token_at(encoding: Any, pos: int, stop: int, step: int) -> int | None:
    """Index of the token covering char `pos`, scanning towards `stop` over uncovered chars."""
    for p in range(pos, stop, step):
        k = encoding.char_to_token(p)
        if k is not None:
            return k
    return None


def _escape_specials(
    enc: _Encoder,
    ids: list[int],
    offs: list[tuple[int, int]],
    tspans: list[tuple[int, int, int]],
    regions: list[tuple[int, int]],
    text: str,
) -> tuple[list[int], list[tuple[int, int, int]], int]:
    """Replace control tokens that came from message *content* by their plain-text encoding.

    Same intent as transformers' `sanitize_control_tokens`: only tokens the template
    wrote are control tokens; a user typing "<|im_end|>" must not end a turn.
    """
    new_ids: list[int] = []
    index_map: list[int] = []  # old index -> new index
    n = 0
    for tid, (s, e) in zip(ids, offs, strict=True):
        index_map.append(len(new_ids))
        if tid in enc.added_ids and any(rs <= s < re_ for rs, re_ in regions):
            # The covered text, not just the token's literal: lstrip/rstrip added tokens
            # (Phi-3's) also swallow neighbouring whitespace, which must survive.
            plain = enc.plain_ids(text[s:e])
            new_ids += plain
            n += 1
        else:
            new_ids.append(tid)
    index_map.append(len(new_ids))
    tspans = [(index_map[a], index_map[b], index_map[t]) for a, b, t in tspans]
    return new_ids, tspans, n


def _truncate(
    ids: list[int],
    tspans: list[tuple[int, int, int]],
    sup: list[tuple[int, int]],
    L: int,
    kind: str,
    train_on_inputs: bool,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Cut to L tokens keeping a learnable stop.

    Prefer cutting after the last assistant turn that fits whole (no half answers
    learned). If even the first trained turn does not fit, cut inside it and re-attach
    its end-of-turn token(s) so the last kept supervised span still ends with a stop.
    Raw text is simply cut (a truncated document has not ended).
    """
    if kind == "text":
        return ids[:L], [(a, min(b, L)) for a, b in sup if a < L]
    whole = [(a, b, t) for a, b, t in tspans if b <= L]
    if whole:
        cut = whole[-1][1]
        return ids[:cut], [(a, min(b, cut)) for a, b in sup if a < cut]
    if not tspans:
        return ids[:L], [(a, min(b, L)) for a, b in sup if a < L]
    a, b, t = tspans[0]
    term = ids[t:b]
    keep = L - len(term)
    if keep <= a:  # the prompt alone fills max_length: nothing left to learn
        return ids[:L], []
    new = ids[:keep] + term
    if train_on_inputs:
        return new, [(0, len(new))]
    return new, [(a, len(new))]


# --------------------------------------------------------------------------- dataset level


def _padding_efficiency(lengths: list[int], batch_size: int) -> float:
    """Real / processed tokens with dynamic padding to the batch's longest, in data order."""
    real = sum(lengths)
    processed = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        processed += max(chunk) * len(chunk)
    return round(real / processed, 4) if processed else 1.0


def tokenize_dataset(
    rs: RecordSet,
    tokenizer: Any,
    cfg: TokenizeConfig,
    *,
    system_prompt: str | None = None,
    audit_examples: int = 3,
    batch_size: int = 8,
) -> TokenizedDataset:
    """All splits, packed train/validation when cfg.packing, plus stats and an audit."""
    from tuneline.tokenize.packing import pack_split
    from tuneline.tokenize.preview import audit_rows

    splits: dict[str, TokenizedSplit] = {}
    stats: dict[str, Any] = {}
    audit: list[dict[str, Any]] = []
    for name, records in rs.splits.items():
        if records and records[0].kind == "preference":
            continue
        split = tokenize_split(records, tokenizer, cfg, system_prompt=system_prompt)
        lengths = [len(x) for x in split.input_ids]
        split.stats["padding_efficiency_max_length"] = (
            round(sum(lengths) / (len(lengths) * cfg.max_length), 4) if lengths else 1.0
        )
        if name == "train":
            audit = audit_rows(split, records, tokenizer, audit_examples, split_name=name)
        if cfg.packing and name in ("train", "validation"):
            split = pack_split(split, cfg.max_length)
        else:
            split.stats["padding_efficiency"] = _padding_efficiency(lengths, batch_size)
        splits[name] = split
        stats[name] = dict(split.stats)
    train = splits.get("train")
    if train is not None:
        stats["padding_efficiency"] = train.stats.get("padding_efficiency")
        stats["supervised_tokens"] = train.stats.get("supervised_tokens")
        stats["tokens"] = train.stats.get("tokens")
    stats["packing"] = cfg.packing
    stats["max_length"] = cfg.max_length
    stats["end_of_turn_token_ids"] = end_of_turn_token_ids(tokenizer)
    prep = getattr(tokenizer, "tuneline_prep", None)
    if prep:
        stats["tokenizer"] = prep
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return TokenizedDataset(splits=splits, stats=stats, audit=audit, chat_template=template)


def format_preference_split(
    records: list[Record], tokenizer: Any, *, system_prompt: str | None = None
) -> list[dict[str, str]]:
    """Preference pairs as prompt/chosen/rejected strings rendered with the training template.

    DPO trainers tokenize these themselves; rendering here keeps the format identical
    to SFT (prompt ends with the generation prompt; completions end with the turn's
    end-of-turn token).
    """
    enc = _Encoder(tokenizer, TokenizeConfig())
    out = []
    for rec in records:
        msgs = _with_system(rec.messages, system_prompt)
        prompt = enc._render(msgs, agp=True)
        row = {"prompt": prompt}
        for key in ("chosen", "rejected"):
            full = enc._render(msgs + list(getattr(rec, key) or []))
            if not full.startswith(prompt):
                raise DataError(
                    [Problem(_where(rec.meta), "chat template is not prefix-stable for this pair")]
                )
            row[key] = full[len(prompt) :]
        out.append(row)
    return out


def encode_for_inference(tokenizer: Any, text: str) -> list[int]:
    """Encode a rendered prompt the way training encoded it: one BOS iff the tokenizer adds one.

    Chat templates that do not write BOS themselves (Zephyr on the Llama-2 tokenizer)
    would otherwise be scored or generated from an input the model never saw.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if not adds_bos(tokenizer) or (ids and ids[0] == bos):
        return ids
    return [bos, *ids]


def adds_bos(tokenizer: Any) -> bool:
    """The model expects BOS iff its tokenizer adds one by itself; training and inference ask here."""
    if tokenizer.bos_token_id is None:
        return False
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(with_sp) and with_sp[0] == tokenizer.bos_token_id
