"""Benchmark: charges per second — the raw-SQL floor, our ledger, and a naive ORM peer.

    make bench-ledger          (or: python -m bench.ledger_throughput [--charges N] [--lots 1,20])

On the local MariaDB (database `ledger_bench`), in one run, at concurrency 1, 8 and 32 (forked
processes by default, as the service runs; `--workers threads` for threads of one process), on
distinct wallets and on one hot wallet:
- floor: raw SQL over mysqlclient, per charge one transaction with the minimum statements
  (conditional UPDATE of the wallet, INSERT of the ledger row, COMMIT);
- ours:  `billing.ledger.charge`, and `hold` → `capture`, on wallets holding 1 lot and on wallets
  holding 20 lots (of equal size, alternately promotional and paid, their priorities shuffled, so
  that the burn order has to sort them);
- run billing: what an agent run costs the ledger without its tool — `agents.runner.start_run`
  (price lookup, then hold + the run's row in one plan) and `runner._succeed(run, result)`
  (capture + the run's receipt in one plan) — next to the one-step charge;
- naive: ORM read-modify-write without locks, as several OSS billing projects do; the credits
  it loses under concurrency are counted;
- django-hordak: a row-locked balance check, then `transfer_to`.
Every implementation is measured in alternating turns with all the others, per configuration.
Statements per charge, per run's billing and per wallet read are counted by MariaDB itself
(`Questions`), with 1 and with 20 lots.
The ledger is emptied first and every wallet funded as the ledger sees credits (grant rows and
lots, `bench.db.fund_wallets`). The floor and the naive peer draw no lots (and the naive peer
loses updates), so they charge wallets of their own whose charge rows are deleted once measured
(`bench.db.undo_peer_charges`): afterwards `manage.py reconcile_ledger` finds no drift.
Results: bench/results/ledger_throughput.json and .md.
"""

import argparse
import contextlib
import multiprocessing
import threading
import time

from bench.db import SERVER, empty_ledger, fund_wallets, settle, undo_peer_charges, use_bench_database
from bench.report import table, write

CONCURRENCY = (1, 8, 32)
# Ours is measured on wallets holding this many lots each (more than one: mixed, see `fund`).
LOTS = (1, 20)
# Users whose wallets the floor and the naive peer charge (ours: "bench", "bench-lots20" …).
PEERS = "bench-peer"
# The fast implementations run more charges per configuration, so each measures for a second or more.
FAST_SCALE = 4
# Every implementation is measured in this many alternating turns per configuration.
TURNS = 3
# A measurement stops after this many seconds even if its charges are not all done (busy machine).
MAX_SECONDS = 4.0
# Workers wait this long at most for one another's untimed first call (a stuck one fails the run).
WARM_UP_SECONDS = 120
START_BALANCE = 10**12
COST = 7
# django-hordak's MySQL leg check keeps amounts in DECIMAL(10,2).
HORDAK_START_BALANCE = 10**7
# The agent whose runs are billed (its seeded price is what a run holds and captures).
RUN_AGENT = "profile-my-data"
RUN_RESULT = {"row_count": 2}


def prepare_wallets(count: int, prefix: str = "bench") -> list[int]:
    """`count` users (`<prefix>-<n>@example.com`) with a wallet each; returns user ids."""
    from billing.models import Wallet
    from users.models import User

    ids = []
    for n in range(count):
        user, _ = User.objects.get_or_create(email=f"{prefix}-{n}@example.com")
        Wallet.objects.get_or_create(user=user)
        ids.append(user.id)
    return ids


def pool_prefix(lots: int) -> str:
    """The users whose wallets ours charges when they hold `lots` lots."""
    return "bench" if lots == 1 else f"bench-lots{lots}"


def fund(user_ids: list[int], lots: int = 1) -> None:
    """START_BALANCE more on each user's wallet, as grant rows and `lots` lots (bench.db.fund_wallets):
    one promotional lot, or `lots` equal lots alternately promotional and paid with shuffled priorities."""
    fund_wallets(
        list(wallet_ids(user_ids).values()), START_BALANCE, lots=lots, category="mixed" if lots > 1 else "promotional"
    )


def wallet_ids(user_ids: list[int]) -> dict[int, int]:
    """user id → wallet id."""
    from billing.models import Wallet

    return dict(Wallet.objects.filter(user_id__in=user_ids).values_list("user_id", "id"))


def balances(user_ids: list[int]) -> dict[int, int]:
    from billing.models import Wallet

    return dict(Wallet.objects.filter(user_id__in=user_ids).values_list("user_id", "balance_credits"))


