"""Benchmark: charges per second — the raw-SQL floor, our ledger, and a naive ORM peer.

    make bench-ledger          (or: python -m bench.ledger_throughput [--charges N])

On the local MariaDB (database `ledger_bench`), in one run, at concurrency 1, 8 and 32 (forked
processes by default, as the service runs; `--workers threads` for threads of one process), on
distinct wallets and on one hot wallet:
- floor: raw SQL over mysqlclient, per charge one transaction with the minimum statements
  (conditional UPDATE of the wallet, INSERT of the ledger row, COMMIT);
- ours:  `billing.ledger.charge`, and `hold` → `capture`;
- run billing: what an agent run costs the ledger without its tool — `agents.runner.start_run`
  (price lookup, then hold + the run's row in one plan) and `runner._succeed(run, result)`
  (capture + the run's receipt in one plan) — next to the one-step charge;
- naive: ORM read-modify-write without locks, as several OSS billing projects do; the credits
  it loses under concurrency are counted.
Statements per charge, per run's billing and per wallet read are counted by MariaDB itself (`Questions`).
Results: bench/results/ledger_throughput.json and .md.
"""

import argparse
import multiprocessing
import threading
import time

from bench.db import SERVER, settle, use_bench_database
from bench.report import table, write

CONCURRENCY = (1, 8, 32)
# The fast implementations run more charges per configuration, so each measures for a second or more.
FAST_SCALE = 4
# A run's billing and the one-step charge are measured in this many alternating turns.
TURNS = 2
# A measurement stops after this many seconds even if its charges are not all done (busy machine).
MAX_SECONDS = 4.0
START_BALANCE = 10**12
COST = 7
# django-hordak's MySQL leg check keeps amounts in DECIMAL(10,2).
HORDAK_START_BALANCE = 10**7
# The agent whose runs are billed (its seeded price is what a run holds and captures).
RUN_AGENT = "profile-my-data"
RUN_RESULT = {"row_count": 2}


def prepare_wallets(count: int) -> list[int]:
    """`count` users with well-funded wallets, reset to the same balance; returns user ids."""
    from billing.models import Wallet
    from users.models import User

    ids = []
    for n in range(count):
        user, _ = User.objects.get_or_create(email=f"bench-{n}@example.com")
        Wallet.objects.get_or_create(user=user)
        ids.append(user.id)
    return ids


def fund(user_ids: list[int]) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE credit_wallets SET balance_credits = balance_credits + %s WHERE user_id IN ({})".format(
                ",".join(["%s"] * len(user_ids))
            ),
            [START_BALANCE, *user_ids],
        )


def wallet_ids(user_ids: list[int]) -> dict[int, int]:
    from billing.models import Wallet

    return dict(Wallet.objects.filter(user_id__in=user_ids).values_list("user_id", "id"))


def balances(user_ids: list[int]) -> dict[int, int]:
    from billing.models import Wallet

    return dict(Wallet.objects.filter(user_id__in=user_ids).values_list("user_id", "balance_credits"))


WORKER_KINDS = {
    "processes": "forked processes, each with its own connection, as gunicorn's sync workers run",
    "threads": "threads of one process, sharing its GIL",
}


def run_concurrently(workers: str, count: int, per_worker: int, work, max_seconds: float) -> tuple[float, int]:
    """Run `work(worker_index, i)` per_worker times in each of `count` workers — forked
    processes (how the service runs: gunicorn sync workers, Celery prefork, no shared GIL) or
    threads of this process — each stopping early once `max_seconds` have passed (a slow
    implementation on a busy machine stays bounded); returns the seconds from the common start
    to the last finish and the calls done."""
    from django.db import connections

    if workers == "processes":
        context = multiprocessing.get_context("fork")
        connections.close_all()  # each child opens its own connection
        barrier, spawn, done = context.Barrier(count + 1), context.Process, context.Array("q", count, lock=False)
    else:
        barrier, spawn, done = threading.Barrier(count + 1), threading.Thread, [0] * count

    def worker(index: int) -> None:
        try:
            barrier.wait()
            deadline = time.monotonic() + max_seconds
            for i in range(per_worker):
                if time.monotonic() >= deadline:
                    break
                work(index, i)
                done[index] = i + 1
        finally:
            connections.close_all()

    pool = [spawn(target=worker, args=(n,)) for n in range(count)]
    for each in pool:
        each.start()
    barrier.wait()
    started = time.perf_counter()
    for each in pool:
        each.join()
    seconds = time.perf_counter() - started
    failed = [each.exitcode for each in pool if getattr(each, "exitcode", 0) != 0]
    if failed:
        raise SystemExit(f"{len(failed)} benchmark process(es) failed: exit codes {failed}")
    return seconds, sum(done)


