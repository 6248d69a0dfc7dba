from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

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