WORKER_KINDS = {
    "processes": "forked processes, each with its own connection, as gunicorn's sync workers run",
    "threads": "threads of one process, sharing its GIL",
}


def run_concurrently(workers: str, count: int, per_worker: int, work, max_seconds: float) -> tuple[float, int, int]:
    """Run `work(worker_index, i)` per_worker times in each of `count` workers — forked
    processes (how the service runs: gunicorn sync workers, Celery prefork, no shared GIL) or
    threads of this process — each stopping early once `max_seconds` have passed (a slow
    implementation on a busy machine stays bounded); returns the seconds from the common start
    to the last finish, the calls done then, and the calls done before it.

    Each worker makes one call before the common start (`work(index, -1)`), untimed: its
    connection opened and whatever the implementation prepares once per process done, as in a
    worker that has served requests before — the rate measured is the steady one, for every
    implementation alike."""
    from django.db import connections

    if workers == "processes":
        context = multiprocessing.get_context("fork")
        connections.close_all()  # each child opens its own connection
        barrier = context.Barrier(count + 1, timeout=WARM_UP_SECONDS)
        spawn, done, warmed = (
            context.Process,
            context.Array("q", count, lock=False),
            context.Array("q", count, lock=False),
        )
    else:
        barrier, spawn = threading.Barrier(count + 1, timeout=WARM_UP_SECONDS), threading.Thread
        done, warmed = [0] * count, [0] * count
    failures = []  # threads' (a process's failure is its exit code)

    def worker(index: int) -> None:
        try:
            try:
                work(index, -1)
            except BaseException:
                barrier.abort()  # the others stop waiting: this run fails (below)
                raise
            warmed[index] = 1
            barrier.wait()
            deadline = time.monotonic() + max_seconds
            for i in range(per_worker):
                if time.monotonic() >= deadline:
                    break
                work(index, i)
                done[index] = i + 1
        except BaseException as exc:
            failures.append(exc)
            raise
        finally:
            connections.close_all()

    pool = [spawn(target=worker, args=(n,)) for n in range(count)]
    for each in pool:
        each.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed first: reported below
        barrier.wait()
    started = time.perf_counter()
    for each in pool:
        each.join()
    seconds = time.perf_counter() - started
    failed = [each.exitcode for each in pool if getattr(each, "exitcode", 0) != 0]
    if failed or failures:
        raise SystemExit(f"benchmark workers failed: exit codes {failed}, errors {failures}")
    return seconds, sum(done), sum(warmed)


# --- the three implementations -------------------------------------------------------------


class Floor:
    """Raw SQL: conditional UPDATE + INSERT … SELECT + COMMIT, one connection per thread. It
    draws no lots: give it wallets of its own, and `undo_peer_charges` them afterwards."""

    name = "floor (raw SQL)"
    charges_scale = FAST_SCALE
    lots = None

    def __init__(self, user_ids: list[int]):
        import MySQLdb

        from bench.db import BENCH_DATABASE

        self.users = user_ids
        self.wallets = wallet_ids(user_ids)
        self.local = threading.local()
        self.connect = lambda: MySQLdb.connect(db=BENCH_DATABASE, **SERVER)

    def charge(self, user_id: int) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self.connect()
            conn.autocommit(False)
        wallet_id = self.wallets[user_id]
        cursor = conn.cursor()
        cursor.execute(
            "UPDATE credit_wallets SET balance_credits = balance_credits - %s "
            "WHERE id = %s AND balance_credits - held_credits >= %s",
            (COST, wallet_id, COST),
        )
        if cursor.rowcount == 1:
            cursor.execute(
                "INSERT INTO credit_transactions (wallet_id, kind, amount, balance_after, agent_id, reason, "
                "request_fingerprint, metadata, created_at) SELECT id, 'charge', %s, balance_credits, "
                "'bench', '', '', '{}', NOW(6) FROM credit_wallets WHERE id = %s",
                (-COST, wallet_id),
            )
        conn.commit()


class Ours:
    name = "ours (ledger.charge)"
    charges_scale = FAST_SCALE

    def __init__(self, user_ids: list[int], lots: int):
        self.users, self.lots = user_ids, lots

    def charge(self, user_id: int) -> None:
        from billing import ledger

        ledger.charge(user_id=user_id, amount=COST, agent_id="bench")


class OursHoldCapture:
    name = "ours (hold → capture)"
    charges_scale = 1

    def __init__(self, user_ids: list[int], lots: int):
        self.users, self.lots = user_ids, lots

    def charge(self, user_id: int) -> None:
        from billing import ledger

        held = ledger.hold(user_id=user_id, amount=COST, agent_id="bench").hold
        ledger.capture(hold_id=held.id)


