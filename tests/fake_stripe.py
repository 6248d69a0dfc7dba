"""A fake Stripe API on 127.0.0.1 for tests: the real stripe SDK talks HTTP to it.

It implements the few endpoints we use with objects shaped like Stripe's (see
tests/stripe_payloads/ for recorded shapes), keeps what it creates, honours Stripe's
`Idempotency-Key` header, and records every request so tests can assert the exact
parameters we sent.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

ACCOUNT_ID = "acct_1FakeStripeAcct0"
# Stripe's test payment methods that decline, and how (any other payment method succeeds).
DECLINES = {
    "pm_card_chargeDeclined": "card_declined",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_authenticationRequired": "authentication_required",
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: dict
    headers: dict


def _nest(pairs: list[tuple[str, str]]) -> dict:
    """Decode Stripe's form encoding (`a[b][0][c]=v`) into nested dicts/lists."""
    root: dict = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = None if last else parts[i + 1]
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append({} if nxt is not None and not nxt.isdigit() else [])
                if last:
                    node[index] = value
                else:
                    if not isinstance(node[index], (dict, list)) or (nxt.isdigit() and isinstance(node[index], dict)):
                        node[index] = [] if nxt.isdigit() else {}
                    node = node[index]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if nxt.isdigit() else {})
    return root


