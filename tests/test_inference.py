"""Classifying values by their shape gives each value the kind it has on its own."""

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.tools import inference

# Characters the kind patterns care about (digits, ASCII and other letters, separators, signs,
# exponents, @, whitespace, a non-ASCII digit) and words that are kinds of their own.
ALPHABET = "0123456789aeEfnoyrstuxzAZ é٣-/.,:+@$€ T\0\ud800"
WORDS = ["true", "Yes", "f", "N", "FALSE", "fals", "2024-01-03", "Mar 4, 2024", "3 Mar 2024", "1e5", "-.5", "a@b.co"]
texts = st.one_of(st.text(ALPHABET, max_size=14), st.sampled_from(WORDS))


def one_by_one(values: list[str]) -> list[str]:
    """The kind of each text on its own: `_kind`, then a date parse of that text alone."""
    kinds = []
    for value in values:
        kind = inference._kind(value.strip())
        if kind == inference.MAYBE_DATE:
            dates, timed = inference.parse_dates(pd.Series([value], dtype=object))
            kind = "text" if dates.isna().iloc[0] else ("datetime" if timed.iloc[0] else "date")
        kinds.append(kind)
    return kinds


@settings(max_examples=300, deadline=None)
@given(st.lists(texts, unique=True, max_size=30))
def test_classifying_by_shape_equals_classifying_each_text(values):
    assert inference.classify_distinct(np.array(values, dtype=object)).tolist() == one_by_one(values)


def test_kinds_of_a_column_of_many_shapes():
    values = ["12", "-3", "4.5", "1e5", "yes", "F", "ada@example.com", "2024-01-03", "2024-01-03T10:00:00", "x 1"]
    assert inference.classify_distinct(np.array(values, dtype=object)).tolist() == [
        "integer",
        "integer",
        "float",
        "float",
        "boolean",
        "boolean",
        "email",
        "date",
        "datetime",
        "text",
    ]


def test_texts_pandas_would_cut_short_are_still_told_apart():
    """pandas' string hash table stops at a NUL and cannot read a lone surrogate."""
    codes, distinct = inference.factorize_texts(["a", "a\0b", None, "a", float("nan"), "\ud8001", "1"])
    assert codes.tolist() == [0, 1, -1, 0, -1, 2, 3]
    assert distinct.tolist() == ["a", "a\0b", "\ud8001", "1"]
    assert inference.classify_distinct(np.array(["\ud8001Ⅻ", "١"], dtype=object)).tolist() == ["text", "integer"]
