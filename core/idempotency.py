"""The `Idempotency-Key` request header: read, checked and put in the clients' own namespace."""

from drf_spectacular.utils import OpenApiParameter

from core.errors import InvalidIdempotencyKey
from core.fields import CLIENT_KEY_PREFIX

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX_LENGTH = 255
# Printable characters (str.isprintable: no control, format or separator characters other than the
# space), spaces only inside. For what a header can carry (Latin-1) the pattern is exactly that check.
_PRINTABLE = r"[^\x00-\x1f\x7f-\xa0\xad]"
_VISIBLE = r"[^\s\x00-\x1f\x7f-\xa0\xad]"
IDEMPOTENCY_KEY_PATTERN = rf"^{_VISIBLE}(?:{_PRINTABLE}{{0,{IDEMPOTENCY_KEY_MAX_LENGTH - 2}}}{_VISIBLE})?$"

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
    OpenApiParameter.HEADER,
    required=False,
    description=(
        f"1–{IDEMPOTENCY_KEY_MAX_LENGTH} printable characters (spaces only inside), compared byte for "
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
    if not key or len(key) > IDEMPOTENCY_KEY_MAX_LENGTH or not key.isprintable():
        raise InvalidIdempotencyKey(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable characters.")
    return CLIENT_KEY_PREFIX + key
