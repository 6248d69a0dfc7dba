"""Multi-process stress on MariaDB: 8 processes × 500 mixed operations over 3 wallets."""

import multiprocessing
from collections import Counter

import pytest
from django.db import connection

from billing import ledger
from billing.reconcile import reconcile
from tests.factories import UserFactory
from tests.stress_worker import run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("agent_costs")]

PROCESSES, OPERATIONS = 8, 500


def test_8_processes_x_500_mixed_operations_keep_every_invariant(staff, figures):
    users = [UserFactory().id for _ in range(3)]
    for user_id in users:
        ledger.grant(user_id=user_id, amount=2000, reason="stress seed")
    db = connection.settings_dict
    url = f"mysql://{db['USER']}{':' + db['PASSWORD'] if db['PASSWORD'] else ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"

    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        results = pool.starmap(run, [(seed, url, users, staff.id, OPERATIONS) for seed in range(PROCESSES)])

    statuses = sum((Counter(r["statuses"]) for r in results), Counter())
    operations = sum(r["operations"] for r in results)
    five_xx = sum(n for code, n in statuses.items() if code >= 500)
    drift = reconcile()
    figures(
        f"stress: {PROCESSES} processes × {OPERATIONS} = {operations} operations "
        f"({sum(statuses.values())} HTTP requests) over 3 wallets: {dict(sorted(statuses.items()))}, "
        f"5xx {five_xx}, invariant violations {len(drift)}"
    )
    assert five_xx == 0
    assert drift == []
    assert set(statuses) <= {200, 201, 402}, statuses
