"""Where a request comes from: the socket's address, unless NUM_PROXIES trusted proxies stand in
front (then the address they saw, counted from the right), as DRF's throttles see it, so a forged
X-Forwarded-For changes nothing."""

from django.conf import settings


def client_address(request) -> str | None:
    request = getattr(request, "_request", request)  # a DRF Request wraps Django's
    meta = request.META
    forwarded, proxies = meta.get("HTTP_X_FORWARDED_FOR"), settings.NUM_PROXIES
    if proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",")]
        return hops[-min(proxies, len(hops))]
    return meta.get("REMOTE_ADDR")