class RunBilling:
    """An agent run's billing without its tool: `start_run` (price lookup; hold + run row in one
    plan) then `_succeed` (capture + the run's receipt in one plan), as `execute_run` does around
    the sandbox. Takes the agent's seeded price per run."""

    name = "run billing (start_run → _succeed)"
    charges_scale = 1

    def __init__(self, user_ids: list[int], lots: int):
        from agents.selectors import active_agent

        self.users, self.lots = user_ids, lots
        self.cost = active_agent(RUN_AGENT).cost_credits

    def charge(self, user_id: int) -> None:
        from agents import runner

        run = runner.start_run(user_id=user_id, agent_id=RUN_AGENT, configuration={}, input_rows=2)
        runner._succeed(run, RUN_RESULT)


class Naive:
    """Read, subtract in Python, save — no lock (the pattern that loses updates)."""

    name = "naive ORM peer"
    charges_scale = 1  # at most ~800 charges/s here: 1280 take over a second
    lots = None  # it draws none: give it wallets of its own, and `undo_peer_charges` them afterwards

    def __init__(self, user_ids: list[int]):
        self.users = user_ids

    def charge(self, user_id: int) -> None:
        from billing.models import CreditTransaction, Wallet

        wallet = Wallet.objects.get(user_id=user_id)
        if wallet.balance_credits - wallet.held_credits < COST:
            return
        wallet.balance_credits -= COST
        wallet.save(update_fields=["balance_credits"])
        CreditTransaction.objects.create(
            wallet=wallet, kind="charge", amount=-COST, balance_after=wallet.balance_credits, agent_id="bench"
        )


class Hordak:
    """django-hordak: a locked balance check (Σ legs) then `transfer_to` wallet → revenue.

    Each user's wallet is a liability account funded once; a charge debits it and credits an
    income account — the double-entry equivalent of our charge, made safe with a row lock."""

    name = "django-hordak"
    charges_scale = 1
    lots = None  # its own accounts and legs, not our wallets

    def __init__(self, user_ids: list[int]):
        from django.db import transaction
        from djmoney.money import Money
        from hordak.models import Account, Leg
        from hordak.models import Transaction as HordakTransaction

        self.users = user_ids
        self.Money = Money
        # Every run starts from freshly funded accounts: hordak's balance is a sum over the
        # account's legs, so legs left by earlier runs would slow it down run after run.
        Leg.objects.all().delete()
        HordakTransaction.objects.all().delete()
        with transaction.atomic():
            self.revenue = self._account("REV", Account.TYPES.income)
            cash = self._account("CASH", Account.TYPES.asset)
            self.wallets = {}
            for user_id in user_ids:
                wallet = self._account(f"W{user_id}", Account.TYPES.liability)
                wallet.transfer_to(cash, Money(HORDAK_START_BALANCE, "EUR"))
                self.wallets[user_id] = wallet.pk

    @staticmethod
    def _account(code: str, account_type):
        from hordak.models import Account

        account, _ = Account.objects.get_or_create(
            code=code, defaults={"name": f"bench {code}", "type": account_type, "currencies": ["EUR"]}
        )
        return account

    def balances(self, user_ids: list[int]) -> dict[int, int]:
        from hordak.models import Account

        accounts = Account.objects.in_bulk([self.wallets[u] for u in user_ids])
        return {u: int(accounts[self.wallets[u]].get_simple_balance().monies()[0].amount) for u in user_ids}

    def charge(self, user_id: int) -> None:
        from django.db import transaction
        from hordak.models import Account

        with transaction.atomic():
            wallet = Account.objects.select_for_update().get(pk=self.wallets[user_id])
            if wallet.get_simple_balance().monies()[0].amount < COST:
                return
            self.revenue.transfer_to(wallet, self.Money(COST, "EUR"))


def statements(fn) -> int:
    """Statements the client sent for `fn()`, counted by the server (includes COMMIT etc.). Called
    once first: a plan's first call in a process creates its stored procedure (a refused CALL,
    the CREATE on a connection of its own, the CALL again), which later calls do not repeat."""
    from django.db import connection

    fn()

    def questions() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
            return int(cursor.fetchone()[1])

    before = questions()
    fn()
    return questions() - before - 1  # minus the second SHOW itself


