"""Read routing (core.db_routing): reports and listings may read the replica; money never does.

The replica alias here is a second connection to the test database (pytest.ini's
DATABASE_REPLICA_URL, mirrored): committed rows are visible on it, so these tests commit for real
(transaction=True) and tell the two apart by which connection ran each query.
"""

import pytest
from django.core.cache import cache
from django.db import connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing import ledger
from billing.models import CreditTransaction
from config.settings import database_from_url
from core.db_routing import reads_from_replica
from core.mysql_failover.base import DatabaseWrapper

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

RUN = {"data": {"rows": [{"name": "Ada", "city": "Paris"}, {"name": "Bob", "city": "Oslo"}]}}


@pytest.fixture(autouse=True)
def _routing_on(settings):
    settings.READ_REPLICA = "replica"
    cache.clear()
    yield
    cache.clear()


def _tables(queries) -> str:
    return " ".join(query["sql"] for query in queries)


def _queries(fn):
    """Run fn; the SQL each connection ran meanwhile."""
    with (
        CaptureQueriesContext(connections["default"]) as primary,
        CaptureQueriesContext(connections["replica"]) as replica,
    ):
        result = fn()
    return result, _tables(primary.captured_queries), _tables(replica.captured_queries)


def test_transaction_listing_and_finance_reports_read_the_replica(user, user_client, finance_viewer):
    ledger.grant(user_id=user.id, amount=500, reason="seed")
    ledger.charge(user_id=user.id, amount=7, agent_id="profile-my-data")

    listing, primary, replica = _queries(lambda: user_client.get("/billing/transactions"))
    assert listing.status_code == 200 and [row["amount"] for row in listing.json()["results"]] == [-7, 500]
    assert "credit_transactions" in replica
    assert "credit_transactions" not in primary  # only the signed-in user is looked up there

    admin = Client()
    admin.force_login(finance_viewer)
    for path in ("/admin/reports/", "/admin/revenue/", "/admin/reports/?download=usage_by_agent"):
        page, primary, replica = _queries(lambda path=path: admin.get(path))
        assert page.status_code == 200, path
        assert "credit_transactions" in replica, path
        assert "credit_transactions" not in primary, path


def test_money_decisions_never_read_the_replica(user, user_client, staff_client, agent_costs):
    def money():
        granted = staff_client.post(
            "/billing/admin/grant",
            {"user_id": user.id, "credits": 1000, "reason": "welcome"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="grant-routing-1",
        )
        replayed = staff_client.post(
            "/billing/admin/grant",
            {"user_id": user.id, "credits": 1000, "reason": "welcome"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="grant-routing-1",
        )
        run = user_client.post("/api/profile-my-data", RUN, format="json", HTTP_IDEMPOTENCY_KEY="run-routing-1")
        run_again = user_client.post("/api/profile-my-data", RUN, format="json", HTTP_IDEMPOTENCY_KEY="run-routing-1")
        wallet = user_client.get("/billing/wallet")
        return granted, replayed, run, run_again, wallet

    (granted, replayed, run, run_again, wallet), primary, replica = _queries(money)
    assert [r.status_code for r in (granted, replayed, run, run_again, wallet)] == [200, 200, 200, 200, 200]
    assert replica == ""  # not one query: grants, replays, the run's hold and capture, the wallet page
    assert "credit_wallets" in primary and "idempotency" in primary
    cost = run.json()["receipt"]["credits_charged"]
    assert wallet.json()["balance_credits"] == 1000 - cost


def test_a_user_who_just_wrote_reads_the_listing_from_the_primary(user, user_client, agent_costs):
    ledger.grant(user_id=user.id, amount=500, reason="seed")
    assert user_client.post("/api/profile-my-data", RUN, format="json").status_code == 200

    listing, primary, replica = _queries(lambda: user_client.get("/billing/transactions"))
    assert listing.json()["count"] == 2
    assert "credit_transactions" in primary and replica == ""

    cache.clear()  # the pin ran out
    _, primary, replica = _queries(lambda: user_client.get("/billing/transactions"))
    assert "credit_transactions" in replica and "credit_transactions" not in primary


def test_reads_inside_a_transaction_stay_on_the_primary(user):
    with transaction.atomic():
        with reads_from_replica() as on_replica:
            assert on_replica is False
    with reads_from_replica() as on_replica:
        assert on_replica is True
        with transaction.atomic(), CaptureQueriesContext(connections["replica"]) as replica:
            ledger.grant(user_id=user.id, amount=5, reason="inside")
            assert CreditTransaction.objects.filter(wallet__user=user).count() == 1
        assert replica.captured_queries == []


def test_an_unreachable_replica_leaves_the_reads_on_the_primary(user, user_client, settings):
    ledger.grant(user_id=user.id, amount=500, reason="seed")
    replica = connections["replica"]
    replica.close()
    saved = replica.settings_dict["PORT"]
    replica.settings_dict["PORT"] = 9  # nothing listens there
    try:
        with CaptureQueriesContext(connections["default"]) as primary:
            listing = user_client.get("/billing/transactions")
    finally:
        replica.settings_dict["PORT"] = saved
    assert listing.status_code == 200 and listing.json()["count"] == 1
    assert "credit_transactions" in _tables(primary.captured_queries)


def test_a_host_list_connects_through_the_first_host_that_answers():
    config = database_from_url("mysql://root@127.0.0.1:9,127.0.0.1:3306,127.0.0.1:4308/test")
    assert config["ENGINE"] == "core.mysql_failover"
    assert config["HOSTS"] == [("127.0.0.1", 9), ("127.0.0.1", 3306), ("127.0.0.1", 4308)]
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("127.0.0.1", 9, "test")
    assert "STRICT_TRANS_TABLES" in config["OPTIONS"]["init_command"]

    wrapper = DatabaseWrapper({**connections["default"].settings_dict, **config, "NAME": "mysql"}, alias="failover")
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT @@port")
            assert cursor.fetchone()[0] == 3306  # port 9 refused, the next host served
    finally:
        wrapper.close()

    dead = DatabaseWrapper({**wrapper.settings_dict, "HOSTS": [("127.0.0.1", 9), ("127.0.0.1", 10)]}, alias="dead")
    with pytest.raises(Exception) as failure:
        dead.ensure_connection()
    assert "10" in str(failure.value) or "connect" in str(failure.value).lower()
