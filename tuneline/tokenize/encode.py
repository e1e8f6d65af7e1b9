"""Rendered text + character spans -> token ids + token spans, labels and the truncation policy.

The full text is tokenized *once* (batched, Rust fast path) with offsets, and tokens
overlapping a span are supervised -- the same rule as transformers'
`return_assistant_tokens_mask`. Hence the ids are by construction those of tokenizing
the rendered text with the saved tokenizer, which is what inference does; the only
deliberate differences are the two every caller needs: special-token strings typed in
message content become plain text, and BOS is present exactly once iff the model
expects it.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tuneline.config.template import TokenizeConfig
from tuneline.errors import ConfigError, Problem
from tuneline.tokenize.render import Rendered, Renderer, with_system
from tuneline.tokenize.tokenized import IGNORE_INDEX
from tuneline.tokenize.tokenizer import adds_bos

TokenSpan = tuple[int, int, int]  # (start, end, terminator_start) token indexes of a trained turn


@dataclass
class Encoded:
    ids: list[int]
    spans: list[TokenSpan]
    straddles: int  # spans whose first token also covers text before the span


class Encoder:
    """Per-split tokenizing state: the renderer, special-token ids, BOS rule, counters."""

    def __init__(self, tokenizer: Any, cfg: TokenizeConfig, renderer: Renderer | None = None):
        self.tok = tokenizer
        self.cfg = cfg
        self.renderer = renderer or Renderer(tokenizer, train_on=cfg.train_on)
        self.added_ids = {i for i, t in tokenizer.added_tokens_decoder.items() if t.content.strip()}
        self.bos_id = tokenizer.bos_token_id
        self.auto_bos = adds_bos(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.stats: Counter = self.renderer.stats
        self._plain_cache: dict[str, list[int]] = {}

    @property
    def escape(self) -> bool:
        return not self.cfg.allow_special_tokens_in_text

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

    def encode(self, rendered: list[Rendered]) -> list[Encoded]:
        """Token ids and token spans of each rendered text: escaped specials, one BOS iff expected."""
        out = []
        for r, encoding in zip(rendered, self.encode_batch([r.text for r in rendered]), strict=True):
            ids = list(encoding.ids)
            tspans: list[TokenSpan] = []
            straddles = 0
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
                    straddles += 1
                tspans.append((a, b, max(a, min(tt, b))))
            if r.content:
                ids, tspans, n_esc = self._escape(ids, encoding.offsets, tspans, r.content, r.text)
                self.stats["special_tokens_escaped"] += n_esc
            ids, tspans = self._one_bos(ids, tspans)
            out.append(Encoded(ids, tspans, straddles))
        return out

    def _one_bos(self, ids: list[int], tspans: list[TokenSpan]) -> tuple[list[int], list[TokenSpan]]:
        """Exactly one BOS when the model expects it (the template may already write it)."""
        if self.auto_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
            tspans = [(a + 1, b + 1, t + 1) for a, b, t in tspans]
        while len(ids) > 1 and self.bos_id is not None and ids[0] == self.bos_id and ids[1] == self.bos_id:
            ids.pop(0)
            tspans = [(max(a - 1, 0), b - 1, max(t - 1, 0)) for a, b, t in tspans]
            self.stats["double_bos_removed"] += 1
        return ids, tspans

    def _escape(
        self,
        ids: list[int],
        offs: list[tuple[int, int]],
        tspans: list[TokenSpan],
        regions: list[tuple[int, int]],
        text: str,
    ) -> tuple[list[int], list[TokenSpan], int]:
        """Replace control tokens that came from message *content* by their plain-text encoding.

        Same intent as transformers' `sanitize_control_tokens`: only tokens the template
        wrote are control tokens; a user typing "<|im_end|>" must not end a turn.
        """
        new_ids: list[int] = []
        index_map: list[int] = []  # old index -> new index
        n = 0
        for tid, (s, e) in zip(ids, offs, strict=True):
            index_map.append(len(new_ids))
            if tid in self.added_ids and any(rs <= s < re_ for rs, re_ in regions):
                # The covered text, not just the token's literal: lstrip/rstrip added tokens
                # (Phi-3's) also swallow neighbouring whitespace, which must survive.
                new_ids += self.plain_ids(text[s:e])
                n += 1
            else:
                new_ids.append(tid)
        index_map.append(len(new_ids))
        tspans = [(index_map[a], index_map[b], index_map[t]) for a, b, t in tspans]
        return new_ids, tspans, n


def _token_at(encoding: Any, pos: int, stop: int, step: int) -> int | None:
    """Index of the token covering char `pos`, scanning towards `stop` over uncovered chars."""
    for p in range(pos, stop, step):
        k = encoding.char_to_token(p)
        if k is not None:
            return k
    return None


def truncate(
    ids: list[int], tspans: list[TokenSpan], sup: list[tuple[int, int]], L: int, train_on_inputs: bool
) -> tuple[list[int], list[tuple[int, int]]]:
    """Cut a conversation to L tokens keeping a learnable stop.

    Prefer cutting after the last assistant turn that fits whole (no half answers
    learned). If even the first trained turn does not fit, cut inside it and re-attach
    its end-of-turn token(s) so the last kept supervised span still ends with a stop.
    """
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


def labels_for(ids: list[int], sup: list[tuple[int, int]]) -> tuple[list[int], int]:
    """Labels supervising `sup` token ranges, and how many tokens that is.

    Position 0 is never predicted by a causal LM; leaving it unsupervised also keeps
    packing boundaries clean.
    """
    labels = [IGNORE_INDEX] * len(ids)
    count = 0
    for a, b in sup:
        a = max(a, 1)
        if b > a:
            labels[a:b] = ids[a:b]
            count += b - a
    return labels, count


def encode_prompts(
    tokenizer: Any,
    conversations: list[list[dict[str, Any]]],
    cfg: TokenizeConfig | None = None,
    *,
    system_prompt: str | None = None,
    metas: list[dict[str, Any]] | None = None,
    tools: list[list[dict[str, Any]] | None] | None = None,
) -> tuple[list[str], list[list[int]]]:
    """Generation prompts (texts, ids) rendered and encoded exactly as training encodes a prompt.

    `metas` (record provenance) lets a template error name the record it came from; `tools`
    (per conversation) are the function schemas its record was trained with.
    """
    enc = Encoder(tokenizer, cfg or TokenizeConfig())
    rendered = [
        enc.renderer.prompt_record(
            with_system(m, system_prompt),
            metas[i] if metas else {},
            i,
            escape=enc.escape,
            tools=tools[i] if tools else None,
        )
        for i, m in enumerate(conversations)
    ]
    return [r.text for r in rendered], [e.ids for e in enc.encode(rendered)]
