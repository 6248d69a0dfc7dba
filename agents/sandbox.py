"""Run agent tools in separate, killable worker processes with hard time and memory limits.

Why: a tool is plain data code (pandas, rapidfuzz, …) fed with user data. Run in a thread of
the web server, a runaway run cannot be stopped: after its timeout it keeps burning CPU and
memory inside the server. Here every run happens in a worker process that

- is SIGKILLed when the wall-clock limit passes (the caller gets `ToolTimedOut` on time),
- runs under an address-space limit (RLIMIT_AS) of its idle size plus `memory_mb`, so an
  allocation beyond the budget fails inside the worker (`ToolOutOfMemory`), not in the server,
- cannot corrupt the server's state, and exits when the server dies (even by SIGKILL).

Workers are pre-started and reused (importing pandas costs about a second): each process
keeps a small pool, and a replacement is started in the background after a worker is killed.

Protocol: frames of an 8-byte big-endian length and a body. The parent sends a pickle of
(tool, payload, config, memory_mb) – the trusted direction. The worker only ever answers in
JSON, which the parent decodes with `json.loads`: nothing a worker sends is unpickled.

The worker (`python -m agents.sandbox`) imports the tool modules, which are plain data code
(no Django, no DRF: an import-linter contract keeps them so); it never touches a database.
This module itself imports only the standard library and `agents.tools.dataset` (also standard
library only), so `config.celery` can import it before Django is set up.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import math
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from agents.tools.dataset import Dataset

logger = logging.getLogger("agents.sandbox")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRELOADED_TOOLS = ("agents.tools.profile", "agents.tools.clean", "agents.tools.master")
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Tools work on user data and need no credentials: the server's secrets stay out of their processes.
_SECRET_MARKERS = ("SECRET", "KEY", "TOKEN", "PASSWORD", "DATABASE_URL", "BROKER", "CACHE_URL", "DSN")


def _environment_without_secrets() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not any(m in name.upper() for m in _SECRET_MARKERS)}


START_TIMEOUT = 30.0  # seconds for a new worker to import the tools and say it is ready
MAX_IDLE_WORKERS = 2
MAX_RUNS_PER_WORKER = 200
MAX_RSS_GROWTH_KB = 256 * 1024  # retire a worker whose resident size grew this much since it started
ORPHAN_CHECK_INTERVAL = 0.5
ERROR_MAX_CHARS = 1000
EXIT_OUT_OF_MEMORY = 86  # a worker's exit code after a MemoryError outside a run
EXIT_ORPHANED = 87

_HEADER = struct.Struct(">Q")
_READY_MAX_BYTES = 2**20
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_MEMORY_SIGNALS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS}


class ToolError(Exception):
    """A tool run did not produce a result; `str(exc)` is a sentence a user can read."""


class ToolFailed(ToolError):
    """The tool raised an exception; the message is "ExcClass: message"."""


class ToolTimedOut(ToolError):
    """The run passed its wall-clock limit and its worker was killed."""


class ToolOutOfMemory(ToolError):
    """The run needed more memory than its limit."""


class ToolCrashed(ToolError):
    """The worker process died unexpectedly, or could not be started."""


# ---------------------------------------------------------------------------------------------
# Framing (both sides)
# ---------------------------------------------------------------------------------------------


def _frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


def _statm_kb() -> tuple[int, int]:
    """(virtual size, resident size) of this process in KiB."""
    with open("/proc/self/statm") as statm:
        vsize_pages, rss_pages = statm.read().split()[:2]
    return int(vsize_pages) * _PAGE_KB, int(rss_pages) * _PAGE_KB


# ---------------------------------------------------------------------------------------------
# Worker side: `python -m agents.sandbox`
# ---------------------------------------------------------------------------------------------


def _exit_when_orphaned(parent_pid: int) -> None:
    """Watchdog thread: when the parent dies (even by SIGKILL) we are reparented; then exit."""
    while True:
        time.sleep(ORPHAN_CHECK_INTERVAL)
        if os.getppid() != parent_pid:
            os._exit(EXIT_ORPHANED)


def _protocol_streams() -> tuple[BinaryIO, BinaryIO]:
    """Move the protocol off fds 0/1, so a tool's stray print() or input() cannot corrupt it."""
    request_fd, response_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # prints end up in the server's log
    sys.stdout.reconfigure(line_buffering=True)
    return os.fdopen(request_fd, "rb"), os.fdopen(response_fd, "wb")


