"""`run.py export`: what plain transformers loads from it computes what the pipeline's model
computes, and its generation stops at the end-of-turn token without being told to.

Trained directories come from tuneline's recipe (2 steps) on the bigram base of
tests/_serve_models.py, saved on disk like a hub checkout; its greedy answer ends with
`<|im_end|>` on every CPU, so "generation ends with EOS" is the model's doing, not a limit's.
"""

from __future__ import annotations

import json

import pytest
import torch

from run import main
from tests._serve_models import ANSWER, bigram_base, chatml_tokenizer, train_on

QUESTION = [{"role": "user", "content": "Where is the gate of Velan?"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-export")
    base = bigram_base(root / "base")
    return {
        "base": base,
        "full": train_on(base, root / "full", "full"),
        "lora": train_on(base, root / "lora", "lora"),
    }


def _pipeline_model(trained, name):
    """The model as the pipeline's evaluation loads it (on the CPU, beside the plain loads)."""
    from tuneline.evaluate.generate import load_trained_model

    model_dir, cfg = trained[name]
    return load_trained_model(cfg, model_dir, len(chatml_tokenizer())).cpu().eval()


def _ids(tok):
    text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _plain_generation(model, tok, ids, generation_config=None) -> list[int]:
    """What a transformers user runs: no stop ids passed, the exported generation config decides."""
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=30,
            **({"generation_config": generation_config} if generation_config else {}),
        )
    return out[0, ids.shape[1] :].tolist()


def _export(tmp_path, model_dir, *extra, name="out"):
    out = tmp_path / name
    rc = main(["export", "--model", str(model_dir), "--out", str(out), *extra])
    return rc, out


def test_full_export_loads_in_plain_transformers_and_stops_at_end_of_turn(trained, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rc, out = _export(tmp_path, trained["full"][0])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"vllm serve {out}" in printed and "(full model)" in printed
    assert not list(tmp_path.glob(".out.tmp-*")), "the temporary directory was renamed into place"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    conf = json.loads((out / "config.json").read_text())
    assert conf["use_cache"] is True and conf["pad_token_id"] == chatml_tokenizer().pad_token_id

    tok = AutoTokenizer.from_pretrained(out)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.chat_template == chatml_tokenizer().chat_template
    assert im_end in json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _ids(tok)
    torch.testing.assert_close(
        _logits(model, ids), _logits(_pipeline_model(trained, "full"), ids), atol=1e-5, rtol=0
    )
    generated = _plain_generation(model, tok, ids)
    assert generated[-1] == im_end and len(generated) < 30
    assert tok.decode(generated, skip_special_tokens=True).strip() == ANSWER


def test_lora_exports_as_adapter_on_its_exact_base_and_merged_equals_it(trained, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    rc, adapter_out = _export(tmp_path, trained["lora"][0], name="adapter")
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "--enable-lora" in printed and str(trained["base"]) in printed
    conf = json.loads((adapter_out / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == str(trained["base"].resolve())
    assert (adapter_out / "adapter_model.safetensors").is_file() and not (
        adapter_out / "model.safetensors"
    ).exists()

    rc, merged_out = _export(tmp_path, trained["lora"][0], "--merge", name="merged")
    assert rc == 0, capsys.readouterr().err
    assert "(LoRA merged into its base)" in capsys.readouterr().out
    assert (merged_out / "model.safetensors").is_file() and not (merged_out / "adapter_config.json").exists()

    tok = AutoTokenizer.from_pretrained(merged_out)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = _ids(tok)
    pipeline = _logits(_pipeline_model(trained, "lora"), ids)
    base = _logits(AutoModelForCausalLM.from_pretrained(trained["base"]), ids)
    assert (pipeline - base).abs().max() > 1e-3, "the adapter must matter, or the comparison proves nothing"
    # The adapter directory alone (transformers finds the base its config names) is the pipeline's
    # model, and so is the PEFT way of loading it.
    adapter = AutoModelForCausalLM.from_pretrained(adapter_out).eval()
    assert adapter.peft_config, "loaded as an adapter on its base"
    torch.testing.assert_close(_logits(adapter, ids), pipeline, atol=1e-5, rtol=0)
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(conf["base_model_name_or_path"]), str(adapter_out)
    ).eval()
    torch.testing.assert_close(_logits(peft, ids), pipeline, atol=1e-5, rtol=0)
    generated = _plain_generation(adapter, tok, ids, GenerationConfig.from_pretrained(adapter_out))
    assert generated[-1] == im_end and len(generated) < 30
    # The merged directory is a plain model computing the same within float tolerance.
    merged = AutoModelForCausalLM.from_pretrained(merged_out).eval()
    torch.testing.assert_close(_logits(merged, ids), pipeline, atol=1e-5, rtol=0)
    assert json.loads((merged_out / "config.json").read_text())["use_cache"] is True
    assert im_end in json.loads((merged_out / "generation_config.json").read_text())["eos_token_id"]
    generated = _plain_generation(merged, tok, ids)
    assert generated[-1] == im_end and len(generated) < 30


def test_export_refuses_a_non_empty_directory_and_leaves_it_alone(trained, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _ = _export(tmp_path, trained["full"][0], name="taken")
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"], "nothing half-written beside it"
    # An existing empty directory is fine.
    (tmp_path / "empty").mkdir()
    assert _export(tmp_path, trained["full"][0], name="empty")[0] == 0


def test_an_adapter_on_a_from_config_base_exports_only_merged(tmp_path, capsys):
    """A base built from config exists on no disk or hub: the adapter alone could not be served."""
    lora, _ = train_on(None, tmp_path / "lora", "lora")
    rc, out = _export(tmp_path, lora, name="adapter")
    assert rc == 2 and "--merge" in capsys.readouterr().err and not out.exists()
    rc, out = _export(tmp_path, lora, "--merge", name="merged")
    assert rc == 0 and (out / "model.safetensors").is_file()


def test_a_base_is_pinned_to_an_absolute_path_or_a_hub_revision(tmp_path):
    """What a registered or exported adapter records about its base: a relative local path
    becomes absolute; an unpinned hub name gets the commit the local Hugging Face cache holds
    (the layout huggingface_hub writes: refs/main and snapshots/<commit>/)."""
    from tuneline.serve.base import pin_base

    (tmp_path / "bases" / "mine").mkdir(parents=True)
    local = pin_base({"name_or_path": "bases/mine", "revision": None}, tmp_path)
    assert local["name_or_path"] == str((tmp_path / "bases" / "mine").resolve())

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub = pin_base({"name_or_path": "org/tiny", "revision": None}, tmp_path, hub_cache=tmp_path / "hub")
    assert hub == {"name_or_path": "org/tiny", "revision": commit}
    pinned = {"name_or_path": "org/tiny", "revision": "v1.0"}
    assert pin_base(pinned, tmp_path, hub_cache=tmp_path / "hub") == pinned
    assert pin_base({"name_or_path": "org/absent"}, tmp_path, hub_cache=tmp_path / "hub")["revision"] is None
