"""Domain errors carry no HTTP: `core.errors.STATUS_BY_CODE` is the one table that answers them."""

import pytest

import agents.api
import billing.api
import users.api
from core.errors import STATUS_BY_CODE, DomainError

assert agents.api and billing.api and users.api  # every module that defines domain errors is loaded


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_domain_error_has_a_status_and_no_http_of_its_own():
    errors = list(_subclasses(DomainError))
    assert len(errors) >= 15
    assert {error.error_code for error in errors} <= set(STATUS_BY_CODE)
    assert not [error for error in errors if "status_code" in vars(error)]


@pytest.mark.django_db
def test_a_domain_error_is_answered_with_the_tables_status_and_its_figures(user_client):
    response = user_client.post("/billing/charges", {"agent_id": "no-such-agent"}, format="json")
    assert response.status_code == STATUS_BY_CODE["AGENT_UNAVAILABLE"] == 404
    assert response.json()["error_code"] == "AGENT_UNAVAILABLE"
