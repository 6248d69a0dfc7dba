"""Signed event webhooks: written with the change that causes them (outbox), delivered at least once
to a receiver on 127.0.0.1 that fails, times out and answers 500 at random, each delivery verifying
with the `standardwebhooks` reference library."""

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook

from agents import runner
from billing import events, ledger
from billing.models import DeliveryStatus, OutboxEvent, WebhookDelivery, WebhookEndpoint
from tests.conftest import bearer_client
from tests.factories import UserFactory
from tests.stripe_helpers import checkout_event, deliver, refund_event

pytestmark = pytest.mark.django_db


class Receiver:
    """A local HTTP receiver; `behaviour()` picks each answer: "ok", "error" (500), "slow" (answers
    after the sender's timeout: processed, but the sender retries) or "redirect"."""

    def __init__(self, behaviour):
        self.received: list[tuple[str, bytes, dict]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.received.append((self.headers["webhook-id"], body, dict(self.headers)))
                    action = behaviour()
                if action == "slow":
                    time.sleep(0.6)
                if action == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                    self.end_headers()
                    return
                self.send_response(500 if action == "error" else 200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(behaviour):
        receiver = Receiver(behaviour)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


def sweep_until_settled(rounds: int = 60) -> None:
    """Run the sweep, making every retry due at once (instead of waiting out the back-off)."""
    for _ in range(rounds):
        WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING).update(next_attempt_at=timezone.now())
        events.deliver_due()
        if not WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING).exists():
            return


def test_every_event_arrives_at_least_once_signed_despite_failures_timeouts_and_500s(receiver_factory, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.3
    rng = random.Random(18)
    receiver = receiver_factory(lambda: rng.choice(["ok", "error", "slow", "redirect", "ok"]))
    endpoint = WebhookEndpoint.objects.create(url=receiver.url)
    user = UserFactory()
    emitted = []
    for n in range(30):
        with transaction.atomic():
            emitted.append(events.emit("purchase.completed", {"n": n}, user_id=user.id).event_id)
    sweep_until_settled()

    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {DeliveryStatus.DELIVERED}
    received_ids = [event_id for event_id, _, _ in receiver.received]
    assert set(received_ids) == set(emitted)  # none lost, nothing unknown
    assert len(received_ids) > len(emitted)  # the failures were retried
    bodies: dict[str, bytes] = {}
    verifier = Webhook(endpoint.secret)
    for event_id, body, headers in receiver.received:
        payload = verifier.verify(body, headers)  # raises unless the signature and timestamp hold
        assert payload["type"] == "purchase.completed"
        assert bodies.setdefault(event_id, body) == body  # a duplicate is the same event, byte for byte


def test_a_rolled_back_change_sends_nothing(receiver_factory):
    receiver = receiver_factory(lambda: "ok")
    WebhookEndpoint.objects.create(url=receiver.url)
    with pytest.raises(RuntimeError), transaction.atomic():
        events.emit("purchase.completed", {"n": 1})
        raise RuntimeError("the change failed")
    sweep_until_settled()
    assert OutboxEvent.objects.count() == 0 and receiver.received == []


def test_a_forged_or_stale_signature_does_not_verify(receiver_factory):
    receiver = receiver_factory(lambda: "ok")
    endpoint = WebhookEndpoint.objects.create(url=receiver.url)
    with transaction.atomic():
        events.emit("shortfall.opened", {"credits": 5})
    sweep_until_settled()
    ((_, body, headers),) = receiver.received
    other = WebhookEndpoint.objects.create(url=receiver.url)
    with pytest.raises(Exception, match="signature"):
        Webhook(other.secret).verify(body, headers)  # another endpoint's secret
    tampered = body.replace(b"5", b"6")
    with pytest.raises(Exception, match="signature"):
        Webhook(endpoint.secret).verify(tampered, headers)


def test_an_endpoint_gets_only_the_event_types_it_asked_for(receiver_factory):
    receiver = receiver_factory(lambda: "ok")
    WebhookEndpoint.objects.create(url=receiver.url, event_types=["shortfall.opened"])
    WebhookEndpoint.objects.create(url=receiver.url, is_active=False)
    with transaction.atomic():
        events.emit("purchase.completed", {})
        events.emit("shortfall.opened", {})
    sweep_until_settled()
    assert [json.loads(body)["type"] for _, body, _ in receiver.received] == ["shortfall.opened"]


def test_a_delivery_gives_up_after_the_retry_window_and_staff_can_resend_it(receiver_factory, settings):
    answers = ["error"]
    receiver = receiver_factory(lambda: answers[0])
    WebhookEndpoint.objects.create(url=receiver.url)
    with transaction.atomic():
        event = events.emit("purchase.refunded", {})
    settings.WEBHOOK_RETRY_HOURS = 0  # the window has passed: the first failure gives up
    events.deliver_due()
    delivery = WebhookDelivery.objects.get(event=event)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.FAILED, 1, 500)
    assert delivery.attempt_log.count() == 1
    answers[0] = "ok"
    events.resend(delivery.pk)
    events.deliver_due()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 2


