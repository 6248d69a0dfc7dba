"""Declaring and checking a tool's options: plain Python, no Django, no DRF.

A tool declares its options once, as an `Options` of typed fields::

    OPTIONS = Options({"top_values": Integer(0, 100, default=5), "ratio": Number(0.0, 1.0, default=0.5)})

`OPTIONS.parse(raw)` returns the options with defaults filled, or raises `OptionsError` whose
`errors` map each option to its messages (nested per key for mappings and objects, like DRF's).
`OPTIONS.schema()` is the JSON Schema of exactly what `parse` accepts. It is written for OpenAPI
3.0 as well: one `type` per schema, no `null` type, no `const`, `if` or `propertyNames`.

Types are strict: a whole number is an int (or a float with no fraction, as JSON Schema counts it),
never a bool; a number is an int or a finite float; a string is a str; booleans are true/false.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

UNKNOWN_OPTION = "Unknown option."
REQUIRED = "This option is required."


class OptionsError(ValueError):
    """The options are unusable; `errors` maps each option to a list of messages, or (for a
    mapping or object option) to a dict of the same shape per key."""

    def __init__(self, errors: dict[str, Any]):
        super().__init__(errors)
        self.errors = errors


class _Invalid(Exception):
    """One value's problems: its messages, or a dict of them per key or index."""

    def __init__(self, detail: list[str] | dict[str, Any]):
        super().__init__(detail)
        self.detail = detail


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


def _show(number: float) -> str:
    return f"{number:,}" if isinstance(number, int) else f"{number:g}"


@dataclass(frozen=True, kw_only=True)
class Option:
    """One option. Absent from the input, it takes `default`; without a default it is left out of
    the parsed options, unless `required`."""

    default: Any = NO_DEFAULT
    required: bool = False
    description: str = ""

    def parse(self, value: Any) -> Any:
        """The checked value; `_Invalid` if it is not acceptable."""
        raise NotImplementedError

    def _schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        schema = self._schema()
        if self.description:
            schema["description"] = self.description
        if self.default is not NO_DEFAULT:
            schema["default"] = copy.deepcopy(self.default)
        return schema

    def default_value(self) -> Any:
        return copy.deepcopy(self.default)


@dataclass(frozen=True)
class Boolean(Option):
    def parse(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(["Must be true or false."])
        return value

    def _schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Integer(Option):
    minimum: int
    maximum: int

    def parse(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 5.0 is an integer to JSON Schema too
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(["Must be a whole number."])
        if not self.minimum <= value <= self.maximum:
            raise _Invalid([f"Must be from {_show(self.minimum)} to {_show(self.maximum)}."])
        return value

    def _schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}


@dataclass(frozen=True)
class Number(Option):
    minimum: float
    maximum: float

    def parse(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(["Must be a number."])
        if isinstance(value, float) and not math.isfinite(value):
            raise _Invalid(["Must be a number."])
        if not self.minimum <= value <= self.maximum:
            raise _Invalid([f"Must be from {_show(self.minimum)} to {_show(self.maximum)}."])
        return float(value)

    def _schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": self.minimum, "maximum": self.maximum}


@dataclass(frozen=True)
class String(Option):
    """Text of `min_length`–`max_length` characters. `pattern` is searched for as JSON Schema does
    (Python's `re.search`), so anchor it (`^…$`); bound the length too, as `$` also matches before a
    final newline. `hint` is the message when the pattern does not match."""

    min_length: int = 1
    max_length: int | None = None
    pattern: str | None = None
    hint: str = "Has the wrong form."

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid(["Must be a string."])
        if len(value) < self.min_length:
            raise _Invalid(["May not be empty." if self.min_length == 1 else self._length_message()])
        if self.max_length is not None and len(value) > self.max_length:
            raise _Invalid([self._length_message()])
        if self.pattern is not None and not re.search(self.pattern, value):
            raise _Invalid([self.hint])
        return value

    def _length_message(self) -> str:
        if self.max_length is None:
            return f"Must be at least {self.min_length} characters long."
        if self.max_length == self.min_length:
            return f"Must be {self.min_length} characters long."
        return f"Must be {self.min_length} to {self.max_length} characters long."

    def _schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "minLength": self.min_length}
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        return schema


@dataclass(frozen=True)
class Choice(Option):
    choices: tuple[str, ...]

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise _Invalid([f"Must be one of: {', '.join(self.choices)}."])
        return value

    def _schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices)}


@dataclass(frozen=True)
class Scalar(Option):
    """A string, a number or a boolean, kept as given."""

    def parse(self, value: Any) -> str | int | float | bool:
        if isinstance(value, str | bool | int) or (isinstance(value, float) and math.isfinite(value)):
            return value
        raise _Invalid(["Must be a string, a number or true/false."])

    def _schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}


@dataclass(frozen=True)
class List(Option):
    """A list of `item`s (strings or other hashable values when `unique`)."""

    item: Option
    min_items: int = 1
    unique: bool = True

    def parse(self, value: Any) -> list:
        if not isinstance(value, list):
            raise _Invalid(["Must be a list."])
        if len(value) < self.min_items:
            raise _Invalid(["May not be empty." if self.min_items == 1 else f"Needs at least {self.min_items} items."])
        parsed, errors = [], {}
        for index, item in enumerate(value):
            try:
                parsed.append(self.item.parse(item))
            except _Invalid as exc:
                errors[str(index)] = exc.detail
        if errors:
            raise _Invalid(errors)
        if self.unique:
            seen: set = set()
            repeated: dict[str, None] = {}
            for item in parsed:
                if item in seen:
                    repeated[str(item)] = None
                seen.add(item)
            if repeated:
                shown = ", ".join(repeated)
                raise _Invalid([f"Each item may appear only once (repeated: {shown})."])
        return parsed

    def _schema(self) -> dict[str, Any]:
        schema = {"type": "array", "items": self.item.schema(), "minItems": self.min_items}
        if self.unique:
            schema["uniqueItems"] = True
        return schema


