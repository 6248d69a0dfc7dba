"""Chaos: SIGKILL the serving process at random points of agent runs, then recover and reconcile.

Each victim is a fork of this process (Django set up, the test database, its own sandbox pool)
that serves one to three agent runs – synchronous (`POST /api/profile-my-data`) or asynchronous
(`start_run` as the web request, then `execute_stored_run` as the Celery task would) – and is
SIGKILLed during its last run at one of these points:

- after the hold (the hold and the run's row are committed; the tool has not started),
- during the tool (a timer thread, while the sandboxed tool runs and the lease renews the hold),
- between settle and response (capture or release returned; nobody has been told),
- after the finish (the response was produced / the task returned, before it could be acked),
- at a random time (a timer at a uniform delay: mostly a worker's start or the tool, sometimes
  the request's own work),
- inside a money statement (a timer a few milliseconds into the hold or the capture/release: the
  server may finish and commit the statement of a client that is already dead, or never see it).

Meanwhile a sweeper process runs `expire_due_holds` and is SIGKILLed too, sometimes inside an
expiry's transaction. After each death the parent redelivers the dead process's task messages
(at least once, as Celery does with late acks: sometimes at once, always again at the end),
waits out the hold TTL, expires what is due, and checks the money: every run final, the charges
equal the succeeded runs' `credits_charged`, nothing held, the balance is the grant minus the
charges, what each client was told agrees with the ledger, `reconcile()` finds no drift.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.db.models import Max, Sum
from django.utils import timezone

from agents import runner, sandbox
from agents.models import AgentRun, RunStatus
from billing import ledger
from billing.holds import expire_due_holds
from billing.models import CreditHold, CreditTransaction, HoldStatus, TransactionKind, Wallet
from billing.reconcile import reconcile
from tests.conftest import bearer_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("agent_costs")]

PROFILE = "profile-my-data"  # costs 25
COST = 25
NAP = "tests.sandbox_tools:nap"  # the victims' tool: sleeps the row's `pause`, fails if `fail`
ECHO = "tests.sandbox_tools:echo"  # the parent's redeliveries: instant
GRANT = 100_000
VICTIMS = 102  # each one is SIGKILLed once
AT_ONCE = 3  # victims alive at a time: a sandbox start is CPU, a tool here only sleeps
TTL = 2.0  # BILLING_HOLD_TTL: a lease beat every TTL/3
CHILD_TIMEOUT = 30.0
SEED = int(os.environ.get("CHAOS_SEED") or time.time_ns() % 1_000_000)

AFTER_HOLD = "after the hold"
DURING_TOOL = "during the tool"
AFTER_SETTLE = "between settle and response"
AFTER_FINISH = "after the finish"
AT_RANDOM = "at a random time"
IN_STATEMENT = "inside a money statement"
POINTS = (AFTER_HOLD, DURING_TOOL, AFTER_SETTLE, AFTER_FINISH, AT_RANDOM, IN_STATEMENT)
STATEMENT_SECONDS = 0.004  # a hold or a capture takes a few milliseconds here
FINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.EXPIRED)
EMPTY = {"columns": [], "rows": [], "source_format": "rows"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Run:
    key: str  # the idempotency key: chaos-<victim>-<number>-<mode>
    mode: str  # "sync" (HTTP API) or "async" (stored input, run as the task)
    pause: float
    fail: bool

    @property
    def rows(self) -> list[dict]:
        return [{"pause": self.pause, "fail": self.fail}]


@dataclass(frozen=True)
class Victim:
    index: int
    runs: tuple[Run, ...]
    point: str  # where its last run is killed
    fraction: float  # where in its window a timer fires
    redeliver_at_once: bool  # its task messages come back at once (else only at the end)


def plan_victims(rng: random.Random) -> list[Victim]:
    points = [POINTS[i % len(POINTS)] for i in range(VICTIMS)]
    rng.shuffle(points)
    victims = []
    for index, point in enumerate(points):
        fraction = rng.random()
        # A victim killed before its first tool starts no sandbox worker (a second of CPU each).
        before_tool = point == AFTER_HOLD or (point == IN_STATEMENT and fraction < 0.5)
        runs = []
        for number in range(1 if before_tool else rng.randint(1, 3)):
            mode = rng.choice(("sync", "async"))
            # Mostly short; some longer than a lease beat (TTL / 3), so renewals are killed too.
            pause = rng.uniform(0.75, 1.1) if rng.random() < 0.15 else rng.uniform(0.05, 0.35)
            runs.append(Run(f"chaos-{index}-{number}-{mode}", mode, round(pause, 3), rng.random() < 0.25))
        victims.append(Victim(index, tuple(runs), point, fraction, rng.random() < 0.5))
    return victims


# --- inside a victim (a forked child: it never returns into pytest) ------------------------------------


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state, ppid, …, starttime at index 19); None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def sandbox_workers_of(pid: int) -> dict[str, float]:
    """The live sandbox workers whose parent is `pid`: "pid:starttime" (robust to pid reuse) → CPU seconds."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (fields := _stat(entry.name)) is None:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            try:
                if b"agents.sandbox" in (entry / "cmdline").read_bytes():
                    found[f"{entry.name}:{fields[19]}"] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            except OSError:
                continue
    return found


