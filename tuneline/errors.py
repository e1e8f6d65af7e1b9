"""Error types that map to exit codes.

A user error (bad config, bad data) exits with code 2 and a message a person can
act on; anything else is a bug or an environment failure and exits with 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class TunelineError(Exception):
    """Base class for errors tuneline raises on purpose."""

    exit_code = 1


class UserError(TunelineError):
    """The user's input is wrong; the message says where and how to fix it."""

    exit_code = 2


@dataclass
class Problem:
    """One problem found while validating: where it is and what to do."""

    where: str  # "configs/sft.yaml:12 train.learning_rate" or "data.jsonl:3 messages[1].role"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


@dataclass
class ProblemList:
    """Collects problems so validation reports all of them at once."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def __len__(self) -> int:
        return len(self.problems)

    def __bool__(self) -> bool:
        return bool(self.problems)


class ConfigError(UserError):
    """The configuration is invalid; lists every problem with its key path."""

    def __init__(self, problems: list[Problem] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = problems
        self.source = source
        head = f"invalid configuration{f' in {source}' if source else ''}"
        lines = [f"{head} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class DataError(UserError):
    """The dataset is invalid; lists problems with file:line and field path."""

    def __init__(self, problems: list[Problem] | str, *, shown: int = 20, header: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = problems
        n = len(problems)
        head = header or f"invalid data ({n} problem{'s' if n != 1 else ''})"
        lines = [f"{head}:"] + [f"  - {p}" for p in problems[:shown]]
        if n > shown:
            lines.append(f"  ... and {n - shown} more")
        super().__init__("\n".join(lines))
