"""What a fine-tuning job will bill, before it is started.

Billed training tokens = tokens in the training file x epochs (the API counts every token of
every example, weighted turns or not). Tokens are counted with tiktoken's o200k_base encoding
(the GPT-4o / GPT-4.1 family's) when its BPE file is already in tiktoken's cache; tiktoken
would otherwise download it, which this project never does at run time. Without it the
count is approximate: UTF-8 bytes / 4. Measured on English chat and instruction data with a
cl100k-family vocabulary, text runs 3.5-4.9 bytes per token, so the approximation is within
about -15% / +25% of the real count; `tokens_high` (bytes / 3) is what the cost guard checks,
so an approximate estimate stops a job only more readily, never less.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

# USD per 1M training tokens (OpenAI's published supervised fine-tuning prices).
TRAINING_PRICE_PER_MILLION = {
    "gpt-4.1-2025-04-14": 25.00,
    "gpt-4.1-mini-2025-04-14": 5.00,
    "gpt-4.1-nano-2025-04-14": 1.50,
    "gpt-4o-2024-08-06": 25.00,
    "gpt-4o-mini-2024-07-18": 3.00,
    "gpt-3.5-turbo-0125": 8.00,
    "gpt-3.5-turbo": 8.00,
}
# Tokens the chat format adds: per message (role and separators) and per example (reply priming).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_EXAMPLE = 3
# Longest example the API trains on; longer ones are truncated, so billed at most this.
MAX_TOKENS_PER_EXAMPLE = 65_536
# The API's default epoch count ("auto"): 3, raised or lowered so that examples x epochs
# stays within these bounds.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 3, 100, 25_000
MIN_DEFAULT_EPOCHS, MAX_DEFAULT_EPOCHS = 1, 25
ENCODING = "o200k_base"
_ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


def price_per_million(base_model: str, override: float | None = None) -> float | None:
    """The training price of `base_model`; a fine-tuned model (`ft:BASE:org::id`) is priced as its base."""
    if override is not None:
        return override
    name = base_model.split(":")[1] if base_model.startswith("ft:") else base_model
    return TRAINING_PRICE_PER_MILLION.get(name)


def default_epochs(n_examples: int) -> int:
    """The epochs the API picks for `n_epochs: auto`."""
    epochs = TARGET_EPOCHS
    if n_examples * epochs < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_DEFAULT_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(n_examples, 1)))
    elif n_examples * epochs > MAX_TARGET_EXAMPLES:
        epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return epochs


def _cached_encoding() -> Any:
    """o200k_base if tiktoken can load it without a download, else None (same cache rules as tiktoken)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None
    key = hashlib.sha1(_ENCODING_URL.encode()).hexdigest()
    if not os.path.isfile(os.path.join(cache_dir, key)):
        return None
    try:
        import tiktoken

        return tiktoken.get_encoding(ENCODING)
    except Exception:  # a corrupt cache entry: tiktoken would re-download it
        return None


def _texts(example: dict[str, Any]) -> list[str]:
    out = []
    for m in example["messages"]:
        out.append(m["role"])
        if isinstance(m.get("content"), str):
            out.append(m["content"])
        if m.get("tool_calls"):
            out.append(json.dumps(m["tool_calls"]))
    if example.get("tools"):
        out.append(json.dumps(example["tools"]))
    return out


@dataclass
class TokenCount:
    tokens: int  # the estimate
    tokens_high: int  # what the cost guard uses: equal to `tokens` when exact
    examples: int
    longest: int
    method: str  # "tiktoken:o200k_base" or "approx:bytes/4"

    @property
    def exact(self) -> bool:
        return self.method.startswith("tiktoken")


