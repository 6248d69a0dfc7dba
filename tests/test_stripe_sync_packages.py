import json
import shutil
from io import StringIO

import pytest
from django.core.management import call_command

from billing.packages import all_packages


@pytest.fixture
def packages_file(settings, tmp_path):
    path = tmp_path / "credit_packages.json"
    shutil.copy(settings.BILLING_PACKAGES_FILE, path)
    settings.BILLING_PACKAGES_FILE = path
    all_packages.cache_clear()
    yield path
    all_packages.cache_clear()


def _run(*args) -> str:
    out = StringIO()
    call_command("stripe_sync_packages", *args, stdout=out)
    return out.getvalue()


def test_dry_run_shows_the_plan_and_changes_nothing(fake_stripe, packages_file):
    before = packages_file.read_text()
    output = _run("--dry-run")
    assert "pack_1k: create product credits_pack_1k" in output
    assert "pack_1k: create price 1000 usd" in output
    assert "Dry run: 6 change(s) not applied." in output
    assert packages_file.read_text() == before
    assert fake_stripe.requests_to("POST", "/v1/products") == []
    assert fake_stripe.requests_to("POST", "/v1/prices") == []


def test_sync_creates_products_and_prices_and_writes_the_ids_back(fake_stripe, packages_file):
    output = _run()
    assert "3 price id(s) written" in output
    written = {p["package_id"]: p for p in json.loads(packages_file.read_text())}
    for package_id, price_cents in (("pack_1k", 1000), ("pack_5k", 4500), ("pack_20k", 16000)):
        price = fake_stripe.objects[written[package_id]["stripe_price_id"]]
        assert (price["unit_amount"], price["currency"], price["product"], price["lookup_key"]) == (
            price_cents,
            "usd",
            f"credits_{package_id}",
            package_id,
        )
        assert fake_stripe.objects[f"credits_{package_id}"]["name"] == written[package_id]["name"]
    assert all(r.headers.get("Idempotency-Key") for r in fake_stripe.requests_to("POST", "/v1/prices"))

    again = _run()
    assert "0 change(s) applied" in again
    assert len(fake_stripe.requests_to("POST", "/v1/prices")) == 3


def test_a_changed_price_gets_a_new_stripe_price_and_the_old_one_is_archived(fake_stripe, packages_file):
    _run()
    data = json.loads(packages_file.read_text())
    old_id = data[0]["stripe_price_id"]
    data[0]["price_cents"] = 1200
    packages_file.write_text(json.dumps(data))
    all_packages.cache_clear()

    output = _run()

    new_id = json.loads(packages_file.read_text())[0]["stripe_price_id"]
    assert new_id != old_id and f"(archive {old_id})" in output
    assert fake_stripe.objects[old_id]["active"] is False
    assert fake_stripe.objects[new_id]["unit_amount"] == 1200
    assert all_packages()[0].stripe_price_id == new_id


def test_sync_without_stripe_fails_clearly(packages_file):
    from billing.stripe_client import StripeUnavailable

    with pytest.raises(StripeUnavailable):
        _run()
