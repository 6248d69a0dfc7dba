"""profile-my-data: what each column holds and how clean the table is.

Columns repeat their values, so each distinct value is classified (by its shape) and parsed once and
the per-row figures are rebuilt from `pd.factorize` codes; the figures equal pandas' on the rows.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from pandas.core.sorting import nargsort

from agents.tools.dataset import Dataset
from agents.tools.inference import (
    KIND_CODES,
    KINDS,
    dominant_kind_of_counts,
    factorize_texts,
    is_text,
    kinds_of_distinct,
    parse_dates,
    to_frame,
)
from agents.tools.options import Integer, Number, Options

ID_NAME = re.compile(r"(^|_)(id|uuid|key|code|number)$", re.IGNORECASE)
# Text with at most this share of distinct values is categorical (e.g. cities, statuses).
CATEGORICAL_RATIO = 0.05
# Kinds a column type absorbs without calling the column "mixed".
COMPATIBLE_KINDS = {"float": {"integer", "float"}, "datetime": {"date", "datetime"}, "categorical": {"text"}}
NUMBER_KINDS = [KIND_CODES["integer"], KIND_CODES["float"]]
DATE_KINDS = [KIND_CODES["date"], KIND_CODES["datetime"]]


OPTIONS = Options(
    {
        "top_values": Integer(0, 100, default=5, description="How many of the most frequent values to list."),
        "high_null_ratio": Number(
            0.0, 1.0, default=0.5, description="Warn about a column when more than this share of it is empty."
        ),
        "categorical_max_distinct": Integer(
            1, 10_000, default=20, description="Text with at most this many distinct values counts as categorical."
        ),
    }
)
OPTIONS_SCHEMA = OPTIONS.schema()


def parse_options(raw: dict) -> dict:
    """The options with defaults filled; `OptionsError` for unknown options or bad values."""
    return OPTIONS.parse(raw)


def validate_against(dataset: Dataset, options: dict) -> None:
    """Nothing in the profile's options depends on the data."""


def _number(value: float) -> float | int | None:
    """A statistic as JSON can carry it: None for NaN and ±infinity (e.g. the mean of values that
    overflow a float)."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() else round(value, 6)


def _numeric_stats(numbers: pd.Series) -> dict:
    numbers = numbers.dropna()
    if numbers.empty:
        return {}
    return {
        "min": _number(numbers.min()),
        "max": _number(numbers.max()),
        "mean": _number(numbers.mean()),
        "median": _number(numbers.median()),
        "std": _number(numbers.std(ddof=1)) if len(numbers) > 1 else None,
    }


def _factorized_columns(dataset: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each column's `pd.factorize` codes and distinct values, as text the way `to_frame` gives it
    (str, or None as code -1). Text (all CSV cells) already is that, so only native JSON values go
    through `to_frame`, whose per-column type inference decides how they read (1 as "1.0" beside 2.5)."""
    if is_text(dataset):
        return [factorize_texts(dataset.values[name], plain=dataset.plain_text) for name in dataset.columns]
    frame = to_frame(dataset)
    return [factorize_texts(frame[name].to_numpy(dtype=object)) for name in dataset.columns]


