"""Packing keeps samples intact and separate; the collator never pads to max_length."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from tuneline.tokenize import TokenizedSplit
from tuneline.tokenize.collate import REAL_TOKENS_KEY, DataCollator, split_rows
from tuneline.tokenize.packing import best_fit_decreasing, pack_split, unpack_row


def _split(lengths: list[int], seed: int = 0) -> TokenizedSplit:
    rng = random.Random(seed)
    ids, labels = [], []
    for n in lengths:
        x = [rng.randrange(5, 500) for _ in range(n)]
        cut = n // 2
        ids.append(x)
        labels.append([-100] * cut + x[cut:])
    return TokenizedSplit(input_ids=ids, labels=labels, stats={"n_out": len(ids)})


def test_best_fit_decreasing_fills_bins_and_respects_capacity():
    lengths = [9, 8, 2, 2, 5, 4, 1, 1]
    bins = best_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 4  # 32 tokens, optimal is ceil(32/10) = 4
    with pytest.raises(ValueError):
        best_fit_decreasing([11], 10)


def test_pack_split_keeps_every_sample_intact():
    lengths = [random.Random(1).randrange(3, 60) for _ in range(200)]
    lengths = [random.Random(i).randrange(3, 60) for i in range(200)]
    split = _split(lengths)
    packed = pack_split(split, 64)
    assert all(len(r) <= 64 for r in packed.input_ids)
    samples = []
    for ids, labs, pos in zip(packed.input_ids, packed.labels, packed.position_ids, strict=True):
        assert len(ids) == len(labs) == len(pos)
        for x, y in unpack_row(ids, labs, pos):
            samples.append((tuple(x), tuple(y)))
    originals = sorted(zip(map(tuple, split.input_ids), map(tuple, split.labels), strict=True))
    # Same samples; each sample's first label is -100 at its boundary.
    assert sorted(s[0] for s in samples) == sorted(o[0] for o in originals)
    by_ids = dict(originals)
    for x, y in samples:
        assert y[0] == -100 and y[1:] == by_ids[x][1:]
    real = sum(lengths)
    assert packed.stats["n_rows"] == len(packed)
    assert packed.stats["pack_fill"] == round(real / (len(packed) * 64), 4)
    assert packed.stats["padding_efficiency"] == 1.0
    assert packed.num_tokens == real


def test_position_ids_restart_per_sample():
    packed = pack_split(_split([5, 3, 2]), 10)
    assert packed.position_ids == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]]


def test_collator_pads_to_longest_in_batch_not_max_length():
    rows = split_rows(_split([5, 9, 3]))
    batch = DataCollator(pad_token_id=1, packed=False)(rows)
    assert batch["input_ids"].shape == (3, 9)
    assert batch["attention_mask"].sum().item() == 17
    assert (batch["input_ids"][2, 3:] == 1).all() and (batch["labels"][2, 3:] == -100).all()
    assert DataCollator(1, False, pad_to_multiple_of=8)(rows)["input_ids"].shape == (3, 16)


def test_collator_flattens_packed_rows_for_varlen_kernels():
    packed = pack_split(_split([5, 3, 2, 6]), 8)
    batch = DataCollator(pad_token_id=1, packed=True, flatten=True)(split_rows(packed))
    assert batch["input_ids"].shape == (1, 16) and "attention_mask" not in batch
    pos = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0]
    assert len(starts) == 4
    assert all(batch["labels"][0, i].item() == -100 for i in starts)


def test_collator_keeps_packed_rows_as_rows():
    """[B, L]: each row padded by one self-contained block (positions restart, no labels)."""
    packed = pack_split(_split([5, 3, 2, 6]), 8)
    rows = split_rows(packed)
    batch = DataCollator(pad_token_id=1, packed=True, count_real_tokens=True)(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (len(rows), longest) and "attention_mask" not in batch
    assert batch[REAL_TOKENS_KEY] == 16 and batch["use_cache"] is False
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        assert batch["position_ids"][i, :k].tolist() == r["position_ids"]
        assert batch["position_ids"][i, k:].tolist() == list(range(longest - k))
        assert (batch["labels"][i, k:] == -100).all() and (batch["input_ids"][i, k:] == 1).all()
    assert REAL_TOKENS_KEY not in DataCollator(pad_token_id=1, packed=True)(rows)


def test_padded_collator_splits_packed_rows_into_samples():
    """The fallback for models that cannot keep packed samples apart: one padded row per sample."""
    packed = pack_split(_split([5, 3, 2, 6]), 8)
    batch = DataCollator(pad_token_id=1, packed=False)(split_rows(packed))
    assert batch["input_ids"].shape == (4, 6) and batch["attention_mask"].sum().item() == 16


def _tiny_llama(attn: str, vocab: int = 512):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    conf._attn_implementation = attn
    return LlamaForCausalLM(conf).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_logits_equal_per_sample_logits(attn):
    """Several [B, L] packed rows, padded to the longest: every sample's logits are its own."""
    model = _tiny_llama(attn)
    split = _split([7, 4, 9, 12, 3, 6, 10])
    rows = split_rows(pack_split(split, 16))
    assert len(rows) > 1 and len({len(r["input_ids"]) for r in rows}) > 1
    batch = DataCollator(pad_token_id=0, packed=True)(rows)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for i, r in enumerate(rows):
            for x, _ in unpack_row(r["input_ids"], r["labels"], r["position_ids"]):
                start = next(a for a in range(len(r["input_ids"])) if r["input_ids"][a : a + len(x)] == x)
                alone = model(input_ids=torch.tensor([x])).logits[0]
                torch.testing.assert_close(logits[i, start : start + len(x)], alone, atol=1e-5, rtol=1e-4)
        assert torch.isfinite(model(**batch).loss)


