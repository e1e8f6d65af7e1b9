"""Which batch layout a model gets for packed rows, decided once per model at startup.

Packed rows are only correct if the model keeps samples apart given per-sample position ids
and no attention mask (transformers 5 derives block-diagonal masks from them for sdpa/eager;
varlen flash kernels derive cu_seqlens from them on a flattened batch). Architectures that
ignore position ids for masking, or custom attention code, would silently attend across
samples, so the model in use is asked directly: a two-sample packed row must give the second
sample the same logits as running it alone. A model that fails falls back, with a warning, to
the padded batches of the unpacked path (packed rows split back into their samples).
"""

from __future__ import annotations

import logging
from typing import Any

from tuneline.tokenize.collate import DataCollator

logger = logging.getLogger(__name__)

# Attention implementations with a variable-length kernel: a flattened [1, total] batch costs
# only the per-sample blocks; a [B, L] batch would not be split by them at all.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")
_PROBE_LENGTHS = (7, 5)


def uses_varlen_attention(model: Any) -> bool:
    impl = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    return impl in VARLEN_ATTENTION or impl.endswith(("flash-attn", "flash-attn3"))


def attention_respects_packing(model: Any, *, flatten: bool | None = None) -> bool:
    """True when a packed row's second sample gets the logits it gets alone (eval mode, no grad).

    The tolerance is relative to the logits' scale: bf16 kernels differ in the last bits between
    shapes, while attending across samples moves the logits by orders of magnitude more."""
    import torch

    flatten = uses_varlen_attention(model) if flatten is None else flatten
    a_len, b_len = _PROBE_LENGTHS
    # Any valid ids do; a PEFT wrapper around the embeddings (trainable token rows) does not expose
    # num_embeddings, the config always has the vocabulary size.
    vocab = model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (a_len + b_len,), generator=gen).tolist()
    row = {"input_ids": ids, "labels": ids, "position_ids": [*range(a_len), *range(b_len)]}
    batch = DataCollator(0, packed=True, flatten=flatten)([row])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(
                input_ids=batch["input_ids"].to(device),
                position_ids=batch["position_ids"].to(device),
                use_cache=False,
            ).logits[0, a_len:]
            alone = model(input_ids=torch.tensor([ids[a_len:]], device=device), use_cache=False).logits[0]
    except Exception as e:  # an architecture that cannot take position ids this way
        logger.debug("packing probe failed: %s", e)
        return False
    finally:
        model.train(was_training)
    diff = (packed.float() - alone.float()).abs().max().item()
    scale = max(alone.float().abs().max().item(), 1e-6)
    tol = 1e-4 if alone.dtype == torch.float32 else 2e-2
    return diff <= tol * scale


def supports_supervised_logits(model: Any) -> bool:
    """True when the model honours a boolean [B, L] `logits_to_keep` (transformers'
    `slice_logits_to_keep`): the kept rows' logits equal the full forward's at those positions.

    Most decoder-only models in transformers 5 slice through that helper; one that slices only
    by an int (or ignores the argument) would misalign logits and targets, so it is asked."""
    import torch

    vocab = model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(1)
    n = sum(_PROBE_LENGTHS)
    device = next(model.parameters()).device
    ids = torch.randint(1, vocab, (1, n), generator=gen).to(device)
    keep = torch.zeros((1, n), dtype=torch.bool, device=device)
    keep[0, [1, 4, n - 2]] = True
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = model(input_ids=ids, use_cache=False).logits[keep]
            kept = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
    except Exception as e:  # no logits_to_keep argument, or int-only slicing
        logger.debug("logits_to_keep probe failed: %s", e)
        return False
    finally:
        model.train(was_training)
    if tuple(kept.shape) != tuple(full.shape):
        return False
    diff = (kept.float() - full.float()).abs().max().item()
    scale = max(full.float().abs().max().item(), 1e-6)
    return diff <= (1e-4 if full.dtype == torch.float32 else 2e-2) * scale


def collator_for(
    model: Any, pad_token_id: int, packed: bool, *, pad_to_multiple_of: int | None = None, training: bool
) -> DataCollator:
    """The collator for `model`: packed rows in the layout its attention handles, or padded
    samples when it does not keep packed samples apart; for training, logits only at supervised
    positions when the model supports it."""
    targets = training and supports_supervised_logits(model)
    if not packed:
        return DataCollator(
            pad_token_id, False, pad_to_multiple_of, count_real_tokens=training, supervised_logits=targets
        )
    flatten = uses_varlen_attention(model)
    if not attention_respects_packing(model, flatten=flatten):
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        logger.warning(
            "model type %s does not keep packed samples apart (per-sample position ids are not used for "
            "masking): training on padded batches of the same samples instead. Set tokenize.packing=false "
            "to skip packing for this model.",
            model_type,
        )
        return DataCollator(
            pad_token_id, False, pad_to_multiple_of, count_real_tokens=training, supervised_logits=targets
        )
    return DataCollator(
        pad_token_id,
        True,
        None if flatten else pad_to_multiple_of,
        flatten=flatten,
        count_real_tokens=training,
        supervised_logits=targets,
    )


class GroupedRowSampler:
    """Rows (packed rows, or single samples when packing is off) in batches of similar length,
    batches in random order.

    A [B, L] batch is padded to its longest row, and best-fit packing leaves rows of uneven fill
    (one long sample plus what fits beside it), so random batches waste ~15% on padding with
    alpaca-like lengths; unpacked samples waste ~35%. transformers' `LengthGroupedSampler`
    (`train_sampling_strategy="group_by_length"`) draws from the global RNG and puts the longest
    batch first; this one is seeded per epoch so a resumed run replays the same order. Rows are shuffled, cut into groups of up to 50 batches, each group
    sorted by length and cut into batches, and the batches shuffled: padding drops to a few
    percent while no batch order follows length. Seeded by (seed, epoch), so a resumed run
    replays the same order (the Trainer calls `set_epoch`)."""

    GROUP_BATCHES = 50

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        import torch

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=gen).tolist()
        size = self.GROUP_BATCHES * self.batch_size
        batches: list[list[int]] = []
        for g in range(0, len(order), size):
            group = sorted(order[g : g + size], key=lambda i: -self.lengths[i])
            batches += [group[k : k + self.batch_size] for k in range(0, len(group), self.batch_size)]
        # Only the very last batch can be short; it stays last so every other batch keeps its rows.
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        for b in torch.randperm(len(batches), generator=gen).tolist():
            yield from batches[b]
        for batch in tail:
            yield from batch