def _read_request(stream: BinaryIO) -> bytes | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None  # EOF: the parent closed the pipe or died
    (length,) = _HEADER.unpack(header)
    body = stream.read(length)
    return body if len(body) == length else None


def _write_response(stream: BinaryIO, response: dict[str, Any] | bytes) -> None:
    body = response if isinstance(response, bytes) else json.dumps(response).encode()
    stream.write(_frame(body))
    stream.flush()


def _resolve(tool: str) -> Callable[..., Any]:
    module_name, _, function_name = tool.partition(":")
    return getattr(importlib.import_module(module_name), function_name or "run")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]


def _run_limited(tool: str, payload: dict, config: dict, memory_mb: int) -> bytes:
    """Run the tool with at most `memory_mb` more address space; its JSON response, encoded.

    The result is encoded while the limit still applies, so an oversized result is a memory error too.
    """
    function = _resolve(tool)
    dataset = Dataset.from_message(payload)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _statm_kb()[0] * 1024 + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        result = function(dataset, config)
        return _strict_json({"ok": True, "result": result, "rss_kb": _statm_kb()[1]})
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _strict_json(response: dict[str, Any]) -> bytes:
    """JSON as the API must serve it: a non-finite number a tool produced (an overflowing mean,
    an infinite input) becomes null, never `Infinity`/`NaN` that no strict client can read."""
    try:
        return json.dumps(response, default=str, allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(response), default=str, allow_nan=False).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _handle(request: bytes) -> tuple[bytes | dict[str, Any], bool]:
    """The response to one request, and whether this worker must retire after sending it."""
    tool, payload, config, memory_mb = pickle.loads(request)
    _reset_peak_rss()
    try:
        return _run_limited(tool, payload, config, memory_mb), False
    except MemoryError:  # the limit is lifted again by now
        return {"ok": False, "kind": "memory", "error": f"The tool needed more than {memory_mb} MB."}, True
    except BaseException as exc:  # a tool's sys.exit() is its failure too, not the worker's
        return {"ok": False, "kind": "exception", "error": _describe(exc), "rss_kb": _statm_kb()[1]}, False


def _reset_peak_rss() -> None:
    """Reset the peak resident size, so a crash is judged by this run's memory use (see `_near_limit`)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def serve() -> None:
    """The worker loop: answer requests until the parent closes the pipe or dies."""
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True, name="orphan-check").start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on a dev server is for the server; it ends us
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    requests, responses = _protocol_streams()
    for module in PRELOADED_TOOLS:
        importlib.import_module(module)
    vsize_kb, rss_kb = _statm_kb()
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ready = {"ok": True, "ready": True, "rss_kb": rss_kb, "vsize_kb": vsize_kb, "maxrss_kb": maxrss_kb}
    _write_response(responses, ready)
    try:
        while (request := _read_request(requests)) is not None:
            response, retire = _handle(request)
            _write_response(responses, response)
            if retire:
                return
    except MemoryError:
        os._exit(EXIT_OUT_OF_MEMORY)
    except BrokenPipeError:
        os._exit(EXIT_ORPHANED)  # the server died while we worked: nobody to answer


# ---------------------------------------------------------------------------------------------
# Parent side: talking to one worker
# ---------------------------------------------------------------------------------------------


class _DeadlinePassed(Exception):
    pass


class _WorkerGone(Exception):
    """End of file or a broken pipe: the worker exited."""


class _BadResponse(Exception):
    """The worker sent something other than a JSON object."""


class _ResponseTooLarge(_BadResponse):
    """The worker announced a response larger than the run's memory budget."""


class _Heartbeat:
    """Calls `on_wait` every `interval` seconds while a caller waits for a worker (e.g. to renew a lease)."""

    def __init__(self, on_wait: Callable[[], object] | None = None, interval: float = 1.0) -> None:
        self._on_wait = on_wait
        self._interval = interval
        self._next = time.monotonic() + interval

    def seconds_to_next(self) -> float | None:
        return None if self._on_wait is None else max(self._next - time.monotonic(), 0.0)

    def beat_if_due(self) -> None:
        if self._on_wait is not None and time.monotonic() >= self._next:
            self._next = time.monotonic() + self._interval
            self._on_wait()


