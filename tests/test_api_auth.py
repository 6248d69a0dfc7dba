import pytest

from users.models import User

pytestmark = pytest.mark.django_db


def test_register_then_log_in_with_email_refresh_and_read_me(anon):
    created = anon.post("/auth/register", {"email": "New@Example.com", "password": "a-long-passphrase"}, format="json")
    assert created.status_code == 201
    assert created.json()["email"] == "New@example.com"
    assert not User.objects.get(email="New@example.com").is_staff

    tokens = anon.post("/auth/token", {"email": "New@example.com", "password": "a-long-passphrase"}, format="json")
    assert tokens.status_code == 200
    assert set(tokens.json()) == {"access", "refresh"}

    refreshed = anon.post("/auth/token/refresh", {"refresh": tokens.json()["refresh"]}, format="json")
    assert refreshed.status_code == 200 and "access" in refreshed.json()

    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    me = anon.get("/auth/me")
    assert me.status_code == 200 and me.json()["email"] == "New@example.com"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"email": "not-an-email", "password": "a-long-passphrase"}, "email"),
        ({"email": "a@example.com", "password": "123"}, "password"),
        ({"email": "a@example.com", "password": "password"}, "password"),
        ({"password": "a-long-passphrase"}, "email"),
        ({"email": "a@example.com"}, "password"),
    ],
)
def test_register_refuses_bad_input_with_field_errors(anon, body, field):
    response = anon.post("/auth/register", body, format="json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "VALIDATION_ERROR"
    assert field in response.json()["errors"]
    assert not User.objects.filter(email="a@example.com").exists()


def test_register_refuses_a_taken_email_in_any_case(anon, user):
    response = anon.post(
        "/auth/register", {"email": user.email.upper(), "password": "a-long-passphrase"}, format="json"
    )
    assert response.status_code == 400
    assert "email" in response.json()["errors"]


def test_wrong_password_gets_401(anon, user):
    response = anon.post("/auth/token", {"email": user.email, "password": "wrong"}, format="json")
    assert response.status_code == 401
    assert response.json()["error_code"] == "AUTHENTICATION_FAILED"


def test_me_needs_a_valid_token(anon):
    assert anon.get("/auth/me").status_code == 401
    anon.credentials(HTTP_AUTHORIZATION="Bearer not-a-jwt")
    response = anon.get("/auth/me")
    assert response.status_code == 401
    assert response.json()["error_code"] == "AUTHENTICATION_FAILED"


def test_malformed_json_is_a_400_not_a_500(anon):
    response = anon.generic("POST", "/auth/register", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "MALFORMED_REQUEST"
