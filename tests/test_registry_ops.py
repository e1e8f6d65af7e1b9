"""The operable registry against a real SQLite-backed MLflow store: the promotion gate,
idempotent registration, lineage, promote/rollback, and two processes deciding at once."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
import subprocess
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tuneline.errors import UserError
from tuneline.registry import (
    Aliases,
    Candidate,
    IncomparableScores,
    PromotionPolicy,
    Scored,
    Significance,
    champion_on_eval_set,
    config_sha256,
    decide,
    eval_fingerprint,
    format_history,
    format_versions,
    history,
    lineage_tags,
    list_versions,
    lock_path,
    loggable_config,
    promote,
    register_and_decide,
    rollback,
    verify_champion,
    weights_sha256,
)
from tuneline.registry import tags as T

ROUGE = PromotionPolicy(metric="rouge_l", greater_is_better=True)
FP = eval_fingerprint("data-fp-1", max_samples=64, max_new_tokens=64)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite file with its schema migrated once; each test works on a copy of it."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, empty_store):
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("registry-ops", artifact_location=(tmp_path / "artifacts").as_uri())
    yield client, uri, exp, tmp_path
    mlflow.set_tracking_uri("")


def _model_dir(root: Path, weights: bytes) -> Path:
    d = root / f"model-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(weights)
    (d / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    # Not part of the weights: differs on every save and must not change the hash.
    (d / "tuneline_model.json").write_text(json.dumps({"saved": uuid.uuid4().hex}))
    return d


def _candidate(client, exp, root: Path, weights: bytes, metrics, *, fp=FP, base=None) -> Candidate:
    d = _model_dir(root, weights)
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(d), "model")
    client.set_terminated(run.info.run_id)
    return Candidate(
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        weights_sha256=weights_sha256(d),
        scores=Scored(metrics, fp),
        base=None if base is None else Scored(base, fp),
        lineage={"base_model": "tiny", "method": "lora"},
    )


def _register(store, weights, metrics, *, base=None, fp=FP, policy=ROUGE, **kw):
    client, uri, exp, tmp = store
    cand = _candidate(client, exp, tmp, weights, metrics, fp=fp, base=base)
    return register_and_decide(client, "m", cand, policy, registry_uri=uri, **kw)


def _alias(client, alias, name="m"):
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}.get(alias)


def _tags(client, version, name="m"):
    return client.get_model_version(name, version).tags


# ---------------------------------------------------------------- the gate, pure


def test_decide_needs_a_strict_gain_over_the_reference():
    base = Scored({"rouge_l": 0.0}, FP)
    stuck = decide(Scored({"rouge_l": 0.0}, FP), base, ROUGE)
    assert stuck.outcome == "challenger" and "not better than base (gain 0.0000)" in stuck.reason
    assert decide(Scored({"rouge_l": 0.01}, FP), base, ROUGE).outcome == "champion"
    margin = PromotionPolicy("rouge_l", min_margin=0.05)
    small = decide(Scored({"rouge_l": 0.52}, FP), Scored({"rouge_l": 0.5}, FP, "1"), margin)
    assert small.outcome == "challenger" and "registry.min_margin=0.05" in small.reason
    assert decide(Scored({"rouge_l": 0.56}, FP), Scored({"rouge_l": 0.5}, FP, "1"), margin).promoted
    loss = PromotionPolicy("eval_loss", greater_is_better=False)
    assert decide(Scored({"eval_loss": 1.0}, FP), Scored({"eval_loss": 1.2}, FP), loss).promoted
    assert not decide(Scored({"eval_loss": 1.3}, FP), Scored({"eval_loss": 1.2}, FP), loss).promoted
    nan = decide(Scored({"rouge_l": float("nan")}, FP), base, ROUGE)
    assert nan.outcome == "challenger" and "no finite rouge_l" in nan.reason


def test_dpo_tie_on_accuracy_is_broken_by_the_margin_never_by_luck():
    dpo = PromotionPolicy.from_config(
        type("R", (), {"metric": "preference_accuracy", "greater_is_better": True})()
    )
    assert dpo.tie_break == "logprob_margin" and dpo.min_margin == 0.0
    base = Scored({"preference_accuracy": 0.5, "logprob_margin": 0.20}, FP)
    worse = decide(Scored({"preference_accuracy": 0.5, "logprob_margin": 0.10}, FP), base, dpo)
    assert worse.outcome == "challenger" and "tie" in worse.reason
    better = decide(Scored({"preference_accuracy": 0.5, "logprob_margin": 0.30}, FP), base, dpo)
    assert better.outcome == "champion" and "broken by logprob_margin" in better.reason


def test_decide_refuses_scores_from_different_eval_sets():
    other = eval_fingerprint("data-fp-1", max_samples=32, max_new_tokens=64)
    assert other != FP
    with pytest.raises(IncomparableScores, match="different eval sets"):
        decide(Scored({"rouge_l": 0.9}, FP), Scored({"rouge_l": 0.1}, other, "1"), ROUGE)


def test_significance_is_required_when_configured_and_must_be_against_the_same_reference():
    policy = PromotionPolicy("rouge_l", require_significance=True)
    champ = Scored({"rouge_l": 0.5}, FP, "1")
    cand = Scored({"rouge_l": 0.6}, FP)
    assert "no paired bootstrap" in decide(cand, champ, policy).reason
    assert not decide(cand, champ, policy, Significance(False, against="v1", p_value=0.3)).promoted
    assert not decide(cand, champ, policy, Significance(True, against="base")).promoted
    ok = decide(cand, champ, policy, Significance(True, against="v1", p_value=0.01, delta=0.1))
    assert ok.promoted and "p=0.01" in ok.reason

    class Paired:  # the field names the evaluation's paired bootstrap reports
        delta, ci_low, ci_high, p_value, significant = 0.1, 0.02, 0.2, 0.004, True

    assert decide(cand, champ, policy, Significance.from_estimate(Paired(), against="v1")).promoted


# ---------------------------------------------------------------- the gate, in the registry


def test_worse_and_not_significantly_better_candidates_become_challengers(store):
    client = store[0]
    first = _register(store, b"w1", {"rouge_l": 0.5}, base={"rouge_l": 0.2})
    assert first.promoted and first.created and _alias(client, "champion") == first.version

    worse = _register(store, b"w2", {"rouge_l": 0.4}, base={"rouge_l": 0.2})
    assert not worse.promoted
    assert _alias(client, "champion") == first.version and _alias(client, "challenger") == worse.version
    tags = _tags(client, worse.version)
    assert tags[T.DECISION] == "challenger"
    assert float(tags[T.DECISION_CANDIDATE]) == 0.4 and float(tags[T.DECISION_REFERENCE_SCORE]) == 0.5
    assert tags[T.DECISION_REFERENCE] == f"v{first.version}"
    assert tags[T.DECISION_PREVIOUS_CHAMPION] == first.version and tags[T.EVAL_FINGERPRINT] == FP

    strict = PromotionPolicy("rouge_l", require_significance=True)
    unsure = _register(
        store,
        b"w3",
        {"rouge_l": 0.55},
        policy=strict,
        significance=Significance(False, against="v1", p_value=0.2),
    )
    assert not unsure.promoted and "not significant" in unsure.decision.reason
    assert _alias(client, "champion") == first.version and _alias(client, "challenger") == unsure.version

    sure = _register(
        store, b"w4", {"rouge_l": 0.56}, policy=strict, significance=Significance(True, against="v1")
    )
    assert sure.promoted and sure.previous_champion == first.version
    assert _alias(client, "champion") == sure.version and _alias(client, "previous-champion") == first.version
    assert _tags(client, first.version)[T.DISPLACED_FOR] == sure.version
    assert _tags(client, sure.version)[T.CHAMPION_PREVIOUS] == first.version


def test_without_a_champion_the_candidate_must_beat_its_base(store):
    client = store[0]
    flat = _register(store, b"flat", {"rouge_l": 0.0}, base={"rouge_l": 0.0})
    assert not flat.promoted and _alias(client, "champion") is None
    assert _tags(client, flat.version)[T.DECISION_REFERENCE] == "base"
    no_base = _register(store, b"nobase", {"rouge_l": 0.3})
    assert not no_base.promoted and "eval.compare_base" in no_base.decision.reason
    dpo = PromotionPolicy("preference_accuracy", tie_break="logprob_margin")
    worse_margin = _register(
        store,
        b"dpo",
        {"preference_accuracy": 0.75, "logprob_margin": 0.1},
        base={"preference_accuracy": 0.75, "logprob_margin": 0.4},
        policy=dpo,
    )
    assert not worse_margin.promoted and _alias(client, "champion") is None
    gained = _register(store, b"gain", {"rouge_l": 0.3}, base={"rouge_l": 0.1})
    assert gained.promoted and _alias(client, "champion") == gained.version


def test_champion_scored_on_another_eval_set_is_not_compared_unless_rescored(store):
    client = store[0]
    assert champion_on_eval_set(client, "m", FP, ROUGE) == (None, None)
    champ = _register(store, b"c", {"rouge_l": 0.5}, base={"rouge_l": 0.1})
    mv, scored = champion_on_eval_set(client, "m", FP, ROUGE)
    assert (str(mv.version), scored.metrics, scored.label) == (champ.version, {"rouge_l": 0.5}, "v1")
    new_fp = eval_fingerprint("data-fp-1", max_samples=128, max_new_tokens=64)
    mv, scored = champion_on_eval_set(client, "m", new_fp, ROUGE)
    assert str(mv.version) == champ.version and scored is None  # the evaluation step must re-score it
    blind = _register(store, b"d", {"rouge_l": 0.9}, base={"rouge_l": 0.1}, fp=new_fp)
    assert not blind.promoted and "not comparable" in blind.decision.reason
    assert _alias(client, "champion") == champ.version
    rescored = Scored({"rouge_l": 0.45}, new_fp, champ.version)
    # Same weights as `blind`: the version is reused and re-decided with the champion's score on the new set.
    again = _register(
        store, b"d", {"rouge_l": 0.9}, base={"rouge_l": 0.1}, fp=new_fp, champion_rescored=rescored
    )
    assert again.version == blind.version and not again.created and again.promoted
    assert float(_tags(client, champ.version)[T.eval_score_key(new_fp, "rouge_l")]) == 0.45
    assert _tags(client, champ.version)[T.EVAL_FINGERPRINT] == FP  # its own evaluation is unchanged


def test_promote_false_records_the_decision_but_moves_no_champion(store):
    client = store[0]
    r = _register(store, b"p", {"rouge_l": 0.5}, base={"rouge_l": 0.1}, promote=False)
    assert not r.promoted and "registry.promote is false" in r.decision.reason
    assert _alias(client, "champion") is None and _alias(client, "challenger") == r.version


# ---------------------------------------------------------------- idempotent registration


def test_same_weights_register_once_and_an_eval_only_change_reuses_the_version(store):
    client = store[0]
    first = _register(store, b"same", {"rouge_l": 0.5}, base={"rouge_l": 0.1})
    other_fp = eval_fingerprint("data-fp-1", max_samples=16, max_new_tokens=64)
    again = _register(
        store,
        b"same",
        {"rouge_l": 0.47},
        base={"rouge_l": 0.1},
        fp=other_fp,
        champion_rescored=Scored({"rouge_l": 0.47}, other_fp, first.version),
    )
    assert (again.version, again.created) == (first.version, False)
    assert again.promoted and "only re-evaluated" in again.decision.reason
    assert len(client.search_model_versions("name='m'")) == 1
    tags = _tags(client, first.version)
    assert tags[T.EVAL_FINGERPRINT] == other_fp and float(tags["metric.rouge_l"]) == 0.47
    assert float(tags[T.eval_score_key(FP, "rouge_l")]) == 0.5
    different = _register(store, b"different", {"rouge_l": 0.6}, base={"rouge_l": 0.1})
    assert different.created and different.version != first.version


def test_weights_hash_is_content_only_and_stable(tmp_path):
    a = _model_dir(tmp_path / "a", b"\x00\x01weights")
    b = _model_dir(tmp_path / "b", b"\x00\x01weights")
    (b / "tokenizer.json").write_text("{}")
    (b / "checkpoint-10").mkdir()
    (b / "checkpoint-10" / "model.safetensors").write_bytes(b"old")
    assert weights_sha256(a) == weights_sha256(b)
    (b / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 32}')
    assert weights_sha256(a) != weights_sha256(b)
    (a / "adapter_model.safetensors").write_bytes(b"\x00\x02weights")
    assert weights_sha256(a) != weights_sha256(_model_dir(tmp_path / "c", b"\x00\x01weights"))
    # The format, spelled out: any change to it changes every registered identity.
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    (fixed / "model.safetensors").write_bytes(b"abc")
    rel = b"model.safetensors"
    expected = hashlib.sha256(len(rel).to_bytes(8, "big") + rel + (3).to_bytes(8, "big") + b"abc").hexdigest()
    assert weights_sha256(fixed) == expected
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        weights_sha256(empty)


# ---------------------------------------------------------------- lineage


def test_lineage_tags_read_git_and_keep_secrets_out(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    config = {
        "model": {"name_or_path": "tiny", "hf_token": "hf_SECRETSECRET"},
        "tracking": {"mlflow_tracking_uri": "https://alice:pw123@mlflow.example/x"},
        "train": {"learning_rate": 2e-4},
    }
    kw = dict(
        config=config,
        mlflow_run_id="r1",
        zenml_run_id="z1",
        data_fingerprints={"validation": "fpv", "train": "fpt"},
        data_sources="data/train.jsonl@abc",
        base_model="tiny",
        wall_time_s=12.34,
        weights_sha256="w" * 64,
        repo_dir=repo,
        packages={"torch": "2.13.0"},
        hardware="cpu x86_64, 2 cores",
    )
    tags = lineage_tags(**kw)
    assert tags["git.commit"] == head and tags["git.dirty"] == "false"
    assert tags["mlflow_run_id"] == "r1" and tags["zenml.run_id"] == "z1"
    assert tags["data.fingerprint.validation"] == "fpv" and tags["base_model.revision"] == "unpinned"
    assert tags["pkg.torch"] == "2.13.0" and tags["train.wall_time_s"] == "12.3"
    assert all(isinstance(v, str) for v in tags.values())
    blob = json.dumps(tags) + json.dumps(loggable_config(config))
    assert "hf_SECRETSECRET" not in blob and "pw123" not in blob
    assert loggable_config(config)["tracking"]["mlflow_tracking_uri"] == "https://***@mlflow.example/x"
    rotated = {**config, "model": {"hf_token": "other", "name_or_path": "tiny"}}
    assert config_sha256(rotated) == tags["config.sha256"]  # key order and secrets do not change it
    assert config_sha256({**config, "train": {"learning_rate": 1e-4}}) != tags["config.sha256"]

    (repo / "code.py").write_text("x = 2\n")
    assert lineage_tags(**kw)["git.dirty"] == "true"
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    assert lineage_tags(**{**kw, "repo_dir": plain})["git.commit"] == "unknown"
    detected = lineage_tags(config={}, mlflow_run_id=None, repo_dir=plain)
    assert {"pkg.torch", "pkg.transformers", "pkg.peft", "pkg.trl", "hardware"} <= set(detected)


# ---------------------------------------------------------------- operations


def test_promote_and_rollback_round_trip_with_history(store):
    client = store[0]
    v = [_register(store, f"r{i}".encode(), {"rouge_l": 0.1 * i}).version for i in range(1, 5)]
    assert _alias(client, "champion") is None  # no base scores: none passed the gate
    r1 = promote(client, "m", v[0], reason="first release", who="alice")
    assert r1.changed and r1.replaced is None and _alias(client, "champion") == v[0]
    promote(client, "m", v[1], reason="better on review", who="bob")
    promote(client, "m", int(v[2]), reason="ship it", who="carol")
    assert (_alias(client, "champion"), _alias(client, "previous-champion")) == (v[2], v[1])
    t2 = _tags(client, v[2])
    assert (t2[T.CHAMPION_BY], t2[T.CHAMPION_PREVIOUS]) == ("carol", v[1]) and "ship it" in t2[
        T.CHAMPION_REASON
    ]
    assert _tags(client, v[1])[T.DISPLACED_BY] == "carol"
    same = promote(client, "m", v[2], reason="again", who="carol")
    assert not same.changed

    back = rollback(client, "m", reason="bad answers in prod", who="dave")
    assert (back.champion, back.replaced, back.previous_champion) == (v[1], v[2], v[0])
    assert (_alias(client, "champion"), _alias(client, "previous-champion")) == (v[1], v[0])
    t2 = _tags(client, v[2])
    assert (t2[T.ROLLED_BACK_BY], t2[T.ROLLED_BACK_REASON]) == ("dave", "bad answers in prod")
    assert T.DISPLACED_AT not in _tags(client, v[1])
    back2 = rollback(client, "m", reason="also bad", who="dave")
    assert back2.champion == v[0] and back2.previous_champion is None
    assert _alias(client, "previous-champion") is None
    with pytest.raises(
        UserError, match=r"no @previous-champion to roll back to.*python run.py promote \S+ <version>"
    ):
        rollback(client, "m", reason="again", who="dave")

    events = history(client, "m")
    manual = [(e["action"], e["version"], e["who"]) for e in events if e["action"] != "decision"]
    assert manual == [
        ("promote", v[0], "alice"),
        ("promote", v[1], "bob"),
        ("promote", v[2], "carol"),
        ("rollback", v[1], "dave"),
        ("rollback", v[0], "dave"),
    ]
    assert client.get_registered_model("m").tags[T.EPOCH] == "5"
    assert "rollback  v" in format_history(events)

    # The same weights as the rolled-back v3, re-registered with a great score, stay a challenger.
    rerun = _register(store, b"r3", {"rouge_l": 0.99}, champion_rescored=Scored({"rouge_l": 0.1}, FP, v[0]))
    assert rerun.version == v[2] and not rerun.promoted and "rolled back by dave" in rerun.decision.reason
    assert _alias(client, "champion") == v[0]


def test_operations_name_the_unknown_model_or_version(store):
    client = store[0]
    with pytest.raises(UserError, match=r"no registered model 'nope'.*registry\.model_name"):
        list_versions(client, "nope")
    with pytest.raises(UserError, match="no registered model 'nope'"):
        rollback(client, "nope", reason="x", who="y")
    _register(store, b"x", {"rouge_l": 0.1})
    with pytest.raises(UserError, match=r"'m' has no version 7 \(versions: 1\)"):
        promote(client, "m", 7, reason="x", who="y")
    with pytest.raises(UserError, match="version must be a number"):
        promote(client, "m", "champion", reason="x", who="y")
    with pytest.raises(UserError, match="reason is required"):
        promote(client, "m", 1, reason="  ", who="y")


def test_list_versions_newest_first_and_the_table(store):
    client = store[0]
    a = _register(store, b"a", {"rouge_l": 0.3, "exact_match": 0.1}, base={"rouge_l": 0.1})
    b = _register(store, b"b", {"rouge_l": 0.2, "exact_match": 0.0}, base={"rouge_l": 0.1})
    client.set_model_version_tag("m", a.version, "git.commit", "0123456789abcdef")
    client.set_model_version_tag("m", a.version, "git.dirty", "true")
    versions = list_versions(client, "m")
    assert [x.version for x in versions] == [b.version, a.version]
    assert versions[0].aliases == ["challenger"] and versions[1].aliases == ["champion"]
    assert versions[1].metrics == {"rouge_l": 0.3, "exact_match": 0.1}
    assert versions[0].decision == "challenger" and versions[1].lineage["git.commit"] == "0123456789abcdef"
    table = format_versions("m", versions, metrics=["rouge_l", "exact_match"])
    lines = table.splitlines()
    assert lines[0] == "m: 2 versions  @champion v1  @previous-champion -  @challenger v2"
    assert lines[1].split() == [
        "version", "aliases", "created", "(UTC)", "rouge_l", "exact_match", "eval", "set", "decision", "git",
        "weights", "reason",
    ]  # fmt: skip
    assert lines[2].split()[:2] == ["v2", "challenger"] and "0.2000" in lines[2]
    assert "01234567+dirty" in lines[3] and "champion" in lines[3]


# ---------------------------------------------------------------- concurrency


def test_verify_repairs_a_champion_alias_overwritten_by_a_stale_decision(store):
    """What set-then-verify fixes on a server: two runs pass the gate against the same champion and
    the worse one sets the alias last."""
    client = store[0]
    old = _register(store, b"old", {"rouge_l": 0.3}, base={"rouge_l": 0.1})
    better = _register(store, b"better", {"rouge_l": 0.6})
    worse = _register(store, b"worse", {"rouge_l": 0.5})
    assert better.promoted and not worse.promoted
    # The worse run's view: it compared with `old` and won, then its alias write landed last.
    for k, val in {T.DECISION: "champion", T.DECISION_PREVIOUS_CHAMPION: old.version}.items():
        client.set_model_version_tag("m", worse.version, k, val)
    client.set_registered_model_alias("m", "champion", worse.version)
    holder = verify_champion(client, "m", ROUGE, FP, epoch="0", observed=old.version, sleep=lambda s: None)
    assert holder == better.version == _alias(client, "champion")
    assert _tags(client, worse.version)[T.DISPLACED_FOR] == better.version
    assert any(e["action"] == "repair" for e in history(client, "m"))
    # A person's choice (a new epoch) is never repaired away.
    promote(client, "m", old.version, reason="pin the old one", who="ops")
    assert (
        verify_champion(client, "m", ROUGE, FP, epoch="0", observed=None, sleep=lambda s: None) == old.version
    )
    assert _alias(client, "champion") == old.version


def test_lock_is_next_to_a_local_store_and_absent_for_servers(tmp_path):
    assert lock_path(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db.tuneline-registry.lock"
    assert lock_path(str(tmp_path)) == tmp_path / "tuneline-registry.lock"
    assert lock_path(tmp_path.as_uri()) == tmp_path / "tuneline-registry.lock"
    assert lock_path("http://127.0.0.1:5000") is None
    assert lock_path("postgresql://u@db/mlflow") is None
    assert Aliases("prod").previous == "previous-prod" and Aliases("prod").challenger == "prod-challenger"


ROUNDS = 3


def _race_worker(uri: str, exp: str, root: str, idx: int, plan, barrier, out) -> None:
    """One of two processes: each round, register and decide at the same moment as the other.
    `plan`: (model name, weights bytes, score) per round for this process."""
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        for rnd, (name, weights, score) in enumerate(plan):
            d = _model_dir(Path(root) / f"p{idx}", weights)
            barrier.wait(timeout=120)
            run = client.create_run(exp)
            client.log_artifacts(run.info.run_id, str(d), "model")
            cand = Candidate(
                source=f"{run.info.artifact_uri}/model",
                run_id=run.info.run_id,
                weights_sha256=weights_sha256(d),
                scores=Scored({"rouge_l": score}, FP),
                base=Scored({"rouge_l": 0.1}, FP),
            )
            result = register_and_decide(client, name, cand, ROUGE, registry_uri=uri)
            out.put((rnd, idx, score, result.version, result.decision.outcome, result.serialised))
    except BaseException as e:
        out.put(("error", idx, repr(e)))
        raise


def race(uri: str, exp: str, root: Path, plans) -> list[tuple]:
    """Run two `_race_worker`s to completion; their results, after checking neither failed."""
    # Children forked from a server that has imported MLflow once: no store state is inherited (as
    # with spawn), and the import is not paid per child.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow", "tests.test_registry_ops"])
    barrier, out = ctx.Barrier(len(plans)), ctx.Queue()
    procs = [
        ctx.Process(target=_race_worker, args=(uri, exp, str(root), i, plan, barrier, out))
        for i, plan in enumerate(plans)
    ]
    for p in procs:
        p.start()
    results = []
    try:
        while len(results) < sum(len(p) for p in plans):
            results.append(out.get(timeout=300))
            assert results[-1][0] != "error", results
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.exitcode is None:
                p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs), results
    return results


def assert_better_won(client, results, names) -> None:
    for rnd, name in enumerate(names):
        worse, better = sorted((r for r in results if r[0] == rnd), key=lambda r: r[2])
        assert worse[3] != better[3]  # distinct versions
        assert better[4] == "champion"
        assert _alias(client, "champion", name) == better[3]
        assert len(client.search_model_versions(f"name='{name}'")) == 2


def test_two_processes_deciding_at_once_leave_a_consistent_registry(store):
    client, uri, exp, tmp = store
    names = [f"race{r}" for r in range(ROUNDS)]
    # The better process alternates, so both orders of arrival are exercised.
    plans = [
        [(names[r], f"round{r}-proc{i}".encode(), 0.5 + 0.1 * ((i + r) % 2)) for r in range(ROUNDS)]
        for i in range(2)
    ]
    results = race(uri, exp, tmp, plans)
    assert all(r[5] for r in results)  # a local store: the decision lock was held
    assert_better_won(client, results, names)