def test_the_backoff_grows_until_every_ten_hours():
    now = timezone.now()
    gaps = [(events.next_attempt(n, now) - now).total_seconds() for n in range(1, 9)]
    assert gaps == [5, 300, 1800, 7200, 18000, 36000, 36000, 36000]


def test_unknown_event_types_are_refused():
    with pytest.raises(ValueError):
        events.emit("balance.nonsense", {})


def test_stripe_events_emit_purchase_refund_and_shortfall_events_once(client, receiver_factory):
    receiver = receiver_factory(lambda: "ok")
    WebhookEndpoint.objects.create(url=receiver.url)
    user = UserFactory()
    paid = checkout_event(event_id="evt_ev_paid", session_id="cs_ev", user_id=user.id, payment_intent="pi_ev")
    for _ in range(2):  # Stripe retries: the purchase and its event happen once
        assert deliver(client, paid).status_code == 200
    ledger.charge(user_id=user.id, amount=600, agent_id="a")  # spent before the refund
    refund = refund_event(event_id="evt_ev_refund", payment_intent="pi_ev", amount_refunded=1000)
    for _ in range(2):
        assert deliver(client, refund).status_code == 200
    sweep_until_settled()
    # (balance.low and balance.depleted come too: the claw-back emptied the wallet.)
    types = sorted(json.loads(body)["type"] for _, body, _ in receiver.received if "balance." not in body.decode())
    assert types == ["purchase.completed", "purchase.refunded", "shortfall.opened"]
    shortfall = next(json.loads(b)["data"] for _, b, _ in receiver.received if b"shortfall.opened" in b)
    assert (shortfall["clawed_back_credits"], shortfall["shortfall_credits"]) == (400, 600)


@pytest.mark.usefixtures("agent_costs")
def test_agent_runs_tell_the_backend_how_they_ended_once(receiver_factory, monkeypatch):
    receiver = receiver_factory(lambda: "ok")
    WebhookEndpoint.objects.create(url=receiver.url, event_types=["agent_run.succeeded", "agent_run.failed"])
    WebhookEndpoint.objects.create(url=receiver.url, event_types=["purchase.completed"])  # wants none of them
    user = UserFactory()
    ledger.grant(user_id=user.id, amount=1000, reason="runs")
    client = bearer_client(user)
    body = {"tool_configuration": {}, "data": {"csv": "a,b\n1,2\n3,4"}}
    ok = client.post("/api/profile-my-data", body, format="json")
    assert ok.status_code == 200, ok.content
    monkeypatch.setitem(runner.TOOLS, "profile-my-data", "tests.sandbox_tools:boom")
    failed = client.post("/api/profile-my-data", body, format="json")
    assert failed.status_code == 422
    sweep_until_settled()
    told = sorted((json.loads(b)["type"], json.loads(b)["data"]["run_id"]) for _, b, _ in receiver.received)
    assert told == sorted([("agent_run.succeeded", ok.json()["run_id"]), ("agent_run.failed", failed.json()["run_id"])])
    assert OutboxEvent.objects.filter(type__startswith="agent_run.").count() == 2