def still_running(worker: str) -> bool:
    pid, starttime = worker.split(":")
    fields = _stat(pid)
    return fields is not None and fields[19] == starttime and fields[0] != "Z"


class Doomed:
    """A forked process that reports to `out` (one line per event) and dies by SIGKILL."""

    def __init__(self, out: Path):
        self.fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.phase = "starting"
        self.dying = threading.Lock()  # a timer and the main thread may both decide to die

    def log(self, *fields) -> None:
        os.write(self.fd, ("\t".join(str(f) for f in fields) + "\n").encode())

    def die(self, point: str) -> None:
        if not self.dying.acquire(blocking=False):
            time.sleep(60)  # the other one is killing us
        phase = self.phase
        workers = sandbox_workers_of(os.getpid())
        own = os.times()
        self.log("killed", point, phase, own.user + own.system + sum(workers.values()), *workers)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # not reached

    def die_in(self, seconds: float, point: str) -> None:
        threading.Thread(target=lambda: (time.sleep(seconds), self.die(point)), daemon=True).start()


def live_and_die(doomed_body) -> None:
    """The forked child's whole life: never returns, ends by SIGKILL (or exit code 1 on an error)."""
    try:
        doomed_body()
    except BaseException:
        with open(os.environ["CHAOS_ERRORS"], "a") as errors:
            errors.write(f"--- process {os.getpid()}\n{traceback.format_exc()}\n")
    finally:
        os._exit(1)


class RunVictim(Doomed):
    def __init__(self, victim: Victim, client, user_id: int, out: Path):
        super().__init__(out)
        self.victim, self.client, self.user_id = victim, client, user_id
        self.armed: str | None = None
        self.warm = False

    def play(self) -> None:
        sys.setswitchinterval(1e-4)  # a timer thread gets the GIL within 0.1 ms, not 5 ms
        runner.TOOLS[PROFILE] = NAP
        self._instrument()
        last = len(self.victim.runs) - 1
        for number, run in enumerate(self.victim.runs):
            if number == last:
                self._arm(run)
            self.phase = "before the hold"
            self._sync(run) if run.mode == "sync" else self._async(run)
        # A timer that has not fired yet (the run was quicker): the process dies after its finish.
        self.die(self.armed)

    def _arm(self, run: Run) -> None:
        point = self.armed = self.victim.point
        if point == DURING_TOOL and not self.warm:
            # A worker ready to take the run at once, so the timer measures the tool, not a start.
            self.original_run_tool(ECHO, EMPTY, {}, timeout=30, memory_mb=200)
            self.warm = True
        if point == AT_RANDOM:
            window = 0.1 + run.pause + (0.0 if self.warm else 1.0)
            self.die_in(self.victim.fraction * window, point)

    def _instrument(self) -> None:
        start_run, run_tool, execute_run = runner.start_run, sandbox.run_tool, runner.execute_run
        hold, capture, release = ledger.hold, ledger.capture, ledger.release
        self.original_run_tool = run_tool
        # IN_STATEMENT: the first half of the fractions kill in the hold, the second in the settle.
        in_hold, delay = self.victim.fraction < 0.5, (self.victim.fraction * 2) % 1 * STATEMENT_SECONDS

        def holding(**kwargs):
            if self.armed == IN_STATEMENT and in_hold:
                self.die_in(delay, IN_STATEMENT)
            return hold(**kwargs)

        def held(**kwargs):
            self.phase = "holding"
            run = start_run(**kwargs)
            self.phase = "held"
            if self.armed == AFTER_HOLD:
                self.die(AFTER_HOLD)
            return run

        def in_tool(tool, payload, config, **kwargs):
            self.phase = "in the tool" if self.warm else "starting a sandbox worker, then the tool"
            if self.armed == DURING_TOOL:
                self.die_in(self.victim.fraction * payload["values"]["pause"][0], DURING_TOOL)
            try:
                return run_tool(tool, payload, config, **kwargs)
            finally:
                self.warm = True
                self.phase = "tool returned"

        def settled(verb):
            def settle(**kwargs):
                self.phase = "settling"
                if self.armed == IN_STATEMENT and not in_hold:
                    self.die_in(delay, IN_STATEMENT)
                result = verb(**kwargs)
                self.phase = "settled"
                if self.armed == AFTER_SETTLE:
                    self.die(AFTER_SETTLE)
                return result

            return settle

        def executed(**kwargs):
            run = execute_run(**kwargs)
            self.phase = "finished"
            return run

        runner.start_run, sandbox.run_tool, runner.execute_run = held, in_tool, executed
        ledger.hold, ledger.capture, ledger.release = holding, settled(capture), settled(release)

    def _sync(self, run: Run) -> None:
        body = {"tool_configuration": {}, "data": {"rows": run.rows}}
        response = self.client.post("/api/profile-my-data", body, format="json", HTTP_IDEMPOTENCY_KEY=run.key)
        self.phase = "responded"
        payload = response.json()
        if response.status_code not in (200, 422):
            raise AssertionError(f"{response.status_code}: {payload}")
        self.log("told", run.key, payload["status"], payload["receipt"]["credits_charged"])
        if self.armed == AFTER_FINISH:
            self.die(AFTER_FINISH)

    def _async(self, run: Run) -> None:
        queued = runner.start_run(
            user_id=self.user_id,
            agent_id=PROFILE,
            configuration={},
            input_rows=1,
            idempotency_key=run.key,
            input_payload={"columns": ["pause", "fail"], "rows": run.rows, "source_format": "rows"},
        )
        self.phase = "queued"
        finished = runner.execute_stored_run(run_id=str(queued.id))
        self.phase = "task returned"
        self.log("told", run.key, finished.status, finished.credits_charged)
        if self.armed == AFTER_FINISH:
            self.die(AFTER_FINISH)


