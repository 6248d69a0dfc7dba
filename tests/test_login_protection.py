"""Log-in protection: per-account lockout (API and admin, however the address changes),
admin log-in rate limits, and TOTP two-factor for staff."""

import pytest
from django.core.cache import cache
from django.test import Client
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.factories import StaffFactory, UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-9"


@pytest.fixture(autouse=True)
def _small_limit(settings):
    settings.AXES_FAILURE_LIMIT = 5


def _token(anon, email, password, address):
    return anon.post(
        "/auth/token",
        {"email": email, "password": password},
        format="json",
        REMOTE_ADDR=address,
        HTTP_X_FORWARDED_FOR=f"203.0.113.{address.rsplit('.', 1)[1]}",
    )


def test_an_account_locks_after_repeated_failures_from_any_address(anon):
    user = UserFactory(password=PASSWORD)
    codes = [_token(anon, user.email, "wrong", f"198.51.100.{i}").status_code for i in range(5)]
    assert codes == [401, 401, 401, 401, 429]  # the fifth failure locks the account
    locked = _token(anon, user.email, PASSWORD, "198.51.100.77")  # right password, fresh address
    assert locked.status_code == 429 and locked.json()["error_code"] == "ACCOUNT_LOCKED"
    other = UserFactory(password=PASSWORD)
    assert _token(anon, other.email, PASSWORD, "198.51.100.78").status_code == 200  # others unaffected


def _admin_login(client, email, password, address="192.0.2.1", **extra):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": email, "password": password, **extra},
        REMOTE_ADDR=address,
    )


def test_admin_log_in_locks_out_after_repeated_failures():
    staff = StaffFactory(password=PASSWORD)
    client = Client()
    codes = [_admin_login(client, staff.email, "wrong", address=f"192.0.2.{i}").status_code for i in range(5)]
    assert codes == [200, 200, 200, 200, 429]  # the form again, until the account locks
    locked = _admin_login(client, staff.email, PASSWORD, address="192.0.2.99")
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session


def test_a_staff_member_with_an_authenticator_must_give_its_code():
    staff = StaffFactory(password=PASSWORD)
    device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    client = Client()

    without = _admin_login(client, staff.email, PASSWORD)
    assert without.status_code == 200 and "_auth_user_id" not in client.session
    wrong = _admin_login(client, staff.email, PASSWORD, otp_device=device.persistent_id, otp_token="000000")
    assert wrong.status_code == 200 and "_auth_user_id" not in client.session
    device.refresh_from_db()
    device.throttle_reset()  # django-otp slows down guessing after a wrong code

    code = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token()
    right = _admin_login(client, staff.email, PASSWORD, otp_device=device.persistent_id, otp_token=f"{code:06d}")
    assert right.status_code == 302 and right["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_finance_staff_need_two_factor_when_required(settings, staff):
    staff.set_password(PASSWORD)
    staff.save()
    client = Client()
    assert _admin_login(client, staff.email, PASSWORD).status_code == 302  # not required: password is enough

    settings.ADMIN_2FA_REQUIRED_GROUPS = ["Finance", "Finance viewer"]
    assert client.get("/admin/").status_code == 302  # the unverified session no longer opens the admin
    fresh = Client()
    refused = _admin_login(fresh, staff.email, PASSWORD, address="192.0.2.50")
    assert refused.status_code == 200 and b"two-factor" in refused.content
    assert "_auth_user_id" not in fresh.session

    device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    code = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token()
    verified = _admin_login(fresh, staff.email, PASSWORD, otp_device=device.persistent_id, otp_token=f"{code:06d}")
    assert verified.status_code == 302
    assert fresh.get("/admin/").status_code == 200


def test_admin_log_in_posts_are_rate_limited_per_address(settings):
    settings.ADMIN_LOGIN_RATE = "3/min"
    cache.clear()
    client = Client()
    people = [StaffFactory(password=PASSWORD) for _ in range(4)]
    codes = [_admin_login(client, person.email, "wrong", address="192.0.2.200").status_code for person in people]
    assert codes == [200, 200, 200, 429]  # four accounts, one address: the fourth post is refused
    assert _admin_login(Client(), people[0].email, PASSWORD, address="192.0.2.201").status_code == 302
    cache.clear()