# --- the three implementations -------------------------------------------------------------


class Floor:
    """Raw SQL: conditional UPDATE + INSERT … SELECT + COMMIT, one connection per thread."""

    name = "floor (raw SQL)"
    charges_scale = FAST_SCALE

    def __init__(self, wallets: dict[int, int]):
        import MySQLdb

        from bench.db import BENCH_DATABASE

        self.wallets = wallets
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

    def charge(self, user_id: int) -> None:
        from billing import ledger

        ledger.charge(user_id=user_id, amount=COST, agent_id="bench")


class OursHoldCapture:
    name = "ours (hold → capture)"
    charges_scale = 1

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

    def __init__(self):
        from django.core.management import call_command

        from agents.selectors import active_agent

        call_command("seed_agent_costs", verbosity=0)
        self.cost = active_agent(RUN_AGENT).cost_credits

    def charge(self, user_id: int) -> None:
        from agents import runner

        run = runner.start_run(user_id=user_id, agent_id=RUN_AGENT, configuration={}, input_rows=2)
        runner._succeed(run, RUN_RESULT)


class Naive:
    """Read, subtract in Python, save — no lock (the pattern that loses updates)."""

    name = "naive ORM peer"
    charges_scale = 1  # at most ~800 charges/s here: 1280 take over a second

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

    def __init__(self, user_ids: list[int]):
        from django.db import transaction
        from djmoney.money import Money
        from hordak.models import Account, Leg
        from hordak.models import Transaction as HordakTransaction

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
    """Statements the client sent for `fn()`, counted by the server (includes COMMIT etc.)."""
    from django.db import connection

    def questions() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
            return int(cursor.fetchone()[1])

    before = questions()
    fn()
    return questions() - before - 1  # minus the second SHOW itself