def measure(
    implementation,
    threads: int,
    charges: int,
    hot: bool,
    workers: str = "processes",
    max_seconds: float = MAX_SECONDS,
) -> dict:
    """`implementation` charging its own users' wallets (`.users`) from `threads` workers."""
    user_ids = implementation.users
    per_thread = max(charges // threads, 1)
    read = implementation.balances if hasattr(implementation, "balances") else balances
    before = read(user_ids)

    def work(index: int, i: int) -> None:
        implementation.charge(user_ids[0] if hot else user_ids[index % len(user_ids)])

    seconds, done, warm_up = run_concurrently(workers, threads, per_thread, work, max_seconds)
    after = read(user_ids)
    taken = sum(before[u] - after[u] for u in user_ids)
    # Credits charged (the untimed first calls too) but not taken from any balance.
    lost = (done + warm_up) * getattr(implementation, "cost", COST) - taken
    return {
        "implementation": implementation.name,
        "concurrency": threads,
        "wallets": "hot (1)" if hot else f"distinct ({min(threads, len(user_ids))})",
        "lots": implementation.lots,
        "charges": done,
        "seconds": round(seconds, 3),
        "charges_per_second": round(done / seconds),
        "lost_credits": lost,
    }


def measure_in_turns(group, threads: int, charges: int, hot: bool, workers: str) -> list[dict]:
    """Each of `group` measured in TURNS alternating parts (each a TURNS-th of its charges and of
    its time limit) and summed, so that a drift of this shared machine's speed falls on all of
    them alike (their ratios are compared)."""
    turns = [
        (
            implementation,
            measure(
                implementation,
                threads,
                charges * implementation.charges_scale // TURNS,
                hot,
                workers,
                MAX_SECONDS / TURNS,
            ),
        )
        for _ in range(TURNS)
        for implementation in group
    ]
    rows = []
    for implementation in group:
        mine = [row for measured, row in turns if measured is implementation]
        done, seconds = sum(row["charges"] for row in mine), sum(row["seconds"] for row in mine)
        rows.append(
            {
                **mine[0],
                "charges": done,
                "seconds": round(seconds, 3),
                "charges_per_second": round(done / seconds),
                "lost_credits": sum(row["lost_credits"] for row in mine),
            }
        )
    return rows


def lots_label(lots: int | None) -> str:
    return "–" if lots is None else f"{lots} lot{'s' if lots != 1 else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=1280, help="charges per configuration")
    parser.add_argument(
        "--workers",
        choices=sorted(WORKER_KINDS),
        default="processes",
        help="run concurrent charges in forked processes (as deployed; default) or in threads of one process",
    )
    parser.add_argument(
        "--lots",
        default=",".join(map(str, LOTS)),
        help="lots per wallet that ours is measured with, comma-separated (default: %(default)s)",
    )
    args = parser.parse_args()
    lot_counts = tuple(int(n) for n in args.lots.split(","))
    started = time.monotonic()
    use_bench_database()
    from django.core.management import call_command

    count = max(CONCURRENCY)
    pools = {lots: prepare_wallets(count, pool_prefix(lots)) for lots in lot_counts}
    peers = prepare_wallets(count, PEERS)
    empty_ledger()  # earlier runs' rows (and rows written before lots) would not reconcile
    for lots, user_ids in pools.items():
        fund(user_ids, lots)
    fund(peers)
    call_command("seed_agent_costs", verbosity=0)
    floor, naive = Floor(peers), Naive(peers)
    ours = {lots: Ours(user_ids, lots) for lots, user_ids in pools.items()}
    run_billing = {lots: RunBilling(user_ids, lots) for lots, user_ids in pools.items()}
    hold_capture = {lots: OursHoldCapture(user_ids, lots) for lots, user_ids in pools.items()}
    hordak = Hordak(peers)
    settle()
    # Every implementation is measured in turns with all the others, per configuration: their
    # ratios are what is compared, and this shared machine's speed drifts by tens of percent
    # within seconds — a drift then falls on all of them alike, not on whichever ran during it.
    implementations = (
        floor,
        *ours.values(),
        *run_billing.values(),
        *hold_capture.values(),
        naive,
        hordak,
    )

    rows = []
    for hot in (False, True):
        for threads in CONCURRENCY:
            for row in measure_in_turns(implementations, threads, args.charges, hot, args.workers):
                rows.append(row)
                print(
                    f"{row['implementation']:<36} c={threads:<3} {row['wallets']:<14} "
                    f"{lots_label(row['lots']):<8} {row['charges_per_second']:>6} charges/s  "
                    f"lost {row['lost_credits']}",
                    flush=True,
                )

    from billing import ledger
    from billing.selectors import wallet_summary

    counts = {}
    for lots, user_ids in pools.items():
        user, label = user_ids[0], lots_label(lots)
        counts[f"ours: statements per charge ({label})"] = statements(
            lambda user=user: ledger.charge(user_id=user, amount=COST, agent_id="b")
        )
        counts[f"ours: statements per hold+capture ({label})"] = statements(
            lambda user=user: ledger.capture(hold_id=ledger.hold(user_id=user, amount=COST, agent_id="b").hold.id)
        )
        counts[f"ours: statements per run's billing, start_run + _succeed ({label})"] = statements(
            lambda user=user, lots=lots: run_billing[lots].charge(user)
        )
        counts[f"ours: statements per wallet read, GET /billing/wallet ({label})"] = statements(
            lambda user=user: wallet_summary(user_id=user)
        )
    counts["naive: statements per charge"] = statements(lambda: naive.charge(peers[0]))
    for name, value in counts.items():
        print(f"{name}: {value}")
    undo_peer_charges(list(wallet_ids(peers).values()))

    rate = {(r["implementation"], r["lots"], r["concurrency"], r["wallets"].split()[0]): r for r in rows}
    configs = [(c, w) for w in ("distinct", "hot") for c in CONCURRENCY]

    def ratio(a: str, a_lots: int | None, b: str, b_lots: int | None, threads: int, wallets: str) -> float:
        numerator = rate[(a, a_lots, threads, wallets)]["charges_per_second"]
        return round(numerator / rate[(b, b_lots, threads, wallets)]["charges_per_second"], 2)

    per_config = [
        {
            "concurrency": c,
            "wallets": w,
            "lots": lots,
            "ours/floor": ratio(Ours.name, lots, Floor.name, None, c, w),
            "ours/naive": ratio(Ours.name, lots, Naive.name, None, c, w),
            "ours/hordak": ratio(Ours.name, lots, Hordak.name, None, c, w),
            "run billing/ours": ratio(RunBilling.name, lots, Ours.name, lots, c, w),
            f"ours/ours with {lots_label(lot_counts[0])}": ratio(Ours.name, lots, Ours.name, lot_counts[0], c, w),
        }
        for c, w in configs
        for lots in lot_counts
    ]
    summary = {
        f"{name} c={r['concurrency']} {r['wallets']} {lots_label(r['lots'])}": value
        for name in per_config[0]
        if "/" in name
        for r in per_config
        if not (name.startswith("ours/ours") and r["lots"] == lot_counts[0])
    }
    ratio_names = [name for name in per_config[0] if "/" in name]
    ratio_table = table(
        ["concurrency", "wallets", "lots", *ratio_names],
        ([r["concurrency"], r["wallets"], r["lots"], *(r[n] for n in ratio_names)] for r in per_config),
    )
    print("\n".join(["", "ratios of charges/s, per configuration:", *ratio_table]), flush=True)
    seconds = round(time.monotonic() - started)
    lines = [
        f"Concurrency: {WORKER_KINDS[args.workers]}; {args.charges} charges per configuration, "
        f"{args.charges * FAST_SCALE} for the floor and ours, or as many as are done in {MAX_SECONDS:g} s, "
        "timed from a common start after one untimed charge per worker (its connection open, as a "
        "worker's is once it has served a request). "
        f"Ours is measured on wallets holding {' and on wallets holding '.join(map(lots_label, lot_counts))}"
        + (
            " (several lots: of equal size, alternately promotional and paid, priorities shuffled, so that "
            "the burn order sorts them)"
            if max(lot_counts) > 1
            else ""
        )
        + "; the floor, the naive peer and django-hordak draw no lots (lots –). "
        "A run's billing takes the "
        f"agent's seeded price ({run_billing[lot_counts[0]].cost} credits) and writes a run row; no tool runs. "
        f"Every implementation is measured in {TURNS} turns per configuration, alternating with all the "
        "others (a drift of the machine's speed falls on all alike), its turns' figures summed. "
        f"The whole run took {seconds} s.",
        "",
        *table(
            ["implementation", "concurrency", "wallets", "lots", "charges/s", "lost credits"],
            (
                [
                    r["implementation"],
                    r["concurrency"],
                    r["wallets"],
                    "–" if r["lots"] is None else r["lots"],
                    r["charges_per_second"],
                    r["lost_credits"],
                ]
                for r in rows
            ),
        ),
        "",
        *table(["statements (counted by MariaDB)", "n"], counts.items()),
        "",
        "Ratios of charges/s in the same run (lots: ours's; the peers draw none):",
        "",
        *ratio_table,
    ]
    payload = {
        "workers": args.workers,
        "lots": list(lot_counts),
        "seconds": seconds,
        "rows": rows,
        "statements": counts,
        "ratios": summary,
        "ratios_per_configuration": per_config,
    }
    write("ledger_throughput", payload, lines)


if __name__ == "__main__":
    main()
