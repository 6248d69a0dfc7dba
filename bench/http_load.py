"""Benchmark: HTTP requests per second through gunicorn, a charge against an empty endpoint.

    make bench-http          (or: python -m bench.http_load [--seconds S] [--connections C])

Starts gunicorn (workers = cores) serving the project on the local MariaDB (database
`ledger_bench`) with persistent DB connections, then drives a bounded loopback load with wrk:
- empty:  GET /bench/empty — the cheapest authenticated DRF request (JWT, user lookup);
- charge: POST /billing/charges {"agent_id"} — one metered charge through the ledger;
- agent:  POST /api/profile-my-data with a two-row CSV — a whole agent run (hold → run → capture).
Prints req/s and p50/p95/p99; results: bench/results/http_load.json and .md.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.db import BENCH_DATABASE, settle, use_bench_database
from bench.report import table, write

LUA = Path(__file__).parent / "wrk" / "request.lua"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
AGENT = "profile-my-data"

SCENARIOS = [
    ("empty authenticated DRF endpoint", "GET", "/bench/empty", ""),
    ("charge (POST /billing/charges)", "POST", "/billing/charges", json.dumps({"agent_id": AGENT})),
    (
        "agent run (POST /api/profile-my-data, 2 rows)",
        "POST",
        f"/api/{AGENT}",
        json.dumps({"tool_configuration": {}, "data": {"csv": "name,amount\nAda,3\nGrace,4\n"}}),
    ),
]


def server_environment() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DATABASE_URL": f"mysql://root@127.0.0.1:3306/{BENCH_DATABASE}",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-secret"),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "CONN_MAX_AGE": "60",
        "THROTTLE_AGENTS": "1000000/s",
        "GUNICORN_BIND": f"127.0.0.1:{PORT}",
        "WEB_CONCURRENCY": str(os.cpu_count() or 2),
        "GUNICORN_THREADS": os.environ.get("GUNICORN_THREADS", "1"),
        # No recycling mid-run: a worker restarted after max_requests spends a second loading the
        # app while the other serves alone, and the scenario it falls in pays for it.
        "GUNICORN_MAX_REQUESTS": "0",
        "GUNICORN_ACCESS_LOG": "/dev/null",
        "LOG_LEVEL": "INFO",
    }


def prepare() -> str:
    """Seed the agents, fund one user without limit, return a JWT access token for them."""
    from django.core.management import call_command
    from django.db import connection
    from rest_framework_simplejwt.tokens import AccessToken

    from billing.models import Wallet
    from users.models import User

    call_command("seed_agent_costs", verbosity=0)
    user, _ = User.objects.get_or_create(email="bench-http@example.com")
    Wallet.objects.get_or_create(user=user)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE credit_wallets SET balance_credits = %s WHERE user_id = %s", [10**15, user.id])
    return str(AccessToken.for_user(user))


def start_gunicorn() -> subprocess.Popen:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    server = subprocess.Popen(
        [str(gunicorn), "config.wsgi", "-c", "gunicorn.conf.py"],
        env=server_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{BASE}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.3)
        if server.poll() is not None:
            raise SystemExit("gunicorn exited during start-up")
    server.kill()
    raise SystemExit("gunicorn did not answer /health within 60 s")


def wrk(method: str, path: str, body: str, token: str, seconds: int, connections: int) -> dict:
    env = {**os.environ, "BENCH_METHOD": method, "BENCH_BODY": body, "BENCH_TOKEN": token}
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), BASE + path]
    output = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH_RESULT "))
    return json.loads(line.removeprefix("BENCH_RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per scenario")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian package `wrk`; `make bench` installs it)")
    use_bench_database()
    token = prepare()
    settle()  # the ledger-size step leaves InnoDB flushing a million rows
    server = start_gunicorn()
    rows = []
    try:
        for name, method, path, body in SCENARIOS:
            wrk(method, path, body, token, 2, args.connections)  # warm-up: workers, connections, caches
            figures = wrk(method, path, body, token, args.seconds, args.connections)
            row = {
                "scenario": name,
                "connections": args.connections,
                "requests": figures["requests"],
                "requests_per_second": round(figures["requests"] / (figures["duration_us"] / 1e6)),
                "p50_ms": round(figures["p50_us"] / 1000, 2),
                "p95_ms": round(figures["p95_us"] / 1000, 2),
                "p99_ms": round(figures["p99_us"] / 1000, 2),
                "errors": figures["socket_errors"] + figures["non_2xx"],
            }
            rows.append(row)
            print(
                f"{name:<48} {row['requests_per_second']:>6} req/s  p50 {row['p50_ms']} ms  "
                f"p95 {row['p95_ms']} ms  p99 {row['p99_ms']} ms  errors {row['errors']}",
                flush=True,
            )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    charge_ratio = round(rows[1]["requests_per_second"] / rows[0]["requests_per_second"], 2)
    workers = server_environment()["WEB_CONCURRENCY"]
    lines = [
        f"gunicorn, {workers} sync workers (each closes its connection after the response; not recycled "
        "during the run), "
        f"wrk with {args.connections} connections, {args.seconds} s per scenario after a 2 s warm-up:",
        "",
        *table(
            ["scenario", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
            (
                [r["scenario"], r["requests_per_second"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"]]
                for r in rows
            ),
        ),
        "",
        f"Charge throughput is **{charge_ratio:.0%}** of the empty endpoint's.",
    ]
    write("http_load", {"gunicorn_workers": int(workers), "rows": rows, "charge_vs_empty": charge_ratio}, lines)


if __name__ == "__main__":
    main()
