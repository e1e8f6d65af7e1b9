"""A JSON Lines file -> tokenized rows on disk, in memory that does not grow with the file.

`load_records` + `tokenize_split` hold every record and every row as Python objects
(~10 GB for a million alpaca records at ~300 tokens). Here the file is read a chunk of
lines at a time, each line normalised by the loader's own code (`sources._read_jsonl`,
`shapes.normalise`, so errors carry the same file:line), each chunk tokenized by
`tokenize_chunk` (the pipeline's rendering, masking, truncation and stats) and written
as one Arrow record batch to an IPC file; `ArrowRows` reads rows back from a memory map.
What this path does not do, because it needs the whole dataset at once: dedup, hash
splits, weights, shuffling and packing.
"""

from __future__ import annotations

import bisect
import gzip
import os
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tuneline.config.template import TokenizeConfig
from tuneline.data import sources as S
from tuneline.data.records import Record
from tuneline.data.shapes import (
    REQUIRED,
    SHAPES,
    RowContext,
    detect_shape,
    family,
    majority_shape,
    normalise,
    remap_columns,
)
from tuneline.errors import ConfigError, DataError, Problem
from tuneline.tokenize import dataset as D
from tuneline.tokenize import parallel as P
from tuneline.tokenize.tokenized import TokenizedSplit

# Lines per chunk: large enough that the batched Rust encode and per-chunk set-up amortise,
# small enough that a chunk's rows (~2,000 x 300 tokens as Python ints) stay a few tens of MB.
CHUNK_RECORDS = 2_000
# Chunks queued per worker: keeps workers busy while the parent parses the next chunk,
# and bounds how many chunks (inputs + results) exist at once.
_IN_FLIGHT_PER_WORKER = 2
SHOWN_PROBLEMS = 20


@dataclass
class StreamResult:
    path: Path
    stats: dict[str, Any]  # as tokenize_split reports for the same records
    records: int  # valid records tokenized
    invalid: dict[str, int] = field(default_factory=dict)  # lines dropped by reason (on_error=skip)
    shape: str | None = None