def test_packing_probe_accepts_llama_and_rejects_opt():
    """The startup check: Llama keeps packed samples apart, OPT (learned absolute positions,
    masks from attention_mask only) does not and gets padded batches."""
    from transformers import OPTConfig, OPTForCausalLM

    from tuneline.train.padding_free import attention_respects_packing, collator_for

    llama = _tiny_llama("sdpa")
    assert attention_respects_packing(llama) and collator_for(llama, 0, True, training=True).packed
    torch.manual_seed(0)
    opt = OPTForCausalLM(
        OPTConfig(
            vocab_size=512,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=32,
        )
    )
    assert not attention_respects_packing(opt)
    fallback = collator_for(opt, 0, True, training=True)
    assert not fallback.packed and opt.training  # mode restored after the probe


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_batch_has_no_cross_sample_attention(attn):
    """transformers 5.x derives block-diagonal masks from position_ids: packed == separate."""
    model = _tiny_llama(attn)
    split = _split([7, 4, 9])
    batch = DataCollator(pad_token_id=0, packed=True, flatten=True)(split_rows(pack_split(split, 20)))
    with torch.no_grad():
        packed_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        pos = batch["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in itertools.pairwise(starts):
            alone = model(input_ids=batch["input_ids"][:, a:b]).logits[0]
            torch.testing.assert_close(packed_logits[a:b], alone, atol=1e-5, rtol=1e-4)
        # Without use_cache=False a KV cache is created and samples DO attend across
        # boundaries -- this guards the trap documented in tuneline.tokenize.collate.
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        assert not torch.allclose(leaky, packed_logits, atol=1e-4)
        out = model(**batch)
        assert torch.isfinite(out.loss)


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", ["rows", "flatten", "padded"])
def test_logits_only_at_supervised_positions_give_the_same_loss_and_gradients(layout):
    """The training collator's `logits_to_keep` + `shift_labels` change what the LM head computes,
    never the loss or a gradient: every layout against the full-logits batch of the same rows."""
    model = _tiny_llama("sdpa").train()
    split = _split([7, 4, 9, 12, 3, 6, 10])
    rows = split_rows(pack_split(split, 16)) if layout != "padded" else split_rows(split)
    opts = {"packed": layout != "padded", "flatten": layout == "flatten"}
    full = DataCollator(0, **opts)(rows)
    kept = DataCollator(0, **opts, supervised_logits=True)(rows)
    assert "logits_to_keep" not in full
    n_sup = int((full["labels"][:, 1:] != -100).sum())
    assert kept["shift_labels"].shape == (n_sup,) and int(kept["logits_to_keep"].sum()) == n_sup
    assert n_sup < full["labels"].numel() / 2 + 10  # the point: the head skips prompts and padding
    ref_loss, ref_grads = _loss_and_grads(model, full)
    loss, grads = _loss_and_grads(model, kept)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    # With the Trainer's token count (gradient accumulation), the sum is divided the same way.
    items = torch.tensor(n_sup)
    torch.testing.assert_close(
        model(**kept, num_items_in_batch=items).loss.detach(),
        model(**full, num_items_in_batch=items).loss.detach(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_supervised_logits_probe_accepts_llama_and_rejects_a_model_that_ignores_the_mask():
    from transformers import LlamaForCausalLM

    from tuneline.train.padding_free import collator_for, supports_supervised_logits

    llama = _tiny_llama("sdpa").train()
    assert supports_supervised_logits(llama) and llama.training
    assert collator_for(llama, 0, True, training=True).supervised_logits
    assert not collator_for(llama, 0, True, training=False).supervised_logits  # evaluation: full logits

    class IgnoresMask(LlamaForCausalLM):
        def forward(self, *args, logits_to_keep=0, **kwargs):
            return super().forward(*args, **kwargs)

    other = IgnoresMask(llama.config)
    assert not supports_supervised_logits(other)
    assert not collator_for(other, 0, True, training=True).supervised_logits
