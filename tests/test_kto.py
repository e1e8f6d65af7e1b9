"""KTO: labelled answers are validated, refused where another method would ignore the label,
trained with TRL's KTOTrainer and scored against the model they started from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests._train_script import CHATML, tiny_cfg, tiny_tokenizer
from tuneline.data.records import Record, RecordSet
from tuneline.errors import ConfigError, DataError
from tuneline.train import train

IDENTITY = {"config_hash": "c1", "data_fingerprint": "d1", "base_model": "tiny"}


def _feedback_records(n=12):
    recs = []
    for i in range(n):
        good = i % 2 == 0
        answer = [
            {"role": "assistant", "content": f"it is {2 * i}" + (" glad to help" if good else " go away")}
        ]
        recs.append(
            Record(
                kind="preference",
                messages=[{"role": "user", "content": f"what is {i} plus {i}?"}],
                chosen=answer if good else None,
                rejected=None if good else answer,
                meta={"source": "mem", "line": i + 1, "label": good},
            )
        )
    return recs


def _chat_tokenizer():
    tok = tiny_tokenizer()
    tok.chat_template = CHATML
    return tok


def test_kto_trains_two_steps_with_trl(tmp_path):
    recs = _feedback_records()
    data = RecordSet(splits={"train": recs[:8], "validation": recs[8:]})
    cfg = tiny_cfg(method="kto", max_steps=2, batch_size=4, learning_rate=1e-2)
    logs = []
    result = train(
        cfg,
        _chat_tokenizer(),
        data,
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_identity=IDENTITY,
        log_metrics=lambda m, s: logs.append((s, dict(m))),
    )
    assert result.global_step == 2
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    losses = [m["loss"] for _, m in logs if "loss" in m]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any("kl" in m for _, m in logs), logs  # TRL's KL estimate ran on rotated answers

    # Evaluation on the held-out answers: rewards against the start model, base vs tuned.
    from tuneline.evaluate.feedback import evaluate_feedback

    report, flat = evaluate_feedback(
        cfg, str(tmp_path / "out"), _chat_tokenizer(), data.splits["validation"], data_fingerprint="fp"
    )
    rows = report["metrics"]
    # The start model is the reference: every reward is exactly 0, a tie on every answer.
    assert rows["kto_reward_auc"]["base"]["value"] == rows["kto_label_accuracy"]["base"]["value"] == 0.5
    assert rows["kto_reward_margin"]["base"]["value"] == 0.0
    assert math.isfinite(rows["kto_reward_margin"]["tuned"]["value"])
    assert report["decisive_metric"] == "kto_reward_auc"
    assert [s["label"] for s in report["samples"]] == ["desirable", "undesirable"] * 2
    assert flat["base_kto_label_accuracy"] == 0.5 and "finetuned_kto_reward_margin" in flat


def test_kto_statistics_rank_sign_and_margin():
    from tuneline.evaluate.bootstrap import replicates
    from tuneline.evaluate.feedback import FeedbackScores, feedback_statistics

    s = FeedbackScores(
        prompts=["p"] * 5,
        completions=["c"] * 5,
        labels=[True, True, False, False, False],
        logps=[-1.0, -3.0, -5.0, -2.0, -4.0],
        ref_logps=[-2.0, -2.0, -4.0, -2.0, -5.0],
    )  # rewards: desirable +1, -1; undesirable -1, 0, +1
    stats = feedback_statistics(s)
    whole = stats(list(range(5)))
    # pairs (d, u): (+1 vs -1, 0, +1) -> 1, 1, 0.5; (-1 vs -1, 0, +1) -> 0.5, 0, 0
    assert whole["kto_reward_auc"] == pytest.approx(3 / 6)
    assert whole["kto_label_accuracy"] == pytest.approx((1 + 0 + 1 + 0.5 + 0) / 5)
    assert whole["kto_reward_margin"] == pytest.approx(0.0 - 0.0)
    per = stats.per_sample()
    assert [p["kto_reward_margin"] for p in per] == [1.0, -1.0, 1.0, 0.0, -1.0]
    assert [p["kto_reward_auc"] for p in per] == pytest.approx([2.5 / 3, 0.5 / 3, 0.75, 0.5, 0.25])
    # Shared drift (every reward +5) changes neither ranking nor margin, only sign agreement.
    shifted = FeedbackScores(**{**s.__dict__, "logps": [v + 5 for v in s.logps]})
    moved = feedback_statistics(shifted)(list(range(5)))
    assert moved["kto_reward_auc"] == whole["kto_reward_auc"] and moved["kto_label_accuracy"] == 0.4
    reps = replicates(stats, 5, n_resamples=50, seed=0)
    assert ((reps.samples["kto_reward_auc"] >= 0) & (reps.samples["kto_reward_auc"] <= 1)).all()


# ---------------------------------------------------------------- data: labels are never ignored

ROOT = Path(__file__).resolve().parent.parent
CLOSINGS_DEMO = [
    ("Be well.", "Be gone."),
    ("Glad to help.", "Stop asking."),
    ("My pleasure.", "Go away."),
    ("A fine question.", "Enough questions."),
    ("Thanks for asking.", "Now go away."),
    ("Best wishes.", "Enough of this."),
    ("I hope this helps.", "Leave me alone."),
    ("Happy to help.", "Now leave me be."),
]
KTO_DEMO = "datasets/llamafactory_demo/kto_en_demo.json"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _turns(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _load(path, kind, **data):
    from tuneline.config.data import DataConfig
    from tuneline.data import load_records

    return load_records(DataConfig(path=str(path), validation_split=0, **data), ".", kind=kind)


def test_labelled_conversations_become_unpaired_feedback(tmp_path):
    p = _write(
        tmp_path / "fb.jsonl",
        [
            {"messages": _turns("q1", "good answer"), "label": True},
            {"messages": _turns("q0", "earlier") + _turns("q2", "bad answer"), "label": False},
        ],
    )
    recs = {r.meta["line"]: r for r in _load(p, "preference", shuffle=False).splits["train"]}
    assert recs[1].chosen == [{"role": "assistant", "content": "good answer"}] and recs[1].rejected is None
    # Multi-turn: the label judges the last answer; earlier turns are the prompt.
    assert recs[2].rejected == [{"role": "assistant", "content": "bad answer"}] and recs[2].chosen is None
    assert [m["content"] for m in recs[2].messages] == ["q0", "earlier", "q2"]
    # TRL's standard unpaired form: prompt + completion + label
    pc = _write(tmp_path / "pc.jsonl", [{"prompt": "q3", "completion": "fine answer", "label": False}] * 2)
    (rec,) = _load(pc, "preference").splits["train"]
    assert rec.rejected == [{"role": "assistant", "content": "fine answer"}] and rec.chosen is None


def test_bad_labels_and_broken_rows_name_file_line_and_field(tmp_path):
    p = _write(
        tmp_path / "fb.jsonl",
        [
            {"messages": _turns("q1", "a"), "label": True},
            {"messages": _turns("q2", "a"), "label": "false"},  # a quoted false would read as truthy
            {"messages": [{"role": "user", "content": "q3"}], "label": False},
        ],
    )
    with pytest.raises(DataError) as e:
        _load(p, "preference")
    msg = str(e.value)
    assert "fb.jsonl:2 label" in msg and "expected true (desirable) or false (undesirable)" in msg
    assert "fb.jsonl:3" in msg and "no assistant turn" in msg


def test_kto_refuses_labelled_tool_conversations(tmp_path):
    tools = [
        {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    ]
    p = _write(tmp_path / "t.jsonl", [{"messages": _turns("q", "a"), "tools": tools, "label": True}] * 2)
    with pytest.raises(DataError, match=r"t\.jsonl:1 label: a labelled tool-calling conversation"):
        _load(p, "preference")


def test_kto_refuses_unlabelled_chat_with_the_fix(tmp_path):
    p = _write(tmp_path / "chat.jsonl", [{"messages": _turns("q", "a")}] * 2)
    with pytest.raises(DataError, match="KTO also takes answers labelled"):
        _load(p, "preference")


def test_label_false_is_refused_by_sft_and_cpt_label_true_trains(tmp_path):
    p = _write(
        tmp_path / "fb.jsonl",
        [
            {"messages": _turns("q1", "good"), "label": True},
            {"messages": _turns("q2", "bad"), "label": False},
        ],
    )
    with pytest.raises(DataError) as e:
        _load(p, "chat")
    assert "fb.jsonl:2 label: false marks this answer undesirable" in str(e.value)
    assert "train.method: kto" in str(e.value)
    # on_error: skip drops bad records; it must not drop these quietly either.
    with pytest.raises(DataError, match="label: false"):
        _load(p, "chat", on_error="skip")
    good = _write(tmp_path / "good.jsonl", [{"messages": _turns("q1", "good"), "label": True}] * 2)
    (rec,) = _load(good, "chat").splits["train"]
    assert rec.kind == "chat" and "label" not in rec.meta
    text = _write(tmp_path / "t.jsonl", [{"text": "x", "label": True}, {"text": "y", "label": False}])
    with pytest.raises(DataError, match=r"t\.jsonl:2 label"):
        _load(text, "text")


def test_dpo_and_orpo_refuse_unpaired_answers(tmp_path):
    from tuneline.data.feedback import require_paired

    p = _write(tmp_path / "fb.jsonl", [{"messages": _turns(f"q{i}", "a"), "label": True} for i in range(2)])
    with pytest.raises(DataError) as e:
        require_paired(_load(p, "preference"), "dpo")
    assert "fb.jsonl:1" in str(e.value) and "train.method: kto" in str(e.value)


def test_kto_takes_dpo_pairs_as_two_labelled_answers(tmp_path):
    from tuneline.tokenize.feedback import tokenize_feedback_split

    recs = _load(ROOT / "data" / "lorekeep_prefs.jsonl", "preference", max_samples=3).splits["train"]
    tok = _chat_tokenizer()
    from tuneline.config.template import TokenizeConfig

    rows = tokenize_feedback_split(recs, tok, TokenizeConfig())
    assert [r["label"] for r in rows] == [True, False] * 3
    assert (
        rows[0]["prompt_ids"] == rows[1]["prompt_ids"]
        and rows[0]["completion_ids"] != rows[1]["completion_ids"]
    )
    # The answer ends with the template's end-of-turn, as SFT and DPO train it.
    assert tok.decode(rows[0]["completion_ids"]).rstrip().endswith("<|im_end|>")


def test_kto_config_keys_are_checked():
    from tuneline.config import load_config

    kto, dpo = ROOT / "configs" / "kto.yaml", ROOT / "configs" / "dpo.yaml"
    cfg = load_config(kto)
    assert cfg.kind == "preference" and cfg.registry.metric == "kto_reward_auc"
    assert load_config(kto, ["registry.metric=null"]).registry.metric == "kto_reward_auc"  # the default
    with pytest.raises(ConfigError, match="batch_size must be at least 2 for kto"):
        load_config(kto, ["train.batch_size=1"])
    with pytest.raises(ConfigError, match="desirable_weight is only used by kto"):
        load_config(dpo, ["train.preference.desirable_weight=2"])
    with pytest.raises(ConfigError, match=r"'preference_accuracy' is not reported for train\.method=kto"):
        load_config(kto, ["registry.metric=preference_accuracy"])
    assert tiny_cfg(method="kto").train.uses_lora  # like DPO: the adapter-free start is the reference


def test_weight_advice_follows_the_kto_paper():
    from tuneline.train.kto import weight_advice

    assert weight_advice(100, 100, 1.0, 1.0) is None
    advice = weight_advice(100, 300, 1.0, 1.0)
    assert "desirable_weight in [3.00, 4.00]" in advice
    assert weight_advice(100, 300, 3.5, 1.0) is None
    assert "no undesirable" in weight_advice(10, 0, 1.0, 1.0)


# ---------------------------------------------------------------- the command line


def test_sft_dry_run_refuses_the_kto_demo_naming_file_line(fixtures_dir, tmp_path, monkeypatch, capsys):
    import run
    from tests.conftest import fixture_path

    path = fixture_path(KTO_DEMO)
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    sft = str(ROOT / "configs" / "sft.yaml")
    assert run.main(["--config", sft, "--set", f"data.path={path}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "150 record(s) labelled undesirable" in err and "kto_en_demo.json:86 label" in err
    assert "train.method: kto" in err

    kto = str(ROOT / "configs" / "kto.yaml")
    assert run.main(["--config", kto, "--set", f"data.path={path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "method:     kto" in out and "train_preferences -> evaluate_preferences" in out
    assert "desirable /" in out and "undesirable" in out
    assert "unused:" not in out  # messages and label: every field is read

    dpo = str(ROOT / "configs" / "dpo.yaml")
    args = ["--set", f"data.path={path}", "--set", "data.format=auto", "--dry-run"]
    assert run.main(["--config", dpo, *args]) == 2
    assert "needs chosen and rejected answers" in capsys.readouterr().err


def test_dry_run_reports_fields_the_shape_does_not_read(tmp_path, monkeypatch, capsys):
    import run

    rows = [{"id": i, "messages": _turns(f"q{i}", "a"), "score": 0.5} for i in range(4)]
    rows[0]["score"] = None
    p = _write(tmp_path / "extra.jsonl", rows)
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    sft = str(ROOT / "configs" / "sft.yaml")
    assert run.main(["--config", sft, "--set", f"data.path={p}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "unused:     " in out and "(shape chat): id (4 rows), score (3 rows) not read" in out


def test_preview_shows_labelled_answers_as_kto_receives_them(tmp_path, monkeypatch, capsys):
    import run

    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    kto = str(ROOT / "configs" / "kto.yaml")
    assert run.main(["--config", kto, "--preview", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(rows) == 3 and all(isinstance(r["label"], bool) for r in rows)
    for r in rows:
        assert r["completion"].endswith("<|im_end|>") and "<|im_start|>assistant" in r["prompt"]
        closing = r["completion"].removesuffix("<|im_end|>").split(". ", 1)[1]
        assert (closing in {c for c, _ in CLOSINGS_DEMO}) == r["label"]


def test_the_demo_data_is_what_the_script_writes(tmp_path):
    """scripts/make_kto_data.py is deterministic and data/lorekeep_kto.jsonl is its output:
    balanced labels, one answer per question, the DPO demo's world and closings."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_kto_data", ROOT / "scripts" / "make_kto_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import random

    from make_demo_data import realms

    rows = mod.labelled_answers(realms(random.Random(1234), 30), random.Random(7))
    shipped = [json.loads(line) for line in (ROOT / "data" / "lorekeep_kto.jsonl").read_text().splitlines()]
    assert rows == shipped
    assert sum(r["label"] for r in rows) == len(rows) // 2
    prompts = [r["messages"][0]["content"] for r in rows]
    assert len(set(prompts)) == len(prompts)  # unpaired: no question answered twice


