"""Benchmark: profile-my-data on 100,000 rows — wall time and peak memory.

    make bench-profile        (or: python -m bench.profile_100k [--rows N])

Builds a realistic customer table in memory (mixed formats, blanks, duplicates), sends it
through the same path as the API (CSV text → parse → profile) and prints the figures; they
are also written to bench/results/profile_100k.json.
"""

import argparse
import csv
import io
import json
import os
import random
import resource
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "true")

import django

django.setup()

from agents.datasets import parse_csv  # noqa: E402
from agents.tools import profile  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def make_csv(rows: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["customer_id", "name", "email", "phone", "city", "signup_date", "lifetime_value", "is_active"])
    for i in range(rows):
        writer.writerow(
            [
                f"C{i:07d}",
                rng.choice(["Ada", "Grace", "Alan", "Edsger", "Barbara"]) + f" {rng.choice(['Smith', 'Jones', 'Lee'])}",
                "" if rng.random() < 0.03 else f"user{rng.randrange(rows)}@example.com",
                rng.choice(
                    [
                        f"({rng.randint(201, 989)}) 555-{rng.randint(1000, 9999)}",
                        f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
                        "",
                    ]
                ),
                rng.choice(["Springfield", "Salem", "Dover", "Oxford", ""]),
                rng.choice(
                    [
                        f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                        f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/2023",
                    ]
                ),
                rng.choice([f"{rng.uniform(0, 5000):.2f}", f"${rng.uniform(0, 5000):,.2f}"]),
                rng.choice(["true", "false", "yes", "no"]),
            ]
        )
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    text = make_csv(args.rows)
    config = {"top_values": 5, "high_null_ratio": 0.5, "categorical_max_distinct": 20}

    # Timed pass, untraced: wall time and the process's peak resident memory.
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    dataset = parse_csv(text)
    parsed = time.perf_counter()
    result = profile.run(dataset, config)
    finished = time.perf_counter()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del dataset

    # Second pass under tracemalloc (slow): peak of Python + NumPy allocations.
    tracemalloc.start()
    profile.run(parse_csv(text), config)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    figures = {
        "rows": args.rows,
        "input_mb": round(len(text.encode()) / 1e6, 2),
        "parse_seconds": round(parsed - started, 3),
        "profile_seconds": round(finished - parsed, 3),
        "total_seconds": round(finished - started, 3),
        "rows_per_second": round(args.rows / (finished - started)),
        "peak_rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
        "traced_peak_allocations_mb": round(traced_peak / 1e6, 1),
        "columns": len(result["columns"]),
        "duplicate_rows": result["duplicate_rows"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile_100k.json").write_text(json.dumps(figures, indent=2) + "\n")
    width = max(map(len, figures))
    print(f"profile-my-data on {args.rows:,} rows")
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
