"""ydata-profiling's minimal mode on a CSV file: the field's reference for profile-my-data.

    .venv-ydata/bin/python bench/ydata/reference.py FILE.csv

Run by bench.profile_quality in ydata's own virtualenv (bench/ydata/requirements.txt), never
imported by the project. Times what a data engineer runs by hand — `pd.read_csv` with its default
type inference, then `ProfileReport(minimal=True).get_description()` (the statistics, no HTML) —
best of 3 after a warm-up, and prints {"seconds": ..., "rows": ..., "columns": ...} as JSON.
"""

import io
import json
import sys
import time
import warnings

import pandas as pd
from ydata_profiling import ProfileReport


def once(text: str) -> tuple[float, pd.DataFrame]:
    started = time.perf_counter()
    frame = pd.read_csv(io.StringIO(text))
    ProfileReport(frame, minimal=True, progress_bar=False).get_description()
    return time.perf_counter() - started, frame


def main() -> None:
    warnings.filterwarnings("ignore")
    with open(sys.argv[1], encoding="utf-8") as source:
        text = source.read()
    _, frame = once(text)  # warm-up: imports and numba's compilation
    seconds = min(once(text)[0] for _ in range(3))
    print(json.dumps({"seconds": round(seconds, 3), "rows": len(frame), "columns": len(frame.columns)}))


if __name__ == "__main__":
    main()
