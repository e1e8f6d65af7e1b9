"""Each materializer round-trips its one type through a real (local) ZenML artifact store."""

from __future__ import annotations

import json
import os

import pytest

from tuneline.artifacts import ModelArtifact
from tuneline.data.records import Record, RecordSet
from tuneline.tokenize import TokenizedDataset, TokenizedSplit


@pytest.fixture(scope="module")
def artifact_store(tmp_path_factory):
    """A local ZenML artifact store, the flavour and shape of the one the tuneline stack registers.
    Materializers are handed it as a pipeline step hands it to them; that needs no ZenML store or
    stack (whose creation takes seconds of schema migrations), and leaves this process's ZenML
    configuration untouched."""
    from datetime import datetime
    from uuid import uuid4

    from zenml.artifact_stores.local_artifact_store import LocalArtifactStore, LocalArtifactStoreConfig
    from zenml.enums import StackComponentType

    from pipelines.stack import ARTIFACT_STORE

    now = datetime.now()
    return LocalArtifactStore(
        name=ARTIFACT_STORE,
        id=uuid4(),
        config=LocalArtifactStoreConfig(path=str(tmp_path_factory.mktemp("artifacts"))),
        flavor="local",
        type=StackComponentType.ARTIFACT_STORE,
        user=None,
        created=now,
        updated=now,
    )


def _uri(store, name):
    path = os.path.join(store.path, "materializer-tests", name)
    os.makedirs(path, exist_ok=True)
    return path


def test_record_set_round_trip(artifact_store):
    from materializers.record_set_materializer import RecordSetMaterializer

    rs = RecordSet(
        splits={
            "train": [
                Record(
                    messages=[{"role": "user", "content": "q é"}, {"role": "assistant", "content": "a"}],
                    meta={"source": "f.jsonl", "line": 3},
                ),
                Record(kind="text", text="raw\ntext", meta={"line": 4}),
            ],
            "validation": [
                Record(
                    kind="preference",
                    messages=[{"role": "user", "content": "p"}],
                    chosen=[{"role": "assistant", "content": "c"}],
                    rejected=[{"role": "assistant", "content": "r"}],
                )
            ],
        },
        info={"sources": [{"path": "f.jsonl"}], "counts": {"train": 2}},
    )
    m = RecordSetMaterializer(_uri(artifact_store, "records"), artifact_store=artifact_store)
    m.save(rs)
    back = m.load(RecordSet)
    assert back.to_jsonable() == rs.to_jsonable()
    assert back.fingerprints == rs.fingerprints
    meta = m.extract_metadata(rs)
    assert meta["num_train"] == 2 and meta["fingerprint_validation"] == rs.fingerprints["validation"]
    (html_path,) = m.save_visualizations(rs)
    assert "<svg" in open(html_path).read() or "<table" in open(html_path).read()


def test_tokenized_dataset_round_trip(artifact_store):
    from materializers.tokenized_dataset_materializer import TokenizedDatasetMaterializer

    td = TokenizedDataset(
        splits={
            "train": TokenizedSplit(
                input_ids=[[1, 2, 3, 4], [5, 6]],
                labels=[[-100, -100, 3, 4], [-100, 6]],
                position_ids=[[0, 1, 0, 1], [0, 1]],
                stats={"n_out": 2},
                record_index=[0, 1],
            ),
            "validation": TokenizedSplit(input_ids=[[7, 8, 9]], labels=[[-100, 8, 9]], stats={"n_out": 1}),
        },
        stats={"padding_efficiency": 1.0},
        audit=[{"rendered": "⟦x⟧"}],
        chat_template="{{ messages }}",
    )
    m = TokenizedDatasetMaterializer(_uri(artifact_store, "tokenized"), artifact_store=artifact_store)
    m.save(td)
    back = m.load(TokenizedDataset)
    assert back.splits["train"].input_ids == td.splits["train"].input_ids
    assert back.splits["train"].labels == td.splits["train"].labels
    assert back.splits["train"].position_ids == td.splits["train"].position_ids
    assert back.splits["train"].record_index == [0, 1]
    assert back.splits["validation"].position_ids is None
    assert back.stats == td.stats and back.audit == td.audit and back.chat_template == td.chat_template
    assert m.extract_metadata(td)["supervised_tokens_train"] == 3


def test_model_artifact_round_trip(artifact_store, tmp_path):
    from materializers.model_artifact_materializer import ModelArtifactMaterializer

    src = tmp_path / "model"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"\x00\x01weights")
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": "x"}))
    art = ModelArtifact(
        path=str(src), method="lora", base_model="org/base", metrics={"train_loss": 1.5}, scratch=True
    )
    m = ModelArtifactMaterializer(_uri(artifact_store, "model"), artifact_store=artifact_store)
    m.save(art)
    assert not src.exists(), "a scratch training dir is removed once the artifact store has the copy"
    back = m.load(ModelArtifact)
    assert back.path != str(src), "the artifact must live in the artifact store, not the worker's scratch dir"
    assert back.path and open(os.path.join(back.path, "model.safetensors"), "rb").read() == b"\x00\x01weights"
    assert (back.method, back.base_model, back.metrics) == ("lora", "org/base", {"train_loss": 1.5})
    meta = m.extract_metadata(art)
    assert meta["train_loss"] == 1.5 and meta["size_bytes"] == len(b"\x00\x01weights") + len(
        json.dumps({"chat_template": "x"})
    ) + len(json.dumps(art.info(), indent=2))
