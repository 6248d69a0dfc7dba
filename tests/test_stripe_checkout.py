import pytest
from djstripe.models import Customer as MirrorCustomer

from billing.models import Purchase, PurchaseStatus
from users.models import User

pytestmark = pytest.mark.django_db


def test_checkout_creates_customer_and_session_with_the_exact_parameters(
    user_client, user, fake_stripe, settings, django_capture_on_commit_callbacks
):
    settings.FRONTEND_URL = "https://app.example.com/"
    with django_capture_on_commit_callbacks(execute=True):
        response = user_client.post("/billing/checkout", {"package_id": "pack_5k"}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["session_id"].startswith("cs_test_")
    assert body["checkout_url"].startswith("https://checkout.stripe.com/")

    [customer_call] = fake_stripe.requests_to("POST", "/v1/customers")
    assert customer_call.params == {
        "email": user.email,
        "metadata": {"user_id": str(user.id), "djstripe_subscriber": str(user.id)},
    }
    assert customer_call.headers["Idempotency-Key"] == f"customer-for-user-{user.id}"
    user.refresh_from_db()
    assert user.stripe_customer_id.startswith("cus_")

    [session_call] = fake_stripe.requests_to("POST", "/v1/checkout/sessions")
    metadata = {"user_id": str(user.id), "package_id": "pack_5k"}
    assert session_call.params == {
        "mode": "payment",
        "customer": user.stripe_customer_id,
        "client_reference_id": str(user.id),
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": "4500",
                    "product_data": {"name": "Team — 5,000 credits", "metadata": {"package_id": "pack_5k"}},
                },
                "quantity": "1",
            }
        ],
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
        "success_url": "https://app.example.com/billing/success?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://app.example.com/billing/cancel?session_id={CHECKOUT_SESSION_ID}",
    }
    assert session_call.headers["Idempotency-Key"].startswith(f"checkout-{user.id}-pack_5k-")
    assert session_call.headers["Stripe-Version"] == settings.STRIPE_API_VERSION

    purchase = Purchase.objects.get()
    assert (purchase.user_id, purchase.package_id, purchase.credits) == (user.id, "pack_5k", 5000)
    assert (purchase.amount_cents, purchase.currency, purchase.status) == (4500, "usd", PurchaseStatus.PENDING)
    assert purchase.stripe_checkout_session_id == body["session_id"]
    assert purchase.transaction is None  # nothing is credited before the webhook

    mirrored = MirrorCustomer.objects.get(id=user.stripe_customer_id)
    assert mirrored.email == user.email


def test_a_second_checkout_reuses_the_customer(user_client, fake_stripe):
    user_client.post("/billing/checkout", {"package_id": "pack_1k"}, format="json")
    user_client.post("/billing/checkout", {"package_id": "pack_1k"}, format="json")
    assert len(fake_stripe.requests_to("POST", "/v1/customers")) == 1
    assert len(fake_stripe.requests_to("POST", "/v1/checkout/sessions")) == 2
    assert Purchase.objects.count() == 2


def test_a_package_with_a_stripe_price_uses_it(user_client, fake_stripe, settings, tmp_path):
    price = fake_stripe.create("/v1/prices", {"currency": "usd", "unit_amount": "1000", "product": "prod_x"})
    packages = tmp_path / "packages.json"
    packages.write_text(settings.BILLING_PACKAGES_FILE.read_text().replace("null", f'"{price["id"]}"', 1))
    settings.BILLING_PACKAGES_FILE = packages
    from billing.packages import all_packages

    all_packages.cache_clear()
    try:
        response = user_client.post("/billing/checkout", {"package_id": "pack_1k"}, format="json")
    finally:
        all_packages.cache_clear()
    assert response.status_code == 200
    [call] = fake_stripe.requests_to("POST", "/v1/checkout/sessions")
    assert call.params["line_items"] == [{"price": price["id"], "quantity": "1"}]


def test_the_same_idempotency_key_returns_the_same_session(user_client, fake_stripe):
    first = user_client.post("/billing/checkout", {"package_id": "pack_1k"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    again = user_client.post("/billing/checkout", {"package_id": "pack_1k"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert first.json() == again.json()
    assert Purchase.objects.count() == 1


@pytest.mark.parametrize("body", [{"package_id": "pack_nope"}, {"package_id": "PACK_1K"}])
def test_an_unknown_package_is_404_and_stripe_is_not_called(user_client, fake_stripe, body):
    response = user_client.post("/billing/checkout", body, format="json")
    assert response.status_code == 404
    assert response.json()["error_code"] == "UNKNOWN_PACKAGE"
    assert fake_stripe.requests == [] and not Purchase.objects.exists()


@pytest.mark.parametrize("body", [{}, {"package_id": ""}, {"package_id": 5}, {"package_id": ["pack_1k"]}])
def test_a_missing_or_bad_package_id_is_400(user_client, fake_stripe, body):
    response = user_client.post("/billing/checkout", body, format="json")
    assert response.status_code == 400
    assert "package_id" in response.json()["errors"]


def test_stripe_unreachable_is_503_and_nothing_is_recorded(user_client, user):
    # The autouse guard points the SDK at a closed port on 127.0.0.1.
    response = user_client.post("/billing/checkout", {"package_id": "pack_1k"}, format="json")
    assert response.status_code == 503
    assert response.json()["error_code"] == "STRIPE_UNAVAILABLE"
    assert not Purchase.objects.exists()
    assert User.objects.get(pk=user.pk).stripe_customer_id is None


@pytest.mark.parametrize("status, code, expected", [(500, 500, 503), (400, 400, 502)])
def test_stripe_errors_map_to_gateway_codes(user_client, fake_stripe, status, code, expected):
    fake_stripe.fail_next.append(status)
    response = user_client.post("/billing/checkout", {"package_id": "pack_1k"}, format="json")
    assert response.status_code == expected
    assert response.json()["error_code"] in {"STRIPE_UNAVAILABLE", "STRIPE_ERROR"}
    assert not Purchase.objects.exists()


def test_checkout_needs_a_jwt(anon, fake_stripe):
    assert anon.post("/billing/checkout", {"package_id": "pack_1k"}, format="json").status_code == 401
    assert fake_stripe.requests == []