class SweeperVictim(Doomed):
    """`expire_holds` on a beat, killed after `lifetime` or (when `mid_expiry`) inside an expiry's
    transaction: after the hold's release, before the run's end and the commit."""

    def __init__(self, out: Path, lifetime: float, mid_expiry: bool):
        super().__init__(out)
        self.lifetime, self.mid_expiry = lifetime, mid_expiry

    def play(self) -> None:
        release = ledger.release

        def releasing(**kwargs):
            hold = release(**kwargs)
            if self.mid_expiry and kwargs.get("status") == HoldStatus.EXPIRED:
                self.die("sweeper, inside an expiry")
            return hold

        ledger.release = releasing
        self.die_in(self.lifetime, "sweeper, at a random time")
        self.phase = "sweeping"
        while True:
            expire_due_holds()
            time.sleep(0.1)


# --- the parent ---------------------------------------------------------------------------------------


def fork(body) -> int:
    connections.close_all()  # the child opens its own connection; ours must not be shared
    pid = os.fork()
    if pid == 0:
        live_and_die(body)
    return pid


def our_key(stored: str) -> str:
    """The key we gave (the API keeps a client's key in a namespace of its own, e.g. a prefix)."""
    return stored[stored.index("chaos-") :]


def redeliver(prefix: str) -> Counter:
    """Deliver every async run's task message again (finished or not); how each unfinished one ended."""
    ended = Counter()
    runs = AgentRun.objects.filter(idempotency_key__contains=prefix, idempotency_key__endswith="-async")
    for run_id, status in runs.values_list("id", "status"):
        run = runner.execute_stored_run(run_id=str(run_id))
        if status not in FINAL:
            ended[f"{status} → {run.status}"] += 1
    return ended


