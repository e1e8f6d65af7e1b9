"""Turn a source spec (files, globs, directories, hub names, inline records) into raw rows.

Every row keeps a `Loc` so that any later problem can point at the exact file and
1-based line (row for CSV/Parquet, index for hub data). Readers never guess past a
problem: what cannot be read becomes an `Issue`, and whole-file problems (empty,
unreadable) are marked fatal because dropping "the record" makes no sense for them.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# File types a path/glob/directory source may contain. `.txt` is one document per file
# (continued pretraining); directories only pick it up when they hold no other data files.
DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
TEXT_SUFFIXES = (".txt", ".md")
# Metadata files that live next to data (HF save_to_disk, LlamaFactory) and are not records.
METADATA_NAMES = {"dataset_info.json", "state.json", "dataset_dict.json", "dataset_infos.json"}
_GLOB_CHARS = re.compile(r"[*?\[]")
_WS = re.compile(r"[ \t\n\r]*")

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "eval": "validation",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class Loc:
    """Where a row came from, formatted the way a person opens it in an editor."""

    source: str  # display path, or "name[split]" for hub data, or "data.sources[0].records"
    unit: str  # "line" (JSON/JSONL/text), "row" (CSV/Parquet), "index" (hub, inline)
    n: int

    def at(self, field_path: str = "") -> str:
        base = f"{self.source}:{self.n}" if self.unit == "line" else f"{self.source}:{self.unit} {self.n}"
        return f"{base} {field_path}" if field_path else base


@dataclass
class Issue:
    """A problem plus a short reason label, so the skip policy can count drops by cause."""

    where: str
    message: str
    reason: str
    fatal: bool = False
    record: str = ""  # the record's location, so several problems in one record drop it once


@dataclass
class RawFile:
    """Rows read from one file (or hub split, or inline list)."""

    label: str  # display name used in locations and meta["source"]
    rows: list[tuple[Any, Loc]] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    split: str | None = None  # the source's own split for these rows, if it has one
    fmt: str = "json"  # json | csv | parquet | text | hub | inline
    # Rows that could not even be parsed (bad JSON, not an object) count towards skips.
    unreadable: int = 0
    sha256: str | None = None  # of the file bytes as stored (lineage)


def split_alias(name: str) -> str | None:
    return SPLIT_ALIASES.get(name.lower())


def split_from_name(rel: str) -> str | None:
    """`data/test-00000-of-00001.parquet` -> test; the HF convention for split files."""
    tokens = re.split(r"[-_./\\]+", rel.lower())
    for t in tokens:
        if t in SPLIT_ALIASES:
            return SPLIT_ALIASES[t]
    return None


def hub_split_name(name: str) -> str | None:
    """Hub split names like `train_sft`/`test_prefs` map by their first token."""
    return split_alias(name) or split_alias(re.split(r"[-_]", name, maxsplit=1)[0])


def display_path(p: Path, base_dir: str) -> str:
    """Relative to the project when inside it (short, clickable), else absolute."""
    try:
        return str(p.resolve().relative_to(Path(base_dir).resolve()))
    except ValueError:
        return str(p)


def _data_name(p: Path) -> str:
    """The name without a trailing .gz, whose suffix says how to parse the bytes."""
    name = p.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def _is_data_file(p: Path, *, text_ok: bool) -> bool:
    name = _data_name(p)
    if p.name in METADATA_NAMES or p.name.startswith("."):
        return False
    return name.endswith(DATA_SUFFIXES) or (text_ok and name.endswith(TEXT_SUFFIXES))


def _resolve(entry: str, base_dir: str) -> Path:
    p = Path(entry).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def resolve_files(
    spec: str | list[str], base_dir: str, key: str
) -> tuple[list[tuple[Path, str]], list[Issue], bool]:
    """Expand a path spec into (file, path-relative-to-its-root) pairs.

    Returns the files, problems naming the config key, and whether the spec can hold
    several files (only then do file names like train/test imply source splits: a
    single explicitly named `train.jsonl` is just a file).
    """
    entries = [spec] if isinstance(spec, str) else list(spec)
    files: list[tuple[Path, str]] = []
    issues: list[Issue] = []
    multi = not isinstance(spec, str)
    for j, entry in enumerate(entries):
        ekey = key if isinstance(spec, str) else f"{key}[{j}]"
        p = _resolve(entry, base_dir)
        if _GLOB_CHARS.search(entry):
            multi = True
            matched = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
            found = [m for m in matched if m.is_file() and _is_data_file(m, text_ok=True)]
            if not found:
                what = (
                    f"only non-data files ({', '.join(m.name for m in matched[:5])})"
                    if matched
                    else "nothing"
                )
                issues.append(
                    Issue(
                        ekey,
                        f"glob {entry!r} matched {what} (resolved to {p}); fix the pattern",
                        "missing",
                        True,
                    )
                )
            root = Path(str(p).split("*")[0].split("?")[0].split("[")[0]).parent
            files += [(m, _rel(m, root)) for m in found]
        elif p.is_dir():
            multi = True
            found = _dir_files(p)
            if not found:
                issues.append(
                    Issue(
                        ekey,
                        f"directory {p} holds no data files ({', '.join(DATA_SUFFIXES)}, optionally .gz); "
                        "point data at the files or add some",
                        "missing",
                        True,
                    )
                )
            files += [(m, _rel(m, p)) for m in found]
        elif p.is_file():
            if not _is_data_file(p, text_ok=True):
                issues.append(
                    Issue(
                        ekey,
                        f"unsupported file type {p.name!r}; use .jsonl, .json, .csv, .parquet (optionally .gz) or .txt",
                        "missing",
                        True,
                    )
                )
            else:
                files.append((p, p.name))
        else:
            issues.append(Issue(ekey, _not_found(p, base_dir), "missing", True))
    return files, issues, multi


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return p.name


def _dir_files(d: Path) -> list[Path]:
    all_files = sorted(f for f in d.rglob("*") if f.is_file() and not any(x.startswith(".") for x in f.parts))
    data = [f for f in all_files if _is_data_file(f, text_ok=False)]
    return data or [f for f in all_files if _is_data_file(f, text_ok=True)]


def _not_found(p: Path, base_dir: str) -> str:
    import difflib

    msg = f"file not found: {p}"
    parent = p.parent
    if parent.is_dir():
        close = difflib.get_close_matches(p.name, [c.name for c in parent.iterdir()], n=1)
        if close:
            msg += f"; did you mean {close[0]!r}?"
    if not Path(str(p)).is_absolute() or str(p).startswith(str(base_dir)):
        msg += f" (relative paths resolve against {base_dir})"
    return msg


# ---------------------------------------------------------------- file readers


def read_file(path: Path, label: str) -> RawFile:
    """Read one data file into rows; format from the suffix (after an optional .gz)."""
    out = RawFile(label=label)
    try:
        data = path.read_bytes()
    except OSError as e:
        out.issues.append(Issue(label, f"cannot read file: {e}", "unreadable", True))
        return out
    out.sha256 = hashlib.sha256(data).hexdigest()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            out.issues.append(
                Issue(label, f"not a valid gzip file ({e}); re-compress it", "unreadable", True)
            )
            return out
    name = _data_name(path)
    if name.endswith(".parquet"):
        out.fmt = "parquet"
        _read_parquet(data, out)
        return out
    if not data.strip(b" \t\r\n\xef\xbb\xbf"):
        out.issues.append(
            Issue(label, "file is empty; add records or remove it from data", "empty file", True)
        )
        return out
    if name.endswith((".jsonl", ".ndjson")):
        _read_jsonl(data, out)
    elif name.endswith(".json"):
        _read_json(data, out)
    elif name.endswith(".csv"):
        out.fmt = "csv"
        _read_csv(data, out)
    else:
        out.fmt = "text"
        _read_text(data, out)
    return out


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def _decode_whole(data: bytes, out: RawFile) -> str | None:
    """Whole-file decode for formats that cannot be read line by line; fatal on failure."""
    nul = data.find(b"\x00")
    if nul >= 0:
        out.issues.append(
            Issue(
                f"{out.label}:{_line_of(data, nul)}",
                "contains a NUL byte (binary data or UTF-16?); re-export the file as UTF-8 text",
                "NUL byte",
                True,
            )
        )
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        out.issues.append(
            Issue(
                f"{out.label}:{_line_of(data, e.start)}",
                f"invalid UTF-8 (byte 0x{data[e.start]:02x}); re-encode the file as UTF-8, "
                "e.g. `iconv -f latin1 -t utf-8`",
                "invalid UTF-8",
                True,
            )
        )
        return None


def _read_jsonl(data: bytes, out: RawFile) -> None:
    loads = json.loads
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for i, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"{out.label}:{i}"
        if b"\x00" in raw:
            out.issues.append(
                Issue(where, "line contains a NUL byte; remove it or re-export the file as UTF-8", "NUL byte")
            )
            out.unreadable += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            out.issues.append(
                Issue(
                    where,
                    f"invalid UTF-8 at byte {e.start} of the line (0x{raw[e.start]:02x}); "
                    "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`",
                    "invalid UTF-8",
                )
            )
            out.unreadable += 1
            continue
        try:
            value = loads(text)
        except json.JSONDecodeError as e:
            out.issues.append(
                Issue(
                    where,
                    f"invalid JSON at column {e.colno}: {e.msg}; each line must be one complete JSON object",
                    "invalid JSON",
                )
            )
            out.unreadable += 1
            continue
        if not isinstance(value, dict):
            out.issues.append(
                Issue(
                    where,
                    f"line is not a JSON object (got {_tname(value)}); each line must be one {{...}} record",
                    "not an object",
                )
            )
            out.unreadable += 1
            continue
        out.rows.append((value, Loc(out.label, "line", i)))


def _read_json(data: bytes, out: RawFile) -> None:
    """A JSON array of objects; a .json file that is really JSON Lines is read as such."""
    text = _decode_whole(data, out)
    if text is None:
        return
    start = _WS.match(text, 0).end()
    if text[start] != "[":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg.startswith("Extra data"):
                _read_jsonl(data, out)  # JSON Lines saved as .json (common, and what HF accepts)
                return
            out.issues.append(Issue(f"{out.label}:{e.lineno}", _bad_json(e), "invalid JSON", True))
            return
        out.issues.append(
            Issue(
                f"{out.label}:1",
                f"top level is a JSON {_tname(whole)}; expected an array of records [{{...}}, ...] "
                "or JSON Lines (one object per line)",
                "not an object",
                True,
            )
        )
        return
    dec = json.JSONDecoder()
    pos = start + 1
    line, last = 1, 0
    index = 0
    while True:
        pos = _WS.match(text, pos).end()
        if pos >= len(text):
            out.issues.append(
                Issue(
                    f"{out.label}:{_count_line(text, pos)}",
                    "unexpected end of file; the array is not closed with ]",
                    "invalid JSON",
                    True,
                )
            )
            return
        if text[pos] == "]" and index == 0:
            break
        line += text.count("\n", last, pos)
        last = pos
        try:
            value, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            out.issues.append(Issue(f"{out.label}:{e.lineno}", _bad_json(e), "invalid JSON", True))
            return
        if isinstance(value, dict):
            out.rows.append((value, Loc(out.label, "line", line)))
        else:
            out.issues.append(
                Issue(
                    f"{out.label}:{line}",
                    f"array item {index} is not a JSON object (got {_tname(value)}); every item must be {{...}}",
                    "not an object",
                )
            )
            out.unreadable += 1
        index += 1
        pos = _WS.match(text, pos).end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            break
        out.issues.append(
            Issue(
                f"{out.label}:{_count_line(text, pos)}",
                "invalid JSON: expected ',' or ']' after an array item",
                "invalid JSON",
                True,
            )
        )
        return
    rest = _WS.match(text, pos + 1).end()
    if rest < len(text):
        out.issues.append(
            Issue(
                f"{out.label}:{_count_line(text, rest)}",
                "invalid JSON: extra data after the closing ]",
                "invalid JSON",
                True,
            )
        )
    if not out.rows and not out.issues:
        out.issues.append(
            Issue(
                out.label, "file holds an empty array; add records or remove it from data", "empty file", True
            )
        )


def _count_line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _bad_json(e: json.JSONDecodeError) -> str:
    return (
        f"invalid JSON at column {e.colno}: {e.msg}; the file cannot be parsed past this point, fix it first"
    )


def _read_csv(data: bytes, out: RawFile) -> None:
    """CSV with a header row. Cells that hold JSON lists/objects (messages) are decoded."""
    text = _decode_whole(data, out)
    if text is None:
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        out.issues.append(Issue(f"{out.label}:1", f"cannot read the CSV header: {e}", "unreadable", True))
        return
    header = [h.strip() for h in header]
    if not any(header):
        out.issues.append(
            Issue(
                f"{out.label}:1", "empty CSV header; the first row must name the columns", "unreadable", True
            )
        )
        return
    n = 0
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            n += 1
            loc = Loc(out.label, "row", n)
            if len(cells) != len(header):
                out.issues.append(
                    Issue(
                        loc.at(),
                        f"has {len(cells)} cells but the header has {len(header)} columns; quote cells that "
                        "contain commas or newlines",
                        "wrong cell count",
                    )
                )
                out.unreadable += 1
                continue
            out.rows.append(({h: _cell(c) for h, c in zip(header, cells, strict=True)}, loc))
    except csv.Error as e:
        out.issues.append(
            Issue(
                f"{out.label}:row {n + 1}",
                f"malformed CSV: {e}; the rest of the file is unreadable",
                "unreadable",
                True,
            )
        )
    if n == 0 and not out.issues:
        out.issues.append(
            Issue(out.label, "CSV has a header but no rows; add records or remove it", "empty file", True)
        )


def _cell(c: str) -> Any:
    s = c.strip()
    if s[:1] in "[{" and s[-1:] in "]}":
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            return c
    return c


def _read_parquet(data: bytes, out: RawFile) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        out.issues.append(Issue(out.label, f"cannot read as Parquet: {e}", "unreadable", True))
        return
    if table.num_rows == 0:
        out.issues.append(
            Issue(out.label, "Parquet file has no rows; add records or remove it", "empty file", True)
        )
        return
    out.rows = [(row, Loc(out.label, "row", i)) for i, row in enumerate(table.to_pylist(), 1)]


def _read_text(data: bytes, out: RawFile) -> None:
    """A plain-text file is one document (continued pretraining)."""
    text = _decode_whole(data, out)
    if text is None:
        return
    out.rows.append(({"text": text}, Loc(out.label, "line", 1)))


def _tname(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), type(v).__name__
    )


# ---------------------------------------------------------------- hub + inline


def hub_local_dir(hub: str, base_dir: str) -> Path | None:
    """A `hub:` value naming an existing local path goes through the same load_dataset code."""
    p = _resolve(hub, base_dir)
    return p if p.exists() else None


def read_hub(
    name: str,
    *,
    subset: str | None,
    split: str | None,
    eval_split: str | None,
    revision: str | None,
    base_dir: str,
    key: str,
    use_source_splits: bool,
) -> tuple[list[RawFile], list[Issue], list[str]]:
    """Load hub data with `datasets.load_dataset` (a local directory works the same way, offline).

    Returns one RawFile per split used, problems, and split names that were ignored.
    """
    import datasets

    local = hub_local_dir(name, base_dir)
    target = str(local) if local is not None else name
    label = name
    issues: list[Issue] = []
    try:
        if (
            local is not None
            and local.is_dir()
            and ((local / "dataset_dict.json").exists() or (local / "state.json").exists())
        ):
            full: Any = datasets.load_from_disk(str(local))  # a save_to_disk directory
            loaded = full[split] if split is not None and isinstance(full, datasets.DatasetDict) else full
        else:
            loaded = datasets.load_dataset(target, subset, split=split, revision=revision)
            full = None
    except Exception as e:  # any loader failure is a user-facing data problem, with its cause
        where = f"{key}.hub"
        msg = (
            f"cannot load dataset {name!r} (subset={subset!r}, split={split!r}, revision={revision!r}): "
            f"{type(e).__name__}: {e}. Check the name, subset and split; without internet only cached "
            "datasets and local directories load"
        )
        issues.append(Issue(where, msg, "missing", True))
        return [], issues, []

    parts: list[tuple[str, Any, str | None]] = []  # (split name, dataset, our split tag)
    ignored: list[str] = []
    if isinstance(loaded, datasets.DatasetDict | dict):
        names = list(loaded.keys())
        train_like = [s for s in names if hub_split_name(s) == "train"] or (names if len(names) == 1 else [])
        if not train_like:
            issues.append(
                Issue(
                    f"{key}.split",
                    f"{name!r} has splits {names} and none is a train split; set split: to one of them",
                    "missing",
                    True,
                )
            )
            return [], issues, []
        parts.append((train_like[0], loaded[train_like[0]], None))
        for s in names:
            if s == train_like[0]:
                continue
            tag = hub_split_name(s)
            if use_source_splits and tag in ("validation", "test") and eval_split is None:
                if not any(t == tag for _, _, t in parts):
                    parts.append((s, loaded[s], tag))
                    continue
            ignored.append(s)
    else:
        parts.append((split or "train", loaded, None))
    if eval_split is not None:
        try:
            if isinstance(loaded, datasets.DatasetDict | dict):
                ev = loaded[eval_split]
            elif isinstance(full, datasets.DatasetDict):
                ev = full[eval_split]
            else:
                ev = datasets.load_dataset(target, subset, split=eval_split, revision=revision)
        except Exception as e:  # same reasoning as above: report it with the key to fix
            issues.append(
                Issue(
                    f"{key}.eval_split", f"cannot load split {eval_split!r} of {name!r}: {e}", "missing", True
                )
            )
            return [], issues, ignored
        parts.append((eval_split, ev, "validation"))

    files = []
    for sname, ds, tag in parts:
        rf = RawFile(label=f"{label}[{sname}]", split=tag, fmt="hub")
        rf.rows = [(row, Loc(rf.label, "index", i)) for i, row in enumerate(ds.to_list())]
        if not rf.rows:
            rf.issues.append(Issue(rf.label, "split is empty", "empty file", True))
        files.append(rf)
    return files, issues, ignored


def read_inline(records: list[Any], key: str) -> RawFile:
    rf = RawFile(label=f"{key}.records", fmt="inline")
    if not records:
        rf.issues.append(
            Issue(rf.label, "records: is an empty list; add records or remove the source", "empty file", True)
        )
    for i, r in enumerate(records):
        rf.rows.append((r, Loc(rf.label, "index", i)))
    return rf


# ---------------------------------------------------------------- hashing


def hash_file(path: Path, h: Any | None = None) -> str:
    """sha256 of the bytes, streamed: cheap enough to run on every pipeline start."""
    h = h or hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
