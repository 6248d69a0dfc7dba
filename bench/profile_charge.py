"""Where a charge's time goes: pyinstrument profiles of `ledger.charge` and of POST /billing/charges.

    make bench-profile-charge          (or: python -m bench.profile_charge [--calls N] [--no-profiles])

In-process on the local MariaDB (database `ledger_bench`), one call at a time: wall and CPU time per
call for the raw-SQL floor, `ledger.charge`, an empty authenticated request and a charge request (and
the charge request with the ledger call stubbed out), written to bench/results/request_breakdown.*;
then the two profiles.
"""

import argparse
import json
import os
import subprocess
import time
from pathlib import Path


def mariadb_cpu_seconds() -> float | None:
    """CPU time used so far by the local MariaDB server (from /proc), or None if it is not visible."""
    try:
        pid = subprocess.run(["pgrep", "-o", "mariadbd"], capture_output=True, text=True).stdout.split()[0]
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (IndexError, OSError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def timed(name: str, fn, calls: int) -> dict:
    for _ in range(min(calls, 50)):
        fn()
    server = mariadb_cpu_seconds()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    wall, cpu = (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls
    if server is not None:
        server = (mariadb_cpu_seconds() - server) / calls
    print(
        f"{name:<48} wall {wall * 1e3:6.3f} ms   CPU here {cpu * 1e3:6.3f} ms   "
        f"MariaDB CPU {'?' if server is None else f'{server * 1e3:6.3f}'} ms",
        flush=True,
    )
    return {
        "call": name,
        "wall_ms": round(wall * 1e3, 3),
        "cpu_ms": round(cpu * 1e3, 3),
        "mariadb_cpu_ms": None if server is None else round(server * 1e3, 3),
    }


def bare_compound_statement(user_id: int):
    """Our charge's compound statement (`spending._charge_plan` as `billing.ledger.sql.compound_sql` sends
    it) from a bare mysqlclient connection (no Django), as `run_plan` reads its results."""
    import MySQLdb
    from MySQLdb.constants import CLIENT

    from bench.db import BENCH_DATABASE, SERVER
    from billing.ledger import spending, thresholds
    from billing.ledger.sql import _END_MARK, compound_sql

    connection = MySQLdb.connect(db=BENCH_DATABASE, client_flag=CLIENT.FOUND_ROWS, **SERVER)  # as Django connects
    connection.autocommit(True)
    cursor = connection.cursor()
    fields = {
        "kind": "charge",
        "amount": -7,
        "agent_id": "bench",
        "agent_run_id": None,
        "idempotency_key": None,
        "request_fingerprint": "",
        "metadata": {},
    }
    steps = spending._charge_plan(user_id=user_id, fields=fields, at=None)  # with the lots' draws
    # As `_take_available` sends it: the follow-up's condition over the wallet the plan debited.
    crossing = thresholds.followup(spending._wallet_of_charge(), debit=True).condition
    sql = compound_sql(steps, own_transaction=True, followup=crossing)

    def charge() -> None:
        at = time.strftime("%Y-%m-%d %H:%M:%S")
        cursor.execute(
            sql, [p for step in spending._charge_plan(user_id=user_id, fields=fields, at=at) for p in step.params]
        )
        results = []
        while True:
            if cursor.description:
                results.append(cursor.fetchall())
            if not cursor.nextset():
                break
        assert results[-1][0][:3] == (_END_MARK, len(steps), 0), f"the charge plan stopped: {results}"

    return charge


def unstored(fn):
    """`fn` with BILLING_STORED_PLANS off: the plan's block sent (and parsed) on every call."""
    from django.conf import settings

    def call() -> None:
        stored, settings.BILLING_STORED_PLANS = settings.BILLING_STORED_PLANS, False
        try:
            fn()
        finally:
            settings.BILLING_STORED_PLANS = stored

    return call


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
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--no-profiles", action="store_true", help="only the timings, no pyinstrument profiles")
    args = parser.parse_args()
    os.environ.update(
        {
            "ALLOWED_HOSTS": "testserver",
            "SECURE_SSL_REDIRECT": "false",
            "CONN_MAX_AGE": "60",
            "THROTTLE_AGENTS": "1000000/s",
        }
    )
    from bench.db import use_bench_database

    use_bench_database()
    from django.test import Client

    from agents.models import AgentCost
    from agents.selectors import current_price
    from bench.db import undo_peer_charges
    from bench.http_load import AGENT, prepare
    from bench.ledger_throughput import PEERS, START_BALANCE, Floor, balances, fund, prepare_wallets, wallet_ids
    from bench.report import table, write
    from billing import ledger
    from billing.models import CreditTransaction

    user_id = prepare_wallets(1)[0]
    # The floor draws no lots: it charges a wallet of its own, whose charges are undone once timed.
    peer_id = prepare_wallets(1, PEERS)[0]
    for user, balance in balances([user_id, peer_id]).items():
        if balance < START_BALANCE // 2:
            fund([user])
    floor = Floor([peer_id])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {prepare()}")
    body = json.dumps({"agent_id": AGENT})

    def charge() -> None:
        ledger.charge(user_id=user_id, amount=7, agent_id="bench")

    def charge_request() -> None:
        assert client.post("/billing/charges", body, content_type="application/json").status_code == 201

    try:
        floor_row = timed("floor (raw SQL)", lambda: floor.charge(peer_id), args.calls)
    finally:
        undo_peer_charges(list(wallet_ids([peer_id]).values()))
    rows = [
        floor_row,
        timed("our compound statement, bare mysqlclient", bare_compound_statement(user_id), args.calls),
        timed("ledger.charge", charge, args.calls),
        timed("ledger.charge, stored plans off (the block sent each call)", unstored(charge), args.calls),
        timed("price lookup, plain cursor (current_price)", lambda: current_price(AGENT), args.calls),
        timed("price lookup, ORM queryset", lambda: AgentCost.objects.filter(agent_id=AGENT).first(), args.calls),
        timed("GET /bench/empty", lambda: client.get("/bench/empty"), args.calls),
        timed("POST /billing/charges", charge_request, args.calls),
    ]
    real = ledger.charge
    receipt = ledger.LedgerResult(CreditTransaction(id=1, agent_id=AGENT, amount=-1, balance_after=1))
    ledger.charge = lambda **kwargs: receipt
    try:
        rows.append(timed("POST /billing/charges, ledger stubbed out", charge_request, args.calls))
    finally:
        ledger.charge = real
    wall = {row["call"]: row["wall_ms"] for row in rows}
    server = {row["call"]: row["mariadb_cpu_ms"] for row in rows}
    ratios = {
        "ledger.charge / floor (wall)": round(wall["ledger.charge"] / wall["floor (raw SQL)"], 2),
        "ledger.charge, stored plans off / on (wall)": round(
            wall["ledger.charge, stored plans off (the block sent each call)"] / wall["ledger.charge"], 2
        ),
        "ledger.charge, stored plans off / on (MariaDB CPU)": (
            None
            if not server["ledger.charge"]
            else round(
                server["ledger.charge, stored plans off (the block sent each call)"] / server["ledger.charge"], 2
            )
        ),
        "empty / charge request (wall)": round(wall["GET /bench/empty"] / wall["POST /billing/charges"], 2),
        "empty / charge request with the ledger stubbed out (wall)": round(
            wall["GET /bench/empty"] / wall["POST /billing/charges, ledger stubbed out"], 2
        ),
    }
    lines = [
        f"One call at a time, in-process, {args.calls} calls each (HTTP through Django's test client):",
        "",
        *table(
            ["call", "wall ms", "CPU ms (this process)", "CPU ms (MariaDB)"],
            ([r["call"], r["wall_ms"], r["cpu_ms"], r["mariadb_cpu_ms"]] for r in rows),
        ),
        "",
        *table(["ratio", "value"], ratios.items()),
    ]
    write("request_breakdown", {"calls": args.calls, "rows": rows, "ratios": ratios}, lines)
    if not args.no_profiles:
        profile("ledger.charge", charge, args.calls)
        profile("POST /billing/charges", charge_request, args.calls)


if __name__ == "__main__":
    main()
