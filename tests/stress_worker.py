"""One stress process: mixed money operations through the HTTP stack (spawned by test_stress)."""

import os
import random
from collections import Counter

CSV = {"tool_configuration": {}, "data": {"csv": "a,b\n1,2\n"}}


def run(seed: int, database_url: str, user_ids: list[int], staff_id: int, operations: int) -> dict:
    os.environ.update(
        DATABASE_URL=database_url,
        SECRET_KEY="stress-test-secret",
        DEBUG="false",
        DJANGO_SETTINGS_MODULE="config.settings",
    )
    import django

    django.setup()
    from django.test.utils import setup_test_environment

    setup_test_environment()
    from rest_framework.test import APIClient
    from rest_framework_simplejwt.tokens import RefreshToken

    from users.models import User

    def client_for(user_id: int) -> APIClient:
        client = APIClient()
        token = RefreshToken.for_user(User.objects.get(pk=user_id)).access_token
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    rng = random.Random(seed)
    users = {user_id: client_for(user_id) for user_id in user_ids}
    staff = client_for(staff_id)
    statuses: Counter = Counter()
    kinds: Counter = Counter()

    def record(response) -> dict | None:
        statuses[response.status_code] += 1
        return response.json() if response.content else None

    for n in range(operations):
        user_id = rng.choice(user_ids)
        client = users[user_id]
        kind = rng.choice(["grant", "grant_replay", "charge", "hold_capture", "hold_release", "hold_replay", "run"])
        kinds[kind] += 1
        if kind in ("grant", "grant_replay"):
            key = f"grant-{seed}-{n}" if kind == "grant" else f"regrant-{seed}-{n % 5}"
            body = {"user_id": user_id, "credits": 40 if kind == "grant" else 25, "reason": "stress"}
            record(staff.post("/billing/admin/grant", body, format="json", HTTP_IDEMPOTENCY_KEY=key))
        elif kind == "charge":
            held = record(client.post("/billing/holds", {"agent_id": "validate-my-data"}, format="json"))
            if held and "hold_id" in held:
                record(client.post(f"/billing/holds/{held['hold_id']}/capture"))
        elif kind in ("hold_capture", "hold_release"):
            held = record(client.post("/billing/holds", {"agent_id": "profile-my-data"}, format="json"))
            if held and "hold_id" in held:
                verb = "capture" if kind == "hold_capture" else "release"
                record(client.post(f"/billing/holds/{held['hold_id']}/{verb}"))
        elif kind == "hold_replay":
            key = f"hold-{seed}-{n % 7}"
            held = record(
                client.post("/billing/holds", {"agent_id": "profile-my-data"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
            )
            if held and "hold_id" in held and held["status"] == "pending":
                record(client.post(f"/billing/holds/{held['hold_id']}/release"))
        else:
            record(client.post("/api/profile-my-data", CSV, format="json"))
    return {"statuses": dict(statuses), "kinds": dict(kinds), "operations": operations}
