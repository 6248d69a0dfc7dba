import os

import pytest
import stripe
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from agents.services import seed_agent_costs
from tests.factories import StaffFactory, UserFactory
from tests.fake_stripe import FakeStripe, serve

# Nothing listens here: a test that forgets the fake gets "connection refused", never real Stripe.
CLOSED_PORT = "http://127.0.0.1:9"


_FIGURES: list[str] = []


@pytest.fixture
def figures():
    """`figures("…")` adds a line to the "figures" section printed at the end of the run."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


def pytest_configure(config):
    from django.conf import settings

    # Users are created in almost every test; a deliberately slow hasher would dominate the run.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # The replica alias mirrors the test database, but a test transaction is not visible on its own
    # connection: reads go to it only where a test says so (tests/test_db_routing.py).
    settings.READ_REPLICA = None


def pytest_collection_modifyitems(config, items):
    # Everything here is about a ledger on MariaDB; on any other backend the suite must
    # fail loudly (never skip), so a CI run without its database cannot look green.
    for item in items:
        item.add_marker(pytest.mark.usefixtures("_require_mariadb"))


@pytest.fixture(scope="session")
def _mariadb_checked(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        vendor = connection.vendor
        version = connection.mysql_version if vendor == "mysql" else None
        # A reused test database may hold rows committed by an interrupted earlier run.
        call_command("flush", interactive=False, verbosity=0)
    return vendor, version


@pytest.fixture
def _require_mariadb(request, _mariadb_checked):
    vendor, _ = _mariadb_checked
    if vendor != "mysql":
        pytest.fail(
            f"The test suite runs on MariaDB (DATABASE_URL=mysql://…), not {vendor}; "
            f"DATABASE_URL={os.environ.get('DATABASE_URL')!r}"
        )


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


def _in_group(user, name: str):
    from django.contrib.auth.models import Group

    from billing.roles import ensure_finance_groups

    ensure_finance_groups()  # transactional tests flush the migration's groups
    user.groups.add(Group.objects.get(name=name))
    return user


@pytest.fixture
def staff(db):
    """A staff member of the Finance group."""
    from billing.roles import FINANCE

    return _in_group(StaffFactory(), FINANCE)


@pytest.fixture
def finance_viewer(db):
    from billing.roles import FINANCE_VIEWER

    return _in_group(StaffFactory(), FINANCE_VIEWER)


@pytest.fixture
def staff_without_permissions(db):
    return StaffFactory()


@pytest.fixture
def agent_costs(db):
    """The 22 default agents (transactional tests flush the migration's seed)."""
    seed_agent_costs()


def bearer_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


@pytest.fixture
def anon():
    return APIClient()


@pytest.fixture
def client_for():
    return bearer_client


@pytest.fixture
def user_client(user):
    return bearer_client(user)


@pytest.fixture
def staff_client(staff):
    return bearer_client(staff)


@pytest.fixture(autouse=True)
def _never_real_stripe(settings, monkeypatch):
    settings.STRIPE_API_HOST = CLOSED_PORT
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    monkeypatch.setattr(stripe, "api_base", CLOSED_PORT)
    monkeypatch.setattr(stripe, "max_network_retries", 0)


@pytest.fixture
def fake_stripe(settings, monkeypatch):
    """A fake Stripe API on 127.0.0.1 that the real SDK talks to."""
    fake = FakeStripe()
    server, url = serve(fake)
    settings.STRIPE_API_HOST = url
    monkeypatch.setattr(stripe, "api_base", url)
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def wsgi_keeps_test_connection():
    """Django's WSGI handler closes DB connections when a request finishes; inside a test that
    would end the test's transaction (Django's test client disconnects it for the same reason)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)
