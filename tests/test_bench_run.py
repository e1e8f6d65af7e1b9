"""benchmarks/run.py: every variant in its own process, one JSON object per run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, fixture_path

KEYS = {
    "variant",
    "real_tokens_per_s",
    "real_tokens_per_cpu_s",
    "padding_efficiency",
    "peak_mem_mb",
    "loss_last",
    "eval_loss",
    "wall_s",
    "train_s",
    "mfu",
    "real_tokens",
    "steps",
}


def _bench(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_quick_run_writes_one_result_per_variant(tmp_path):
    """Seed recipe and tuneline on the same samples: same real tokens, tuneline padding less."""
    fixture_path("tokenizers/phi-3-mini-instruct")
    fixture_path("datasets/alpaca_subset_2k/alpaca_data.json")
    r = _bench("--quick", "--variants", "baseline,tuneline-packed", "--results-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "cpu-quick-latest.json").read_text())
    assert [x["variant"] for x in results] == ["baseline", "tuneline-packed"]
    for x in results:
        assert KEYS <= set(x), KEYS - set(x)
        assert x["steps"] == 2 and x["real_tokens_per_s"] > 0 and x["mfu"] is None  # no MFU on CPU
        assert 0 < x["padding_efficiency"] <= 1 and x["eval_loss"] > 0 and x["loss_last"] > 0
    base, ours = results
    assert base["real_tokens"] == ours["real_tokens"]
    assert ours["padding_efficiency"] >= base["padding_efficiency"] - 1e-9  # sums in another order
    assert "tuneline-packed / baseline" in r.stdout


def test_gpu_scale_skips_cleanly_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU scale would run")
    fixture_path("tokenizers/phi-3-mini-instruct")
    r = _bench("--scale", "gpu", "--results-dir", str(tmp_path))
    assert r.returncode == 0 and "needs a CUDA device" in r.stdout
    assert not list(tmp_path.iterdir())


def test_grouped_row_sampler_batches_similar_rows_in_random_order():
    from tuneline.train.padding_free import GroupedRowSampler

    lengths = [(i * 37) % 400 + 100 for i in range(103)]
    sampler = GroupedRowSampler(lengths, 4, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(103)) and order == list(sampler)  # a permutation, replayable
    batches = [order[k : k + 4] for k in range(0, 103, 4)]
    processed = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert sum(lengths) / processed > 0.95
    maxima = [max(lengths[i] for i in b) for b in batches[:-1]]
    assert maxima != sorted(maxima, reverse=True)  # batch order does not follow length
    sampler.set_epoch(1)
    assert list(sampler) != order
