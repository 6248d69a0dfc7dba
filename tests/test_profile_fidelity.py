"""profile-my-data's figures equal pandas' on the same CSV text.

pandas reads every cell as the text written (`dtype=str, keep_default_na=False, na_values=[""]`:
only an empty cell is NA, as in parse_csv). The fixture repeats values unevenly, pads some with
spaces and has whitespace-only cells, so a figure taken over distinct values instead of rows, or
over stripped text, comes out different.
"""

import csv
import io
import math
import random

import pandas as pd
import pytest

from agents.datasets import parse_csv
from agents.tools import profile

ROWS = 3000
NUMERIC_COLUMNS = {"amount", "quantity", "ratio"}


def make_csv() -> str:
    rng = random.Random(20261203)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["code", "city", "amount", "quantity", "ratio", "joined", "active", "note"])
    for i in range(ROWS):
        writer.writerow(
            [
                f"K{i % 2500:05d}",
                rng.choice(["Salem", "Salem", "Salem", " Salem", "Salem ", "salem", "Dover", "", "  "]),
                # Mostly small amounts with a long tail, some written as money (text to the profile).
                rng.choice(["", f"{rng.expovariate(0.01):.2f}", "12.50", "12.50", f"${rng.uniform(0, 9e3):,.2f}"]),
                rng.choice(["", "1", "1", "1", "2", " 3 ", "+4", str(rng.randint(5, 900))]),
                rng.choice([f"{rng.random():.6f}", f"{rng.uniform(1, 9):.2e}", "0.5", " 0.25", "", " "]),
                rng.choice([f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", f"{rng.randint(1, 12)}/5/2023"]),
                rng.choice(["yes", "no", "TRUE", "false", ""]),
                "" if rng.random() < 0.97 else rng.choice(["call", "VIP", "  "]),
            ]
        )
    return out.getvalue()


@pytest.fixture(scope="module")
def profiled():
    text = make_csv()
    result = profile.run(parse_csv(text), profile.parse_options({}))
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    return {column["name"]: column for column in result["columns"]}, frame


def filled(column: pd.Series) -> pd.Series:
    return column[column.notna() & column.str.strip().ne("")]


def test_null_and_empty_counts_equal_pandas_isna(profiled):
    columns, frame = profiled
    for name in frame.columns:
        assert columns[name]["null_count"] == frame[name].isna().sum(), name
        blank_as_na = frame[name].where(frame[name].str.strip().ne(""))
        assert columns[name]["null_count"] + columns[name]["empty_count"] == blank_as_na.isna().sum(), name


def test_distinct_counts_equal_pandas_nunique_of_the_text_as_written(profiled):
    columns, frame = profiled
    for name in frame.columns:
        assert columns[name]["distinct_count"] == filled(frame[name]).nunique(), name
    # " Salem", "Salem " and "salem" are values of their own, as in the top values.
    assert columns["city"]["distinct_count"] == 5


def test_means_and_medians_equal_pandas_on_the_numeric_columns(profiled):
    columns, frame = profiled
    assert {name for name, column in columns.items() if "mean" in column} == NUMERIC_COLUMNS
    for name in NUMERIC_COLUMNS:
        numbers = pd.to_numeric(filled(frame[name]), errors="coerce")
        for figure, theirs in (("mean", numbers.mean()), ("median", numbers.median())):
            # The profile reports figures rounded to 6 decimals.
            assert math.isclose(columns[name][figure], round(theirs, 6), rel_tol=1e-9), (name, figure)