@dataclass
class FakeStripe:
    objects: dict[str, dict] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    idempotent: dict[str, dict] = field(default_factory=dict)
    fail_next: list[int] = field(default_factory=list)
    _ids = itertools.count(1)
    _lock = threading.Lock()

    # --- object factories (shapes follow Stripe API 2026-05 "dahlia") ---------------
    def new_id(self, prefix: str) -> str:
        return f"{prefix}_Fake{next(self._ids):010d}"

    def account(self) -> dict:
        return {
            "id": ACCOUNT_ID,
            "object": "account",
            "business_profile": {"name": "Credit Ledger Test", "url": None, "support_email": None},
            "business_type": "company",
            "charges_enabled": True,
            "country": "US",
            "created": 1700000000,
            "default_currency": "usd",
            "details_submitted": True,
            "email": "billing@example.com",
            "metadata": {},
            "payouts_enabled": True,
            "settings": {"branding": {"icon": None, "logo": None}, "dashboard": {"display_name": "Ledger"}},
            "type": "standard",
        }

    def create(self, path: str, params: dict) -> dict:
        now = int(time.time())
        if path == "/v1/customers":
            obj = {
                "id": self.new_id("cus"),
                "object": "customer",
                "address": None,
                "balance": 0,
                "created": now,
                "currency": None,
                "default_source": None,
                "delinquent": False,
                "description": params.get("description"),
                "email": params.get("email"),
                "invoice_prefix": "FAKE0001",
                "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
                "livemode": False,
                "metadata": params.get("metadata", {}),
                "name": params.get("name"),
                "phone": None,
                "preferred_locales": [],
                "shipping": None,
                "tax_exempt": "none",
            }
        elif path == "/v1/checkout/sessions":
            session_id = self.new_id("cs_test")
            items = params.get("line_items", [])
            amount = 0
            currency = None
            for item in items:
                if "price" in item:
                    price = self.objects[item["price"]]
                    amount += price["unit_amount"] * int(item.get("quantity", 1))
                    currency = price["currency"]
                else:
                    amount += int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1))
                    currency = item["price_data"]["currency"]
            obj = {
                "id": session_id,
                "object": "checkout.session",
                "amount_subtotal": amount,
                "amount_total": amount,
                "cancel_url": params.get("cancel_url"),
                "client_reference_id": params.get("client_reference_id"),
                "created": now,
                "currency": currency,
                "customer": params.get("customer"),
                "customer_email": None,
                "expires_at": now + 86400,
                "livemode": False,
                "metadata": params.get("metadata", {}),
                "mode": params.get("mode"),
                "payment_intent": None,
                "payment_status": "unpaid",
                "status": "open",
                "success_url": params.get("success_url"),
                "url": f"https://checkout.stripe.com/c/pay/{session_id}#fake",
            }
        elif path == "/v1/products":
            obj = {
                "id": params.get("id") or self.new_id("prod"),
                "object": "product",
                "active": params.get("active", "true") == "true",
                "created": now,
                "description": params.get("description"),
                "livemode": False,
                "metadata": params.get("metadata", {}),
                "name": params.get("name"),
                "updated": now,
            }
        elif path == "/v1/prices":
            obj = {
                "id": self.new_id("price"),
                "object": "price",
                "active": True,
                "billing_scheme": "per_unit",
                "created": now,
                "currency": params.get("currency"),
                "livemode": False,
                "lookup_key": params.get("lookup_key"),
                "metadata": params.get("metadata", {}),
                "product": params.get("product"),
                "recurring": None,
                "type": "one_time",
                "unit_amount": int(params.get("unit_amount")),
            }
            if params.get("transfer_lookup_key") == "true":
                for other in self.objects.values():
                    if other.get("object") == "price" and other.get("lookup_key") == obj["lookup_key"]:
                        other["lookup_key"] = None
        elif path == "/v1/payment_intents":
            obj = {
                "id": self.new_id("pi"),
                "object": "payment_intent",
                "amount": int(params["amount"]),
                "amount_received": 0,
                "currency": params.get("currency"),
                "customer": params.get("customer"),
                "created": now,
                "description": params.get("description"),
                "livemode": False,
                "metadata": params.get("metadata", {}),
                "off_session": params.get("off_session") == "true",
                "payment_method": params.get("payment_method"),
                "status": "requires_payment_method",
                "last_payment_error": None,
            }
            outcome = DECLINES.get(params.get("payment_method") or "")
            if outcome is None:
                obj["status"], obj["amount_received"] = "succeeded", obj["amount"]
            else:
                obj["status"] = "requires_action" if outcome == "authentication_required" else "requires_payment_method"
                obj["last_payment_error"] = {
                    "code": outcome,
                    "message": f"Fake decline: {outcome}",
                    "type": "card_error",
                }
        else:
            raise KeyError(path)
        self.objects[obj["id"]] = obj
        return obj

    def payment_method(self, payment_method_id: str, customer: str | None) -> dict:
        """A saved card as Stripe's test cards are (pm_card_visa …), attached to `customer`."""
        obj = {
            "id": payment_method_id,
            "object": "payment_method",
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030, "country": "US"},
            "created": int(time.time()),
            "customer": customer,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
        self.objects[payment_method_id] = obj
        return obj

    def update(self, object_id: str, params: dict) -> dict:
        obj = self.objects[object_id]
        for key, value in params.items():
            if key == "metadata":
                obj.setdefault("metadata", {}).update(value)
            elif key == "active":
                obj["active"] = value == "true"
            else:
                obj[key] = value
        return obj

    def list(self, path: str, query: dict) -> dict:
        kind = {"/v1/prices": "price", "/v1/products": "product"}[path]
        rows = [o for o in self.objects.values() if o.get("object") == kind]
        lookup_keys = query.get("lookup_keys")
        if lookup_keys is not None:
            rows = [o for o in rows if o.get("lookup_key") in lookup_keys]
        return {"object": "list", "data": rows, "has_more": False, "url": path}

    # --- HTTP plumbing -------------------------------------------------------------
    def handle(self, method: str, raw_path: str, body: str, headers: dict) -> tuple[int, dict]:
        split = urlsplit(raw_path)
        path = split.path
        params = _nest(parse_qsl(body, keep_blank_values=True)) if body else {}
        query = _nest(parse_qsl(split.query, keep_blank_values=True))
        with self._lock:
            self.requests.append(RecordedRequest(method, path, params if method == "POST" else query, headers))
            if self.fail_next:
                return self.fail_next.pop(0), _error("api_error", "Fake Stripe failure")
            key = headers.get("Idempotency-Key")
            if method == "POST" and key and key in self.idempotent:
                return 200, self.idempotent[key]
            status, payload = self._route(method, path, params, query)
            if method == "POST" and key and status == 200:
                self.idempotent[key] = payload
            return status, payload

    def _route(self, method: str, path: str, params: dict, query: dict) -> tuple[int, dict]:
        if path == "/v1/account" and method == "GET":
            return 200, self.account()
        detach = re.fullmatch(r"/v1/payment_methods/([^/]+)/detach", path)
        if detach and method == "POST":
            found = self.objects.get(detach.group(1))
            if found is None:
                return 404, _error("invalid_request_error", "No such PaymentMethod", code="resource_missing")
            found["customer"] = None
            return 200, found
        match = re.fullmatch(
            r"/v1/(customers|checkout/sessions|products|prices|payment_intents|payment_methods)(?:/([^/]+))?", path
        )
        if not match:
            return 404, _error("invalid_request_error", f"Unrecognized request URL ({method}: {path}).")
        collection, object_id = match.groups()
        if object_id is None:
            if method == "POST":
                created = self.create(f"/v1/{collection}", params)
                error = created.get("last_payment_error") if collection == "payment_intents" else None
                if error:
                    return 402, {"error": {**error, "payment_intent": created}}
                return 200, created
            return 200, self.list(f"/v1/{collection}", query)
        if object_id not in self.objects:
            return 404, _error("invalid_request_error", f"No such object: '{object_id}'", code="resource_missing")
        if method == "POST":
            return 200, self.update(object_id, params)
        return 200, self.objects[object_id]

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]


def _error(kind: str, message: str, code: str | None = None) -> dict:
    return {"error": {"type": kind, "message": message, "code": code}}


def serve(fake: FakeStripe) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def _respond(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            status, payload = fake.handle(method, self.path, body, dict(self.headers))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_fake{len(fake.requests)}")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._respond("GET")

        def do_POST(self):
            self._respond("POST")

        def do_DELETE(self):
            self._respond("DELETE")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