def _rows_of(selected: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Positions into the selected distinct values, one per row holding one of them, in row order."""
    position = np.full(len(selected), -1)
    position[selected] = np.arange(selected.sum())
    rows = position[codes]
    return rows[rows >= 0]


def _top(counts: np.ndarray, values: np.ndarray, k: int) -> list[tuple[object, int]]:
    """The k first of `Series(counts, index=values).sort_values(ascending=False)` for values in
    first-seen order (as `pd.factorize` gives them), so ties come out as in `value_counts()`: the
    same pandas sort, on the counts alone."""
    order = nargsort(counts, kind="quicksort", ascending=False)[:k]
    return list(zip(values[order].tolist(), counts[order].tolist(), strict=True))


def _profile_column(name: str, codes: np.ndarray, uniques: np.ndarray, config: dict) -> tuple[dict, list[str]]:
    row_count = len(codes)
    present_codes = codes[codes >= 0]
    counts = np.bincount(present_codes, minlength=len(uniques))
    kind_codes, blank, lengths = kinds_of_distinct(uniques)
    not_blank = ~blank
    distinct_values, kind_codes, lengths = uniques[not_blank], kind_codes[not_blank], lengths[not_blank]
    distinct_counts = counts[not_blank]
    filled_rows = _rows_of(not_blank, present_codes)
    filled_count = len(filled_rows)

    # The kinds in the order the rows' value_counts() gives them: by count, ties in first-seen order.
    kinds_seen, first_seen = np.unique(kind_codes, return_index=True)
    kinds_seen = kinds_seen[np.argsort(first_seen)]
    kind_counts = dict(
        _top(np.bincount(kind_codes[filled_rows], minlength=len(KINDS))[kinds_seen], KINDS[kinds_seen], len(kinds_seen))
    )
    column_type = dominant_kind_of_counts(pd.Series(kind_counts, dtype=np.int64))
    distinct = len(distinct_values)
    if (
        column_type == "text"
        and 0 < distinct < filled_count / 2
        and (distinct <= config["categorical_max_distinct"] or distinct <= CATEGORICAL_RATIO * filled_count)
    ):
        column_type = "categorical"

    top = _top(distinct_counts, distinct_values, config["top_values"])
    profile = {
        "name": name,
        "type": column_type,
        "null_count": int(row_count - len(present_codes)),
        "empty_count": int(counts[~not_blank].sum()),
        "distinct_count": distinct,
        "type_counts": kind_counts,
        "top_values": [{"value": value, "count": count} for value, count in top],
        "length": {
            "min": int(lengths.min()),
            "max": int(lengths.max()),
            "mean": _number(int(lengths @ distinct_counts) / filled_count),
        }
        if filled_count
        else None,
    }
    if column_type in ("integer", "float"):
        numeric = np.isin(kind_codes, NUMBER_KINDS)
        parsed = pd.to_numeric(pd.Series(distinct_values[numeric], dtype=object), errors="coerce").to_numpy()
        profile.update(_numeric_stats(pd.Series(parsed[_rows_of(numeric, filled_rows)])))
    if column_type in ("date", "datetime"):
        dates, _ = parse_dates(pd.Series(distinct_values[np.isin(kind_codes, DATE_KINDS)], dtype=object))
        dates = dates.dropna()
        fmt = "%Y-%m-%d" if column_type == "date" else "%Y-%m-%dT%H:%M:%S"
        profile["min"], profile["max"] = dates.min().strftime(fmt), dates.max().strftime(fmt)

    warnings = []
    missing = profile["null_count"] + profile["empty_count"]
    if row_count and missing == row_count:
        warnings.append(f"Column {name!r} is empty.")
    elif row_count and missing / row_count > config["high_null_ratio"]:
        warnings.append(f"Column {name!r} is {missing / row_count:.0%} empty.")
    if set(kind_counts) - COMPATIBLE_KINDS.get(column_type, {column_type}):
        mix = ", ".join(f"{n} {k}" for k, n in sorted(kind_counts.items(), key=lambda kv: -kv[1]))
        warnings.append(f"Column {name!r} mixes types ({mix}).")
    if distinct == 1 and row_count > 1:
        warnings.append(f"Column {name!r} is constant.")
    unique_ratio = distinct / filled_count if filled_count else 0
    if (
        filled_count > 1
        and column_type in ("integer", "text")
        and (unique_ratio == 1 or (unique_ratio >= 0.98 and ID_NAME.search(name)))
    ):
        warnings.append(f"Column {name!r} looks like an identifier (every value is unique).")
    return profile, warnings


def run(dataset: Dataset, config: dict) -> dict:
    # Without columns there is no row to profile (as a pandas frame of such rows has none).
    row_count = dataset.row_count if dataset.columns else 0
    columns, warnings = [], []
    factorized = _factorized_columns(dataset)
    for name, (codes, uniques) in zip(dataset.columns, factorized, strict=True):
        profile, column_warnings = _profile_column(name, codes, uniques, config)
        columns.append(profile)
        warnings.extend(column_warnings)
    # Rows alike in every column's codes are alike in text; a null (code -1) is a value of its own.
    row_codes = pd.DataFrame({name: codes for name, (codes, _) in zip(dataset.columns, factorized, strict=True)})
    duplicate_rows = int(row_codes.duplicated().sum()) if row_count else 0
    if duplicate_rows:
        warnings.append(f"{duplicate_rows} row(s) exactly duplicate an earlier row.")
    return {"row_count": row_count, "duplicate_rows": duplicate_rows, "columns": columns, "warnings": warnings}
