"""Input fields that take JSON types at their word."""

from rest_framework import serializers


class StrictIntegerField(serializers.IntegerField):
    """An integer that is really a JSON integer: "100", 100.0 and true are refused."""

    default_error_messages = {"invalid": "A whole number (JSON integer) is required."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A string that is really a JSON string: 5 and true are refused, not turned into "5"/"True"."""

    default_error_messages = {"invalid": "A string is required."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false: 1, "yes" and "true" are refused."""

    default_error_messages = {"invalid": "true or false (a JSON boolean) is required."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data
