"""Records -> token ids + loss labels, exactly as the trainer (and inference) will see them.

The public names live here so callers never depend on how the stage is split inside.
"""

from tuneline.tokenize.dataset import (
    IGNORE_INDEX,
    adds_bos,
    encode_for_inference,
    end_of_turn_token_ids,
    format_preference_split,
    prepare_tokenizer,
    tokenize_dataset,
    tokenize_split,
)
from tuneline.tokenize.tokenized import TokenizedDataset, TokenizedSplit, split_from_arrow, split_to_arrow

__all__ = [
    "IGNORE_INDEX",
    "TokenizedDataset",
    "TokenizedSplit",
    "adds_bos",
    "encode_for_inference",
    "end_of_turn_token_ids",
    "format_preference_split",
    "prepare_tokenizer",
    "split_from_arrow",
    "split_to_arrow",
    "tokenize_dataset",
    "tokenize_split",
]
