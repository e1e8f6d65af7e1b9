"""The MLflow pyfunc model: a registered version answers chat requests with tuneline's generation.

`predict` takes `{"messages": [...]}`, a list of those, or a DataFrame with a `messages`
column (what MLflow makes of a `dataframe_records` request), and returns one answer per
conversation. Request params: the `Sampling` fields (temperature, top_k, top_p,
repetition_penalty, max_new_tokens, seed), `system` (a system turn for conversations without
one) and `batch_size`. Defaults are greedy, as evaluation and `run.py generate` decode.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

from tuneline.errors import UserError
from tuneline.serve.chat import ChatModel, Sampling, check_conversation, generate_replies, load_chat_model
from tuneline.tracking import HF_MODEL_ARTIFACT


def conversations_from_input(model_input: Any) -> list[list[dict[str, str]]]:
    """Every conversation in a request, in order, checked."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a DataFrame
        if "messages" not in model_input.columns:
            raise UserError(f"expected a 'messages' column, got {list(model_input.columns)}")
        rows = list(model_input["messages"])
    elif isinstance(model_input, dict):
        if "messages" not in model_input:
            raise UserError(f"expected {{'messages': [...]}}, got keys {sorted(model_input)}")
        rows = [model_input["messages"]]
    elif isinstance(model_input, list) and all(isinstance(r, dict) and "messages" in r for r in model_input):
        rows = [r["messages"] for r in model_input]
    else:
        raise UserError(
            "expected {'messages': [{'role': ..., 'content': ...}, ...]}, a list of those, or a DataFrame "
            f"with a 'messages' column; got {type(model_input).__name__}"
        )
    return [check_conversation(m, f"messages (conversation {i})") for i, m in enumerate(rows)]


class TunelineChatModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.chat: ChatModel = load_chat_model(context.artifacts[HF_MODEL_ARTIFACT])

    # `pd.DataFrame` is what MLflow hands over after enforcing the chat signature the model is
    # logged with; a type MLflow infers no schema from, so that signature stays the contract.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[str]:
        params = dict(params or {})
        conversations = conversations_from_input(model_input)
        replies = generate_replies(
            self.chat,
            conversations,
            Sampling.from_params(params),
            system=params.get("system") or None,
            batch_size=int(params.get("batch_size") or 8),
        )
        return [r.text for r in replies]
