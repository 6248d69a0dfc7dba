"""agents.sandbox: tools run in killable worker processes with hard time and memory limits."""

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agents import sandbox
from agents.sandbox import ToolCrashed, ToolFailed, ToolOutOfMemory, ToolTimedOut, run_tool

ROOT = Path(__file__).resolve().parent.parent
TOOLS = "tests.sandbox_tools"
DATA = {"columns": ["a", "b"], "rows": [{"a": "1", "b": None}, {"a": "2", "b": "x"}], "source_format": "csv"}
PROFILE_CONFIG = {"top_values": 5, "high_null_ratio": 0.5, "categorical_max_distinct": 20}


def echo(config: dict | None = None, data: dict = DATA) -> dict:
    return run_tool(f"{TOOLS}:echo", data, config or {}, timeout=10, memory_mb=200)


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: PID 1 here does not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker_pids() -> set[int]:
    """Live sandbox workers started by this process."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == os.getpid() and b"agents.sandbox" in cmdline:
            pids.add(int(stat.parent.name))
    return pids


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def wait_for_file(path: Path, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} did not appear within {seconds} s"
        time.sleep(0.05)
    return path.read_text()


def test_a_real_tool_runs_in_a_reused_worker_process():
    sandbox.shutdown()  # a fresh pool: no replacement started by another test can slip in between
    assert wait_until(lambda: not worker_pids(), 2)
    started = time.monotonic()
    sandbox.warm()
    assert time.monotonic() - started < 0.1  # the start happens in the background
    assert wait_until(lambda: len(worker_pids()) == 1, 2)
    (warmed,) = worker_pids()

    result = run_tool("agents.tools.profile", DATA, PROFILE_CONFIG, timeout=30, memory_mb=1024)
    first, second = echo({"n": 1}), echo({"n": 2})

    assert result["row_count"] == 2
    assert json.loads(json.dumps(result)) == result
    assert first["pid"] != os.getpid()
    assert second["pid"] == first["pid"] == warmed
    assert (first["config"], second["config"]) == ({"n": 1}, {"n": 2})


def test_the_worker_does_not_set_up_django():
    state = run_tool(f"{TOOLS}:django_state", DATA, {}, timeout=10, memory_mb=200)
    assert state == {
        "apps_ready": False,
        "settings_configured": False,
        "settings_module": os.environ["DJANGO_SETTINGS_MODULE"],
        "db_modules": [],
    }


def test_a_runaway_run_is_killed_on_time_and_costs_the_server_no_cpu(tmp_path, figures):
    echo()  # a warm worker, so the clock measures the limit, not a start
    pid_file = tmp_path / "pid"
    started, cpu_started = time.monotonic(), time.process_time()

    with pytest.raises(ToolTimedOut, match=r"took longer than 1 s and was stopped"):
        run_tool(f"{TOOLS}:sleepy", DATA, {"seconds": 60, "pid_file": str(pid_file)}, timeout=1, memory_mb=200)

    answered_after, cpu_while_running = time.monotonic() - started, time.process_time() - cpu_started
    worker_pid = int(pid_file.read_text())
    assert not Path(f"/proc/{worker_pid}").exists()  # killed and reaped: not even a zombie
    cpu_before = time.process_time()
    time.sleep(5)
    cpu_after_kill = time.process_time() - cpu_before
    assert answered_after < 3
    assert cpu_while_running < 0.3
    assert cpu_after_kill < 0.5
    started = time.monotonic()
    assert echo()["rows"] == 2
    assert time.monotonic() - started < 0.25  # the replacement was started in the background meanwhile
    figures(
        f"sandbox: 1 s limit answered after {answered_after:.3f} s; server CPU meanwhile {cpu_while_running:.3f} s, "
        f"in the 5 s after {cpu_after_kill:.3f} s"
    )


def test_on_wait_is_called_while_the_tool_runs():
    echo()
    beats: list[int] = []
    started = time.monotonic()

    run_tool(
        f"{TOOLS}:sleepy",
        DATA,
        {"seconds": 1},
        timeout=10,
        memory_mb=200,
        on_wait=lambda: beats.append(1),
        wait_interval=0.2,
    )

    assert 3 <= len(beats) <= 1 + (time.monotonic() - started) / 0.2


def test_a_run_that_eats_memory_is_stopped_at_its_limit():
    echo()
    rss_before = rss_mb()
    started = time.monotonic()

    with pytest.raises(ToolOutOfMemory, match=r"exceeded the memory limit of 200 MB"):
        run_tool(f"{TOOLS}:hog", DATA, {}, timeout=20, memory_mb=200)

    assert time.monotonic() - started < 5
    assert rss_mb() - rss_before < 50
    assert echo()["rows"] == 2


@pytest.mark.parametrize(("how", "described"), [("segv", "killed by signal SIGSEGV"), ("exit", "exit code 3")])
def test_a_crashing_worker_is_reported_and_replaced(how, described):
    with pytest.raises(ToolCrashed, match=described):
        run_tool(f"{TOOLS}:crash", DATA, {"how": how}, timeout=10, memory_mb=200)
    assert echo()["rows"] == 2


def test_a_crash_after_using_most_of_the_budget_counts_as_out_of_memory():
    # The kernel's peak-RSS figure for the worker starts at ours (exec inherits it): go above it.
    touch_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + 300
    with pytest.raises(ToolOutOfMemory):
        run_tool(f"{TOOLS}:crash", DATA, {"touch_mb": touch_mb}, timeout=10, memory_mb=touch_mb + 200)


def test_an_exception_in_the_tool_is_a_failure_and_the_worker_is_kept():
    pid = echo()["pid"]
    with pytest.raises(ToolFailed) as failure:
        run_tool(f"{TOOLS}:boom", DATA, {}, timeout=10, memory_mb=200)
    assert str(failure.value) == "ValueError: bad input"
    assert echo()["pid"] == pid


def test_stray_output_from_a_tool_does_not_corrupt_the_protocol():
    assert run_tool(f"{TOOLS}:chatty", DATA, {}, timeout=10, memory_mb=200) == {"ok": True}
    assert echo({"after": "chatty"})["config"] == {"after": "chatty"}


def test_concurrent_runs_each_get_their_own_result():
    echo()  # at least one idle worker: it must go to one run only
    barrier = threading.Barrier(4)
    results: dict[int, dict] = {}

    def run(n: int) -> None:
        data = {**DATA, "rows": [{"a": str(i), "b": None} for i in range(n)]}
        barrier.wait()
        results[n] = echo({"n": n, "pause": 0.2}, data)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert {n: (r["rows"], r["config"]["n"]) for n, r in results.items()} == {n: (n, n) for n in range(1, 5)}
    assert len({r["pid"] for r in results.values()}) == 4
    assert wait_until(lambda: len(worker_pids()) <= sandbox.MAX_IDLE_WORKERS, 3)


def test_a_forked_child_starts_its_own_workers():
    ours = echo()["pid"]
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write_end, str(echo()["pid"]).encode())
            sandbox.shutdown()
        finally:
            os._exit(0)
    os.close(write_end)
    theirs = int(os.read(read_end, 100) or 0)
    os.close(read_end)
    os.waitpid(child, 0)

    assert theirs not in (0, ours)
    assert echo()["pid"] == ours  # the child neither took nor killed our worker


def test_a_worker_dies_with_its_parent(tmp_path, figures):
    pid_file = tmp_path / "pid"
    parent_code = (
        "import sys, threading, time\n"
        "from agents import sandbox\n"
        "payload = {'columns': ['a'], 'rows': [], 'source_format': 'rows'}\n"
        "args = ('tests.sandbox_tools:sleepy', payload, {'seconds': 60, 'pid_file': sys.argv[1]})\n"
        "kwargs = {'timeout': 120, 'memory_mb': 100}\n"
        "threading.Thread(target=sandbox.run_tool, args=args, kwargs=kwargs, daemon=True).start()\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(pid_file)], cwd=ROOT)
    try:
        worker_pid = int(wait_for_file(pid_file, 15))
        assert not gone(worker_pid)
    finally:
        parent.kill()
        parent.wait()
    killed_at = time.monotonic()

    while not gone(worker_pid) and time.monotonic() - killed_at < 3:
        time.sleep(0.05)

    assert gone(worker_pid), "the worker outlived its parent"
    figures(f"sandbox: worker exited {time.monotonic() - killed_at:.2f} s after its parent was SIGKILLed")


def test_a_worn_out_worker_serves_until_its_successor_is_ready(monkeypatch):
    monkeypatch.setattr(sandbox, "MAX_RUNS_PER_WORKER", 2)
    sandbox.shutdown()
    first = echo()["pid"]
    assert echo()["pid"] == first  # its second run wears it out: a successor starts in the background
    started = time.monotonic()
    assert echo()["pid"] == first  # served at once by the retiring worker, not after an interpreter start
    assert time.monotonic() - started < 0.5
    deadline = time.monotonic() + 30
    while (pid := echo()["pid"]) == first and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid != first  # the successor took over
    time.sleep(0.2)
    assert gone(first)


def test_workers_do_not_see_the_servers_secrets(monkeypatch):
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_must_not_leak")
    monkeypatch.setenv("DATABASE_URL", "mysql://root:pw@db/prod")
    sandbox.shutdown()  # workers started from now on inherit the environment above, filtered
    seen = run_tool(f"{TOOLS}:environment", DATA, {}, timeout=10, memory_mb=200)
    assert "STRIPE_API_KEY" not in seen and "DATABASE_URL" not in seen and "SECRET_KEY" not in seen
    assert seen.get("OPENBLAS_NUM_THREADS") == "1"
