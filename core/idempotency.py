"""The `Idempotency-Key` request header: read, checked and put in the clients' own namespace."""

import re

from drf_spectacular.utils import OpenApiParameter

from core.errors import InvalidIdempotencyKey
from core.fields import CLIENT_KEY_PREFIX

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX_LENGTH = 255
# Visible ASCII (RFC 9110's VCHAR), spaces only inside: what a header value carries unmangled.
IDEMPOTENCY_KEY_PATTERN = rf"^[!-~](?:[ -~]{{0,{IDEMPOTENCY_KEY_MAX_LENGTH - 2}}}[!-~])?$"

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
    OpenApiParameter.HEADER,
    required=False,
    description=(
        f"1–{IDEMPOTENCY_KEY_MAX_LENGTH} visible ASCII characters (spaces only inside), compared byte for "
        "byte. The same key replays the first result without moving credits again; with other parameters "
        "it is 409 IDEMPOTENCY_KEY_REUSED."
    ),
)


def idempotency_key(request) -> str | None:
    """The request's `Idempotency-Key` header, if any, in the clients' own namespace: no client key
    can equal a key the system writes (Stripe purchases, claw-backs)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} visible ASCII characters."
        )
    return CLIENT_KEY_PREFIX + key
