"""Recognising what the values of a column are, vectorised with pandas.

Shared by the three data agents so that "this column is a date" means the same in a
profile, a clean-up and a match.
"""

from __future__ import annotations

import re
import string

import numpy as np
import pandas as pd

from agents.tools.dataset import Dataset

BOOL_TRUE = {"true", "yes", "y", "t"}
BOOL_FALSE = {"false", "no", "n", "f"}
INT_PATTERN = r"[+-]?\d+"
FLOAT_PATTERN = r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?"
MONEY_PATTERN = r"[+-]?\s*[$€£]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*"
EMAIL_PATTERN = r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}"
# `_could_be_date` is a quick test every match passes: keep the two in step.
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
BOOLEANS = BOOL_TRUE | BOOL_FALSE
# One pass instead of three: a full match takes the first alternative that fits.
SIMPLE_KINDS = re.compile(f"(?P<integer>{INT_PATTERN})|(?P<float>{FLOAT_PATTERN})|(?P<email>{EMAIL_PATTERN})")
MAYBE_DATE = "maybe-date"
# The kinds a value can have; `kinds_of_distinct` gives them as codes into this array.
KINDS = np.array(["text", "integer", "float", "email", "boolean", "date", "datetime"], dtype=object)
KIND_CODES = {kind: code for code, kind in enumerate(KINDS)} | {MAYBE_DATE: len(KINDS)}
_MAYBE_DATE_CODE = KIND_CODES[MAYBE_DATE]
ASCII_LETTERS = frozenset(string.ascii_letters)
_TEXT_TYPES = {str, type(None)}
# A text's shape: what the kind patterns see of it (lengths, separators, digits, letters, an exponent).
_SHAPE = str.maketrans(
    {**dict.fromkeys("0123456789", "9"), **dict.fromkeys(string.ascii_letters.replace("e", "").replace("E", ""), "a")}
    | {"E": "e"}
)
_BOOLEAN_SHAPE = re.compile(r"[ae]{1,5}")  # the shape of every word in BOOLEANS


def is_text(dataset: Dataset) -> bool:
    """Whether every value already is text or None (always so for CSV): `to_frame` keeps it as it is."""
    return dataset.source_format == "csv" or all(set(map(type, v)) <= _TEXT_TYPES for v in dataset.values.values())


def to_frame(dataset: Dataset) -> pd.DataFrame:
    """All values as text (or None), columns in input order: what the tools work on."""
    if is_text(dataset):
        columns = {name: np.array(dataset.values[name], dtype=object) for name in dataset.columns}
        rows = dataset.row_count if dataset.columns else 0  # no columns: no rows, as pandas builds it from records
        return pd.DataFrame(columns, columns=dataset.columns, index=pd.RangeIndex(rows), dtype=object)
    # Native JSON values: pandas' per-column type inference decides how they read (1 as "1.0" beside 2.5).
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
    text = values.dropna().astype(str)
    # Columns repeat their values: each distinct one is classified once.
    codes, distinct = factorize_texts(text.to_numpy(dtype=object))
    return pd.Series(classify_distinct(distinct)[codes], index=text.index, dtype=object)


def classify_distinct(texts: np.ndarray) -> np.ndarray:
    """`classify` for an array of texts (str) the caller has already made distinct."""
    return KINDS[kinds_of_distinct(texts)[0]]


def kinds_of_distinct(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For texts (str) the caller has made distinct: each one's kind as a code into `KINDS` (its
    kind as `classify` gives it, of the text stripped), whether it is blank (empty or whitespace
    only; its kind is text) and its length.

    Which pattern a text matches depends only on its character classes, so the texts are
    classified by their shape (`_SHAPE`: ASCII digits as 9, ASCII letters as a, e and E as e for
    exponents) — a column of 100,000 ids or amounts has a handful of shapes. A shape keeps a
    text's length and whitespace, so stripping and blanks are judged on the few distinct shapes.
    Only a boolean depends on the letters themselves, and only dates are parsed one text at a time.
    """
    shapes = _shapes(texts)
    shape_codes, distinct_shapes = _numbered(shapes)
    stripped = [shape.strip() for shape in distinct_shapes]
    kinds = np.array([KIND_CODES[_kind_of_shape(shape)] for shape in stripped], dtype=np.int8)[shape_codes]
    blank = np.array([not shape for shape in stripped], dtype=bool)[shape_codes]
    lengths = np.fromiter(map(len, shapes), dtype=np.int64, count=len(shapes))
    may_be_boolean = np.array([_BOOLEAN_SHAPE.fullmatch(shape) is not None for shape in stripped], dtype=bool)
    for index in np.flatnonzero(may_be_boolean[shape_codes]).tolist():
        if texts[index].strip().lower() in BOOLEANS:
            kinds[index] = KIND_CODES["boolean"]
    maybe_date = np.flatnonzero(kinds == _MAYBE_DATE_CODE)
    kinds[maybe_date] = KIND_CODES["text"]
    if len(maybe_date):
        dates, timed = parse_dates(pd.Series(texts[maybe_date], dtype=object))
        found, timed = dates.notna().to_numpy(), timed.to_numpy()
        kinds[maybe_date[found & ~timed]] = KIND_CODES["date"]
        kinds[maybe_date[found & timed]] = KIND_CODES["datetime"]
    return kinds, blank, lengths


def _shapes(texts) -> list[str]:
    """Each text's `_SHAPE`: translated as one string (three times faster than one by one)."""
    joined = "\0".join(texts)
    if joined.count("\0") == max(len(texts) - 1, 0):  # no text holds the separator
        return joined.translate(_SHAPE).split("\0") if len(texts) else []
    return [text.translate(_SHAPE) for text in texts]