def lines(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []


class Chaos:
    """Forks the victims (AT_ONCE at a time, and a sweeper beside them), reaps them, and plays
    the task queue: a dead process's task messages are delivered again."""

    def __init__(self, victims: list[Victim], client, user_id: int, tmp_path: Path, rng: random.Random):
        self.waiting, self.client, self.user_id, self.tmp_path, self.rng = list(victims), client, user_id, tmp_path, rng
        self.alive: dict[int, tuple[Victim | None, Path, float]] = {}
        self.kills, self.phases, self.last_modes = Counter(), Counter(), Counter()
        self.problems: list[str] = []
        self.told: dict[str, tuple[str, int]] = {}
        self.workers: set[str] = set()  # the sandbox workers the killed processes had
        self.redelivered = Counter()
        self.sweepers = 0
        self.cpu = 0.0  # CPU seconds the dead processes and their sandbox workers used

    def play(self) -> None:
        while self.waiting or self.alive:
            while self.waiting and self._victims_alive() < AT_ONCE:
                victim = self.waiting.pop()
                out = self.tmp_path / f"victim-{victim.index}"
                self._fork(victim, out, lambda v=victim, o=out: RunVictim(v, self.client, self.user_id, o).play())
            if self._victims_alive() == len(self.alive) and self.waiting:
                out = self.tmp_path / f"sweeper-{self.sweepers}"
                self.sweepers += 1
                lifetime, mid_expiry = self.rng.uniform(0.5, 3.0), self.rng.random() < 0.5
                self._fork(None, out, lambda o=out, t=lifetime, m=mid_expiry: SweeperVictim(o, t, m).play())
            for pid in list(self.alive):
                self._reap(pid)
            time.sleep(0.01)

    def _victims_alive(self) -> int:
        return sum(victim is not None for victim, _, _ in self.alive.values())

    def _fork(self, victim: Victim | None, out: Path, body) -> None:
        self.alive[fork(body)] = (victim, out, time.monotonic())

    def _reap(self, pid: int) -> None:
        victim, out, since = self.alive[pid]
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            if time.monotonic() - since > CHILD_TIMEOUT:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                del self.alive[pid]
                self.problems.append(f"{out.name} hung for {CHILD_TIMEOUT} s: {lines(out)}")
            return
        del self.alive[pid]
        events = lines(out)
        deaths = [event for event in events if event[0] == "killed"]
        # Counted by the wait status: died by SIGKILL (and said where).
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL) or len(deaths) != 1:
            self.problems.append(f"{out.name}: wait status {status}, events {events}")
            return
        _, point, phase, cpu, *workers = deaths[0]
        self.cpu += float(cpu)
        self.kills[point] += 1
        self.phases[f"{point} / {phase}"] += 1
        self.workers.update(workers)
        for _, key, status_told, credits in (event for event in events if event[0] == "told"):
            self.told[key] = (status_told, int(credits))
        if victim is not None:
            self.last_modes[victim.runs[-1].mode] += 1
            if victim.redeliver_at_once:
                self.redelivered += redeliver(f"chaos-{victim.index}-")


