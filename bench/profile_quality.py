"""Benchmark: profile-my-data on 100,000 rows × 11 columns — speed, memory and fidelity to pandas.

    python -m bench.profile_quality [--rows N]

Times CSV text → parse_csv → profile.run (best of 3 after a warm-up), traces its memory on a
separate pass, and checks the profile's figures against pandas computing them on the same text:

- pandas reads with `dtype=str, keep_default_na=False, na_values=[""]`: every cell stays the text
  as written and only an empty cell is NA (as in parse_csv; pandas' default would also turn "NA",
  "null", "nan" into NA, which the profile counts as values);
- nulls: `null_count` equals `isna()`, and `null_count + empty_count` equals `isna()` once
  whitespace-only cells are NA too;
- distinct: `distinct_count` equals `nunique()` of the non-blank cells as written (" Ada" and
  "Ada" are two values, as in the profile's top values);
- mean and median of every column pandas finds numeric (`to_numeric(errors="coerce")` reads at
  least half of its non-blank cells) equal `to_numeric(...).mean()` / `.median()` rounded to 6
  decimals as the profile reports them, within a relative 1e-9.
"""

import argparse
import csv
import io
import json
import math
import os
import random
import resource
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

import pandas as pd

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "true")

import django

django.setup()

from agents.datasets import parse_csv  # noqa: E402
from agents.tools import profile  # noqa: E402

CONFIG = {"top_values": 5, "high_null_ratio": 0.5, "categorical_max_distinct": 20}
COLUMNS = [
    "customer_id",
    "name",
    "email",
    "phone",
    "city",
    "signup_date",
    "lifetime_value",
    "orders",
    "score",
    "is_active",
    "notes",
]
RELATIVE_TOLERANCE = 1e-9
ROOT = Path(__file__).resolve().parent.parent
YDATA_PYTHON = ROOT / ".venv-ydata" / "bin" / "python"


def make_csv(rows: int, seed: int = 7) -> str:
    """A customer table like bench.profile_100k's, with integers, floats and a mostly-empty column
    added, and padded or whitespace-only cells sprinkled in."""
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i in range(rows):
        name = rng.choice(["Ada", "Grace", "Alan", "Edsger", "Barbara"]) + f" {rng.choice(['Smith', 'Jones', 'Lee'])}"
        writer.writerow(
            [
                f"C{i:07d}",
                f" {name}" if rng.random() < 0.01 else name,
                "" if rng.random() < 0.03 else f"user{rng.randrange(rows)}@example.com",
                rng.choice(
                    [
                        f"({rng.randint(201, 989)}) 555-{rng.randint(1000, 9999)}",
                        f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
                        "",
                    ]
                ),
                rng.choice(["Springfield", "Salem", "Dover", "Oxford", "", "  "]),
                rng.choice(
                    [
                        f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                        f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/2023",
                    ]
                ),
                f"${rng.uniform(0, 5000):,.2f}" if rng.random() < 0.2 else f"{rng.uniform(0, 5000):.2f}",
                "" if rng.random() < 0.05 else str(rng.randint(0, 500)),
                rng.choice(
                    ["", f"{rng.gauss(0.5, 2):.6f}", f" {rng.uniform(-1, 1):.4f} ", f"{rng.uniform(0, 1e6):.3e}"]
                ),
                rng.choice(["true", "false", "yes", "no"]),
                rng.choice(["call back", "VIP", "moved"]) if rng.random() < 0.05 else "",
            ]
        )
    return out.getvalue()


def pandas_figures(text: str) -> dict[str, dict]:
    """Per column, the figures pandas gives on the same CSV text (see the module docstring)."""
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    figures = {}
    for name in frame.columns:
        column = frame[name]
        filled = column[column.str.strip().ne("") & column.notna()]
        numbers = pd.to_numeric(filled, errors="coerce")
        figures[name] = {
            "null_count": int(column.isna().sum()),
            "missing": int(column.where(column.str.strip().ne("")).isna().sum()),
            "distinct_count": int(filled.nunique()),
        }
        if len(filled) and numbers.notna().sum() >= len(filled) / 2:
            figures[name]["mean"] = float(numbers.mean())
            figures[name]["median"] = float(numbers.median())
    return figures


