"""Two runs that both pass the gate at once, replayed step by step on a local SQLite store.

On a server nothing serialises registrations, so the runs' steps interleave in any order; the
slow tier meets only the orders the scheduler happens to produce. Here each run's decision
(`register_and_decide` up to the version write) reads `@champion` as it was before either run
moved it, as two runs that started together do, and its alias move and verification are held
back and replayed in every order the two runs can produce. Whatever the order, the better
version must end as champion and the worse one must say why it is not.
"""

from __future__ import annotations

import hashlib
import itertools
from types import SimpleNamespace
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

from tuneline.registry import (
    Candidate,
    PromotionPolicy,
    Scored,
    eval_fingerprint,
    history,
    promote,
    register_and_decide,
)
from tuneline.registry import register as R
from tuneline.registry import tags as T

ROUGE = PromotionPolicy(metric="rouge_l")
FP = eval_fingerprint("race-data", max_samples=8)
WORSE, BETTER = 0.5, 0.6
MOVE, VERIFY = R._move_champion, R.verify_champion


def _orders() -> list[tuple[tuple[str, str], ...]]:
    """Every interleaving of run A's (decide, move, verify) with run B's, A deciding first (A is
    registered first, so it gets the lower version number)."""
    steps = [(s, r) for r in "AB" for s in "dmv"]
    out = set()
    for perm in itertools.permutations(steps):
        pos = {step: i for i, step in enumerate(perm)}
        chained = all(pos["d", r] < pos["m", r] < pos["v", r] for r in "AB")
        if chained and pos["d", "A"] < pos["d", "B"]:
            out.add(perm)
    return sorted(out)


ORDERS = _orders()


@pytest.fixture
def client(mlflow_db):
    uri = f"sqlite:///{mlflow_db}"
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri("")


class StaleChampion:
    """A client whose `@champion` reads return the holder from before the race: what a run that
    read it before the other run's alias write landed sees."""

    def __init__(self, client: Any, holder: str | None):
        self._client, self._holder = client, holder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_registered_model(self, name: str) -> Any:
        rm = self._client.get_registered_model(name)
        aliases = {a: v for a, v in (rm.aliases or {}).items() if a != "champion"}
        if self._holder is not None:
            aliases["champion"] = self._holder
        return SimpleNamespace(name=rm.name, tags=rm.tags, aliases=aliases)


def _candidate(tmp_path, name: str, label: str, score: float) -> Candidate:
    return Candidate(
        source=str(tmp_path / name / label),
        run_id=None,
        weights_sha256=hashlib.sha256(f"{name}/{label}".encode()).hexdigest(),
        scores=Scored({"rouge_l": score}, FP),
        base=Scored({"rouge_l": 0.1}, FP),
    )


def _register(client, tmp_path, name: str, label: str, score: float):
    return register_and_decide(
        client, name, _candidate(tmp_path, name, label, score), ROUGE, registry_uri=client._registry_uri
    )


class Run:
    """One racing run: its decision, then its held-back alias move and verification."""

    def __init__(self, client, tmp_path, name: str, label: str, score: float, seen: str | None):
        self.client, self.tmp_path, self.name, self.label, self.score = client, tmp_path, name, label, score
        self.seen = seen  # the holder both runs read before either moved @champion
        self.held: dict[str, tuple] = {}
        self.result = None
        self.verified: str | None = None

    def decide(self, monkeypatch) -> None:
        with monkeypatch.context() as m:
            m.setattr(R, "_move_champion", lambda *a, **k: self.held.__setitem__("move", (a, k)))
            m.setattr(R, "verify_champion", lambda *a, **k: self.held.__setitem__("verify", (a, k)))
            self.result = register_and_decide(
                StaleChampion(self.client, self.seen),
                self.name,
                _candidate(self.tmp_path, self.name, self.label, self.score),
                ROUGE,
                registry_uri=self.client._registry_uri,
            )
        assert self.result.decision.promoted, self.result.decision.reason
        assert set(self.held) == {"move", "verify"}

    def move(self) -> None:
        # The stale client's reads end with the decision; later steps read the store as it is.
        args, kwargs = self.held["move"]
        MOVE(R.RetryingClient(self.client), *args[1:], **kwargs)

    def verify(self) -> None:
        args, kwargs = self.held["verify"]
        self.verified = VERIFY(
            R.RetryingClient(self.client), *args[1:], **{**kwargs, "sleep": lambda s: None}
        )


def _race(client, tmp_path, monkeypatch, name: str, order, scores, seen=None) -> dict[str, Run]:
    runs = {r: Run(client, tmp_path, name, r, scores[r], seen) for r in "AB"}
    for step, r in order:
        if step == "d":
            runs[r].decide(monkeypatch)
        elif step == "m":
            runs[r].move()
        else:
            runs[r].verify()
    return runs