def count_tokens(jsonl: str, encoding: Any = None) -> TokenCount:
    """Tokens the API bills for one pass over a chat JSONL file."""
    enc = encoding if encoding is not None else _cached_encoding()
    total = high = longest = n = 0
    for line in jsonl.splitlines():
        if not line.strip():
            continue
        example = json.loads(line)
        overhead = TOKENS_PER_EXAMPLE + TOKENS_PER_MESSAGE * len(example["messages"])
        texts = _texts(example)
        if enc is not None:
            t = sum(len(enc.encode(s, disallowed_special=())) for s in texts) + overhead
            t_high = t
        else:
            nbytes = sum(len(s.encode("utf-8")) for s in texts)
            t, t_high = math.ceil(nbytes / 4) + overhead, math.ceil(nbytes / 3) + overhead
        total += min(t, MAX_TOKENS_PER_EXAMPLE)
        high += min(t_high, MAX_TOKENS_PER_EXAMPLE)
        longest = max(longest, t)
        n += 1
    method = f"tiktoken:{ENCODING}" if enc is not None else "approx:bytes/4"
    return TokenCount(tokens=total, tokens_high=high, examples=n, longest=longest, method=method)


@dataclass
class CostEstimate:
    base_model: str
    train_tokens: int
    train_tokens_high: int
    epochs: int
    billed_tokens: int
    price_per_million: float | None
    usd: float | None
    usd_high: float | None
    token_method: str
    examples: int

    def params(self) -> dict[str, Any]:
        """As MLflow params (`openai.cost.*`)."""
        return {f"openai.cost.{k}": v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        approx = "" if self.token_method.startswith("tiktoken") else " (approximate count)"
        head = (
            f"{self.examples} examples, {self.train_tokens:,} tokens{approx} x {self.epochs} epochs "
            f"= {self.billed_tokens:,} billed tokens"
        )
        if self.usd is None:
            return f"{head}; no price known for {self.base_model} (set train.openai.price_per_million_tokens)"
        high = f" (at most about ${self.usd_high:.2f})" if self.usd_high != self.usd else ""
        return f"{head} at ${self.price_per_million:.2f}/1M = ${self.usd:.2f}{high}"


def estimate_cost(
    train_jsonl: str,
    base_model: str,
    n_epochs: int | str = "auto",
    *,
    price_override: float | None = None,
    encoding: Any = None,
) -> CostEstimate:
    count = count_tokens(train_jsonl, encoding)
    epochs = default_epochs(count.examples) if n_epochs == "auto" else int(n_epochs)
    price = price_per_million(base_model, price_override)
    usd = None if price is None else count.tokens * epochs * price / 1e6
    usd_high = None if price is None else count.tokens_high * epochs * price / 1e6
    return CostEstimate(
        base_model=base_model,
        train_tokens=count.tokens,
        train_tokens_high=count.tokens_high,
        epochs=epochs,
        billed_tokens=count.tokens * epochs,
        price_per_million=price,
        usd=None if usd is None else round(usd, 4),
        usd_high=None if usd_high is None else round(usd_high, 4),
        token_method=count.method,
        examples=count.examples,
    )


def check_budget(estimate: CostEstimate, max_cost_usd: float | None) -> None:
    """Stop before anything is uploaded when the job could cost more than `train.openai.max_cost_usd`."""
    from tuneline.errors import ConfigError, Problem

    if max_cost_usd is None:
        return
    if estimate.usd_high is None:
        raise ConfigError(
            [
                Problem(
                    "train.openai.max_cost_usd",
                    f"cannot check the budget: no training price known for {estimate.base_model}; "
                    "set train.openai.price_per_million_tokens",
                )
            ]
        )
    if estimate.usd_high > max_cost_usd:
        raise ConfigError(
            [
                Problem(
                    "train.openai.max_cost_usd",
                    f"estimated cost ${estimate.usd_high:.2f} exceeds the limit ${max_cost_usd:.2f} "
                    f"({estimate.describe()}); nothing was uploaded. Raise the limit, lower "
                    "train.openai.n_epochs or use less data",
                )
            ]
        )
