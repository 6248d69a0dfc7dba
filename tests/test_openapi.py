from io import StringIO

import pytest
import yaml
from django.core.management import call_command

CONTRACT_PATHS = {
    "/health",
    "/auth/register",
    "/auth/token",
    "/auth/token/refresh",
    "/auth/me",
    "/billing/packages",
    "/billing/agent-costs",
    "/billing/wallet",
    "/billing/transactions",
    "/billing/checkout",
    "/billing/webhook",
    "/billing/admin/grant",
    "/billing/admin/seed-costs",
    "/api/profile-my-data",
    "/api/clean-my-data",
    "/api/master-my-data",
}


@pytest.mark.django_db
def test_the_schema_is_valid_warning_free_and_covers_the_contract():
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    schema = yaml.safe_load(out.getvalue())
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) >= CONTRACT_PATHS


@pytest.mark.django_db
def test_schema_and_docs_are_served(anon):
    assert anon.get("/api/schema").status_code == 200
    docs = anon.get("/api/docs")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower()  # Swagger UI comes from our static files
