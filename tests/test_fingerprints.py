"""Edited local files at unchanged paths change the fingerprint (cache key and resume identity)."""

from __future__ import annotations

import shutil

from tuneline.config import load_config
from tuneline.fingerprints import local_inputs_fingerprint


def test_tokenizer_and_template_edits_change_the_fingerprint(tmp_path, tiny_tokenizer_dir):
    tok = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer_dir, tok)
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    cfg = load_config(
        data={
            "model": {"from_config": {"model_type": "llama"}, "tokenizer": str(tok)},
            "data": {"path": "x"},
            "template": {"jinja_path": str(tmpl)},
        }
    )
    first = local_inputs_fingerprint(cfg)
    assert first == local_inputs_fingerprint(cfg)
    tmpl.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    second = local_inputs_fingerprint(cfg)
    assert second != first
    cfg_file = tok / "tokenizer_config.json"
    cfg_file.write_text(cfg_file.read_text().replace("2048", "4096"))
    assert local_inputs_fingerprint(cfg) not in (first, second)


def test_hub_names_and_registry_uris_are_not_local(tmp_path):
    cfg = load_config(
        data={
            "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},
            "data": {"path": "x"},
            "train": {"method": "dpo", "preference": {"reference_model": "models:/m@champion"}},
            "registry": {"metric": "preference_accuracy"},
        }
    )
    from tuneline.fingerprints import local_paths

    assert local_paths(cfg) == {}
