"""The table a tool works on: plain Python, so the tools need neither Django nor DRF.

Parsing user input into a `Dataset` (with the service's size limits) is `agents.datasets`.
"""

import csv
import io
from dataclasses import dataclass
from typing import Any, Literal

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Dataset:
    columns: list[str]
    rows: list[dict[str, Scalar]]
    source_format: Literal["csv", "rows"]

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
