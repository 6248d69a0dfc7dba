"""Tabular input for the data agents: CSV text, a list of row objects, or an uploaded CSV.

Parsed within the limits in Django settings; the `Dataset` itself (re-exported here) is plain
Python in `agents.tools.dataset`.
"""

import csv
import io
from collections.abc import Iterator
from typing import Any

from django.conf import settings

from agents.tools.dataset import Dataset, Scalar, gc_paused

__all__ = ["Dataset", "DatasetError", "Scalar", "parse_csv", "parse_data", "parse_rows"]


class DatasetError(ValueError):
    """The input is not a usable table; `field` names where the problem is."""

    def __init__(self, message: str, *, field: str = "data", too_large: bool = False):
        super().__init__(message)
        self.field = field
        self.too_large = too_large


def _check_row_limit(count: int) -> None:
    if count > settings.AGENT_MAX_ROWS:
        raise DatasetError(f"At most {settings.AGENT_MAX_ROWS} rows are accepted.", too_large=True)


def _records(text: str) -> Iterator[list[str]]:
    """The CSV's records exactly as `csv.reader` reads them (a blank line is []), faster: a line
    without a quote, met where a record starts, is plain comma-separated fields and is split in C;
    the reader reads only the records that hold a quote (and the lines a quoted field spans).
    Text with carriage returns, or with a line over csv's field size limit, is left to the reader."""
    if text and "\r" not in text:
        lines = text.split("\n")
        if max(map(len, lines)) <= csv.field_size_limit():
            return _split_or_read(lines)
    return csv.reader(io.StringIO(text))


def _split_or_read(lines: list[str]) -> Iterator[list[str]]:
    position = 0
    last = len(lines) - 1

    def unread() -> Iterator[str]:  # the reader's source: the lines from `position` on, with their ends
        nonlocal position
        while position <= last:
            position += 1
            yield lines[position - 1] if position - 1 == last else lines[position - 1] + "\n"

    reader = csv.reader(unread())
    while position <= last:
        line = lines[position]
        if '"' in line:
            record = next(reader, None)
            if record is None:
                return
            yield record
        elif line or position < last:  # the text's final newline ends the last record, as for the reader
            position += 1
            yield line.split(",") if line else []
        else:
            return


def parse_csv(text: str, *, field: str = "data.csv") -> Dataset:
    """Parse CSV with a header row; an empty cell is a null."""
    if len(text.encode("utf-8", errors="ignore")) > settings.AGENT_MAX_INPUT_BYTES:
        raise DatasetError(
            f"The CSV may be at most {settings.AGENT_MAX_INPUT_BYTES} bytes.", field=field, too_large=True
        )
    with gc_paused():
        return _parse_csv(text, field)


def _parse_csv(text: str, field: str) -> Dataset:
    reader = _records(text)
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError("The CSV is empty; a header row is required.", field=field) from None
    except csv.Error as exc:
        raise DatasetError(f"The CSV cannot be read: {exc}.", field=field) from exc
    columns = [name.strip() for name in header]
    if not any(columns) or any(not name for name in columns):
        raise DatasetError("Every column in the header row needs a name.", field=field)
    if len(set(columns)) != len(columns):
        raise DatasetError("Column names in the header row must be unique.", field=field)
    records: list[list[str]] = []
    max_rows = settings.AGENT_MAX_ROWS
    try:
        for line_number, record in enumerate(reader, start=2):
            if not record:
                continue
            if len(record) != len(columns):
                raise DatasetError(
                    f"Line {line_number} has {len(record)} fields; the header has {len(columns)}.", field=field
                )
            records.append(record)
            if len(records) > max_rows:
                _check_row_limit(len(records))
    except csv.Error as exc:
        raise DatasetError(f"The CSV cannot be read: {exc}.", field=field) from exc
    by_column = zip(*records, strict=True) if records else ([] for _ in columns)
    values = {name: [value or None for value in column] for name, column in zip(columns, by_column, strict=True)}
    return Dataset(columns, values=values, source_format="csv")


def parse_rows(items: Any, *, field: str = "data.rows") -> Dataset:
    """Validate a list of flat JSON objects; columns are the union of keys in first-seen order."""
    if not isinstance(items, list):
        raise DatasetError("Expected a list of row objects.", field=field)
    _check_row_limit(len(items))
    columns: dict[str, None] = {}
    for index, row in enumerate(items):
        if not isinstance(row, dict):
            raise DatasetError(f"Row {index} is not an object.", field=field)
        for key, value in row.items():
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise DatasetError(f"Row {index}, column {key!r}: values must be scalars.", field=field)
            columns.setdefault(key, None)
    names = list(columns)
    rows = [{name: row.get(name) for name in names} for row in items]
    return Dataset(columns=names, rows=rows, source_format="rows")


def parse_data(data: Any) -> Dataset:
    """`{"csv": "..."}` or `{"rows": [...]}`: exactly one of them."""
    if not isinstance(data, dict):
        raise DatasetError('Expected an object with "csv" or "rows".')
    keys = set(data) & {"csv", "rows"}
    if len(keys) != 1 or set(data) - keys:
        raise DatasetError('Give exactly one of "csv" (CSV text with a header row) or "rows" (a list of objects).')
    if "csv" in data:
        if not isinstance(data["csv"], str):
            raise DatasetError("Expected CSV text.", field="data.csv")
        return parse_csv(data["csv"])
    return parse_rows(data["rows"])
