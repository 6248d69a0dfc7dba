"""All the ledger benchmarks in one run, bounded in time:  make bench  (or: python -m bench).

Runs, one after the other on the local MariaDB: ledger throughput (floor / ours / a run's
billing / naive / django-hordak at concurrency 1, 8, 32; ours on wallets with 1 and 20 lots),
ledger scale (10k vs 1M rows), HTTP load through gunicorn (empty, charge, tiny agent run), the
in-process breakdown of one charge request and of one tiny agent run, charges per second on a
Galera cluster next to the single server; then checks the targets, writes bench/results/summary.md
and puts it in docs/performance.md.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.report import RESULTS, table

ROOT = Path(__file__).resolve().parent.parent
PERFORMANCE_DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
BUDGET_SECONDS = 15 * 60

STEPS = [
    ("ledger throughput", ["bench.ledger_throughput"]),
    ("ledger scale", ["bench.ledger_scale"]),
    ("HTTP load", ["bench.http_load"]),
    ("request breakdown", ["bench.profile_charge", "--no-profiles"]),
    ("agent run breakdown", ["bench.profile_run", "--no-profiles", "--runs", "200"]),
    # A Galera cluster of its own when none is up (scripts/galera.sh): charges per second there
    # and on the single server, side by side.
    ("cluster throughput", ["bench.cluster", "--throughput", "10", "--up"]),
]


def run_steps(budget: float) -> None:
    started = time.monotonic()
    for name, module in STEPS:
        left = budget - (time.monotonic() - started)
        if left <= 0:
            raise SystemExit(f"out of time before {name}")
        print(f"\n=== {name} ({left:.0f} s left of the budget) ===", flush=True)
        subprocess.run([sys.executable, "-m", *module], cwd=ROOT, check=True, timeout=left)
    print(f"\nall benchmarks took {time.monotonic() - started:.0f} s", flush=True)


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def targets() -> list[tuple[str, str, bool]]:
    throughput, scale, http = load("ledger_throughput"), load("ledger_scale"), load("http_load")
    cluster = load("cluster")
    cluster_errors = sum(sum(row["errors"].values()) for row in cluster["rows"])
    ours, floor, naive, hordak, run = (
        "ours (ledger.charge)",
        "floor (raw SQL)",
        "naive ORM peer",
        "django-hordak",
        "run billing (start_run → _succeed)",
    )
    # Ours (and a run's billing) are measured on wallets with 1 and with 20 lots; the peers draw none.
    rate = {
        (r["implementation"], r.get("lots"), r["concurrency"], r["wallets"].split()[0]): r for r in throughput["rows"]
    }
    configs = sorted({(c, w) for _, _, c, w in rate})
    lot_counts = sorted({lots for name, lots, _, _ in rate if name == ours}, key=lambda n: n or 0)

    def lots_of(name: str, lots: int | None) -> int | None:
        return lots if name in (ours, run) else None

    def worst_at(a: str, b: str, lots: int | None) -> float:
        return min(
            rate[(a, lots_of(a, lots), c, w)]["charges_per_second"]
            / rate[(b, lots_of(b, lots), c, w)]["charges_per_second"]
            for c, w in configs
        )

    def worst(a: str, b: str) -> float:
        return min(worst_at(a, b, lots) for lots in lot_counts)

    def per_lots(a: str, b: str, form: str, unit: str = "") -> str:
        """The worst ratio, and the worst at each lot count when there are several."""
        figure = f"{worst(a, b):{form}}{unit}"
        if len(lot_counts) < 2:
            return figure
        each = ", ".join(f"{lots} lot{'s' * (lots != 1)}: {worst_at(a, b, lots):{form}}{unit}" for lots in lot_counts)
        return f"{figure} ({each})"

    def counted(prefix: str) -> tuple[str, int]:
        """Statements counted with each lot count (keys `<prefix> … (<n> lots)`): as text, and the most."""
        found = {key: n for key, n in throughput["statements"].items() if key.startswith(prefix)}
        text = ", ".join(
            f"{n} ({key.rsplit('(', 1)[1][:-1]})" if key.endswith(("lot)", "lots)")) else str(n)
            for key, n in found.items()
        )
        return text, max(found.values())

    lost = sum(rate[(naive, None, c, w)]["lost_credits"] for c, w in configs)
    ours_lost = sum(rate[(ours, lots, c, w)]["lost_credits"] for c, w in configs for lots in lot_counts)
    statements_text, statements = counted("ours: statements per charge")
    run_statements_text, run_statements = counted("ours: statements per run's billing")
    flat = scale["charge_1m_vs_10k"]
    http_ratio = http["charge_vs_empty"]
    http_run_ratio = http["run_vs_empty"]
    return [
        (
            "ours ≥ 90 % of the raw-SQL floor (worst configuration)",
            per_lots(ours, floor, ".0%"),
            worst(ours, floor) >= 0.9,
        ),
        (
            "ours ≥ 3× the naive ORM peer (worst configuration)",
            per_lots(ours, naive, ".1f", "×"),
            worst(ours, naive) >= 3,
        ),
        (
            "the naive peer loses credits under concurrency; ours none",
            f"naive {lost:,}, ours {ours_lost}",
            lost > 0 and ours_lost == 0,
        ),
        (
            "ours ≥ django-hordak (worst configuration)",
            per_lots(ours, hordak, ".1f", "×"),
            worst(ours, hordak) >= 1,
        ),
        (
            "credit lots: ours ≥ 3× django-hordak at every configuration, 1 and 20 lots",
            per_lots(ours, hordak, ".2f", "×"),
            worst(ours, hordak) >= 3,
        ),
        (
            "credit lots: ours ≥ 1.5× the naive ORM peer at every configuration, 1 and 20 lots",
            per_lots(ours, naive, ".2f", "×"),
            worst(ours, naive) >= 1.5,
        ),
        ("≤ 6 SQL statements per charge", statements_text, statements <= 6),
        (
            "a run's billing (hold + capture + run rows) ≥ 50 % of ledger.charge (worst configuration)",
            per_lots(run, ours, ".0%"),
            worst(run, ours) >= 0.5,
        ),
        ("≤ 8 SQL statements per run's billing", run_statements_text, run_statements <= 8),
        ("HTTP charge ≥ 70 % of the empty endpoint", f"{http_ratio:.0%}", http_ratio >= 0.7),
        (
            "HTTP tiny agent run (process isolation included) ≥ 25 % of the empty endpoint",
            f"{http_run_ratio:.0%}",
            http_run_ratio >= 0.25,
        ),
        ("flat from 10k to 1M ledger rows (≤ 1.25×)", f"{flat:.2f}×", flat <= 1.25),
        (
            "Galera, hot wallet: ≥ 30 % of the single server's charges/s, 0 errors",
            f"{cluster['hot_wallet_share']:.0%}, {cluster_errors} errors",
            cluster["hot_wallet_share"] >= 0.3 and cluster_errors == 0,
        ),
    ]


def summary() -> str:
    checks = targets()
    parts = table(
        ["target", "measured", "met"], ([name, value, "yes" if ok else "**no**"] for name, value, ok in checks)
    )
    for title, name in (
        ("Ledger throughput (charges/s)", "ledger_throughput"),
        ("Ledger size", "ledger_scale"),
        ("HTTP", "http_load"),
        ("One request, in-process (where the time goes)", "request_breakdown"),
        ("One tiny agent run, in-process (where the time goes)", "run_breakdown"),
        ("Single server and Galera cluster (charges/s)", "cluster"),
    ):
        parts += ["", f"#### {title}", "", (RESULTS / f"{name}.md").read_text().strip()]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary-only", action="store_true", help="only rebuild the summary from bench/results")
    args = parser.parse_args()
    if not args.summary_only:
        run_steps(BUDGET_SECONDS)
    text = summary()
    (RESULTS / "summary.md").write_text(text)
    readme = PERFORMANCE_DOC.read_text()
    if START in readme and END in readme:
        head, rest = readme.split(START, 1)
        PERFORMANCE_DOC.write_text(head + START + "\n" + text + END + rest.split(END, 1)[1])
    print("\n" + text)


if __name__ == "__main__":
    main()
