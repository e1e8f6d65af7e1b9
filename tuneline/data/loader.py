"""`load_records`: config -> validated, split, deduplicated `RecordSet` with lineage.

Order matters and is deliberate:
read -> normalise + validate (all problems) -> error policy -> per-source dedup and
max_samples -> split by content hash (or the source's own splits) -> dedup within
splits -> eval/train overlap removal -> weights (train only) -> system prompt -> shuffle.
Split keys are taken before the system prompt is added, so changing the system
prompt never reshuffles which records are held out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tuneline.config.data import DataConfig, SourceConfig
from tuneline.data import sources as S
from tuneline.data.feedback import apply_labels, unused_fields
from tuneline.data.records import Record, RecordSet
from tuneline.data.shapes import parse_rows
from tuneline.data.split import (
    EVAL_SPLITS,
    apply_weight,
    assign_split,
    count_prompt_overlap,
    prompt_key,
    split_point,
)
from tuneline.errors import DataError, Problem

log = logging.getLogger(__name__)

# Bumped when normalisation changes what the same input produces, so caches keyed on
# source_fingerprint never serve records built by older rules.
DATA_FORMAT_VERSION = "1"
KINDS = ("chat", "text", "preference")
SHOWN_PROBLEMS = 20


@dataclass
class _Loaded:
    """One source after reading and normalisation, before any mixing."""

    key: str
    cfg: SourceConfig
    records: list[Record] = field(default_factory=list)
    tags: list[str | None] = field(default_factory=list)  # the source's own split per record
    issues: list[Any] = field(default_factory=list)
    rows: int = 0  # records attempted (valid + invalid)
    lineage: dict[str, Any] = field(default_factory=dict)


def keyed_sources(cfg: DataConfig) -> list[tuple[str, SourceConfig]]:
    """Sources with the config key a person would edit (`data` for data.path)."""
    srcs = cfg.all_sources()
    keys = (["data"] if cfg.path is not None else []) + [
        f"data.sources[{i}]" for i in range(len(cfg.sources))
    ]
    return list(zip(keys, srcs, strict=True))


def _problems(issues: list[Any]) -> list[Problem]:
    return [Problem(i.where, i.message) for i in issues]


# ---------------------------------------------------------------- reading


def _read_source(key: str, src: SourceConfig, base_dir: str, cfg: DataConfig) -> _Loaded:
    out = _Loaded(key=key, cfg=src)
    raw: list[S.RawFile] = []
    if src.path is not None:
        files, issues, multi = S.resolve_files(src.path, base_dir, f"{key}.path")
        out.issues += issues
        tags = [S.split_from_name(rel) if multi else None for _, rel in files]
        has_own = any(t in EVAL_SPLITS for t in tags)
        if src.split is not None:
            want = S.split_alias(src.split) or src.split
            picked = [(f, t) for f, t in zip(files, tags, strict=True) if (t or "train") == want]
            if files and not picked:
                out.issues.append(
                    S.Issue(
                        f"{key}.split",
                        f"no file of {src.path!r} belongs to split {src.split!r} (files are named like "
                        f"{files[0][1]!r}); name split files train/validation/test or drop split:",
                        "missing",
                        True,
                    )
                )
            files, tags = [f for f, _ in picked], [None] * len(picked)
        elif not (has_own and cfg.use_source_splits):
            tags = [None] * len(files)
        for (p, _), tag in zip(files, tags, strict=True):
            rf = S.read_file(p, S.display_path(p, base_dir))
            rf.split = tag if tag in EVAL_SPLITS else None
            raw.append(rf)
        out.lineage = {"key": key, "type": "files", "path": src.path}
    elif src.hub is not None:
        files_h, issues, ignored = S.read_hub(
            src.hub,
            subset=src.subset,
            split=src.split,
            eval_split=src.eval_split,
            revision=src.revision,
            base_dir=base_dir,
            key=key,
            use_source_splits=cfg.use_source_splits,
        )
        raw += files_h
        out.issues += issues
        local = S.hub_local_dir(src.hub, base_dir)
        out.lineage = {
            "key": key,
            "type": "hub",
            "hub": src.hub,
            "subset": src.subset,
            "split": src.split,
            "eval_split": src.eval_split,
            "revision": src.revision,
            "local": local is not None,
            "ignored_splits": ignored,
        }
        if ignored:
            log.warning("%s: hub splits %s of %s are not used", key, ignored, src.hub)
        if local is None and src.revision is None:
            msg = (
                f"{key}: hub dataset {src.hub!r} has no pinned revision; set revision: for reproducible runs"
            )
            out.lineage["warning"] = msg
            log.warning(msg)
    else:
        raw.append(S.read_inline(src.records or [], key))
        out.lineage = {"key": key, "type": "inline", "records": len(src.records or [])}

    file_entries = []
    for rf in raw:
        out.issues += rf.issues
        out.rows += rf.unreadable
        if any(i.fatal for i in rf.issues):
            continue
        recs, issues, shape = parse_rows(
            rf.rows, fmt=src.format, columns=src.columns, role_map=src.role_map, key=key, label=rf.label
        )
        out.issues += issues
        out.rows += len(rf.rows)
        out.records += recs
        out.tags += [rf.split] * len(recs)
        file_entries.append(
            {
                "path": rf.label,
                "sha256": rf.sha256,
                "format": rf.fmt,
                "rows": len(rf.rows) + rf.unreadable,
                "valid": len(recs),
                "shape": shape,
                "split": rf.split,
                "unused_fields": unused_fields(rf.rows, shape, src.columns),
            }
        )
    out.lineage["files"] = file_entries
    return out


def _check_kinds(loaded: list[_Loaded], kind: str | None) -> tuple[str, list[Problem]]:
    """Every source must produce the record kind the training method consumes."""
    problems = []
    per_source = {}
    for src in loaded:
        kinds = Counter(r.kind for r in src.records)
        if kinds:
            per_source[src.key] = kinds
    if kind is None:
        seen = Counter()
        for kinds in per_source.values():
            seen.update(kinds)
        if len(seen) > 1:
            detail = "; ".join(f"{k}: {dict(v)}" for k, v in per_source.items())
            problems.append(
                Problem(
                    "data",
                    f"sources produce different record kinds ({detail}); chat, text and preference data "
                    "cannot be trained together, keep one kind",
                )
            )
        kind = seen.most_common(1)[0][0] if seen else "chat"
        return kind, problems
    for key, kinds in per_source.items():
        wrong = {k: n for k, n in kinds.items() if k != kind}
        if wrong:
            shapes = sorted(
                {f["shape"] for src in loaded if src.key == key for f in src.lineage["files"] if f["shape"]}
            )
            hint = {
                "chat": "SFT needs instruction/chat data (alpaca, messages, conversations, prompt/completion)",
                "text": "continued pretraining needs raw text records ({text: ...})",
                "preference": "DPO/ORPO needs preference pairs (prompt + chosen + rejected); KTO also "
                "takes answers labelled desirable or not (label: true/false)",
            }[kind]
            problems.append(
                Problem(
                    key,
                    f"holds {sum(wrong.values())} {'/'.join(wrong)} record(s) (shape {', '.join(shapes)}) but this "
                    f"training method needs {kind} records: {hint}",
                )
            )
    return kind, problems


def _apply_error_policy(cfg: DataConfig, loaded: list[_Loaded]) -> dict[str, Any]:
    """raise: every problem at once. skip: drop, count by reason, fail above the threshold."""
    fatal = [i for src in loaded for i in src.issues if i.fatal]
    if fatal:
        others = [i for src in loaded for i in src.issues if not i.fatal]
        raise DataError(
            _problems(fatal + others),
            header=f"cannot load data ({len(fatal)} file/source problem(s), {len(others)} record problem(s))",
        )
    issues = [i for src in loaded for i in src.issues]
    dropped: dict[str, Any] = {"total": 0, "by_reason": {}, "by_source": {}, "problems": []}
    if not issues:
        return dropped
    if cfg.on_error == "raise":
        files = sorted({i.where.split(":", 1)[0] for i in issues})
        raise DataError(
            _problems(issues),
            shown=SHOWN_PROBLEMS,
            header=(
                f"invalid data: {len(issues)} problem(s) in {', '.join(files[:5])}"
                f"{' ...' if len(files) > 5 else ''}; fix them, or set data.on_error: skip to drop bad records"
            ),
        )
    reasons: Counter[str] = Counter()
    too_many = []
    for src in loaded:
        # A record can have several problems; it is dropped once, attributed to its first.
        bad_records: dict[str, str] = {}
        for i in src.issues:
            bad_records.setdefault(i.record or i.where, i.reason)
        reasons.update(bad_records.values())
        n_bad = len(bad_records)
        dropped["by_source"][src.key] = n_bad
        frac = n_bad / src.rows if src.rows else 0.0
        if frac > cfg.max_skip_fraction:
            too_many.append((src, n_bad, frac))
    dropped["total"] = sum(dropped["by_source"].values())
    dropped["by_reason"] = dict(reasons.most_common())
    dropped["problems"] = [str(p) for p in _problems(issues[:SHOWN_PROBLEMS])]
    if too_many:
        src, n_bad, frac = too_many[0]
        raise DataError(
            _problems(issues),
            header=(
                f"{src.key}: {n_bad} of {src.rows} records ({frac:.1%}) are invalid, more than "
                f"data.max_skip_fraction={cfg.max_skip_fraction}; fix the data or raise the threshold"
            ),
        )
    log.warning(
        "data: dropped %d invalid record(s) (%s); first: %s",
        dropped["total"],
        ", ".join(f"{k}: {v}" for k, v in reasons.most_common()),
        dropped["problems"][0] if dropped["problems"] else "",
    )
    return dropped


# ---------------------------------------------------------------- public API


def load_records(cfg: DataConfig, base_dir: str, *, kind: str | None = None) -> RecordSet:
    """Load, validate, normalise, split and mix every source of `cfg` (see module docstring)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    loaded = [_read_source(key, src, base_dir, cfg) for key, src in keyed_sources(cfg)]
    dropped = _apply_error_policy(cfg, loaded)
    apply_labels(loaded, kind)  # label: true/false -> KTO feedback, or refused where it would be ignored
    kind, kind_problems = _check_kinds(loaded, kind)
    if kind_problems:
        raise DataError(kind_problems, header="data does not fit the training method")
    if not any(src.records for src in loaded):
        raise DataError([Problem("data", "no valid records in any source")])

    info: dict[str, Any] = {
        "kind": kind,
        "seed": cfg.seed,
        "sources": [src.lineage for src in loaded],
        "dropped": dropped,
        "dedup": {"enabled": cfg.dedup, "removed": 0, "within_source": {}, "within_split": {}},
        "max_samples": {},
        "split": {
            "validation_split": cfg.validation_split,
            "test_split": cfg.test_split,
            "method": {},
            "forced": [],
        },
        "weights": {},
    }

    # Per source: exact dedup, max_samples (first N), then split assignment.
    # pools[split] = list of (record, key, source index, split point)
    pools: dict[str, list[tuple[Record, str, int, float]]] = {"train": [], "validation": [], "test": []}
    provided: set[str] = set()
    for si, src in enumerate(loaded):
        recs, tags = src.records, src.tags
        keys = [r.content_key() for r in recs]
        if cfg.dedup:
            # Per own split: a validation record equal to a train one is leakage, counted below.
            seen: set[tuple[str | None, str]] = set()
            keep = []
            for i, k in enumerate(keys):
                if (tags[i], k) not in seen:
                    seen.add((tags[i], k))
                    keep.append(i)
            info["dedup"]["within_source"][src.key] = len(keys) - len(keep)
            recs, tags, keys = [recs[i] for i in keep], [tags[i] for i in keep], [keys[i] for i in keep]
        if src.cfg.max_samples is not None and len(recs) > src.cfg.max_samples:
            info["max_samples"][src.key] = {
                "kept": src.cfg.max_samples,
                "cut": len(recs) - src.cfg.max_samples,
            }
            n = src.cfg.max_samples
            recs, tags, keys = recs[:n], tags[:n], keys[:n]
        own = {t for t in tags if t in EVAL_SPLITS}
        provided |= own
        val_ratio = 0.0 if "validation" in own else cfg.validation_split
        test_ratio = 0.0 if "test" in own else cfg.test_split
        info["split"]["method"][src.key] = (
            f"source splits ({', '.join(sorted(own))}) + hash ratio" if own else "hash ratio"
        )
        for r, t, k in zip(recs, tags, keys, strict=True):
            pt = split_point(k, cfg.seed)
            name = t if t in EVAL_SPLITS else assign_split(pt, val_ratio, test_ratio)
            pools[name].append((r, k, si, pt))

    # Tiny datasets: a ratio > 0 that hashed to zero records still gets one (lowest point).
    for name, ratio in (("validation", cfg.validation_split), ("test", cfg.test_split)):
        if ratio > 0 and not pools[name] and name not in provided and len(pools["train"]) >= 2:
            j = min(range(len(pools["train"])), key=lambda i: pools["train"][i][3])
            pools[name].append(pools["train"].pop(j))
            info["split"]["forced"].append(name)

    # Dedup within each split across sources, then remove eval records leaking from train.
    final: dict[str, list[tuple[Record, str, int, float]]] = {}
    for name, items in pools.items():
        if cfg.dedup:
            seen_k: set[str] = set()
            kept = []
            for it in items:
                if it[1] not in seen_k:
                    seen_k.add(it[1])
                    kept.append(it)
            info["dedup"]["within_split"][name] = len(items) - len(kept)
            items = kept
        final[name] = items
    info["dedup"]["removed"] = sum(info["dedup"]["within_source"].values()) + sum(
        info["dedup"]["within_split"].values()
    )
    train_keys = {it[1] for it in final["train"]}
    val_keys_before = len(final["validation"])
    final["validation"] = [it for it in final["validation"] if it[1] not in train_keys]
    banned = train_keys | {it[1] for it in final["validation"]}
    test_before = len(final["test"])
    final["test"] = [it for it in final["test"] if it[1] not in banned]
    train_prompts = {k for it in final["train"] if (k := prompt_key(it[0])) is not None}
    info["overlap"] = {
        "validation_removed": val_keys_before - len(final["validation"]),
        "test_removed": test_before - len(final["test"]),
        "eval_prompts_in_train": count_prompt_overlap(
            (it[0] for n in EVAL_SPLITS for it in final[n]), train_prompts
        ),
    }

    # System prompt (in place, once per unique record) before weighting repeats records.
    if cfg.system_prompt:
        for items in final.values():
            for r, *_ in items:
                _add_system(r, cfg.system_prompt)

    # Weights multiply each source's train records; eval sets keep natural proportions.
    train: list[Record] = []
    for si, src in enumerate(loaded):
        mine = [it[0] for it in final["train"] if it[2] == si]
        rng = random.Random(f"{cfg.seed}:weight:{src.key}")
        weighted = apply_weight(mine, src.cfg.weight, rng)
        info["weights"][src.key] = {
            "weight": src.cfg.weight,
            "train_unique": len(mine),
            "train_weighted": len(weighted),
        }
        train += weighted
    splits: dict[str, list[Record]] = {
        "train": train,
        "validation": [it[0] for it in final["validation"]],
    }
    if cfg.test_split > 0 or "test" in provided:
        splits["test"] = [it[0] for it in final["test"]]
    if cfg.shuffle:
        for name, recs in splits.items():
            random.Random(f"{cfg.seed}:shuffle:{name}").shuffle(recs)

    info["counts"] = {name: len(recs) for name, recs in splits.items()}
    info["shapes"] = {name: dict(Counter(r.meta.get("shape") for r in recs)) for name, recs in splits.items()}
    src_of = {id(it[0]): loaded[it[2]].key for items in final.values() for it in items}
    info["by_source"] = {
        name: dict(Counter(src_of.get(id(r), "?") for r in recs)) for name, recs in splits.items()
    }
    rs = RecordSet(splits=splits, info=info)
    info["fingerprints"] = rs.fingerprints
    info["source_fingerprint"] = source_fingerprint(cfg, base_dir)
    return rs


