"""Recognising what the values of a column are, vectorised with pandas.

Shared by the three data agents so that "this column is a date" means the same in a
profile, a clean-up and a match.
"""

from __future__ import annotations

import re

import pandas as pd

from agents.tools.dataset import Dataset

BOOL_TRUE = {"true", "yes", "y", "t"}
BOOL_FALSE = {"false", "no", "n", "f"}
INT_PATTERN = r"[+-]?\d+"
FLOAT_PATTERN = r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?"
MONEY_PATTERN = r"[+-]?\s*[$€£]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*"
EMAIL_PATTERN = r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}"
DATE_LIKE = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|[A-Za-z]{3,9}\.? \d{1,2},? \d{4}|\d{1,2} [A-Za-z]{3,9} \d{4}")
DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%Y/%m/%d", "%d.%m.%Y", "%b %d, %Y", "%B %d, %Y", "%d %b %Y", "%d/%m/%Y")
DATETIME_FORMATS = (
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%d %H:%M",
    "%m/%d/%Y %H:%M",
)
PHONE_NAME = re.compile(r"phone|mobile|tel|fax", re.IGNORECASE)


def to_frame(dataset: Dataset) -> pd.DataFrame:
    """All values as text (or None), columns in input order: what the tools work on."""
    frame = pd.DataFrame.from_records(dataset.rows, columns=dataset.columns)
    return frame.astype(object).apply(lambda column: column.map(as_text))


def as_text(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def parse_dates(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse strings in the common formats; returns (timestamps or NaT, has_time flags)."""
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    has_time = pd.Series(False, index=values.index)
    remaining = values.str.strip()
    remaining = remaining[remaining.str.contains(DATE_LIKE, na=False)]
    for formats, timed in ((DATE_FORMATS, False), (DATETIME_FORMATS, True)):
        for fmt in formats:
            if remaining.empty:
                break
            attempt = pd.to_datetime(remaining, format=fmt, errors="coerce", utc=True)
            ok = attempt.notna()
            if ok.any():
                parsed.loc[ok[ok].index] = attempt[ok].dt.tz_localize(None)
                has_time.loc[ok[ok].index] = timed
                remaining = remaining[~ok]
    return parsed, has_time


def classify(values: pd.Series) -> pd.Series:
    """The kind of each non-null text value (index preserved)."""
    text = values.dropna().astype(str).str.strip()
    kinds = pd.Series("text", index=text.index, dtype=object)
    lowered = text.str.lower()
    is_bool = lowered.isin(BOOL_TRUE | BOOL_FALSE)
    is_int = ~is_bool & text.str.fullmatch(INT_PATTERN)
    is_float = ~is_bool & ~is_int & text.str.fullmatch(FLOAT_PATTERN)
    is_email = text.str.fullmatch(EMAIL_PATTERN)
    kinds[is_bool] = "boolean"
    kinds[is_int] = "integer"
    kinds[is_float] = "float"
    kinds[is_email] = "email"
    rest = kinds == "text"
    if rest.any():
        dates, timed = parse_dates(text[rest])
        found = dates.notna()
        kinds.loc[found[found & ~timed].index] = "date"
        kinds.loc[found[found & timed].index] = "datetime"
    return kinds


def dominant_kind(kinds: pd.Series) -> str:
    """One kind for a column: integers inside floats are floats, dates inside datetimes are datetimes."""
    present = set(kinds.unique())
    if not present:
        return "empty"
    if present <= {"integer"}:
        return "integer"
    if present <= {"integer", "float"}:
        return "float"
    if present <= {"date", "datetime"}:
        return "datetime" if "datetime" in present else "date"
    return str(kinds.value_counts().idxmax())


def parse_money(values: pd.Series) -> pd.Series:
    """Numbers written as `1234.5`, `$1,234.50`, ` 12 `: floats, NaN where not a number."""
    text = values.astype("string").str.strip()
    is_money = text.str.fullmatch(MONEY_PATTERN).fillna(False).astype(bool)
    cleaned = text.where(is_money).str.replace(r"[\s$€£,]", "", regex=True)
    return pd.to_numeric(cleaned, errors="coerce")