_NO_HEARTBEAT = _Heartbeat()


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen[bytes]
    start_rss_kb: int = 0
    maxrss_floor_kb: int = 0  # the kernel's peak-RSS figure when it started (see `_near_limit`)
    runs: int = 0
    retiring: bool = False  # worn out: serves only until its successor is ready
    stopped: bool = False  # killed by shutdown(), not because of its tool
    rusage: resource.struct_rusage | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, grace: float = 0.0) -> None:
        """Reap the worker, SIGKILLing it unless it exits within `grace` seconds; no zombie is left."""
        deadline = time.monotonic() + grace
        while not self._reap(os.WNOHANG) and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.process.returncode is None:
            os.kill(self.pid, signal.SIGKILL)  # not Popen.kill(): its poll() would reap and lose our rusage
            self._reap(0)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()

    def _reap(self, options: int) -> bool:
        """wait4() the worker, keeping its resource usage (the peak RSS); True once it has exited."""
        if self.process.returncode is None:
            try:
                pid, status, rusage = os.wait4(self.pid, options)
            except ChildProcessError:  # SIGCHLD ignored: the kernel reaped it, the status is lost
                self.process.returncode = 0
                return True
            if pid == 0:
                return False
            self.process.returncode, self.rusage = os.waitstatus_to_exitcode(status), rusage
        return True


def _send(fd: int, data: bytes, deadline: float, heartbeat: _Heartbeat) -> None:
    view = memoryview(data)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while view:
        _wait(poller, deadline, heartbeat)
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue
        except BrokenPipeError:
            raise _WorkerGone from None


def _receive(fd: int, deadline: float, max_bytes: int, heartbeat: _Heartbeat) -> dict[str, Any]:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    (length,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, poller, deadline, heartbeat))
    if length > max_bytes:
        raise _ResponseTooLarge
    try:
        response = json.loads(_read_exactly(fd, length, poller, deadline, heartbeat))
    except ValueError:
        raise _BadResponse from None
    if not isinstance(response, dict):
        raise _BadResponse
    return response


def _read_exactly(fd: int, size: int, poller: select.poll, deadline: float, heartbeat: _Heartbeat) -> bytearray:
    data = bytearray()
    while len(data) < size:
        _wait(poller, deadline, heartbeat)
        try:
            chunk = os.read(fd, min(size - len(data), 2**20))
        except BlockingIOError:
            continue
        if not chunk:
            raise _WorkerGone
        data += chunk
    return data


def _wait(poller: select.poll, deadline: float, heartbeat: _Heartbeat) -> None:
    """Block (using no CPU) until the fd is ready or the deadline passes; beat the heartbeat meanwhile."""
    while True:
        remaining, to_next_beat = deadline - time.monotonic(), heartbeat.seconds_to_next()
        timeout = remaining if to_next_beat is None else min(remaining, to_next_beat)
        if timeout > 0 and poller.poll(max(1, math.ceil(timeout * 1000))):
            return
        heartbeat.beat_if_due()
        if time.monotonic() >= deadline:
            raise _DeadlinePassed


def _start_worker(heartbeat: _Heartbeat = _NO_HEARTBEAT) -> _Worker:
    """Start a worker and wait until it has imported the tools; ToolCrashed if it cannot."""
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "agents.sandbox"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            cwd=PROJECT_ROOT,
            env={**_environment_without_secrets(), **WORKER_ENV},
            bufsize=0,
        )
    except OSError as exc:
        raise ToolCrashed(f"The tool worker could not be started ({exc}).") from exc
    worker = _Worker(process)
    os.set_blocking(process.stdin.fileno(), False)
    os.set_blocking(process.stdout.fileno(), False)
    try:
        ready = _receive(process.stdout.fileno(), time.monotonic() + START_TIMEOUT, _READY_MAX_BYTES, heartbeat)
    except (_DeadlinePassed, _WorkerGone, _BadResponse):
        worker.stop(grace=0.1)
        raise ToolCrashed(
            f"The tool worker could not be started ({_exit_description(process.returncode)}); see the server log."
        ) from None
    except BaseException:  # e.g. from the heartbeat's callback
        worker.stop()
        raise
    worker.start_rss_kb = int(ready.get("rss_kb", 0))
    worker.maxrss_floor_kb = int(ready.get("maxrss_kb", 0))
    return worker


