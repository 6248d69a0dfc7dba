"""Benchmark: HTTP requests per second through gunicorn, a charge and an agent run against an empty endpoint.

    make bench-http          (or: python -m bench.http_load [--seconds S] [--connections C])

Starts gunicorn (workers = cores) serving the project on the local MariaDB (database
`ledger_bench`) with persistent DB connections and the run limits at their defaults
(AGENT_RUN_TIMEOUT_SECONDS …), then drives a bounded loopback load with wrk:
- empty:  GET /bench/empty — the cheapest authenticated DRF request (JWT, user lookup);
- charge: POST /billing/charges {"agent_id"} — one metered charge through the ledger;
- agent:  POST /api/profile-my-data with a tiny CSV (two rows) — a whole agent run: hold → the tool
  in a sandbox worker process → capture, process isolation included. The sandbox pool is per
  gunicorn worker, so the warm-up goes on until every worker has its sandbox worker.
Each scenario is measured after a warm-up; meanwhile the CPU that gunicorn, the sandbox workers,
MariaDB and wrk use is read from /proc, which says what bounds the figure.
Prints req/s and p50/p95/p99; results: bench/results/http_load.json and .md.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.db import BENCH_DATABASE, fund_wallets, settle, use_bench_database
from bench.report import table, write

LUA = Path(__file__).parent / "wrk" / "request.lua"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
AGENT = "profile-my-data"
# The one user's balance: more than any run spends.
UNLIMITED_CREDITS = 10**15
WARM_UP_SECONDS = 2
# Warm-ups of the agent scenario until every gunicorn worker has a sandbox worker, at most.
MAX_WARM_UPS = 5
# How often the CPU counters of the processes are read during a measurement.
SAMPLE_SECONDS = 0.25
# Inherited settings that would change what is measured: the run limits stay at their defaults.
DEFAULTED = ("AGENT_", "BILLING_", "GUNICORN_TIMEOUT")

EMPTY, CHARGE, RUN = "empty", "charge", "agent run"
SCENARIOS = [
    (EMPTY, "empty authenticated DRF endpoint", "GET", "/bench/empty", ""),
    (CHARGE, "charge (POST /billing/charges)", "POST", "/billing/charges", json.dumps({"agent_id": AGENT})),
    (
        RUN,
        "tiny agent run (POST /api/profile-my-data, 2 rows)",
        "POST",
        f"/api/{AGENT}",
        json.dumps({"tool_configuration": {}, "data": {"csv": "a,b\n1,x\n2,y\n"}}),
    ),
]


def server_environment() -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(DEFAULTED)}
    return {
        **inherited,
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
    from rest_framework_simplejwt.tokens import AccessToken

    from billing.models import Wallet
    from users.models import User

    call_command("seed_agent_costs", verbosity=0)
    user, _ = User.objects.get_or_create(email="bench-http@example.com")
    wallet, _ = Wallet.objects.get_or_create(user=user)
    # Topped up as the ledger sees credits (a grant row and its lot), and only once it has spent
    # half: a lot per run would pile up lots that every charge's burn order then has to sort.
    if wallet.balance_credits < UNLIMITED_CREDITS // 2:
        fund_wallets([wallet.id], UNLIMITED_CREDITS - wallet.balance_credits)
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


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """Every process: pid → (parent pid, command line, CPU seconds used so far)."""
    table, tick = {}, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            table[int(entry)] = (int(fields[1]), command, (int(fields[11]) + int(fields[12])) / tick)
    return table


def _cpu_of(path: str) -> float | None:
    """CPU seconds so far of /proc/<path> (a process, or a thread: "<pid>/task/<tid>")."""
    try:
        fields = Path(f"/proc/{path}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - values[3] - values[4]) / tick, sum(values) / tick


def sandbox_workers(server: int) -> dict[int, list[int]]:
    """Each gunicorn worker's live sandbox worker processes."""
    table = _proc_table()
    workers = [pid for pid, (parent, _, _) in table.items() if parent == server]
    return {
        worker: [pid for pid, (parent, command, _) in table.items() if parent == worker and "agents.sandbox" in command]
        for worker in workers
    }


