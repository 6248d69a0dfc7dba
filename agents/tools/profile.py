"""profile-my-data: what each column holds and how clean the table is."""

from __future__ import annotations

import math
import re

import pandas as pd

from agents.tools.dataset import Dataset
from agents.tools.inference import classify, dominant_kind, parse_dates, to_frame
from agents.tools.options import Integer, Number, Options

ID_NAME = re.compile(r"(^|_)(id|uuid|key|code|number)$", re.IGNORECASE)
# Text with at most this share of distinct values is categorical (e.g. cities, statuses).
CATEGORICAL_RATIO = 0.05
# Kinds a column type absorbs without calling the column "mixed".
COMPATIBLE_KINDS = {"float": {"integer", "float"}, "datetime": {"date", "datetime"}, "categorical": {"text"}}


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


def _profile_column(name: str, values: pd.Series, row_count: int, config: dict) -> tuple[dict, list[str]]:
    present = values.dropna()
    blank = present.str.strip() == ""
    filled = present[~blank]
    kinds = classify(filled)
    kind_counts = {k: int(n) for k, n in kinds.value_counts().items()}
    column_type = dominant_kind(kinds)
    distinct = int(filled.nunique())
    if (
        column_type == "text"
        and 0 < distinct < len(filled) / 2
        and (distinct <= config["categorical_max_distinct"] or distinct <= CATEGORICAL_RATIO * len(filled))
    ):
        column_type = "categorical"

    counts = filled.value_counts()
    top = counts.head(config["top_values"])
    lengths = filled.str.len()
    profile = {
        "name": name,
        "type": column_type,
        "null_count": int(len(values) - len(present)),
        "empty_count": int(blank.sum()),
        "distinct_count": distinct,
        "type_counts": kind_counts,
        "top_values": [{"value": value, "count": int(count)} for value, count in top.items()],
        "length": {"min": int(lengths.min()), "max": int(lengths.max()), "mean": _number(lengths.mean())}
        if len(filled)
        else None,
    }
    if column_type in ("integer", "float"):
        numeric = pd.to_numeric(filled[kinds.isin(["integer", "float"])], errors="coerce")
        profile.update(_numeric_stats(numeric))
    if column_type in ("date", "datetime"):
        dates, _ = parse_dates(filled[kinds.isin(["date", "datetime"])])
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
    unique_ratio = distinct / len(filled) if len(filled) else 0
    if (
        len(filled) > 1
        and column_type in ("integer", "text")
        and (unique_ratio == 1 or (unique_ratio >= 0.98 and ID_NAME.search(name)))
    ):
        warnings.append(f"Column {name!r} looks like an identifier (every value is unique).")
    return profile, warnings


def run(dataset: Dataset, config: dict) -> dict:
    frame = to_frame(dataset)
    row_count = len(frame)
    columns, warnings = [], []
    for name in dataset.columns:
        profile, column_warnings = _profile_column(name, frame[name], row_count, config)
        columns.append(profile)
        warnings.extend(column_warnings)
    duplicate_rows = int(frame.fillna("\x00").duplicated().sum()) if row_count else 0
    if duplicate_rows:
        warnings.append(f"{duplicate_rows} row(s) exactly duplicate an earlier row.")
    return {"row_count": row_count, "duplicate_rows": duplicate_rows, "columns": columns, "warnings": warnings}