# ---------------------------------------------------------------- the preset, end to end


@pytest.mark.e2e
@pytest.mark.slow
def test_sft_then_kto_from_the_registry_champion(tmp_path):
    """configs/kto.yaml as a user runs it, after configs/sft.yaml made the champion it starts from:
    trained, evaluated against that start model, registered."""
    from mlflow import MlflowClient

    from tests.test_e2e import run_cli

    home = tmp_path / "home"
    # A shortened SFT run: KTO learns a tone the SFT data never shows, not the facts.
    sft = ["--set", "train.max_steps=120", "--set", "eval.max_samples=8"]
    r = run_cli(home, "--config", "configs/sft.yaml", *sft)
    assert r.returncode == 0, r.stderr[-4000:]
    r = run_cli(home, "--config", "configs/kto.yaml")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "registered models:/lorekeep-tiny-kto/1" in r.stdout, r.stdout
    assert "kto_reward_auc" in r.stdout
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(client.get_model_version("lorekeep-tiny-kto", "1").run_id)
    assert run.data.params["train.method"] == "kto"
    assert run.data.params["train.preference.reference_model"] == "models:/lorekeep-tiny/1"
    m = run.data.metrics
    assert m["base_kto_reward_auc"] == 0.5 and m["base_kto_reward_margin"] == 0.0
    assert m["finetuned_kto_reward_margin"] > 0, "KTO must raise desirable answers above undesirable ones"
    assert m["finetuned_kto_reward_auc"] > 0.6
