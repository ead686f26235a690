"""CSV tables of data sets (``annotations.csv``, ISIC ground truth): the header checked, every bad row listed at once.

``csv.DictReader`` lets the last of two equal column names win silently and fills short rows with ``None``; a data
set with a duplicated ``diameter_mm`` column would then train on the wrong numbers. :func:`read_table` refuses a
header with a duplicated or missing column and a row whose field count differs from the header's, and
:class:`RowProblems` collects what the caller finds in the values so that one error lists every bad row.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["read_table", "RowProblems"]

#: rows listed in one error before "... and N more"
MAX_LISTED = 50


class RowProblems:
    """Collect one line per bad row, then :meth:`raise_if_any` one ``ValueError`` listing them all."""

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.lines: list[str] = []

    def add(self, line: int, message: str, item: str = "") -> None:
        """One bad row: ``line <n> (<item>): <message>``."""
        self.lines.append(f"line {line}{f' ({item})' if item else ''}: {message}")

    def raise_if_any(self) -> None:
        if not self.lines:
            return
        shown = self.lines[:MAX_LISTED]
        more = f"\n  ... and {len(self.lines) - MAX_LISTED} more" if len(self.lines) > MAX_LISTED else ""
        raise ValueError(f"{self.path}: {len(self.lines)} bad row(s) in the {self.what}:\n  " + "\n  ".join(shown)
                         + more)


def read_table(
    path: str | os.PathLike, columns: Sequence[str], what: str
) -> tuple[list[tuple[int, dict[str, str]]], RowProblems]:
    """The rows of CSV file ``path`` as ``(line number, {column: text})``, and the :class:`RowProblems` so far.

    Raises ``ValueError`` naming the file when it is missing or empty, when a column name appears twice, or when one of
    ``columns`` is missing. A row with more or fewer fields than the header is left out and added to the problems;
    the caller adds what it finds in the values and calls ``problems.raise_if_any()`` once.
    Blank lines are skipped. Values are stripped of surrounding white space; a UTF-8 byte-order mark is ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {what} not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty {what} (no header line)")
        names = [h.strip() for h in header]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header; which one "
                             f"holds the values is ambiguous (header: {','.join(names)})")
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(columns)}, found "
                             f"{','.join(names)}")
        problems = RowProblems(path, what)
        rows = []
        for fields in reader:
            line = reader.line_num
            if not fields or all(not v.strip() for v in fields):
                continue
            if len(fields) != len(names):
                problems.add(line, f"{len(fields)} field(s) where the header has {len(names)}: {fields}")
                continue
            rows.append((line, {n: v.strip() for n, v in zip(names, fields)}))
    return rows, problems
