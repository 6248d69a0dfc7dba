from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from users.models import User


def user_create(*, email: str, password: str) -> User:
    """Create a normal (non-staff) user.

    Raises ValidationError keyed by field: a password failing Django's validators, or an
    e-mail already taken (also when two sign-ups race for it).
    """
    user = User(email=User.objects.normalize_email(email))
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from exc
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as exc:
        raise ValidationError({"email": ["A user with this e-mail already exists."]}) from exc
    return user


@transaction.atomic
def password_change(*, user: User, old_password: str, new_password: str) -> None:
    """Change a user's password and revoke every refresh token they hold (all devices log in
    again). Raises ValidationError keyed by field: a wrong old password, a weak new one."""
    if not user.check_password(old_password):
        raise ValidationError({"old_password": ["The current password is not correct."]})
    try:
        validate_password(new_password, user=user)
    except ValidationError as exc:
        raise ValidationError({"new_password": exc.messages}) from exc
    user.set_password(new_password)
    user.save(update_fields=["password"])
    refresh_tokens_revoke(user=user)


def refresh_tokens_revoke(*, user: User) -> int:
    """Blacklist every refresh token issued to `user` that is not blacklisted yet; how many."""
    outstanding = OutstandingToken.objects.filter(user=user).exclude(blacklistedtoken__isnull=False)
    revoked = 0
    for token in outstanding:
        _, created = BlacklistedToken.objects.get_or_create(token=token)
        revoked += created
    return revoked
