"""Tabular input for the data agents: CSV text, a list of row objects, or an uploaded CSV.

Parsed within the limits in Django settings; the `Dataset` itself (re-exported here) is plain
Python in `agents.tools.dataset`.
"""

import csv
import io
from collections.abc import Iterator
from itertools import chain, repeat
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


def parse_csv(text: str, *, field: str = "data.csv") -> Dataset:
    """Parse CSV with a header row; an empty cell is a null."""
    try:
        size, plain_text = len(text.encode("utf-8")), "\0" not in text
    except UnicodeEncodeError:  # a lone surrogate
        size, plain_text = len(text.encode("utf-8", errors="ignore")), False
    if size > settings.AGENT_MAX_INPUT_BYTES:
        raise DatasetError(
            f"The CSV may be at most {settings.AGENT_MAX_INPUT_BYTES} bytes.", field=field, too_large=True
        )
    with gc_paused():
        return _parse_csv(text, field, plain_text)


def _parse_csv(text: str, field: str, plain_text: bool) -> Dataset:
    records = _split_records(text)
    if records is None:
        columns, rows = _read_csv(text, field)
    else:
        columns, rows = _columns_of(records[0], field), records[1:]
        _check_row_limit(len(rows))
    width = len(columns)
    cells = list(chain.from_iterable(rows))  # row after row: a column is every width-th cell
    values = {name: [cell or None for cell in cells[index::width]] for index, name in enumerate(columns)}
    return Dataset(columns, values=values, source_format="csv", plain_text=plain_text)


def _split_records(text: str) -> list[list[str]] | None:
    """The CSV's records, header first and blank lines left out, exactly as `csv.reader` reads
    them, when every record has the header's number of fields — most CSV — and faster: every line
    is split on commas in C, and only lines holding a quote (with the lines a quoted field spans)
    go through the reader. None for text this does not read: carriage returns, a line over csv's
    field size limit, a header the reader would refuse, a record of another width or one the reader fails on;
    `_read_csv` reads that with the reader alone and reports what is wrong. So does text of more
    lines than the row limit allows: the reader stops at the limit, where splitting all of it
    first would hold a list per line (a 10 MB text of blank lines would take 1 GB)."""
    if not text or "\r" in text or text.count("\n") > settings.AGENT_MAX_ROWS + 1:
        return None
    lines = text.split("\n")
    limit = csv.field_size_limit()
    if not lines[0] or (len(text) > limit and max(map(len, lines)) > limit):
        return None
    # A header or a quote-free line the reader would refuse is refused before any other line is
    # split: a line without a quote has its commas + 1 fields (quoted and blank lines are judged later).
    commas = lines[0].count(",") if '"' not in lines[0] else None
    if commas is not None:
        if _header_problem(lines[0].split(",")):  # the reader's path reports it, reading no further
            return None
        widths = list(map(str.count, lines, repeat(",")))
        if widths.count(commas) != len(lines) and any(
            line and '"' not in line for line, width in zip(lines, widths, strict=True) if width != commas
        ):
            return None
    records: list[list[str] | None] = list(map(str.split, lines, repeat(",")))
    spanned = False
    if '"' in text:
        position = 0

        def unread() -> Iterator[str]:  # the reader's source: the lines from `position` on, with their ends
            nonlocal position
            while position < len(lines):
                position += 1
                yield lines[position - 1] + "\n" if position < len(lines) else lines[position - 1]

        reader = csv.reader(unread())
        for index in [index for index, line in enumerate(lines) if '"' in line]:
            if index < position:  # a line of a quoted field read already
                continue
            position = index
            try:
                records[index] = next(reader)
            except (csv.Error, StopIteration):
                return None
            for spanned_line in range(index + 1, position):
                records[spanned_line] = None
                spanned = True
    if spanned or "" in lines:  # a blank line is no record, as for the reader
        records = [record for record, line in zip(records, lines, strict=True) if record is not None and line]
    if list(map(len, records)).count(len(records[0])) != len(records):
        return None
    return records


def _columns_of(header: list[str], field: str) -> list[str]:
    problem = _header_problem(header)
    if problem:
        raise DatasetError(problem, field=field)
    return [name.strip() for name in header]


def _header_problem(header: list[str]) -> str | None:
    columns = [name.strip() for name in header]
    if not any(columns) or any(not name for name in columns):
        return "Every column in the header row needs a name."
    if len(set(columns)) != len(columns):
        return "Column names in the header row must be unique."
    return None


def _read_csv(text: str, field: str) -> tuple[list[str], list[list[str]]]:
    """The columns and the records, read with `csv.reader` alone; DatasetError for the first
    problem, as the reader meets it (the header first, then line by line)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError("The CSV is empty; a header row is required.", field=field) from None
    except csv.Error as exc:
        raise DatasetError(f"The CSV cannot be read: {exc}.", field=field) from exc
    columns = _columns_of(header, field)
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
    return columns, records


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
