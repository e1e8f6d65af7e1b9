"""The tokenizer as training and inference both use it: template, control tokens, pad, BOS rule.

`prepare_tokenizer` makes a loaded tokenizer train-ready and self-describing (its saved
chat template is the training format); `adds_bos` is the one BOS probe training and
inference both ask, so a prompt is never scored from an input the model never saw.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from tuneline.config.template import TemplateConfig
from tuneline.errors import DataError
from tuneline.tokenize.render import Renderer
from tuneline.tokenize.templates import BUILTIN_CONTROL_TOKENS, builtin_name, resolve_chat_template

log = logging.getLogger("tuneline")

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
        # The last reserved token is the least likely to be claimed later.
        tokenizer.pad_token = reserved[-1][1]
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
            renderer = Renderer(tokenizer, template=template)
            msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
            text, spans, _ = renderer.chat_spans(msgs, {})
            _s, e, t = spans[-1]
            for tok in renderer.specials_in(text[t:e]):
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