def _numbered(texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """Codes and distinct texts in first-seen order, for texts with few distinct values (a dict,
    so any text is told apart; cheaper than an object array and `pd.factorize` for a list)."""
    numbering = {text: code for code, text in enumerate(dict.fromkeys(texts))}
    return np.fromiter(map(numbering.__getitem__, texts), dtype=np.intp, count=len(texts)), list(numbering)


def factorize_texts(values, *, plain: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`pd.factorize(values)` for texts (str; None or NaN → -1): codes in first-seen order and the distinct
    texts. pandas' string hash table cuts a text at its first NUL and cannot read a lone surrogate,
    so it takes "a\0b" for "a": texts holding either are numbered by a dict instead. Values that
    are not all text go to pandas as they are. `plain`: the caller knows the texts hold neither
    (`Dataset.plain_text`, or texts derived from such), so the check is skipped."""
    array = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if plain:
        return pd.factorize(array)
    missing = pd.isna(array)
    try:
        joined = "".join(array[~missing])
    except TypeError:
        return pd.factorize(array)
    if "\0" not in joined and (joined.isascii() or _encodable(joined)):
        return pd.factorize(array)
    numbering: dict[str, int] = {}
    codes = np.fromiter(
        (-1 if gone else numbering.setdefault(text, len(numbering)) for text, gone in zip(array, missing, strict=True)),
        dtype=np.int64,
        count=len(array),
    )
    return codes, np.array(list(numbering), dtype=object)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(text: str) -> str:
    """boolean, integer, float or email (first that fits, in that order), else text; text that
    `parse_dates` would try is MAYBE_DATE."""
    if text.lower() in BOOLEANS:
        return "boolean"
    return _kind_of_shape(text)


def _kind_of_shape(text: str) -> str:
    """`_kind` without the boolean test: the same for a text and for its `_SHAPE`."""
    match = SIMPLE_KINDS.fullmatch(text)
    if match:
        return match.lastgroup
    return MAYBE_DATE if _could_be_date(text) and DATE_LIKE.search(text) else "text"


def _could_be_date(text: str) -> bool:
    """True for text holding a DATE_LIKE match (two of `-/.`, or a space and ASCII letters): most
    ids, phones and amounts fail it and skip the slower search."""
    separators = text.count("-") + text.count("/") + text.count(".")
    return separators >= 2 or (" " in text and not ASCII_LETTERS.isdisjoint(text))


def dominant_kind(kinds: pd.Series) -> str:
    """One kind for a column: integers inside floats are floats, dates inside datetimes are datetimes."""
    return dominant_kind_of_counts(kinds.value_counts())


def dominant_kind_of_counts(kind_counts: pd.Series) -> str:
    """`dominant_kind` from the kinds' `value_counts()`."""
    present = set(kind_counts.index)
    if not present:
        return "empty"
    if present <= {"integer"}:
        return "integer"
    if present <= {"integer", "float"}:
        return "float"
    if present <= {"date", "datetime"}:
        return "datetime" if "datetime" in present else "date"
    return str(kind_counts.idxmax())


def parse_money(values: pd.Series) -> pd.Series:
    """Numbers written as `1234.5`, `$1,234.50`, ` 12 `: floats, NaN where not a number."""
    text = values.astype("string").str.strip()
    is_money = text.str.fullmatch(MONEY_PATTERN).fillna(False).astype(bool)
    cleaned = text.where(is_money).str.replace(r"[\s$€£,]", "", regex=True)
    return pd.to_numeric(cleaned, errors="coerce")
