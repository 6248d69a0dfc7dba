"""Where a small agent run's time goes: POST /api/profile-my-data on a two-row CSV, in-process.

    python -m bench.profile_run [--runs N] [--no-profiles]

In-process on the local MariaDB (database `ledger_bench`), one request at a time through Django's
test client and the real view, with the project's default run limits (AGENT_RUN_TIMEOUT_SECONDS …):
N tiny runs, each request's wall and CPU time split at the boundaries of the steps it takes —
Django and DRF around the view (middleware, JWT auth, throttle), request parsing and validation,
`start_run` (billing 1: price lookup, hold + run row), the sandbox round trip (isolation, with the
tool running in the worker), `_succeed` (billing 2: capture + receipt), response serialisation.
Beside it, for comparison and measured in the same run: the tool run in this process (its own
time), the worker's request handling run in this process (the tool plus what the worker wraps it
in, without pipes), an empty authenticated request; and what starting one sandbox worker costs.
N is a multiple of the sandbox's MAX_RUNS_PER_WORKER, so worker replacements fall into the figures
at the rate they do in service.
Results: bench/results/run_breakdown.json and .md; pyinstrument profiles unless --no-profiles.
"""

import argparse
import json
import os
import pickle
import resource
import statistics
import subprocess
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

AGENT = "profile-my-data"
TOOL = "agents.tools.profile"
BODY = {"tool_configuration": {}, "data": {"csv": "a,b\n1,x\n2,y\n"}}
# Settings whose defaults the figures are for: never inherited from this shell.
DEFAULTED = ("AGENT_", "BILLING_", "GUNICORN_TIMEOUT")
CPU = ("ru_utime", "ru_stime")  # the CPU fields of a struct rusage

# The parts of one request, in the order a request passes them.
DJANGO = "Django + DRF around the view (test client, middleware, JWT auth + user, throttle)"
PARSE = "request parsing + validation (JSON, serializers, CSV → dataset, tool options)"
GLUE = "run bookkeeping (request fingerprint, payload for the sandbox)"
BILLING_1 = "start_run — billing 1 (price lookup; hold + run row: 1 statement)"
ISOLATION = "sandbox round trip — isolation, the tool running in the worker"
BILLING_2 = "_succeed — billing 2 (capture + receipt: 1 statement)"
RESPONSE = "response serialisation (body + JSON rendering)"
PARTS = (DJANGO, PARSE, GLUE, BILLING_1, ISOLATION, BILLING_2, RESPONSE)


def default_limits() -> None:
    for name in list(os.environ):
        if name.startswith(DEFAULTED):
            del os.environ[name]


class Attribution:
    """Exclusive wall and CPU time (this process) per named part of a call tree: `wrap` makes a
    function a part; time inside a nested part counts for that part only."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._last = (time.perf_counter(), time.process_time())

    def _switch(self) -> None:
        now = (time.perf_counter(), time.process_time())
        if self._stack:
            part = self._stack[-1]
            self.wall[part] += now[0] - self._last[0]
            self.cpu[part] += now[1] - self._last[1]
        self._last = now

    @contextmanager
    def part(self, name: str):
        self._switch()
        self._stack.append(name)
        try:
            yield
        finally:
            self._switch()
            self._stack.pop()

    def wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*args, **kwargs):
            with self.part(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, wrapper)

    def wrap_property(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def getter(instance):
            with self.part(name):
                return original.fget(instance)

        setattr(owner, attribute, property(getter, original.fset))


def connection_thread() -> str | None:
    """/proc path ("<pid>/task/<tid>") of the MariaDB thread serving Django's connection, if local."""
    from django.db import connection

    server = subprocess.run(["pgrep", "-o", "mariadbd"], capture_output=True, text=True).stdout.split()
    with connection.cursor() as cursor:
        cursor.execute("SELECT tid FROM information_schema.processlist WHERE id = CONNECTION_ID()")
        (tid,) = cursor.fetchone()
    return f"{server[0]}/task/{tid}" if server and tid else None