class CpuSampler:
    """CPU seconds used by group while a load runs: gunicorn (master and workers), their sandbox
    workers, the MariaDB threads serving this benchmark's connections, and the rest of MariaDB
    (InnoDB's background work, other clients). Counters are read every SAMPLE_SECONDS, so a
    sandbox worker that exits meanwhile counts up to its last reading; processes and connections
    are looked up again each second."""

    GROUPS = ("gunicorn", "sandbox workers", "MariaDB, our connections", "MariaDB, the rest")

    def __init__(self, server: int) -> None:
        import MySQLdb

        from bench.db import SERVER

        self.server, self.group, self.first, self.last = server, {}, {}, {}
        self.mariadb: str | None = None
        self.sandboxes: set[int] = set()
        self.db = MySQLdb.connect(**SERVER)
        self._scan(starting=True)
        self.machine = _machine_busy()

    def _track(self, path: str, group: str, cpu: float, starting: bool) -> None:
        if path not in self.group:
            self.group[path] = group
            # A new sandbox worker counts from its start; a connection's thread (perhaps reused
            # from MariaDB's thread cache) from when it is first seen.
            self.first[path] = cpu if starting or group != "sandbox workers" else 0.0
        self.last[path] = cpu

    def _scan(self, starting: bool = False) -> None:
        table = _proc_table()
        gunicorn = {self.server} | {pid for pid, (parent, _, _) in table.items() if parent == self.server}
        for pid, (parent, command, cpu) in table.items():
            if pid in gunicorn:
                self._track(str(pid), "gunicorn", cpu, starting)
            elif parent in gunicorn and "agents.sandbox" in command:
                self.sandboxes.add(pid)
                self._track(str(pid), "sandbox workers", cpu, starting)
            elif command.split(" ", 1)[0].endswith("mariadbd"):
                self.mariadb = str(pid)
                self._track(self.mariadb, "MariaDB", cpu, starting)
        if self.mariadb:
            cursor = self.db.cursor()
            cursor.execute("SELECT tid FROM information_schema.processlist WHERE db = %s", [BENCH_DATABASE])
            for (tid,) in cursor.fetchall():
                thread = f"{self.mariadb}/task/{tid}"
                if (cpu := _cpu_of(thread)) is not None:
                    self._track(thread, "MariaDB, our connections", cpu, starting)
        self.scanned_at = time.monotonic()

    def sample(self) -> None:
        if time.monotonic() - self.scanned_at >= 1:
            self._scan()
            return
        for path in self.group:
            if (cpu := _cpu_of(path)) is not None:
                self.last[path] = cpu

    def seconds(self) -> dict[str, float]:
        self._scan()
        self.db.close()
        used = dict.fromkeys([*self.GROUPS, "MariaDB"], 0.0)
        for path, group in self.group.items():
            used[group] += self.last[path] - self.first[path]
        used["MariaDB, the rest"] = used.pop("MariaDB") - used["MariaDB, our connections"]
        busy, total = _machine_busy()
        used["machine busy"], used["machine"] = busy - self.machine[0], total - self.machine[1]
        return used


def wrk(
    method: str, path: str, body: str, token: str, seconds: int, connections: int, sampler: CpuSampler | None = None
) -> dict:
    env = {**os.environ, "BENCH_METHOD": method, "BENCH_BODY": body, "BENCH_TOKEN": token}
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), BASE + path]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + seconds + 60
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"wrk did not finish within {seconds + 60} s")
            if sampler is not None:
                sampler.sample()
            time.sleep(SAMPLE_SECONDS)
        output, errors = process.communicate()
    if process.returncode:
        raise SystemExit(f"wrk failed ({process.returncode}): {errors.strip()}")
    line = next(line for line in output.splitlines() if line.startswith("BENCH_RESULT "))
    figures = json.loads(line.removeprefix("BENCH_RESULT "))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures["wrk_cpu_seconds"] = sum(getattr(after, f) - getattr(children, f) for f in ("ru_utime", "ru_stime"))
    return figures


