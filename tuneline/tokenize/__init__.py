"""Records -> token ids + loss labels, exactly as the trainer (and inference) will see them.

The stage, one job per module: `tokenizer` (prepare it, BOS rule), `render` (conversation
-> text + supervised spans), `encode` (text + spans -> ids + labels, truncation),
`dataset` (a split: stats, CPT blocks, packing call), `preference` (DPO/ORPO pairs),
`packing`, `collate`, `tokenized` (the data types), `preview`.
The public names live here so callers never depend on how the stage is split inside.
"""

from tuneline.tokenize.dataset import tokenize_dataset, tokenize_split
from tuneline.tokenize.encode import encode_prompts
from tuneline.tokenize.preference import (
    PretokenizedPreferences,
    format_preference_split,
    preference_dataset,
    preference_tokenize_config,
    tokenize_preference_split,
)
from tuneline.tokenize.render import render_conversation
from tuneline.tokenize.tokenized import (
    IGNORE_INDEX,
    TokenizedDataset,
    TokenizedSplit,
    load_tokenized,
    save_tokenized,
    split_from_arrow,
    split_to_arrow,
)
from tuneline.tokenize.tokenizer import (
    adds_bos,
    encode_for_inference,
    end_of_turn_token_ids,
    prepare_tokenizer,
)

__all__ = [
    "IGNORE_INDEX",
    "PretokenizedPreferences",
    "TokenizedDataset",
    "TokenizedSplit",
    "adds_bos",
    "encode_for_inference",
    "encode_prompts",
    "end_of_turn_token_ids",
    "format_preference_split",
    "load_tokenized",
    "preference_dataset",
    "preference_tokenize_config",
    "prepare_tokenizer",
    "render_conversation",
    "save_tokenized",
    "split_from_arrow",
    "split_to_arrow",
    "tokenize_dataset",
    "tokenize_preference_split",
    "tokenize_split",
]
