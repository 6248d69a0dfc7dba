from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError
from rest_framework_simplejwt.serializers import PasswordField, TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.tokens import RefreshToken

from users.models import User
from users.services import password_change, user_create

# Django's password validators as far as a schema can say them: 8 to 128 characters, not only
# digits (the common-password list and the likeness to the e-mail cannot be said; they are checked).
PASSWORD_MIN_LENGTH, PASSWORD_MAX_LENGTH = 8, 128
NOT_ONLY_DIGITS = r"\D"  # unanchored: contains a character that is not a digit


class NewPasswordField(serializers.CharField):
    """A password to set, taken exactly as typed (Django's own forms do not strip passwords
    either), with the rules the schema states; Django's validators check the rest."""

    def __init__(self, **kwargs):
        super().__init__(
            write_only=True,
            min_length=PASSWORD_MIN_LENGTH,
            max_length=PASSWORD_MAX_LENGTH,
            trim_whitespace=False,
            validators=[RegexValidator(NOT_ONLY_DIGITS, "This password is entirely numeric.")],
            **kwargs,
        )


class LogInSerializer(TokenObtainPairSerializer):
    """simplejwt's log-in (e-mail and password → a token pair), the password taken as typed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["password"] = PasswordField(trim_whitespace=False, max_length=PASSWORD_MAX_LENGTH)

    class Meta:
        ref_name = "LogIn"


class TokenPairSerializer(serializers.Serializer):
    """What a log-in or a refresh answers: a new access token and a new (rotated) refresh token."""

    access = serializers.CharField()
    refresh = serializers.CharField()

    class Meta:
        ref_name = "TokenObtainPair"


class RefreshInputSerializer(serializers.Serializer):
    """A refresh token to exchange (simplejwt's TokenRefreshSerializer reads it)."""

    refresh = serializers.CharField()


class UserOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "email", "is_staff", "date_joined"]


class RegisterApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_scope = "auth"

    class RegisterInputSerializer(serializers.Serializer):
        email = serializers.EmailField(max_length=254)
        password = NewPasswordField()

        def validate_email(self, value: str) -> str:
            if User.objects.filter(email__iexact=value).exists():
                raise serializers.ValidationError("A user with this e-mail already exists.")
            return value

    @extend_schema(request=RegisterInputSerializer, responses={201: UserOutputSerializer})
    def post(self, request):
        serializer = self.RegisterInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            user = user_create(**serializer.validated_data)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return Response(UserOutputSerializer(user).data, status=status.HTTP_201_CREATED)


class MeApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: UserOutputSerializer})
    def get(self, request):
        return Response(UserOutputSerializer(request.user).data)


class RefreshSerializer(TokenRefreshSerializer):
    """simplejwt's refresh, but a token whose user was deleted is a 401, not a 500."""

    def validate(self, attrs):
        try:
            return super().validate(attrs)
        except User.DoesNotExist:
            raise InvalidToken("The token's user no longer exists.") from None


class LogoutApi(APIView):
    """Revoke a refresh token (blacklisted: it can never be refreshed again). Holding the token
    is the proof; an expired access token does not prevent logging out."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_scope = "auth"

    class LogoutInputSerializer(serializers.Serializer):
        refresh = serializers.CharField(max_length=4096)

    @extend_schema(request=LogoutInputSerializer, responses={204: None})
    def post(self, request):
        serializer = self.LogoutInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            RefreshToken(serializer.validated_data["refresh"]).blacklist()
        except TokenError as exc:
            raise serializers.ValidationError({"refresh": [str(exc)]}) from exc
        return Response(status=status.HTTP_204_NO_CONTENT)


class PasswordChangeApi(APIView):
    """Change the signed-in user's password; every refresh token of the user is revoked and
    access tokens issued before stop working."""

    permission_classes = [IsAuthenticated]
    throttle_scope = "auth"

    class PasswordChangeInputSerializer(serializers.Serializer):
        old_password = serializers.CharField(write_only=True, max_length=PASSWORD_MAX_LENGTH, trim_whitespace=False)
        new_password = NewPasswordField()

    @extend_schema(request=PasswordChangeInputSerializer, responses={204: None})
    def post(self, request):
        serializer = self.PasswordChangeInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            password_change(user=request.user, **serializer.validated_data)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return Response(status=status.HTTP_204_NO_CONTENT)