def warm_up(server: subprocess.Popen, method: str, path: str, body: str, token: str, connections: int) -> int:
    """Load the scenario until it is warm; an agent run's scenario until every gunicorn worker
    has started its sandbox worker (its first run waits about a second for it). Returns the warm-ups."""
    for number in range(1, MAX_WARM_UPS + 1):
        wrk(method, path, body, token, WARM_UP_SECONDS, connections)
        if not path.startswith("/api/"):
            return number
        if all(sandbox_workers(server.pid).values()):
            wrk(method, path, body, token, WARM_UP_SECONDS, connections)  # and once more, all of them warm
            return number + 1
    raise SystemExit(f"not every gunicorn worker had a sandbox worker after {MAX_WARM_UPS} warm-ups")


def measure(server, scenarios, token: str, seconds: int, connections: int, rounds: int) -> list[dict]:
    """Each scenario for `seconds` in all, in `rounds` alternating turns (drift on this shared
    machine then falls on every scenario alike), each warmed up before its first turn."""
    totals = {key: {"figures": [], "cpu": [], "sandbox_starts": 0, "warm_ups": 0} for key, *_ in scenarios}
    for turn in range(rounds):
        for key, name, method, path, body in scenarios:
            total = totals[key]
            if turn == 0:
                total["warm_ups"] = warm_up(server, method, path, body, token, connections)
            sampler = CpuSampler(server.pid)
            before = set(sampler.sandboxes)
            figures = wrk(method, path, body, token, max(seconds // rounds, 1), connections, sampler)
            total["cpu"].append(sampler.seconds())
            total["sandbox_starts"] += len(sampler.sandboxes - before)
            total["figures"].append(figures)
            print(
                f"  turn {turn + 1}/{rounds} {name:<52} {figures['requests'] / (figures['duration_us'] / 1e6):7.0f} req/s",
                flush=True,
            )
    rows = []
    for key, name, *_ in scenarios:
        runs, cpus = totals[key]["figures"], totals[key]["cpu"]
        requests = sum(f["requests"] for f in runs)
        duration = sum(f["duration_us"] for f in runs) / 1e6

        def mean(field: str, runs=runs) -> float:
            return sum(f[field] for f in runs) / len(runs)

        cpu_ms = {group: round(sum(c[group] for c in cpus) / requests * 1e3, 2) for group in CpuSampler.GROUPS}
        cpu_ms["wrk"] = round(sum(f["wrk_cpu_seconds"] for f in runs) / requests * 1e3, 2)
        rows.append(
            {
                "key": key,
                "scenario": name,
                "connections": connections,
                "requests": requests,
                "requests_per_second": round(requests / duration),
                "p50_ms": round(mean("p50_us") / 1000, 2),
                "p95_ms": round(mean("p95_us") / 1000, 2),
                "p99_ms": round(mean("p99_us") / 1000, 2),
                "errors": sum(f["socket_errors"] + f["non_2xx"] for f in runs),
                "cpu_ms_per_request": cpu_ms,
                "machine_busy": round(sum(c["machine busy"] for c in cpus) / sum(c["machine"] for c in cpus), 2),
                # CPU of processes that are not this benchmark's (other work on this machine).
                "others_share": round(
                    (
                        sum(c["machine busy"] - sum(c[g] for g in CpuSampler.GROUPS) for c in cpus)
                        - sum(f["wrk_cpu_seconds"] for f in runs)
                    )
                    / sum(c["machine"] for c in cpus),
                    2,
                ),
                "warm_ups": totals[key]["warm_ups"],
                "sandbox_worker_starts": totals[key]["sandbox_starts"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per scenario")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=2, help="alternating turns the seconds are split into")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian package `wrk`; `make bench` installs it)")
    for name in [name for name in os.environ if name.startswith(DEFAULTED)]:
        del os.environ[name]  # this process reports the limits the server runs with
    use_bench_database()
    from django.conf import settings

    limits = {
        "AGENT_RUN_TIMEOUT_SECONDS": settings.AGENT_RUN_TIMEOUT_SECONDS,
        "AGENT_RUN_MAX_MEMORY_MB": settings.AGENT_RUN_MAX_MEMORY_MB,
        "BILLING_HOLD_TTL_SECONDS": settings.BILLING_HOLD_TTL.total_seconds(),
    }
    token = prepare()
    settle()  # the ledger-size step leaves InnoDB flushing a million rows
    server = start_gunicorn()
    try:
        rows = measure(server, SCENARIOS, token, args.seconds, args.connections, args.rounds)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    for row in rows:
        print(
            f"{row['scenario']:<52} {row['requests_per_second']:>6} req/s  p50 {row['p50_ms']} ms  "
            f"p95 {row['p95_ms']} ms  p99 {row['p99_ms']} ms  errors {row['errors']}",
            flush=True,
        )

    rate = {row["key"]: row for row in rows}
    charge_ratio = round(rate[CHARGE]["requests_per_second"] / rate[EMPTY]["requests_per_second"], 2)
    run_ratio = round(rate[RUN]["requests_per_second"] / rate[EMPTY]["requests_per_second"], 3)
    workers = server_environment()["WEB_CONCURRENCY"]
    groups = [*CpuSampler.GROUPS, "wrk"]
    cpu = {row["key"]: sum(row["cpu_ms_per_request"][g] for g in groups) for row in rows}
    # Other processes take varying shares of this shared machine; the CPU per request does not vary with them.
    run_ratio_by_cpu = round(cpu[EMPTY] / cpu[RUN], 3)
    lines = [
        f"gunicorn, {workers} sync workers (each closes its connection after the response; not recycled "
        f"during the run), run limits at their defaults ({', '.join(f'{k}={v:g}' for k, v in limits.items())}); "
        f"wrk with {args.connections} connections, {args.seconds} s per scenario in {args.rounds} alternating "
        f"turns after a {WARM_UP_SECONDS} s warm-up (the agent run's: until every gunicorn worker had its sandbox "
        "worker, then once more); p50/p95/p99 are the mean of the turns' figures:",
        "",
        *table(
            ["scenario", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
            (
                [r["scenario"], r["requests_per_second"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"]]
                for r in rows
            ),
        ),
        "",
        f"CPU per request while measured (from /proc; {os.cpu_count()} cores, shared by all of them):",
        "",
        *table(
            [
                "scenario",
                *(f"{g} CPU ms" for g in groups),
                "total CPU ms",
                "machine busy",
                "of it other processes",
                "sandbox worker starts",
            ],
            (
                [
                    r["scenario"],
                    *(r["cpu_ms_per_request"][g] for g in groups),
                    round(sum(r["cpu_ms_per_request"][g] for g in groups), 2),
                    f"{r['machine_busy']:.0%}",
                    f"{max(r['others_share'], 0):.0%}",
                    r["sandbox_worker_starts"] if r["key"] == RUN else "",
                ]
                for r in rows
            ),
        ),
        "",
        f"Charge throughput is **{charge_ratio:.0%}** of the empty endpoint's; a tiny agent run's "
        f"**{run_ratio:.0%}** (p50 {rate[RUN]['p50_ms']} ms against {rate[EMPTY]['p50_ms']} ms). "
        f"By CPU per request — the ratio a CPU-bound load would reach with the machine to itself — a tiny "
        f"agent run costs {cpu[RUN] / cpu[EMPTY]:.1f}× an empty request: {run_ratio_by_cpu:.0%}.",
    ]
    write(
        "http_load",
        {
            "gunicorn_workers": int(workers),
            "limits": limits,
            "rows": rows,
            "charge_vs_empty": charge_ratio,
            "run_vs_empty": run_ratio,
            "run_vs_empty_by_cpu": run_ratio_by_cpu,
        },
        lines,
    )


if __name__ == "__main__":
    main()
