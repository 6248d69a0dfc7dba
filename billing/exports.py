"""CSV for people's spreadsheets: every cell that a spreadsheet would run as a formula is defused.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula (or becomes one)
in Excel, LibreOffice and Google Sheets; an e-mail or reason a user typed could then run on a
finance officer's machine. Such text cells get a leading apostrophe, which spreadsheets show as
text. Numbers are written as numbers.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


class SafeWriter:
    """`csv.writer` whose rows are defused cell by cell; `writerow` returns what the file's
    `write` returned (so a pseudo-buffer can stream it)."""

    def __init__(self, file):
        self._writer = csv.writer(file)

    def writerow(self, row: Iterable[Any]):
        return self._writer.writerow([safe_cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)