def test_sigkill_at_random_points_of_runs_loses_and_doubles_no_credit(user, settings, monkeypatch, tmp_path, figures):
    """What it catches: any step of a run's money that is not one commit with the run's state –
    a capture committed apart from the run's receipt (a run left `running` with a charge: the
    sums, the charges' runs, reconcile and "every run final" all fail; seen with `_succeed`
    broken that way), a hold apart from the run's row (a hold without a run), an expiry that
    releases the hold but does not end its run, a redelivered task that runs or charges again,
    a client told "succeeded" for a run the ledger did not charge (or the reverse), and sandbox
    workers that outlive the killed process. Random, but reproducible: CHAOS_SEED=<seed>."""
    settings.BILLING_HOLD_TTL = timedelta(seconds=TTL)
    monkeypatch.setitem(runner.TOOLS, PROFILE, ECHO)  # the victims switch to NAP for themselves
    errors = tmp_path / "errors"
    monkeypatch.setenv("CHAOS_ERRORS", str(errors))
    ledger.grant(user_id=user.id, amount=GRANT, reason="chaos")
    client = bearer_client(user)
    # Before any fork: the parent's own worker for redeliveries, and the URLconf and views loaded
    # (else every victim spends half a second importing them before its first request).
    sandbox.run_tool(ECHO, EMPTY, {}, timeout=30, memory_mb=200)
    assert client.get("/api/agents/runs").status_code == 200
    rng = random.Random(SEED)
    started, parent_cpu = time.monotonic(), time.process_time()

    chaos = Chaos(plan_victims(rng), client, user.id, tmp_path, rng)
    chaos.play()
    chaos_seconds, parent_cpu = time.monotonic() - started, time.process_time() - parent_cpu

    # Recovery: every task message once more (at least once), the TTL waited out, expiry.
    redelivered_at_end = redeliver("chaos-")
    latest = CreditHold.objects.filter(status=HoldStatus.PENDING).aggregate(latest=Max("expires_at"))["latest"]
    if latest is not None:
        time.sleep(max((latest - timezone.now()).total_seconds(), 0) + 0.05)
    expired_at_end = expire_due_holds()
    recovered_seconds = time.monotonic() - started - chaos_seconds

    runs = {our_key(run.idempotency_key): run for run in AgentRun.objects.filter(user=user)}
    statuses = Counter(run.status for run in runs.values())
    charges = CreditTransaction.objects.filter(kind=TransactionKind.CHARGE)
    charged = -(charges.aggregate(total=Sum("amount"))["total"] or 0)
    credits_charged = sum(run.credits_charged for run in runs.values() if run.status == RunStatus.SUCCEEDED)
    wallet = Wallet.objects.get(user=user)
    run_kills = sum(n for point, n in chaos.kills.items() if point in POINTS)
    figures(
        f"chaos (seed {SEED}): {sum(chaos.kills.values())} SIGKILLs in {chaos_seconds:.1f} s – {run_kills} serving "
        f"processes mid-run (last run {dict(chaos.last_modes)}), {sum(chaos.kills.values()) - run_kills} sweepers; "
        f"recovered and reconciled in {recovered_seconds:.1f} s more; CPU used by them and their sandbox workers "
        f"{chaos.cpu:.1f} s, by the parent {parent_cpu:.1f} s"
    )
    figures(f"chaos kills by point: {dict(sorted(chaos.kills.items()))}")
    figures(f"chaos kills by point / phase reached: {dict(sorted(chaos.phases.items()))}")
    figures(
        f"chaos runs: {len(runs)}, final {dict(statuses)}; {charged} credits charged in {charges.count()} rows; "
        f"redelivered at once {dict(chaos.redelivered)}, at the end {dict(redelivered_at_end)}; "
        f"expired at the end {expired_at_end}; outcomes told to clients {len(chaos.told)}"
    )

    assert not errors.exists(), errors.read_text()
    assert not chaos.problems, chaos.problems
    assert run_kills >= 100
    assert set(chaos.kills) >= set(POINTS)

    # Every broken invariant is listed, not just the first.
    broken = []

    def check(holds: bool, what: str) -> None:
        if not holds:
            broken.append(what)

    unfinished = {key: run.status for key, run in runs.items() if run.status not in FINAL}
    check(not unfinished, f"runs not final: {unfinished}")
    pending = list(CreditHold.objects.filter(status=HoldStatus.PENDING).values_list("id", "expires_at"))
    check(not pending, f"holds still pending after expiry: {pending}")
    check(
        charged == credits_charged == COST * statuses[RunStatus.SUCCEEDED],
        f"Σ charges {charged} ≠ Σ credits_charged of succeeded runs {credits_charged}",
    )
    per_run = Counter(charges.values_list("agent_run_id", flat=True))
    succeeded = {run.id for run in runs.values() if run.status == RunStatus.SUCCEEDED}
    check(set(per_run) <= succeeded, f"charges of runs that did not succeed: {set(per_run) - succeeded}")
    check(set(per_run) >= succeeded, f"succeeded runs without a charge: {succeeded - set(per_run)}")
    check(set(per_run.values()) <= {1}, f"runs charged twice: {[r for r, n in per_run.items() if n > 1]}")
    check(
        (wallet.balance_credits, wallet.held_credits) == (GRANT - credits_charged, 0),
        f"wallet (balance, held) {(wallet.balance_credits, wallet.held_credits)} ≠ {(GRANT - credits_charged, 0)}",
    )
    # One hold per run, each paying for its own run: no hold without its run's row, nor the reverse.
    holds = sorted(CreditHold.objects.values_list("id", "agent_run_id"))
    check(holds == sorted((run.hold_id, run.id) for run in runs.values()), "holds and runs are not one to one")
    # What each client was told is what the ledger says.
    told_otherwise = {
        key: (told, (runs[key].status, runs[key].credits_charged) if key in runs else None)
        for key, told in chaos.told.items()
        if key not in runs or (runs[key].status, runs[key].credits_charged) != told
    }
    check(not told_otherwise, f"told ≠ ledger: {told_otherwise}")
    drift = [str(d) for d in reconcile()]
    check(not drift, f"reconcile: {drift}")
    # The killed processes' sandbox workers did not outlive them (an orphan exits within ~0.5 s).
    deadline = time.monotonic() + 2
    while (leftover := [w for w in chaos.workers if still_running(w)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    check(not leftover, f"sandbox workers outlived their killed parents: {leftover}")
    assert not broken, "\n".join(broken)
