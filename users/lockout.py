"""Who a log-in attempt is for and where it comes from, as django-axes counts failures.

The API logs in with `email`, the admin's form with `username` (holding the e-mail); both
are the same account, however the address they come from changes. The address is the
socket's unless NUM_PROXIES trusted proxies stand in front (as DRF's throttles see it), so a
forged X-Forwarded-For changes nothing."""

USERNAME_MAX_LENGTH = 255  # axes stores it in a varchar(255); longer is no real account anyway


def username_of_attempt(request, credentials: dict | None) -> str | None:
    values = credentials or {}
    for source in (values, getattr(request, "POST", {}) or {}):
        for key in ("email", "username"):
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip().lower()[:USERNAME_MAX_LENGTH]
    return None
