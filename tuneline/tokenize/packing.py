"""Best-fit-decreasing packing of tokenized samples into rows of at most max_length.

Packing removes padding waste; it is only correct if samples cannot see each other.
Each row therefore carries `position_ids` that restart at 0 for every sample: with
padding-free batching (no attention_mask), transformers derives per-sample causal
blocks from them (`masking_utils.find_packed_sequence_indices`), and flash-attention
kernels derive cu_seqlens the same way. The first label of every sample is -100 so
no loss is computed for "predict sample B's first token from sample A's last".
"""

from __future__ import annotations

import bisect
from typing import Any

from tuneline.tokenize.tokenized import IGNORE_INDEX, TokenizedSplit


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices; longest first, each into the fullest bin it still fits.

    Deterministic (ties broken by index) so the same data always packs the same way.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin id)
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens > pack capacity {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            bins.append([i])
            bid, rem = len(bins) - 1, capacity - n
        else:
            rem0, bid = free.pop(k)
            bins[bid].append(i)
            rem = rem0 - n
        if rem > 0:
            bisect.insort(free, (rem, bid))
    return bins


def pack_split(split: TokenizedSplit, max_length: int) -> TokenizedSplit:
    """Pack rows; samples stay intact and in order within a row, position_ids restart per sample."""
    lengths = [len(x) for x in split.input_ids]
    bins = best_fit_decreasing(lengths, max_length)
    ids_rows: list[list[int]] = []
    lab_rows: list[list[int]] = []
    pos_rows: list[list[int]] = []
    for b in bins:
        ids: list[int] = []
        labs: list[int] = []
        pos: list[int] = []
        for i in sorted(b):
            x = split.input_ids[i]
            y = list(split.labels[i])
            y[0] = IGNORE_INDEX  # boundary: never learn sample i's first token from the previous sample
            ids += x
            labs += y
            pos += range(len(x))
        ids_rows.append(ids)
        lab_rows.append(labs)
        pos_rows.append(pos)
    real = sum(lengths)
    stats: dict[str, Any] = dict(split.stats)
    stats.update(
        {
            "packed": True,
            "n_rows": len(ids_rows),
            "samples_per_row": round(len(lengths) / len(ids_rows), 3) if ids_rows else 0.0,
            # Padding-free batching processes exactly the real tokens.
            "padding_efficiency": 1.0,
            # What it would be if rows were padded to max_length (models without padding-free support).
            "pack_fill": round(real / (len(ids_rows) * max_length), 4) if ids_rows else 1.0,
        }
    )
    return TokenizedSplit(input_ids=ids_rows, labels=lab_rows, position_ids=pos_rows, stats=stats)


def unpack_row(
    input_ids: list[int], labels: list[int], position_ids: list[int]
) -> list[tuple[list[int], list[int]]]:
    """Split a packed row back into its samples (for previews and tests)."""
    out: list[tuple[list[int], list[int]]] = []
    start = 0
    for k in range(1, len(position_ids) + 1):
        if k == len(position_ids) or position_ids[k] == 0:
            out.append((input_ids[start:k], labels[start:k]))
            start = k
    return out
