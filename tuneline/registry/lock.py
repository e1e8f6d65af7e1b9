"""Serialising registry decisions, and riding out SQLite's "database is locked".

MLflow aliases have no compare-and-set: two runs that each read "champion is v3", decide, and
set the alias can leave the worse one holding it. For a store on this machine (a SQLite file,
a local file store) every process can share a file lock next to it, which makes
read-decide-write atomic. A server or a remote database has no such shared file; there the
caller sets the alias and then verifies (see `register.verify_champion`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

log = logging.getLogger("tuneline")

R = TypeVar("R")

LOCK_SUFFIX = ".tuneline-registry.lock"
# A decision holds the lock for a handful of registry calls; minutes of waiting means a stuck holder.
DEFAULT_LOCK_TIMEOUT_S = 300.0


def local_store_path(registry_uri: str) -> Path | None:
    """The file or folder behind a registry URI when it lives on this machine, else None."""
    if registry_uri.startswith("sqlite:///"):
        path = registry_uri.removeprefix("sqlite:///").split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(unquote(path)).resolve()
    parts = urlsplit(registry_uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path)).resolve()
    if parts.scheme == "" or (len(parts.scheme) == 1 and registry_uri[1:3] in (":\\", ":/")):
        return Path(registry_uri).resolve()  # a bare path (or a Windows drive path) is a file store
    return None


def lock_path(registry_uri: str) -> Path | None:
    """Where the decision lock of a local store lives; None for servers and remote databases."""
    store = local_store_path(registry_uri)
    if store is None:
        return None
    if store.is_dir():
        return store / LOCK_SUFFIX.lstrip(".")
    return store.with_name(store.name + LOCK_SUFFIX)


@contextmanager
def held_file_lock(path: Path, timeout_s: float, waiting_for: str) -> Iterator[None]:
    """Hold an inter-process file lock; a timeout is one error naming the lock and what holds it."""
    from filelock import FileLock, Timeout

    from tuneline.errors import TunelineError

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout as e:
        raise TunelineError(
            f"waited {timeout_s:.0f} s for {path}: {waiting_for} and has not finished; "
            "if none is running, delete the lock file"
        ) from e
    try:
        yield
    finally:
        lock.release()


@contextmanager
def registry_lock(registry_uri: str, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[bool]:
    """Hold the store's decision lock; yields True if it serialises, False where none exists (servers)."""
    path = lock_path(registry_uri)
    if path is None:
        yield False
        return
    with held_file_lock(path, timeout_s, "another tuneline process is deciding a promotion (registry lock)"):
        yield True


TRANSIENT = (
    "database is locked",
    "database table is locked",
    "deadlock detected",
    "could not serialize access",
)
# MLflow's alias and tag setters read, then insert or update: two writers of one key can both
# insert, and the second fails on the primary key. The setter is an upsert, so a retry updates.
UPSERT_RACE = ("duplicate key value", "unique constraint failed", "integrityerror", "uniqueviolation")


def is_transient(exc: BaseException) -> bool:
    """The database was busy (SQLite's writer lock, a deadlock victim): the same call succeeds later."""
    text = str(exc).lower()
    return any(marker in text for marker in TRANSIENT)


def is_upsert_race(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in UPSERT_RACE)


def retry_locked(
    call: Callable[[], R],
    *,
    attempts: int = 8,
    first_delay_s: float = 0.1,
    max_delay_s: float = 3.0,
    retry_if: Callable[[BaseException], bool] = is_transient,
) -> R:
    """`call()`, retried with backoff while `retry_if(error)` (default: the store is busy)."""
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as e:
            if attempt == attempts or not retry_if(e):
                raise
            log.info(
                "registry store busy (%s; attempt %d/%d); retrying in %.1f s",
                str(e)[:80],
                attempt,
                attempts,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
    raise AssertionError("unreachable")