def measure(
    implementation,
    user_ids: list[int],
    threads: int,
    charges: int,
    hot: bool,
    workers: str = "processes",
    max_seconds: float = MAX_SECONDS,
) -> dict:
    per_thread = max(charges // threads, 1)
    read = implementation.balances if hasattr(implementation, "balances") else balances
    before = read(user_ids)

    def work(index: int, i: int) -> None:
        implementation.charge(user_ids[0] if hot else user_ids[index % len(user_ids)])

    seconds, done = run_concurrently(workers, threads, per_thread, work, max_seconds)
    after = read(user_ids)
    taken = sum(before[u] - after[u] for u in user_ids)
    lost = done * getattr(implementation, "cost", COST) - taken  # credits charged but not taken from any balance
    return {
        "implementation": implementation.name,
        "concurrency": threads,
        "wallets": "hot (1)" if hot else f"distinct ({min(threads, len(user_ids))})",
        "charges": done,
        "seconds": round(seconds, 3),
        "charges_per_second": round(done / seconds),
        "lost_credits": lost,
    }


def measure_in_turns(pair, user_ids: list[int], threads: int, charges: int, hot: bool, workers: str) -> list[dict]:
    """Each of `pair` measured in TURNS alternating halves and summed, so that a drift of this
    shared machine's speed falls on both alike (their ratio is a target)."""
    turns = [
        measure(
            implementation,
            user_ids,
            threads,
            charges * implementation.charges_scale // TURNS,
            hot,
            workers,
            MAX_SECONDS / TURNS,
        )
        for _ in range(TURNS)
        for implementation in pair
    ]
    rows = []
    for implementation in pair:
        mine = [row for row in turns if row["implementation"] == implementation.name]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=1280, help="charges per configuration")
    parser.add_argument(
        "--workers",
        choices=sorted(WORKER_KINDS),
        default="processes",
        help="run concurrent charges in forked processes (as deployed; default) or in threads of one process",
    )
    args = parser.parse_args()
    use_bench_database()
    user_ids = prepare_wallets(max(CONCURRENCY))
    fund(user_ids)
    settle()
    floor = Floor(wallet_ids(user_ids))
    run_billing = RunBilling()
    # A run's billing is measured in turns with the one-step charge it is compared with.
    implementations = [floor, (Ours(), run_billing), OursHoldCapture(), Naive(), Hordak(user_ids)]

    rows = []
    for hot in (False, True):
        for threads in CONCURRENCY:
            for implementation in implementations:
                if isinstance(implementation, tuple):
                    measured = measure_in_turns(implementation, user_ids, threads, args.charges, hot, args.workers)
                else:
                    charges = args.charges * implementation.charges_scale
                    measured = [measure(implementation, user_ids, threads, charges, hot, args.workers)]
                for row in measured:
                    rows.append(row)
                    print(
                        f"{row['implementation']:<36} c={threads:<3} {row['wallets']:<14} "
                        f"{row['charges_per_second']:>6} charges/s  lost {row['lost_credits']}",
                        flush=True,
                    )

    from billing import ledger
    from billing.selectors import wallet_summary

    counts = {
        "ours: statements per charge": statements(
            lambda: ledger.charge(user_id=user_ids[0], amount=COST, agent_id="b")
        ),
        "ours: statements per hold+capture": statements(
            lambda: ledger.capture(hold_id=ledger.hold(user_id=user_ids[0], amount=COST, agent_id="b").hold.id)
        ),
        "ours: statements per run's billing (start_run + _succeed)": statements(
            lambda: run_billing.charge(user_ids[0])
        ),
        "ours: statements per wallet read (GET /billing/wallet)": statements(
            lambda: wallet_summary(user_id=user_ids[0])
        ),
        "naive: statements per charge": statements(lambda: Naive().charge(user_ids[0])),
    }
    for name, value in counts.items():
        print(f"{name}: {value}")

    def ratio(a: str, b: str, threads: int, hot: bool) -> float:
        pick = {
            r["implementation"]: r["charges_per_second"]
            for r in rows
            if r["concurrency"] == threads and r["wallets"].startswith("hot") == hot
        }
        return round(pick[a] / pick[b], 2)

    summary = {
        f"ours/floor c={c} {'hot' if h else 'distinct'}": ratio(Ours.name, Floor.name, c, h)
        for h in (False, True)
        for c in CONCURRENCY
    }
    summary.update(
        {
            f"run billing/ours c={c} {'hot' if h else 'distinct'}": ratio(RunBilling.name, Ours.name, c, h)
            for h in (False, True)
            for c in CONCURRENCY
        }
    )
    summary.update(
        {
            f"ours/naive c={c} {'hot' if h else 'distinct'}": ratio(Ours.name, Naive.name, c, h)
            for h in (False, True)
            for c in CONCURRENCY
        }
    )
    lines = [
        f"Concurrency: {WORKER_KINDS[args.workers]}; {args.charges} charges per configuration, "
        f"{args.charges * FAST_SCALE} for the floor and ours, or as many as are done in {MAX_SECONDS:g} s. "
        "A run's billing takes the "
        f"agent's seeded price ({run_billing.cost} credits) and writes a run row; no tool runs. It is "
        f"measured in {TURNS} turns alternating with ours (ledger.charge), the figures summed.",
        "",
        *table(
            ["implementation", "concurrency", "wallets", "charges/s", "lost credits"],
            (
                [r["implementation"], r["concurrency"], r["wallets"], r["charges_per_second"], r["lost_credits"]]
                for r in rows
            ),
        ),
        "",
        *table(["statements (counted by MariaDB)", "n"], counts.items()),
        "",
        *table(["ratio", "value"], summary.items()),
    ]
    payload = {"workers": args.workers, "rows": rows, "statements": counts, "ratios": summary}
    write("ledger_throughput", payload, lines)


if __name__ == "__main__":
    main()