@dataclass(frozen=True)
class Mapping(Option):
    """An object of any keys (column names, say), each holding a `value`."""

    value: Option

    def parse(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Invalid(["Must be an object."])
        parsed, errors = {}, {}
        for key, item in value.items():
            try:
                parsed[key] = self.value.parse(item)
            except _Invalid as exc:
                errors[key] = exc.detail
        if errors:
            raise _Invalid(errors)
        return parsed

    def _schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": self.value.schema()}


@dataclass(frozen=True)
class Either(Option):
    """The first of `alternatives` that accepts the value; `message` when none does."""

    alternatives: tuple[Option, ...]
    message: str

    def parse(self, value: Any) -> Any:
        for alternative in self.alternatives:
            try:
                return alternative.parse(value)
            except _Invalid:
                continue
        raise _Invalid([self.message])

    def _schema(self) -> dict[str, Any]:
        return {"anyOf": [alternative.schema() for alternative in self.alternatives]}


@dataclass(frozen=True)
class RequiredWhen:
    """Option `field` must be given when option `option` is one of `values` (for a mapping option:
    when any of its values is), counting the option's default when it is absent."""

    field: str
    option: str
    values: tuple[str, ...]
    message: str

    def applies(self, parsed: dict[str, Any]) -> bool:
        value = parsed.get(self.option)
        if isinstance(value, dict):
            return any(item in self.values for item in value.values())
        return value in self.values

    def schema(self, declared: Option) -> dict[str, Any]:
        """Either `field` is given or `option` holds none of `values`."""
        return {"anyOf": [{"required": [self.field]}, self.otherwise(declared)]}

    def otherwise(self, declared: Option) -> dict[str, Any]:
        """The schema of "`option` holds none of `values`"."""
        if isinstance(declared, Mapping):
            excluded: dict[str, Any] = {"additionalProperties": {"not": {"enum": list(self.values)}}}
            default = declared.default if isinstance(declared.default, dict) else {}
            default_applies = any(item in self.values for item in default.values())
        else:
            excluded = {"not": {"enum": list(self.values)}}
            default_applies = declared.default in self.values
        otherwise: dict[str, Any] = {"properties": {self.option: excluded}}
        if default_applies:
            otherwise["required"] = [self.option]
        return otherwise


@dataclass(frozen=True)
class Object(Option):
    """An object of the declared `fields` only; `rules` relate fields to each other."""

    fields: dict[str, Option]
    rules: tuple[RequiredWhen, ...] = ()
    unknown_message: str = UNKNOWN_OPTION

    def __post_init__(self) -> None:
        for rule in self.rules:
            if rule.field not in self.fields or rule.option not in self.fields:
                raise ValueError(f"{rule} names an undeclared option.")

    def parse(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Invalid(["Must be an object."])
        errors: dict[str, Any] = {key: [self.unknown_message] for key in value if key not in self.fields}
        parsed: dict[str, Any] = {}
        for name, option in self.fields.items():
            if name in value:
                try:
                    parsed[name] = option.parse(value[name])
                except _Invalid as exc:
                    errors[name] = exc.detail
            elif option.default is not NO_DEFAULT:
                parsed[name] = option.default_value()
            elif option.required:
                errors[name] = [REQUIRED]
        for rule in self.rules:
            if rule.field in parsed or rule.field in errors or rule.option in errors or not rule.applies(parsed):
                continue
            errors.setdefault(rule.field, [])
            if rule.message not in errors[rule.field]:
                errors[rule.field].append(rule.message)
        if errors:
            raise _Invalid(errors)
        return parsed

    def _schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: option.schema() for name, option in self.fields.items()},
            "additionalProperties": False,
        }
        required = [name for name, option in self.fields.items() if option.required]
        if required:
            schema["required"] = required
        conditions = [self._rules_schema(field) for field in dict.fromkeys(rule.field for rule in self.rules)]
        if len(conditions) == 1:
            schema.update(conditions[0])
        elif conditions:
            schema["allOf"] = conditions
        return schema

    def _rules_schema(self, field: str) -> dict[str, Any]:
        """The rules that require `field`, as one condition: (field ∨ A) ∧ (field ∨ B) is
        field ∨ (A ∧ B). (One `anyOf` rather than an `allOf` of them: schemathesis 4.1's
        coverage phase recurses without end on an `allOf` of several `anyOf`s.)"""
        rules = [rule for rule in self.rules if rule.field == field]
        if len(rules) == 1:
            return rules[0].schema(self.fields[rules[0].option])
        together: dict[str, Any] = {"properties": {}}
        for rule in rules:
            otherwise = rule.otherwise(self.fields[rule.option])
            if rule.option in together["properties"]:
                return {"allOf": [rule.schema(self.fields[rule.option]) for rule in rules]}
            together["properties"].update(otherwise["properties"])
            together.setdefault("required", []).extend(otherwise.get("required", []))
        if not together["required"]:
            del together["required"]
        return {"anyOf": [{"required": [field]}, together]}


@dataclass(frozen=True)
class Options(Object):
    """A tool's options: `parse` raises `OptionsError` (the view answers 400 with its `errors`)."""

    def parse(self, value: Any) -> dict[str, Any]:
        try:
            return super().parse(value)
        except _Invalid as exc:
            detail = exc.detail
            raise OptionsError(detail if isinstance(detail, dict) else {"non_field_errors": detail}) from None
