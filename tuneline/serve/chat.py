"""Talking to a trained model: load it as evaluation does, render conversations with the chat
template it was trained on, generate, stop at its end-of-turn token.

`run.py generate`, `run.py chat` and the MLflow pyfunc model all go through
`generate_replies`, which follows evaluation's greedy generation
(`tuneline.evaluate.generate.generate_answers`) step for step: prompts rendered and encoded
by `encode_prompts` (special-token strings a user types stay text, one BOS iff the model
expects it), left padding within a batch, the end-of-turn ids and EOS as stop ids, the answer
cut at the first stop id and stripped. With the default (greedy) sampling a served answer is
therefore the answer evaluation scored; sampling options only add to that recipe.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tuneline.config import ProjectConfig, TokenizeConfig
from tuneline.errors import UserError
from tuneline.serve.base import recorded_base

# Written next to the weights when a model is logged to MLflow: the settings of the project
# that trained it which change how it is loaded and prompted (tokenize.*, model.dtype, ...),
# so a registered version answers the same in every process without its config.
SERVE_FILE = "tuneline_serve.json"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. temperature 0 is greedy, evaluation's decoding; None leaves the value
    of the model's own generation config in force (as evaluation does)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        bad = []
        if self.temperature < 0:
            bad.append("--temperature must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 0:
            bad.append("--top-k must be >= 0 (0 = off)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            bad.append("--top-p must be in (0, 1]")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            bad.append("--repetition-penalty must be > 0 (1 = off)")
        if self.max_new_tokens < 1:
            bad.append("--max-new-tokens must be >= 1")
        if bad:
            raise UserError("; ".join(bad))

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> Sampling:
        """Sampling from request parameters (MLflow `params`); unknown names are not sampling."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in (params or {}).items() if k in names and v is not None}
        try:
            return cls(**given)
        except TypeError as e:
            raise UserError(f"sampling parameters {given}: {e}") from e

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0}
        if self.temperature > 0:
            kwargs["temperature"] = self.temperature
        for name in ("top_k", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs


@dataclass
class ChatModel:
    """A loaded model with what generation needs beside the weights."""

    model: Any
    tokenizer: Any
    stop_ids: list[int]  # end-of-turn token(s) of the chat template, then EOS
    tokenize_cfg: TokenizeConfig
    model_dir: str

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.stop_ids[0]

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)


@dataclass
class Reply:
    text: str  # the answer, cut at the first stop id, special tokens removed, stripped
    prompt: str  # the conversation as rendered for the model
    token_ids: list[int] = field(default_factory=list)  # generated ids up to and including the stop id
    stopped: bool = False  # ended on an end-of-turn/EOS id (not on max_new_tokens)


def serving_config(model_dir: str | Path, base_dir: str = ".") -> ProjectConfig:
    """The settings a trained directory is loaded and prompted with when no project config is at
    hand: its `tuneline_serve.json` (written when it was logged to MLflow), else the defaults."""
    settings: dict[str, Any] = {}
    path = Path(model_dir) / SERVE_FILE
    if path.is_file():
        try:
            settings = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e}); delete it to load with default settings") from e
    # A full model is its own `model:`; an adapter's is the base it applies to.
    model = recorded_base(model_dir) or {"name_or_path": str(model_dir)}
    data = {
        "model": {**settings.get("model", {}), **model},
        "data": {"path": str(model_dir)},  # never read: loading a model needs no data
        "tokenize": settings.get("tokenize", {}),
        "base_dir": base_dir,
    }
    try:
        return ProjectConfig.model_validate(data)
    except ValueError as e:
        raise UserError(f"{path}: settings this tuneline cannot use: {str(e).splitlines()[0]}") from e


def own_tokenizer(model_dir: str, cfg: ProjectConfig) -> Any:
    """The tokenizer saved with the weights, which carries the chat template training used."""
    from tuneline.train.loading import load_tokenizer

    own = cfg.model.model_copy(
        update={"name_or_path": model_dir, "tokenizer": None, "from_config": None, "revision": None}
    )
    tokenizer = load_tokenizer(own, cfg.base_dir)
    if not tokenizer.chat_template:
        raise UserError(
            f"{model_dir}: its tokenizer has no chat template, so a conversation cannot be rendered the "
            "way it was trained; use a directory written by tuneline training (it saves the template)"
        )
    return tokenizer