def _add_system(r: Record, prompt: str) -> None:
    if r.kind == "text" or (r.messages and r.messages[0]["role"] == "system"):
        return
    r.messages = [{"role": "system", "content": prompt}, *r.messages]


def source_fingerprint(cfg: DataConfig, base_dir: str) -> str:
    """Hash of the raw inputs and the data config; never loads hub data.

    File bytes (not mtimes) go in, so an edited file at the same path is a new key and
    a touched-but-unchanged one is not. Paths are hashed relative to base_dir so moving
    the project does not invalidate caches.
    """
    h = hashlib.sha256()
    h.update(DATA_FORMAT_VERSION.encode())
    h.update(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    problems: list[Problem] = []
    for key, src in keyed_sources(cfg):
        h.update(key.encode())
        if src.path is not None:
            files, issues, _ = S.resolve_files(src.path, base_dir, f"{key}.path")
            problems += _problems(issues)
            for p, _ in files:
                h.update(S.display_path(p, base_dir).encode())
                h.update(S.hash_file(p).encode())
        elif src.hub is not None:
            h.update(json.dumps([src.hub, src.subset, src.split, src.eval_split, src.revision]).encode())
            local = S.hub_local_dir(src.hub, base_dir)
            if local is not None:
                files_l = [local] if local.is_file() else [f for f in local.rglob("*") if f.is_file()]
                for p in sorted(files_l):
                    if any(part.startswith(".") for part in p.relative_to(local.parent).parts):
                        continue
                    h.update(str(p.relative_to(local.parent)).encode())
                    h.update(S.hash_file(p).encode())
        else:
            h.update(json.dumps(src.records, sort_keys=True, default=str).encode())
    if problems:
        raise DataError(problems, header="cannot fingerprint data sources")
    return h.hexdigest()[:16]
