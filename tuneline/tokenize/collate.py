"""Batch rows into tensors without wasting compute on padding.

Unpacked: pad to the longest row *in the batch* (never to max_length -- padding every
sample to 512 was ~45% wasted compute on alpaca), labels padded with -100, always on the
right. transformers' `DataCollatorForSeq2Seq` builds the same tensors only from a tokenizer
whose `padding_side` is "right": it pads on the tokenizer's side, and chat tokenizers often
ship "left", which in a training batch without position_ids moves every short row's
positions. This collator needs only the pad id (evaluation builds batches from one), so the
padded path stays here.

Packed, `rows` layout (the default): the batch stays [B, L], one packed row of samples per
batch row, padded to the longest row with a pad "sample" (its own position_ids block, labels
-100), position_ids restarting at 0 per sample and NO attention_mask. transformers builds a
per-row block-diagonal causal mask from that, so attention costs B*L^2. Flattening the batch
into one [1, B*L] row instead made SDPA compute the whole (B*L)^2 square behind its mask
(~14% of a fwd+bwd step on CPU at 4x512), so it is kept only for varlen kernels
(flash-attention), which skip the masked blocks: `flatten=True`.

Packed, `flatten` layout: transformers' `DataCollatorWithFlattening`. The batch is flattened
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

Without an attention_mask a packed batch does not say which tokens are padding, so with
`count_real_tokens` (the trainer's collator) it also carries `REAL_TOKENS_KEY`, an int the
trainer pops before the forward pass for its throughput and padding-efficiency figures.

Logits only where the loss reads them (`supervised_logits`, the trainer's collator): the LM
head is the largest matmul of a small model (a 32k vocabulary at hidden 256 is 8.2 M weights
against 2.9 M in four decoder layers) and the cross-entropy over the vocabulary follows it, yet prompts,
padding and every sample's last token carry no label. The batch carries transformers' own
`logits_to_keep` as a boolean [B, L] mask of the positions whose *next* token is supervised
(`slice_logits_to_keep` flattens the hidden states to those rows before `lm_head`) and the
matching targets as a flat `shift_labels` (`ForCausalLMLoss` then skips its own shift; the
Trainer counts `num_items_in_batch` from it). Same loss, same gradients; the head and the
softmax skip every position whose next token is a prompt or padding token. `padding_free.supports_supervised_logits`
checks at startup that the model in use honours the mask.
"""

from __future__ import annotations

import itertools
from typing import Any

from tuneline.tokenize.tokenized import IGNORE_INDEX

REAL_TOKENS_KEY = "tuneline_real_tokens"


class DataCollator:
    """Callable collator for the HF Trainer / a plain DataLoader."""

    def __init__(
        self,
        pad_token_id: int,
        packed: bool,
        pad_to_multiple_of: int | None = None,
        *,
        flatten: bool = False,
        count_real_tokens: bool = False,
        supervised_logits: bool = False,
    ):
        if pad_token_id is None:
            raise ValueError("pad_token_id is required (call prepare_tokenizer first)")
        self.pad_token_id = int(pad_token_id)
        self.packed = packed
        self.pad_to_multiple_of = pad_to_multiple_of
        self.flatten = flatten
        self.count_real_tokens = count_real_tokens
        self.supervised_logits = supervised_logits
        self._flatten: Any = None
        if packed and flatten:
            from transformers import DataCollatorWithFlattening

            # pad_to_multiple_of is not used here on purpose: padding would be a fake sample.
            self._flatten = DataCollatorWithFlattening(separator_id=IGNORE_INDEX)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.packed:
            return self._with_targets(self._pad(features))
        if self._flatten is not None:
            batch = self._flatten([s for f in features for s in _samples(f)])
        else:
            batch = self._rows(features)
        if self.count_real_tokens:
            batch[REAL_TOKENS_KEY] = sum(len(f["input_ids"]) for f in features)
        # A KV cache disables transformers' packed-sequence masking (see module doc).
        return self._with_targets({**batch, "use_cache": False})

    def _with_targets(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Add `logits_to_keep` + `shift_labels` so only supervised positions reach the LM head."""
        if not self.supervised_logits:
            return batch
        return {**batch, **supervised_targets(batch["labels"])}

    def _rows(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """[B, L] packed rows; a row's padding is one extra block of positions that only attends
        to itself and carries no labels, so it can neither see nor change the real samples."""
        import torch

        longest = self._padded_length(features)
        n = len(features)
        ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        pos = torch.arange(longest, dtype=torch.long).repeat(n, 1)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.as_tensor(f.get("labels", f["input_ids"]), dtype=torch.long)
            p = f.get("position_ids")
            pos[i, :k] = torch.as_tensor(p if p is not None else range(k), dtype=torch.long)
            pos[i, k:] -= k
        return {"input_ids": ids, "labels": labels, "position_ids": pos}

    def _padded_length(self, features: list[dict[str, Any]]) -> int:
        longest = max(len(f["input_ids"]) for f in features)
        m = self.pad_to_multiple_of
        return ((longest + m - 1) // m) * m if m else longest

    def _pad(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Right-padded samples with an attention_mask; packed rows are split into their samples
        first (the fallback for models that cannot keep packed samples apart)."""
        import torch

        if any(f.get("position_ids") is not None for f in features):
            features = [s for f in features for s in _samples(f)]
        longest = self._padded_length(features)
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


def supervised_targets(labels: Any) -> dict[str, Any]:
    """`logits_to_keep` (bool [B, L]: position t predicts a supervised token t+1) and the flat
    `shift_labels` of those positions, in the order `hidden_states[mask]` flattens them."""
    import torch

    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    return {"logits_to_keep": keep, "shift_labels": shifted[keep]}


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