def _exit_description(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _death_error(worker: _Worker, memory_mb: int) -> ToolError:
    """Why a worker died mid-run: memory exhaustion when plausible, otherwise a crash."""
    returncode = worker.process.returncode
    if worker.stopped:
        return ToolCrashed("The tool was stopped because the server is shutting down.")
    if returncode == EXIT_OUT_OF_MEMORY or (
        returncode is not None and -returncode in _MEMORY_SIGNALS and _near_limit(worker, memory_mb)
    ):
        return _out_of_memory(memory_mb)
    return ToolCrashed(f"The tool's worker process died unexpectedly ({_exit_description(returncode)}).")


def _near_limit(worker: _Worker, memory_mb: int) -> bool:
    """Did the run's resident size grow by at least half its budget before the worker died?

    Failed allocations that do not become a MemoryError end in SIGSEGV/SIGABRT/SIGBUS (C code
    that does not check malloc) or SIGKILL (the kernel's OOM killer). The peak comes from wait4();
    the worker resets it per run, but the kernel's figure starts at the *spawning* process's peak
    (exec inherits it), so it says something only when it rose above the floor seen at start.
    """
    peak_kb = worker.rusage.ru_maxrss if worker.rusage else 0
    return peak_kb > worker.maxrss_floor_kb and peak_kb - worker.start_rss_kb >= memory_mb * 1024 // 2


def _out_of_memory(memory_mb: int) -> ToolOutOfMemory:
    return ToolOutOfMemory(f"The tool exceeded the memory limit of {memory_mb} MB and was stopped.")


# ---------------------------------------------------------------------------------------------
# Parent side: the pool of this process
# ---------------------------------------------------------------------------------------------


class _Pool:
    """Idle workers of one process. Thread-safe; a run holds its worker exclusively."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._starting = 0  # background starts in flight
        self._waiting = 0  # runs waiting for one of those
        self._generation = 0  # bumped by shutdown(): starts begun before it are discarded

    def acquire(self, heartbeat: _Heartbeat = _NO_HEARTBEAT) -> _Worker:
        """An idle worker, one being started in the background, or a newly started one."""
        while True:
            with self._cond:
                if self._idle:
                    fresh = [w for w in self._idle if not w.retiring]
                    worker = fresh[-1] if fresh else self._idle[-1]
                    self._idle.remove(worker)
                    self._busy.add(worker)
                    return worker
                if self._waiting >= self._starting:
                    break  # no background start left for us: start our own
                self._waiting += 1
                try:
                    self._cond.wait(heartbeat.seconds_to_next())
                finally:
                    self._waiting -= 1
            heartbeat.beat_if_due()  # outside the lock
        worker = _start_worker(heartbeat)
        with self._cond:
            self._busy.add(worker)
        return worker

    def release(self, worker: _Worker, rss_kb: int) -> None:
        """Back to the idle list after a completed run, unless it is worn out or not needed."""
        worker.runs += 1
        worn_out = worker.runs >= MAX_RUNS_PER_WORKER or rss_kb - worker.start_rss_kb > MAX_RSS_GROWTH_KB
        start_successor = False
        with self._cond:
            self._busy.discard(worker)
            if not worn_out and len(self._idle) < MAX_IDLE_WORKERS:
                self._idle.append(worker)
                self._cond.notify_all()
                return
            if worn_out and not self._starting and not any(not w.retiring for w in self._idle):
                # Keep serving with it until the successor has started: no run waits for an interpreter.
                worker.retiring = True
                self._idle.append(worker)
                self._cond.notify_all()
                self._starting += 1
                start_successor, generation = True, self._generation
        if start_successor:
            threading.Thread(
                target=self._start_in_background, args=(generation,), daemon=True, name="sandbox-successor"
            ).start()
            return
        worker.stop()
        if worn_out:
            self.warm()

    def discard(self, worker: _Worker, grace: float = 0.0) -> None:
        """Kill (or reap) a worker that is dead, stuck or out of memory; pre-start its replacement."""
        with self._cond:
            self._busy.discard(worker)
        worker.stop(grace)
        self.warm()

    def warm(self) -> None:
        """Start one worker in the background unless one is idle or already starting."""
        with self._cond:
            if self._idle or self._starting:
                return
            self._starting += 1
            generation = self._generation
        threading.Thread(target=self._start_in_background, args=(generation,), daemon=True, name="sandbox-warm").start()

    def _start_in_background(self, generation: int) -> None:
        worker: _Worker | None = None
        try:
            worker = _start_worker()
        except Exception:
            logger.exception("Could not pre-start a tool worker")
        finally:
            retired: list[_Worker] = []
            with self._cond:
                self._starting -= 1
                if worker and generation == self._generation:
                    retired = [w for w in self._idle if w.retiring]
                    self._idle = [w for w in self._idle if not w.retiring]
                    if len(self._idle) < MAX_IDLE_WORKERS:
                        self._idle.append(worker)
                        worker = None
                self._cond.notify_all()
        for old_worker in retired:
            old_worker.stop()
        if worker:
            worker.stop()

    def shutdown(self) -> None:
        """Kill all workers; a run in progress gets ToolCrashed (its own thread reaps the worker)."""
        with self._cond:
            idle, self._idle = self._idle, []
            busy = list(self._busy)
            self._generation += 1
        for worker in busy:  # not reaped here: wait4() belongs to the thread running it
            worker.stopped = True
            if worker.process.returncode is None:
                os.kill(worker.pid, signal.SIGKILL)
        for worker in idle:
            worker.stop()

    def forget(self) -> None:
        """In a forked child: close our copies of the parent's pipes, leave its workers alone."""
        for worker in [*self._idle, *self._busy]:
            for pipe in (worker.process.stdin, worker.process.stdout):
                if pipe is not None:
                    pipe.close()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _current_pool() -> _Pool:
    """This process's pool; a forked child never uses (or kills) its parent's workers."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = _Pool()
        return _pool


def _after_fork_in_child() -> None:
    global _pool, _pool_lock
    _pool_lock = threading.Lock()  # another thread may have held it at the fork
    if _pool is not None:
        _pool.forget()
    _pool = None


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def run_tool(
    tool: str,
    payload: dict,
    config: dict,
    *,
    timeout: float,
    memory_mb: int,
    on_wait: Callable[[], object] | None = None,
    wait_interval: float = 1.0,
) -> dict:
    """Run `tool` ("pkg.module" or "pkg.module:function", default `run`) on the payload's dataset.

    `payload` is {"columns", "rows", "source_format"}; `timeout` is the wall-clock limit in seconds
    (a cold pool first spends about a second starting a worker, not counted), `memory_mb` what the
    run may allocate on top of an idle worker. Returns the tool's result as plain JSON data;
    raises a `ToolError` subclass when there is none.

    `on_wait`, if given, is called in this thread every `wait_interval` seconds while the run
    waits (for a worker, then for the tool); an exception from it stops the run and propagates.
    """
    request = _frame(pickle.dumps((tool, payload, config, memory_mb), protocol=pickle.HIGHEST_PROTOCOL))
    heartbeat = _Heartbeat(on_wait, wait_interval)
    pool = _current_pool()
    worker = pool.acquire(heartbeat)
    try:
        response = _exchange(worker, request, time.monotonic() + timeout, memory_mb, heartbeat)
    except (_DeadlinePassed, _WorkerGone, _BadResponse) as problem:
        # EOF normally means it died: give it a moment to finish dying before the SIGKILL.
        pool.discard(worker, grace=1.0 if isinstance(problem, _WorkerGone) else 0.0)
        raise _error_for(problem, worker, timeout, memory_mb) from None
    except BaseException:
        pool.discard(worker)
        raise
    return _outcome(pool, worker, response, memory_mb)


def _exchange(
    worker: _Worker, request: bytes, deadline: float, memory_mb: int, heartbeat: _Heartbeat
) -> dict[str, Any]:
    _send(worker.process.stdin.fileno(), request, deadline, heartbeat)
    return _receive(worker.process.stdout.fileno(), deadline, (memory_mb + 1) * 2**20, heartbeat)


def _error_for(problem: Exception, worker: _Worker, timeout: float, memory_mb: int) -> ToolError:
    if isinstance(problem, _DeadlinePassed):
        return ToolTimedOut(f"The tool took longer than {timeout:g} s and was stopped.")
    if isinstance(problem, _ResponseTooLarge):
        return _out_of_memory(memory_mb)
    if isinstance(problem, _BadResponse):
        return ToolCrashed("The tool's worker sent an unreadable response and was stopped.")
    return _death_error(worker, memory_mb)


def _outcome(pool: _Pool, worker: _Worker, response: dict[str, Any], memory_mb: int) -> dict:
    if response.get("ok"):
        pool.release(worker, int(response.get("rss_kb", 0)))
        return response.get("result")
    if response.get("kind") == "memory":
        pool.discard(worker)
        raise _out_of_memory(memory_mb)
    pool.release(worker, int(response.get("rss_kb", 0)))
    raise ToolFailed(str(response.get("error", "The tool failed.")))


def warm() -> None:
    """Pre-start one idle worker for this process, in the background."""
    _current_pool().warm()


def shutdown() -> None:
    """Kill every worker of this process."""
    with _pool_lock:
        pool = _pool if _pool is not None and _pool.pid == os.getpid() else None
    if pool is not None:
        pool.shutdown()


atexit.register(shutdown)
os.register_at_fork(after_in_child=_after_fork_in_child)


if __name__ == "__main__":
    serve()
