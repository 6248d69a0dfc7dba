"""The table a tool works on: plain Python, so the tools need neither Django nor DRF.

Held by column (`values[column]`: one value per row, None where empty): the tools work column by
column, and a column list pickles and unpickles several times faster than one dict per row when a
run is sent to its sandbox worker. `rows` gives the row view when a caller wants it.

Parsing user input into a `Dataset` (with the service's size limits) is `agents.datasets`.
"""

import csv
import gc
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Literal

Scalar = str | int | float | bool | None


class Dataset:
    columns: list[str]
    values: dict[str, list[Scalar]]
    row_count: int
    source_format: Literal["csv", "rows"]
    # True when every text value is known to hold no NUL and no lone surrogate (the parser checked
    # the whole input at once), so factorising its texts needs no per-column check.
    plain_text: bool

    def __init__(
        self,
        columns: list[str],
        rows: list[dict[str, Scalar]] | None = None,
        source_format: Literal["csv", "rows"] = "rows",
        *,
        values: dict[str, list[Scalar]] | None = None,
        plain_text: bool = False,
    ) -> None:
        """From `rows` (dicts; a missing key is None) or from `values` by column (equal lengths)."""
        if (rows is None) == (values is None):
            raise TypeError("Give either rows or values.")
        self.columns = list(columns)
        self.source_format = source_format
        self.plain_text = plain_text
        if values is None:
            self.values = {name: [row.get(name) for row in rows] for name in self.columns}
            self.row_count = len(rows)
            self.__dict__["rows"] = rows
        else:
            self.values = {name: values[name] for name in self.columns}
            lengths = {len(column) for column in self.values.values()}
            if len(lengths) > 1:
                raise ValueError("Every column needs one value per row.")
            self.row_count = lengths.pop() if lengths else 0

    @cached_property
    def rows(self) -> list[dict[str, Scalar]]:
        """One dict per row, {column: value}."""
        if not self.columns:
            return [{} for _ in range(self.row_count)]
        return [dict(zip(self.columns, record, strict=True)) for record in zip(*self.values.values(), strict=True)]

    def to_message(self) -> dict[str, Any]:
        """What a sandbox worker or a queued run receives (JSON- and pickle-safe)."""
        return {
            "columns": self.columns,
            "values": self.values,
            "row_count": self.row_count,
            "source_format": self.source_format,
            "plain_text": self.plain_text,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "Dataset":
        """`to_message`'s output back; also the row form ({"rows": [...]}) that queued runs stored before."""
        if "values" not in message:
            return cls(message["columns"], rows=message["rows"], source_format=message["source_format"])
        # Only a CSV's parse knows its text plain; anything else is checked per column.
        plain_text = message.get("plain_text") is True and message["source_format"] == "csv"
        if not message["columns"]:
            dataset = cls([], values={}, source_format=message["source_format"], plain_text=plain_text)
            dataset.row_count = message.get("row_count", 0)
            return dataset
        return cls(
            message["columns"], values=message["values"], source_format=message["source_format"], plain_text=plain_text
        )

    def to_payload(self, rows: list[dict[str, Scalar]] | None = None) -> dict[str, Any]:
        """The same format the caller sent: {"csv": "..."} or {"rows": [...]}."""
        rows = self.rows if rows is None else rows
        if self.source_format == "rows":
            return {"rows": rows}
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        return {"csv": out.getvalue()}


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building a table's hundreds of thousands of lists
    (no cycles among them) otherwise sets off collections that walk every object again and again,
    which more than doubles a large CSV's parse. Nested and concurrent pauses restore the
    collector once, when the last one ends, and only if it was on before the first."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()