def load_chat_model(model_dir: str | Path, cfg: ProjectConfig | None = None) -> ChatModel:
    """A trained directory (full model or adapter) -> ChatModel, loaded by evaluation's loader:
    an adapter goes on the exact base its training recorded. `cfg` (a project config) decides
    dtype, attention, trust_remote_code, tokenize settings and where relative paths resolve;
    without it the directory's `tuneline_serve.json` does."""
    from transformers.utils import logging as hf_logging

    from tuneline.evaluate.generate import load_trained_model, stop_ids
    from tuneline.tokenize import end_of_turn_token_ids

    hf_logging.disable_progress_bar()  # a chat answers on stdout; no "Loading weights" bar before it
    model_dir = str(model_dir)
    cfg = cfg or serving_config(model_dir)
    tokenizer = own_tokenizer(model_dir, cfg)
    model = load_trained_model(cfg, model_dir, len(tokenizer)).eval()
    return ChatModel(
        model, tokenizer, stop_ids(tokenizer, end_of_turn_token_ids(tokenizer)), cfg.tokenize, model_dir
    )


def check_conversation(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """A conversation to answer: role/content messages ending with the user's turn."""
    if hasattr(messages, "tolist"):  # a numpy array from a DataFrame cell
        messages = messages.tolist()
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: expected a non-empty list of {{'role', 'content'}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UserError(
                f"{where}[{i}]: expected {{'role': one of {', '.join(ROLES)}, 'content': text}}, got {m!r}"
            )
        out.append({"role": str(m["role"]), "content": m["content"]})
    if out[-1]["role"] != "user":
        raise UserError(f"{where}: the last message must be the user's (it is '{out[-1]['role']}')")
    return out


def _streamer(tokenizer: Any, on_text: Callable[[str], None]) -> Any:
    """Decoded text of the generated tokens, passed on as it becomes final (transformers'
    TextStreamer holds text back until a word is complete): special tokens, such as the
    end-of-turn, are not shown, and the answer's leading whitespace is dropped."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        started = False

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            if text:
                on_text(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """A seed makes a sampled answer repeatable without touching the caller's RNG state."""
    if seed is None:
        yield
        return
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def generate_replies(
    chat: ChatModel,
    conversations: list[list[dict[str, str]]],
    sampling: Sampling = Sampling(),
    *,
    system: str | None = None,
    batch_size: int = 8,
    on_text: Callable[[str], None] | None = None,
) -> list[Reply]:
    """The assistant's next turn for each conversation. `system` is added as the system turn to
    conversations without one; `on_text` streams the text of a single conversation."""
    from tuneline.evaluate.generate import generate_batch
    from tuneline.tokenize import encode_prompts

    if on_text is not None and len(conversations) != 1:
        raise ValueError("streaming needs exactly one conversation")
    tok, model, stop = chat.tokenizer, chat.model, chat.stop_ids
    replies: list[Reply] = []
    for i in range(0, len(conversations), max(batch_size, 1)):
        chunk = conversations[i : i + max(batch_size, 1)]
        texts, encoded = encode_prompts(tok, chunk, chat.tokenize_cfg, system_prompt=system)
        width = max(len(e) for e in encoded)
        limit = chat.max_positions
        if limit is not None and width >= limit:
            raise UserError(
                f"a prompt of {width} tokens leaves no room to answer in the model's {limit} positions; "
                "shorten the conversation"
            )
        # Never past the model's positions: a longer answer would be garbage, not an error.
        kwargs = sampling.generate_kwargs()
        if limit is not None:
            kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], limit - width)
        streamer = _streamer(tok, on_text) if on_text is not None else None
        with _seeded(sampling.seed):
            rows = generate_batch(model, encoded, pad_id=chat.pad_id, stop=stop, streamer=streamer, **kwargs)
        for text, (row, cut) in zip(texts, rows, strict=True):
            replies.append(
                Reply(
                    text=tok.decode(row[:cut], skip_special_tokens=True).strip(),
                    prompt=text,
                    token_ids=row if cut is None else row[: cut + 1],
                    stopped=cut is not None,
                )
            )
    return replies


class ChatSession:
    """A conversation kept in the model's chat template: each user turn is answered on the whole
    history so far, and the answer joins the history as the assistant's turn. When the history no
    longer fits the model's positions the oldest exchanges are dropped (the system turn stays)."""

    def __init__(self, chat: ChatModel, sampling: Sampling = Sampling(), system: str | None = None):
        self.chat = chat
        self.sampling = sampling
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.dropped = 0  # exchanges dropped to fit the context

    def reset(self) -> None:
        self.messages = []

    def _fit(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        from tuneline.tokenize import encode_prompts

        limit = self.chat.max_positions
        if limit is None:
            return messages
        while len(messages) > 1:
            _, ids = encode_prompts(
                self.chat.tokenizer, [messages], self.chat.tokenize_cfg, system_prompt=self.system
            )
            if len(ids[0]) + self.sampling.max_new_tokens <= limit:
                break
            messages = messages[2:]  # the oldest user turn and its answer
            self.dropped += 1
        return messages

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> Reply:
        messages = self._fit([*self.messages, {"role": "user", "content": text}])
        reply = generate_replies(self.chat, [messages], self.sampling, system=self.system, on_text=on_text)[0]
        self.messages = [*messages, {"role": "assistant", "content": reply.text}]
        return reply
