"""Batch rows into tensors without wasting compute on padding.

Unpacked: pad to the longest row *in the batch* (never to max_length -- padding every
sample to 512 was ~45% wasted compute on alpaca), labels padded with -100.

Packed: padding-free. The batch is flattened into ONE row [1, total] with
position_ids restarting at 0 per sample and NO attention_mask -- the convention of
transformers' DataCollatorWithFlattening. In transformers 5.x `masking_utils.
_preprocess_mask_arguments` calls `find_packed_sequence_indices(position_ids)` when
attention_mask is None, and `create_causal_mask` then builds a block-diagonal causal
mask for sdpa/eager (flash-attention uses the same position_ids for cu_seqlens), so
samples never attend across boundaries. tests/test_packing.py checks this on a tiny
Llama with sdpa and eager: packed logits == per-sample logits.

Trap found while verifying (transformers 5.23): the packed-sequence detection is
skipped when `past_key_values` is set, and LlamaModel creates a DynamicCache whenever
`use_cache` is true (the config default, also in train mode). The model then silently
attends across samples. The packed batch therefore carries `use_cache=False`; the
trainer should also set `model.config.use_cache = False` for training.
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


class DataCollator:
    """Callable collator for the HF Trainer / a plain DataLoader."""

    def __init__(self, pad_token_id: int, packed: bool, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is required (call prepare_tokenizer first)")
        self.pad_token_id = int(pad_token_id)
        self.packed = packed
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self._flatten(features) if self.packed else self._pad(features)

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

    def _flatten(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for f in features:
            x = list(f["input_ids"])
            y = list(f.get("labels", x))
            p = list(f.get("position_ids") or range(len(x)))
            for k, v in enumerate(p):
                if v == 0:
                    y[k] = IGNORE_INDEX  # each sample's first token is never a target
            ids += x
            labels += y
            pos += p
        # pad_to_multiple_of is ignored here on purpose: padding would be a fake sample.
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
            # A KV cache disables transformers' packed-sequence masking (see module doc).
            "use_cache": False,
        }


def split_rows(split: Any) -> list[dict[str, Any]]:
    """TokenizedSplit -> the list of dicts the trainer's dataset yields."""
    rows = []
    for i in range(len(split.input_ids)):
        row = {"input_ids": split.input_ids[i], "labels": split.labels[i]}
        if split.position_ids is not None:
            row["position_ids"] = split.position_ids[i]
        rows.append(row)
    return rows