# ---------------------------------------------------------------- reading


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_record_chunks(
    path: str | Path,
    *,
    chunk_lines: int = CHUNK_RECORDS,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    role_map: dict[str, str] | None = None,
    key: str = "data",
    label: str | None = None,
    on_error: str = "raise",
    invalid: Counter | None = None,
) -> Iterator[list[Record]]:
    """Normalised records of a JSON Lines file, `chunk_lines` lines at a time.

    The file's shape is the majority of its first chunk (the loader takes the whole
    file's; one chunk of rows is the most a stream can look at before committing).
    on_error=raise stops at the first chunk with a bad line, listing that chunk's
    problems; skip drops bad lines and counts them by reason in `invalid`.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    p = Path(path)
    label = label or str(p)
    columns = columns or {}
    role_map = role_map or {}
    names = dict(columns)
    shape: str | None = None
    first: S.Loc | None = None
    try:
        f = _open(p)
    except OSError as e:
        raise DataError([Problem(label, f"cannot read file: {e}")]) from e
    with f:
        line_no = 0
        while True:
            lines = []
            try:
                for raw in f:
                    lines.append(raw)
                    if len(lines) >= chunk_lines:
                        break
            except (OSError, EOFError) as e:  # truncated or corrupt .gz
                raise DataError([Problem(f"{label}:{line_no + len(lines) + 1}", f"cannot read: {e}")]) from e
            if not lines:
                if line_no == 0:
                    raise DataError([Problem(label, "file is empty; add records or remove it from data")])
                return
            if line_no == 0 and lines[0].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
                raise DataError(
                    [
                        Problem(
                            f"{label}:1",
                            "a JSON array cannot be streamed line by line; convert it to JSON Lines "
                            "(one object per line), e.g. `jq -c '.[]' in.json > out.jsonl`",
                        )
                    ]
                )
            rf = S.RawFile(label=label)
            S._read_jsonl(b"".join(lines), rf)
            issues = [_shift(i, label, line_no) for i in rf.issues]
            rows = [(row, S.Loc(label, "line", loc.n + line_no)) for row, loc in rf.rows]
            line_no += len(lines)
            rows = [(remap_columns(r, columns), loc) for r, loc in rows]
            if shape is None and fmt == "auto":
                shape, first = majority_shape(rows)
                if shape is None and rows:
                    keys = sorted(rows[0][0].keys())
                    raise DataError(
                        [
                            Problem(
                                label,
                                f"cannot tell the data shape from the columns {keys}; expected one of: "
                                + "; ".join(f"{s}: {REQUIRED[s]}" for s in SHAPES if s != "sharegpt")
                                + f". Rename columns with {key}.columns or set {key}.format",
                            )
                        ]
                    )
            elif fmt != "auto":
                shape = fmt
            records = []
            for row, loc in rows:
                rec = _normalise_row(row, loc, shape, first, fmt, names, key, role_map, issues)
                if rec is not None:
                    records.append(rec)
            if issues:
                if on_error == "raise":
                    raise DataError(
                        [Problem(i.where, i.message) for i in issues],
                        shown=SHOWN_PROBLEMS,
                        header=f"invalid data: {len(issues)} problem(s) in {label} (lines "
                        f"{line_no - len(lines) + 1}-{line_no}); fix them, or stream with on_error='skip'",
                    )
                if invalid is not None:
                    bad: dict[str, str] = {}
                    for i in issues:
                        bad.setdefault(i.record or i.where, i.reason)
                    invalid.update(bad.values())
            yield records


def _shift(issue: S.Issue, label: str, offset: int) -> S.Issue:
    """`_read_jsonl` numbers the chunk's lines from 1; make them the file's line numbers."""
    n = int(issue.where.rsplit(":", 1)[1]) + offset
    return S.Issue(f"{label}:{n}", issue.message, issue.reason, issue.fatal, f"{label}:{n}")


def _normalise_row(
    row: dict[str, Any],
    loc: S.Loc,
    shape: str | None,
    first: S.Loc | None,
    fmt: str,
    names: dict[str, str],
    key: str,
    role_map: dict[str, str],
    issues: list[S.Issue],
) -> Record | None:
    """`shapes.parse_rows`' per-row step with the file's shape fixed from the first chunk."""
    assert shape is not None
    ctx = RowContext(loc, names, key, role_map)
    own = detect_shape(row) if fmt == "auto" else None
    if fmt == "auto" and family(own) is not None and family(own) != family(shape):
        where = f" (first at {first.at()})" if first else ""
        ctx.err(
            "",
            f"mixed schemas: this record looks like {family(own)} ({REQUIRED[family(own)]}) but the file's "
            f"records are {shape}{where}; it lacks {REQUIRED[shape]}. Fix the record or put each shape "
            "in its own source",
            "mixed schemas",
        )
        issues += ctx.issues
        return None
    rec = normalise(ctx, row, own if own else shape)
    if rec is None:
        issues += ctx.issues
    return rec


# ---------------------------------------------------------------- tokenizing + writing


def _encode_chunk(
    records: list[Record], start: int, tokenizer: Any, cfg: TokenizeConfig, system_prompt: str | None
) -> tuple[Any, dict[str, Any], list[Problem]]:
    """One chunk -> an Arrow table (rows as the file stores them), its stats and problems.

    Converted to Arrow where it was tokenized, so a pool worker sends back a few
    buffers instead of pickling millions of Python ints.
    """
    import pyarrow as pa

    split, problems = D.tokenize_chunk(records, tokenizer, cfg, system_prompt)
    table = pa.table(
        {
            "input_ids": _list_array(split.input_ids),
            "labels": _list_array(split.labels),
            "record_index": pa.array([start + i for i in split.record_index or []], type=pa.int64()),
        }
    )
    return table, split.stats, problems


def _list_array(rows: list[list[int]]) -> Any:
    """`split_to_arrow`'s list<int32> column, built through numpy: ~10x faster than
    pa.array on nested lists, which was 15% of the streaming time."""
    import itertools

    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)), out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _encode_in_worker(records: list[Record], start: int) -> tuple[Any, dict[str, Any], list[Problem]]:
    w = P._WORKER
    return _encode_chunk(records, start, w["tokenizer"], w["cfg"], w["system_prompt"])


def stream_tokenize(
    path: str | Path,
    out_path: str | Path,
    tokenizer: Any,
    cfg: TokenizeConfig,
    *,
    system_prompt: str | None = None,
    chunk_records: int = CHUNK_RECORDS,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    role_map: dict[str, str] | None = None,
    key: str = "data",
    label: str | None = None,
    on_error: str = "raise",
) -> StreamResult:
    """Tokenize a JSON Lines file into an Arrow IPC file at `out_path` (read it with `ArrowRows`).

    Rows, record_index and stats equal `tokenize_split` on the file's records; with
    `cfg.num_proc > 1` chunks are tokenized in a process pool, results written in order.
    The file appears only when everything succeeded.
    """
    import pyarrow as pa

    out = Path(out_path)
    tmp = out.with_name(out.name + ".partial")
    invalid: Counter = Counter()
    chunks = read_record_chunks(
        path,
        chunk_lines=chunk_records,
        fmt=fmt,
        columns=columns,
        role_map=role_map,
        key=key,
        label=label,
        on_error=on_error,
        invalid=invalid,
    )
    n_proc = cfg.num_proc or 1
    parts: list[dict[str, Any]] = []
    problems: list[Problem] = []
    n_problems = 0
    total = 0
    shape: str | None = None
    writer = None

    def write(result: tuple[Any, dict[str, Any], list[Problem]]) -> None:
        nonlocal writer, n_problems
        table, stats, chunk_problems = result
        n_problems += len(chunk_problems)
        problems.extend(chunk_problems[: SHOWN_PROBLEMS - len(problems)])
        # Only the running sums are kept, so memory does not grow with the chunk count.
        parts[:] = [P.merge_split_stats([*parts, stats])]
        if writer is None:
            writer = pa.ipc.new_file(str(tmp), table.schema)
        writer.write_table(table)

    def check(records: list[Record]) -> None:
        nonlocal shape
        if shape is None and records:
            shape = records[0].meta.get("shape")
        pref = next((r for r in records if r.kind == "preference"), None)
        if pref is not None:  # the serial path's own error, raised here rather than in a worker
            D.tokenize_chunk([pref], tokenizer, cfg, system_prompt)
        if not cfg.packing and any(r.kind == "text" for r in records):
            raise ConfigError(
                [
                    Problem(
                        "tokenize.packing",
                        "raw-text records are cut into blocks across documents, which a stream "
                        "tokenized chunk by chunk cannot reproduce; set tokenize.packing: true "
                        "(blocks per document) or tokenize in memory",
                    )
                ]
            )

    try:
        if n_proc > 1:
            pool = P.tokenizer_pool(tokenizer, cfg, system_prompt, n_proc)
            with pool:
                pending: deque = deque()
                for records in chunks:
                    check(records)
                    pending.append(pool.submit(_encode_in_worker, records, total))
                    total += len(records)
                    while len(pending) >= n_proc * _IN_FLIGHT_PER_WORKER:
                        write(pending.popleft().result())
                while pending:
                    write(pending.popleft().result())
        else:
            for records in chunks:
                check(records)
                write(_encode_chunk(records, total, tokenizer, cfg, system_prompt))
                total += len(records)
        if writer is None:  # no valid line at all: still a valid, empty file
            write(_encode_chunk([], 0, tokenizer, cfg, system_prompt))
        writer.close()
        writer = None
        if n_problems:
            raise DataError(
                problems,
                shown=SHOWN_PROBLEMS,
                header=f"{n_problems} sample(s) exceed tokenize.max_length {cfg.max_length}",
            )
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return StreamResult(path=out, stats=parts[0], records=total, invalid=dict(invalid), shape=shape)


# ---------------------------------------------------------------- reading back


class ArrowRows:
    """Rows of a tokenized Arrow IPC file, read from a memory map one row at a time.

    Gives what the trainer's dataset gives (`{"input_ids": [...], "labels": [...]}`), but
    only the rows asked for become Python lists; the rest stay in the page cache.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._open()

    def _open(self) -> None:
        import pyarrow as pa

        self._source = pa.memory_map(str(self.path), "r")
        self._reader = pa.ipc.open_file(self._source)
        self._starts: list[int] = []
        n = 0
        for k in range(self._reader.num_record_batches):
            self._starts.append(n)
            n += self._reader.get_batch(k).num_rows
        self._len = n
        self._cached: tuple[int, dict[str, tuple[Any, Any]]] | None = None

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the map
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._open()

    def __len__(self) -> int:
        return self._len

    def _batch(self, k: int) -> dict[str, tuple[Any, Any]]:
        if self._cached is None or self._cached[0] != k:
            b = self._reader.get_batch(k)
            cols = {}
            for name in ("input_ids", "labels", "position_ids"):
                if name in b.schema.names:
                    col = b.column(name)
                    cols[name] = (col.offsets.to_numpy(), col.values.to_numpy())
            self._cached = (k, cols)
        return self._cached[1]

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"row {i} out of range ({self._len} rows)")
        k = bisect.bisect_right(self._starts, i) - 1
        j = i - self._starts[k]
        return {name: vals[off[j] : off[j + 1]].tolist() for name, (off, vals) in self._batch(k).items()}

    def to_split(self) -> TokenizedSplit:
        """Everything as an in-memory split (small files, tests)."""
        import pyarrow as pa

        from tuneline.tokenize.tokenized import split_from_arrow

        return split_from_arrow(pa.Table.from_batches(list(self._iter_batches())))

    def _iter_batches(self) -> Iterator[Any]:
        for k in range(self._reader.num_record_batches):
            yield self._reader.get_batch(k)