def compare(result: dict, expected: dict[str, dict]) -> tuple[int, list[str]]:
    """How many figures were compared and which differ (as "column.figure: ours != pandas")."""
    ours = {column["name"]: column for column in result["columns"]}
    checks, mismatches = 0, []
    for name, figures in expected.items():
        column = ours[name]
        reported = {
            "null_count": column["null_count"],
            "missing": column["null_count"] + column["empty_count"],
            "distinct_count": column["distinct_count"],
        }
        for figure, theirs in figures.items():
            checks += 1
            mine = reported.get(figure, column.get(figure))
            if figure in ("mean", "median"):
                equal = mine is not None and math.isclose(mine, round(theirs, 6), rel_tol=RELATIVE_TOLERANCE)
            else:
                equal = mine == theirs
            if not equal:
                mismatches.append(f"{name}.{figure}: {mine} != {theirs}")
    return checks, mismatches


def ydata_reference(text: str) -> float | None:
    """ydata-profiling's minimal mode on the same text, best of 3 (bench/ydata/reference.py, in
    its own virtualenv); None when that virtualenv is not built (`make bench-ydata` builds it)."""
    if not YDATA_PYTHON.exists():
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".csv", encoding="utf-8") as source:
        source.write(text)
        source.flush()
        done = subprocess.run(
            [YDATA_PYTHON, ROOT / "bench" / "ydata" / "reference.py", source.name],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def measure(rows: int = 100_000) -> dict:
    text = make_csv(rows)

    def once() -> tuple[float, float, dict]:
        started = time.perf_counter()
        dataset = parse_csv(text)
        parsed = time.perf_counter()
        result = profile.run(dataset, CONFIG)
        return parsed - started, time.perf_counter() - parsed, result

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    once()  # warm-up
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    timings = [once() for _ in range(3)]
    parse_seconds, profile_seconds, result = min(timings, key=lambda t: t[0] + t[1])

    # Separate pass: tracing slows everything, so it is not timed.
    dataset = parse_csv(text)
    tracemalloc.start()
    profile.run(dataset, CONFIG)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del dataset

    # Side by side, as this machine's speed drifts: pandas reading the same text and computing
    # only the figures compared (nulls, distinct counts, means, medians), best of 3.
    pandas_seconds = []
    for _ in range(3):
        started = time.perf_counter()
        expected = pandas_figures(text)
        pandas_seconds.append(time.perf_counter() - started)
    checks, mismatches = compare(result, expected)
    ydata_seconds = ydata_reference(text)
    return {
        "rows": result["row_count"],
        "columns": len(result["columns"]),
        "seconds": round(parse_seconds + profile_seconds, 3),
        "parse_seconds": round(parse_seconds, 3),
        "profile_seconds": round(profile_seconds, 3),
        "pandas_seconds": round(min(pandas_seconds), 3),
        "ydata_seconds": ydata_seconds,
        "peak_mb": round(peak / 1e6, 1),
        "rss_growth_mb": round(rss_growth_mb, 1),
        "checks": checks,
        "checks_equal": checks - len(mismatches),
        "mismatches": mismatches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    figures = measure(parser.parse_args().rows)
    print(f"profile-my-data: {figures['rows']:,} rows × {figures['columns']} columns")
    print(
        f"  seconds (parse + profile, best of 3)  {figures['seconds']}"
        f"  ({figures['parse_seconds']} + {figures['profile_seconds']})"
    )
    print(f"  pandas, same text, only the compared figures  {figures['pandas_seconds']}")
    print(f"  ydata-profiling minimal mode, same text  {ydata_summary(figures)}")
    print(f"  peak MB (traced, profile.run)        {figures['peak_mb']}  (RSS growth {figures['rss_growth_mb']} MB)")
    print(f"  figures equal to pandas              {figures['checks_equal']}/{figures['checks']}")
    for mismatch in figures["mismatches"]:
        print(f"    {mismatch}")


def ydata_summary(figures: dict) -> str:
    if figures["ydata_seconds"] is None:
        return "not run (make bench-ydata builds its virtualenv)"
    return f"{figures['ydata_seconds']} s (ours {figures['seconds'] / figures['ydata_seconds']:.2f}× its time)"


if __name__ == "__main__":
    main()