def _aliases(client, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def _end_state(client, name: str, roles: dict[str, str]) -> dict:
    """What must not depend on the order: the aliases, and the decision and displacement of the two
    racing versions, by role (timestamps, who wrote them and version numbers may differ)."""
    by_version = {v: r for r, v in roles.items()}

    def named(text: str) -> str:
        for v in sorted(by_version, key=len, reverse=True):
            text = text.replace(f"v{v}", f"v<{by_version[v]}>")
        return text

    state: dict = {"aliases": {a: by_version.get(v, v) for a, v in _aliases(client, name).items()}}
    for r in ("better", "worse"):
        tags = client.get_model_version(name, roles[r]).tags
        note = tags.get(T.DECISION_NOTE, "").split(":")[0]
        state[r] = (tags[T.DECISION], by_version.get(tags.get(T.DISPLACED_FOR)), named(note))
    return state


@pytest.mark.parametrize(
    ("with_champion", "better_first"),
    [(False, False), (False, True), (True, False)],
    ids=["no-champion-worse-first", "no-champion-better-first", "over-a-champion-worse-first"],
)
def test_every_order_of_two_winning_runs_ends_the_same(
    client, tmp_path, monkeypatch, better_first, with_champion
):
    end_states = []
    for i, order in enumerate(ORDERS):
        name = f"race{i}"
        seen = _register(client, tmp_path, name, "old", 0.3).version if with_champion else None
        scores = {"A": BETTER, "B": WORSE} if better_first else {"A": WORSE, "B": BETTER}
        runs = _race(client, tmp_path, monkeypatch, name, order, scores, seen)
        better = runs["A" if better_first else "B"].result.version
        worse = runs["B" if better_first else "A"].result.version
        aliases = _aliases(client, name)
        ctx = (order, aliases)

        assert aliases.get("champion") == better, ctx
        assert "challenger" not in aliases, ctx
        assert aliases.get("previous-champion") == seen, ctx
        last = runs[max("AB", key=lambda r: order.index(("v", r)))]
        assert last.verified == better, ctx

        worse_tags = client.get_model_version(name, worse).tags
        assert worse_tags[T.DECISION] == "champion", ctx  # it did pass the gate: that record stays
        assert worse_tags[T.DISPLACED_FOR] == better, (ctx, worse_tags)
        assert f"superseded by v{better}" in worse_tags[T.DECISION_NOTE], (ctx, worse_tags)
        assert T.DISPLACED_AT not in client.get_model_version(name, better).tags, ctx
        if seen is not None:
            assert T.DISPLACED_AT in client.get_model_version(name, seen).tags, ctx
        events = [e["action"] for e in history(client, name)]
        assert {"displaced", "repair"} & set(events), (ctx, events)

        roles = {"better": better, "worse": worse} | ({"old": seen} if seen else {})
        end_states.append((order, _end_state(client, name, roles)))

    first = end_states[0][1]
    for order, state in end_states[1:]:
        assert state == first, (order, state, first)


@pytest.mark.parametrize("promote_after", ["moves", "one-verify"])
def test_a_person_promoting_during_the_race_is_never_undone_or_relabelled(
    client, tmp_path, monkeypatch, promote_after
):
    """Both runs pass the gate; a person promotes the worse one (a new epoch) before the race is
    verified, or after one verification already marked it as the loser."""
    first = (("d", "A"), ("d", "B"), ("m", "A"), ("m", "B"))
    if promote_after == "one-verify":
        first += (("v", "B"),)
    runs = _race(client, tmp_path, monkeypatch, "m", first, {"A": WORSE, "B": BETTER})
    worse, better = runs["A"].result.version, runs["B"].result.version
    promote(client, "m", worse, reason="pin it", who="ops")
    for r in "AB" if promote_after == "moves" else "A":
        runs[r].verify()
        assert runs[r].verified == worse
    assert _aliases(client, "m")["champion"] == worse
    tags = client.get_model_version("m", worse).tags
    assert not any(k in tags for k in T.DISPLACED_KEYS), tags
    assert tags[T.CHAMPION_BY] == "ops"
    events = [e["action"] for e in history(client, "m")]
    after_promote = events[events.index("promote") :]
    assert not {"repair", "displaced"} & set(after_promote), events
    assert ("displaced" in events) == (promote_after == "one-verify"), events
    assert client.get_model_version("m", better).tags[T.DISPLACED_FOR] == worse


class PromoteDuringSearch:
    """A client on which a person promotes `version` right after verification has read the epoch
    and the eligible versions, before it writes anything."""

    def __init__(self, client: Any, name: str, version: str):
        self._client, self._name, self._version, self._done = client, name, version, False

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._client, attr)

    def search_model_versions(self, *args: Any, **kwargs: Any) -> Any:
        found = self._client.search_model_versions(*args, **kwargs)
        if not self._done:
            self._done = True
            promote(self._client, self._name, self._version, reason="pin it", who="ops")
        return found


def test_a_promote_between_reading_the_epoch_and_marking_the_loser_wins(client, tmp_path, monkeypatch):
    runs = _race(
        client,
        tmp_path,
        monkeypatch,
        "m",
        (("d", "A"), ("d", "B"), ("m", "A"), ("m", "B")),
        {"A": WORSE, "B": BETTER},
    )
    worse, better = runs["A"].result.version, runs["B"].result.version
    assert _aliases(client, "m")["champion"] == better
    args, kwargs = runs["A"].held["verify"]
    holder = VERIFY(PromoteDuringSearch(client, "m", worse), *args[1:], **{**kwargs, "sleep": lambda s: None})
    assert holder == worse == _aliases(client, "m")["champion"]
    assert not any(k in client.get_model_version("m", worse).tags for k in T.DISPLACED_KEYS)
    events = [e["action"] for e in history(client, "m")]
    assert not {"repair", "displaced"} & set(events[events.index("promote") :]), events