def thread_cpu(path: str | None) -> float:
    if path is None:
        return 0.0
    fields = Path(f"/proc/{path}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record(owner, attribute: str, walls: list[float]) -> None:
    """Append the wall time of every call of owner.attribute to `walls`."""
    original = getattr(owner, attribute)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            walls.append(time.perf_counter() - started)

    setattr(owner, attribute, wrapper)


def children_cpu() -> dict[int, float]:
    """CPU seconds so far of each live child process of this one (the sandbox workers)."""
    me, found = os.getpid(), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


@contextmanager
def workers_cpu(out: dict):
    """CPU of the sandbox workers while the block runs, the ones that exited meanwhile included
    (reaped ones by their rusage, live ones from /proc); puts seconds in out["seconds"]."""
    before, reaped = children_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
    yield
    after, reaped_after = children_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
    gone = sum(cpu for pid, cpu in before.items() if pid not in after)
    reaped_cpu = sum(getattr(reaped_after, f) - getattr(reaped, f) for f in CPU)
    out["seconds"] = reaped_cpu - gone + sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


class Timer:
    """Wall (per call) and CPU (this process) of one function, called in turns with others so that
    the machine's drift affects every figure alike."""

    def __init__(self, name: str, fn) -> None:
        self.name, self.fn, self.walls, self.cpu = name, fn, [], 0.0

    def __call__(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.fn()
        self.walls.append(time.perf_counter() - wall)
        self.cpu += time.process_time() - cpu

    def row(self) -> dict:
        return {
            "call": self.name,
            "wall_ms": round(statistics.fmean(self.walls) * 1e3, 3),
            "wall_p50_ms": round(statistics.median(self.walls) * 1e3, 3),
            "cpu_ms": round(self.cpu / len(self.walls) * 1e3, 3),
        }


def profile(title: str, fn, calls: int) -> None:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    for _ in range(calls):
        fn()
    profiler.stop()
    print(f"\n=== {title} ({calls} calls) ===")
    print(profiler.output_text(unicode=False, color=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=400, help="runs through the view (rounded up to whole worker lives)"
    )
    parser.add_argument("--no-profiles", action="store_true", help="only the breakdown, no pyinstrument profiles")
    args = parser.parse_args()
    default_limits()
    os.environ.update(
        {
            "ALLOWED_HOSTS": "testserver",
            "SECURE_SSL_REDIRECT": "false",
            "CONN_MAX_AGE": "3600",  # one connection (and MariaDB thread) throughout
            "THROTTLE_AGENTS": "1000000/s",
        }
    )
    from bench.db import use_bench_database

    use_bench_database()
    from django.conf import settings
    from django.test import Client
    from rest_framework.response import Response

    from agents import api, runner, sandbox
    from agents.datasets import parse_csv
    from agents.tools import profile as profile_tool
    from bench.http_load import prepare
    from bench.report import table, write

    life = sandbox.MAX_RUNS_PER_WORKER
    runs = max(life, -(-args.runs // life) * life)
    limits = {
        "AGENT_RUN_TIMEOUT_SECONDS": settings.AGENT_RUN_TIMEOUT_SECONDS,
        "AGENT_RUN_MAX_MEMORY_MB": settings.AGENT_RUN_MAX_MEMORY_MB,
        "BILLING_HOLD_TTL_SECONDS": settings.BILLING_HOLD_TTL.total_seconds(),
        "BILLING_ENFORCEMENT": settings.BILLING_ENFORCEMENT,
    }
    client = Client(HTTP_AUTHORIZATION=f"Bearer {prepare()}")
    body = json.dumps(BODY)

    def run_request() -> None:
        response = client.post(f"/api/{AGENT}", body, content_type="application/json")
        assert response.status_code == 200, response.content

    def empty_request() -> None:
        assert client.get("/bench/empty").status_code == 200

    dataset = parse_csv(BODY["data"]["csv"])
    config = profile_tool.parse_options({})
    payload = {"columns": dataset.columns, "rows": dataset.rows, "source_format": dataset.source_format}
    request = pickle.dumps((TOOL, payload, config, settings.AGENT_RUN_MAX_MEMORY_MB), protocol=pickle.HIGHEST_PROTOCOL)
    # Measured in turns with the runs, for comparison.
    tool_alone = Timer(
        "the tool alone, in this process (agents.tools.profile.run)", lambda: profile_tool.run(dataset, config)
    )
    handling = Timer(
        "the worker's handling, in this process (unpickle, rlimits, peak-RSS reset, tool, JSON)",
        lambda: sandbox._handle(request),
    )
    empty = Timer("GET /bench/empty (empty authenticated request)", empty_request)

    # Warm: a sandbox worker started, connections open, code paths and caches hot.
    sandbox.warm()
    for _ in range(20):
        run_request()
        profile_tool.run(dataset, config)
        sandbox._handle(request)
        empty_request()

    attribution = Attribution()
    attribution.wrap(api.AgentRunApi, "post", PARSE)
    attribution.wrap_property(api.AgentRunResultSerializer, "data", RESPONSE)  # the run's response body
    attribution.wrap_property(Response, "rendered_content", RESPONSE)
    attribution.wrap(runner, "submit_run", GLUE)
    api.submit_run = runner.submit_run  # the view imported it by name
    attribution.wrap(runner, "start_run", BILLING_1)
    attribution.wrap(sandbox, "run_tool", ISOLATION)
    attribution.wrap(runner, "_succeed", BILLING_2)
    round_trips, acquiring = [], []  # wall seconds of each sandbox round trip; of waiting for its worker
    record(sandbox, "run_tool", round_trips)
    record(sandbox._Pool, "acquire", acquiring)
    started_workers = []
    start_worker = sandbox._start_worker
    sandbox._start_worker = lambda *a, **k: started_workers.append(1) or start_worker(*a, **k)

    walls, workers = [], {}
    with workers_cpu(workers):
        for index in range(runs):
            started = time.perf_counter()
            with attribution.part(DJANGO):
                run_request()
            walls.append(time.perf_counter() - started)
            # In alternating order: whichever runs first after a request finds colder caches.
            for timer in (tool_alone, handling) if index % 2 else (handling, tool_alone):
                timer()
            empty()
    total_wall = sum(attribution.wall.values())
    per_run = {
        part: {
            "wall_ms": round(attribution.wall[part] / runs * 1e3, 3),
            "share_of_wall": round(attribution.wall[part] / total_wall, 3),
            "cpu_ms": round(attribution.cpu[part] / runs * 1e3, 3),
            "waiting_ms": round((attribution.wall[part] - attribution.cpu[part]) / runs * 1e3, 3),
        }
        for part in PARTS
    }
    print(f"{runs} runs through the view:", flush=True)
    for part, figures in per_run.items():
        print(f"  {part:<84} {figures['wall_ms']:7.3f} ms  {figures['share_of_wall']:6.1%}", flush=True)
    tool_row, handle_row, empty_row = (timer.row() for timer in (tool_alone, handling, empty))
    workers_started = len(started_workers)
    # MariaDB's CPU per run: of the server thread serving this connection, over runs alone.
    db_runs = runs // 4
    db_thread = connection_thread()
    db_started = thread_cpu(db_thread)
    for _ in range(db_runs):
        run_request()
    same_thread = connection_thread() == db_thread
    db_ms = (thread_cpu(db_thread) - db_started) / db_runs * 1e3 if db_thread and same_thread else None

    # What one worn-out worker's replacement costs (Python, Django's settings, pandas … imported).
    start_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start_wall = time.perf_counter()
    start_worker().stop(grace=1.0)
    start_wall = time.perf_counter() - start_wall
    start_cpu = sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f) - getattr(start_cpu, f) for f in CPU)

    mean_wall = statistics.fmean(walls) * 1e3
    isolation = per_run[ISOLATION]["wall_ms"]
    derived = {
        "run request, wall ms (mean)": round(mean_wall, 3),
        "run request, wall ms (p50)": round(statistics.median(walls) * 1e3, 3),
        "run request, wall ms (p99)": round(sorted(walls)[int(len(walls) * 0.99) - 1] * 1e3, 3),
        "run request, wall ms (slowest)": round(max(walls) * 1e3, 1),
        "run request, CPU ms in this process": round(sum(attribution.cpu.values()) / runs * 1e3, 3),
        "run request, CPU ms in the sandbox workers (tool + protocol + replacements' start-up)": round(
            workers["seconds"] / runs * 1e3, 3
        ),
        "run request, CPU ms in MariaDB (the thread serving this connection)": None
        if db_ms is None
        else round(db_ms, 3),
        "billing (start_run + _succeed), wall ms": round(
            per_run[BILLING_1]["wall_ms"] + per_run[BILLING_2]["wall_ms"], 3
        ),
        "isolation overhead: round trip − the tool alone, wall ms (mean)": round(isolation - tool_row["wall_ms"], 3),
        "of it waiting for a sandbox worker (a worn-out one's replacement starting), ms per run": round(
            sum(acquiring[:runs]) / runs * 1e3, 3
        ),
        "of it the worker's wrapping (its handling − the tool alone), ms": round(
            handle_row["wall_ms"] - tool_row["wall_ms"], 3
        ),
        "isolation overhead at the median: round trip p50 − the tool alone p50, wall ms": round(
            statistics.median(round_trips[:runs]) * 1e3 - tool_row["wall_p50_ms"], 3
        ),
        "sandbox workers started during the runs (worn out after MAX_RUNS_PER_WORKER)": workers_started,
        "starting one sandbox worker: wall ms / CPU ms (ready, stopped)": f"{start_wall * 1e3:.0f} / {start_cpu * 1e3:.0f}",
        "its CPU per run over a worker's life (÷ MAX_RUNS_PER_WORKER), ms": round(start_cpu / life * 1e3, 3),
        "empty request / run request (wall)": round(empty_row["wall_ms"] / mean_wall, 3),
    }
    lines = [
        f"{runs} runs of `POST /api/{AGENT}` on a two-row CSV, one at a time through Django's test client and "
        f"the real view (sandbox pool warm, {sandbox.MAX_RUNS_PER_WORKER} runs per worker, limits "
        + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in limits.items())
        + "); each request's time split at the steps' boundaries (exclusive time, mean per run):",
        "",
        *table(
            ["part of the request", "wall ms", "share", "CPU ms (this process)", "waiting ms (DB, worker, I/O)"],
            (
                [part, f["wall_ms"], f"{f['share_of_wall']:.0%}", f["cpu_ms"], f["waiting_ms"]]
                for part, f in per_run.items()
            ),
        ),
        "",
        "Measured in turns with those runs, in this process, for comparison:",
        "",
        *table(
            ["call", "wall ms (mean)", "wall ms (p50)", "CPU ms (this process)"],
            ([r["call"], r["wall_ms"], r["wall_p50_ms"], r["cpu_ms"]] for r in (tool_row, handle_row, empty_row)),
        ),
        "",
        *table(["figure", "value"], derived.items()),
    ]
    write(
        "run_breakdown",
        {
            "runs": runs,
            "limits": limits,
            "parts": per_run,
            "alone": [tool_row, handle_row, empty_row],
            "derived": derived,
        },
        lines,
    )
    if not args.no_profiles:
        profile("the tool alone, in this process", lambda: profile_tool.run(dataset, config), life)
        profile(f"POST /api/{AGENT} (the tool runs in the worker: not in this profile)", run_request, life)


if __name__ == "__main__":
    main()
