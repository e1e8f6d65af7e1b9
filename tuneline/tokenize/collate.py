"""Batch rows into tensors without wasting compute on padding.

Unpacked: pad to the longest row *in the batch* (never to max_length -- padding every
sample to 512 was ~45% wasted compute on alpaca), labels padded with -100, always on the
right. transformers' `DataCollatorForSeq2Seq` builds the same tensors only from a tokenizer
whose `padding_side` is "right": it pads on the tokenizer's side, and chat tokenizers often
ship "left", which in a training batch without position_ids moves every short row's
positions. This collator needs only the pad id (evaluation builds batches from one), so the
padded path stays here.

Packed: padding-free, by transformers' `DataCollatorWithFlattening`. The batch is flattened
into ONE row [1, total] with position_ids restarting at 0 per sample, the first label of each
sample -100 and NO attention_mask. Our packed rows already hold several samples (position_ids
restart inside a row), so they are split back into samples first: the library then gives
exactly the positions and labels the rows carried. In transformers 5.x
`masking_utils._preprocess_mask_arguments` calls `find_packed_sequence_indices(position_ids)`
when attention_mask is None, and `create_causal_mask` then builds a block-diagonal causal
mask for sdpa/eager (flash-attention uses the same position_ids for cu_seqlens), so samples
never attend across boundaries. tests/test_packing.py checks this on a tiny Llama with sdpa
and eager: packed logits == per-sample logits.

Trap found while verifying (transformers 5.23): the packed-sequence detection is
skipped when `past_key_values` is set, and LlamaModel creates a DynamicCache whenever
`use_cache` is true (the config default, also in train mode). The model then silently
attends across samples. The packed batch therefore carries `use_cache=False` (the library
collator does not); the trainer also sets `model.config.use_cache = False` for training.
"""

from __future__ import annotations

import itertools
from typing import Any

from tuneline.tokenize.tokenized import IGNORE_INDEX


class DataCollator:
    """Callable collator for the HF Trainer / a plain DataLoader."""

    def __init__(self, pad_token_id: int, packed: bool, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is required (call prepare_tokenizer first)")
        self.pad_token_id = int(pad_token_id)
        self.packed = packed
        self.pad_to_multiple_of = pad_to_multiple_of
        self._flatten: Any = None
        if packed:
            from transformers import DataCollatorWithFlattening

            # pad_to_multiple_of is not used here on purpose: padding would be a fake sample.
            self._flatten = DataCollatorWithFlattening(separator_id=IGNORE_INDEX)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.packed:
            return self._pad(features)
        batch = self._flatten([s for f in features for s in _samples(f)])
        # A KV cache disables transformers' packed-sequence masking (see module doc).
        return {**batch, "use_cache": False}

    def _pad(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        m = self.pad_to_multiple_of
        if m:
            longest = ((longest + m - 1) // m) * m
        n = len(features)
        ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            lab = f.get("labels", f["input_ids"])
            labels[i, :k] = torch.as_tensor(lab, dtype=torch.long)
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _samples(row: dict[str, Any]) -> list[dict[str, list[int]]]:
    """A packed row back into its samples: one starts wherever position_ids restart at 0."""
    ids = list(row["input_ids"])
    labels = list(row.get("labels", ids))
    pos = row.get("position_ids")
    starts = [0] if pos is None else [k for k, p in enumerate(pos) if p == 0 or k == 0]
    bounds = [*starts, len(ids)]
    return [{"input_ids": ids[a:b], "labels": labels[a:b]} for a, b in itertools.pairwise(bounds) if b > a]


def split_rows(split: Any) -> list[dict[str, Any]]:
    """TokenizedSplit -> the list of dicts the trainer's dataset yields."""
    rows = []
    for i in range(len(split.input_ids)):
        row = {"input_ids": split.input_ids[i], "labels": split.labels[i]}
        if split.position_ids is not None:
            row["position_ids"] = split.position_ids[i]
        rows.append(row)
    return rows
