"""The data agents' options, checked without Django or DRF (`agents.tools.options`): defaults,
strict types, ranges, choices, nested options, checks against the data, and a JSON Schema
(`OPTIONS_SCHEMA`) that accepts exactly what `parse_options` accepts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft4Validator, Draft202012Validator

from agents.tools import clean, master, profile
from agents.tools.dataset import Dataset
from agents.tools.options import OptionsError

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {"profile": profile, "clean": clean, "master": master}


def errors(tool, raw):
    with pytest.raises(OptionsError) as err:
        tool.parse_options(raw)
    return err.value.errors


def table(*columns):
    return Dataset(columns=list(columns), rows=[dict.fromkeys(columns, "x")], source_format="rows")


# --- defaults and unknown options ----------------------------------------------------------------


def test_defaults_fill_every_option_that_has_one():
    assert profile.parse_options({}) == {"top_values": 5, "high_null_ratio": 0.5, "categorical_max_distinct": 20}
    assert clean.parse_options({}) == {
        "trim_whitespace": True,
        "blank_as_null": True,
        "case": {},
        "standardize": "auto",
        "phone_region": "US",
        "coerce_types": True,
        "missing": {},
        "drop_duplicates": True,
    }
    # match_columns and recency_column have no default: absent, they stay absent
    assert master.parse_options({}) == {
        "threshold": 0.85,
        "weights": {},
        "survivorship": {},
        "default_rule": "most_frequent",
        "max_block_size": 60,
        "explain": False,
    }


def test_given_options_are_kept_and_defaults_are_not_shared():
    options = clean.parse_options({"case": {"name": "title"}, "drop_duplicates": False})
    assert options["case"] == {"name": "title"} and options["drop_duplicates"] is False
    options["missing"]["name"] = {"strategy": "drop"}
    assert clean.parse_options({})["missing"] == {}


def test_the_input_is_not_modified():
    raw = {"missing": {"age": {"strategy": "mean"}}, "case": {"name": "lower"}}
    clean.parse_options(raw)
    assert raw == {"missing": {"age": {"strategy": "mean"}}, "case": {"name": "lower"}}


@pytest.mark.parametrize("tool", TOOLS.values(), ids=TOOLS)
def test_an_unknown_option_is_named(tool):
    assert errors(tool, {"no_such_option": 1, "other": None}) == {
        "no_such_option": ["Unknown option."],
        "other": ["Unknown option."],
    }


def test_unknown_and_bad_options_are_reported_together():
    assert errors(profile, {"nope": 1, "top_values": "many"}) == {
        "nope": ["Unknown option."],
        "top_values": ["Must be a whole number."],
    }


@pytest.mark.parametrize("raw", [[], "x", None, 1])
def test_the_options_must_be_an_object(raw):
    assert errors(profile, raw) == {"non_field_errors": ["Must be an object."]}


# --- types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool, option, value, message",
    [
        (profile, "top_values", True, "Must be a whole number."),
        (profile, "top_values", "5", "Must be a whole number."),
        (profile, "top_values", 5.5, "Must be a whole number."),
        (profile, "top_values", None, "Must be a whole number."),
        (profile, "high_null_ratio", "0.5", "Must be a number."),
        (profile, "high_null_ratio", True, "Must be a number."),
        (profile, "high_null_ratio", float("nan"), "Must be a number."),
        (clean, "trim_whitespace", "true", "Must be true or false."),
        (clean, "drop_duplicates", 1, "Must be true or false."),
        (clean, "phone_region", 44, "Must be a string."),
        (master, "threshold", "high", "Must be a number."),
        (master, "max_block_size", False, "Must be a whole number."),
        (master, "match_columns", "email", "Must be a list."),
        (master, "recency_column", 5, "Must be a string."),
        (master, "recency_column", "", "May not be empty."),
        (master, "recency_column", None, "Must be a string."),
    ],
)
def test_wrong_types_are_refused(tool, option, value, message):
    assert errors(tool, {option: value}) == {option: [message]}


def test_numbers_are_converted_as_json_schema_counts_them():
    options = profile.parse_options({"top_values": 7.0, "high_null_ratio": 1})
    assert options["top_values"] == 7 and type(options["top_values"]) is int
    assert options["high_null_ratio"] == 1.0 and type(options["high_null_ratio"]) is float


@pytest.mark.parametrize(
    "tool, option, value, message",
    [
        (profile, "top_values", -1, "Must be from 0 to 100."),
        (profile, "top_values", 101, "Must be from 0 to 100."),
        (profile, "high_null_ratio", 1.01, "Must be from 0 to 1."),
        (profile, "categorical_max_distinct", 0, "Must be from 1 to 10,000."),
        (profile, "categorical_max_distinct", 10**30, "Must be from 1 to 10,000."),
        (master, "threshold", 1.5, "Must be from 0 to 1."),
        (master, "threshold", 10**400, "Must be from 0 to 1."),
        (master, "threshold", -0.1, "Must be from 0 to 1."),
        (master, "max_block_size", 1, "Must be from 2 to 5,000."),
        (master, "max_block_size", 5001, "Must be from 2 to 5,000."),
    ],
)
def test_out_of_range_values_are_refused(tool, option, value, message):
    assert errors(tool, {option: value}) == {option: [message]}


@pytest.mark.parametrize(
    "tool, options",
    [
        (profile, {"top_values": 0, "high_null_ratio": 0.0, "categorical_max_distinct": 1}),
        (profile, {"top_values": 100, "high_null_ratio": 1.0, "categorical_max_distinct": 10_000}),
        (master, {"threshold": 0, "max_block_size": 2, "weights": {"a": 0}}),
        (master, {"threshold": 1, "max_block_size": 5000, "weights": {"a": 100}}),
    ],
)
def test_range_bounds_are_inclusive(tool, options):
    parsed = tool.parse_options(options)
    assert all(parsed[name] == value for name, value in options.items())


# --- choices and nested options ------------------------------------------------------------------


def test_choices():
    assert errors(clean, {"case": {"name": "shout"}}) == {"case": {"name": ["Must be one of: lower, upper, title."]}}
    assert errors(clean, {"case": ["name"]}) == {"case": ["Must be an object."]}
    rules = "Must be one of: most_frequent, most_recent, longest, first_non_null."
    assert errors(master, {"default_rule": "newest"}) == {"default_rule": [rules]}
    assert errors(master, {"survivorship": {"a": "newest", "b": "longest"}}) == {"survivorship": {"a": [rules]}}


@pytest.mark.parametrize("value", ["auto", "none", {}, {"email": "email", "joined": "date"}])
def test_standardize_accepts_auto_none_or_kinds_per_column(value):
    assert clean.parse_options({"standardize": value})["standardize"] == value


@pytest.mark.parametrize("value", ["sometimes", "", 5, None, ["email"], {"email": "zip"}, {"email": None}])
def test_standardize_refuses_anything_else(value):
    assert errors(clean, {"standardize": value}) == {
        "standardize": ['Use "auto", "none" or {column: one of email, phone, date, datetime, number, boolean}.']
    }


@pytest.mark.parametrize("value", ["us", "USA", "U", "", "US\n", " US", "U1"])
def test_phone_region_is_two_capital_letters(value):
    assert list(errors(clean, {"phone_region": value})) == ["phone_region"]
    assert clean.parse_options({"phone_region": "GB"})["phone_region"] == "GB"


def test_missing_value_rules():
    missing = {
        "age": {"strategy": "median"},
        "city": {"strategy": "constant", "value": "Unknown"},
        "count": {"strategy": "constant", "value": 0},
        "*": {"strategy": "drop"},
    }
    # exactly as given: no "value" added where none was given; numbers stay numbers
    assert clean.parse_options({"missing": missing})["missing"] == missing


@pytest.mark.parametrize(
    "rule, detail",
    [
        ({"strategy": "constant"}, {"value": ["Required for the constant strategy."]}),
        ({"strategy": "constant", "value": None}, {"value": ["Must be a string, a number or true/false."]}),
        ({"strategy": "constant", "value": [1]}, {"value": ["Must be a string, a number or true/false."]}),
        ({"strategy": "average"}, {"strategy": ["Must be one of: drop, constant, mean, median, mode."]}),
        ({"value": 1}, {"strategy": ["This option is required."]}),
        ({"strategy": "mean", "fill": 1}, {"fill": ["Unknown option."]}),
        ("mean", ["Must be an object."]),
    ],
)
def test_bad_missing_value_rules_are_reported_per_column(rule, detail):
    assert errors(clean, {"missing": {"age": rule, "city": {"strategy": "drop"}}}) == {"missing": {"age": detail}}


def test_match_columns():
    assert master.parse_options({"match_columns": ["email", "name"]})["match_columns"] == ["email", "name"]
    assert errors(master, {"match_columns": []}) == {"match_columns": ["May not be empty."]}
    assert errors(master, {"match_columns": ["email", 1, ""]}) == {
        "match_columns": {"1": ["Must be a string."], "2": ["May not be empty."]}
    }
    assert errors(master, {"match_columns": ["email", "name", "email"]}) == {
        "match_columns": ["Each item may appear only once (repeated: email)."]
    }


def test_weights():
    assert master.parse_options({"weights": {"email": 3, "name": 0.5}})["weights"] == {"email": 3.0, "name": 0.5}
    assert errors(master, {"weights": {"email": 101, "name": "high", "city": 1}}) == {
        "weights": {"email": ["Must be from 0 to 100."], "name": ["Must be a number."]}
    }


@pytest.mark.parametrize(
    "options", [{"default_rule": "most_recent"}, {"survivorship": {"city": "longest", "name": "most_recent"}}]
)
def test_the_most_recent_rule_needs_a_recency_column(options):
    assert errors(master, options) == {"recency_column": ["Required by the most_recent rule."]}
    assert master.parse_options({**options, "recency_column": "seen"})["recency_column"] == "seen"


def test_a_bad_recency_column_is_reported_once():
    both = {"default_rule": "most_recent", "survivorship": {"a": "most_recent"}}
    assert errors(master, both) == {"recency_column": ["Required by the most_recent rule."]}
    assert errors(master, {**both, "recency_column": 7}) == {"recency_column": ["Must be a string."]}


# --- checks against the data ---------------------------------------------------------------------


def test_profile_options_need_nothing_from_the_data():
    assert profile.validate_against(table("a"), profile.parse_options({"top_values": 3})) is None


def test_clean_options_must_name_real_columns():
    options = clean.parse_options(
        {
            "case": {"a": "lower", "nope": "upper"},
            "standardize": {"b": "email", "zz": "date"},
            "missing": {"*": {"strategy": "drop"}, "a": {"strategy": "mode"}, "gone": {"strategy": "drop"}},
        }
    )
    with pytest.raises(OptionsError) as err:
        clean.validate_against(table("a", "b"), options)
    assert err.value.errors == {
        "case": ["Unknown column(s): nope."],
        "missing": ["Unknown column(s): gone."],
        "standardize": ["Unknown column(s): zz."],
    }
    clean.validate_against(table("a", "b", "gone", "nope", "zz"), options)


def test_clean_star_means_every_column_only_for_missing_values():
    with pytest.raises(OptionsError) as err:
        clean.validate_against(table("a"), clean.parse_options({"case": {"*": "lower"}}))
    assert err.value.errors == {"case": ["Unknown column(s): *."]}


def test_master_options_must_name_real_columns():
    options = master.parse_options(
        {
            "match_columns": ["a", "x"],
            "weights": {"y": 1},
            "survivorship": {"z": "longest"},
            "recency_column": "when",
        }
    )
    with pytest.raises(OptionsError) as err:
        master.validate_against(table("a"), options)
    assert err.value.errors == {
        "match_columns": ["Unknown column(s): x."],
        "weights": ["Unknown column(s): y."],
        "survivorship": ["Unknown column(s): z."],
        "recency_column": ["Unknown column 'when'."],
    }
    master.validate_against(table("a", "x", "y", "z", "when"), options)


# --- the JSON Schema -----------------------------------------------------------------------------


def accepts(tool, value) -> bool:
    try:
        tool.parse_options(value)
    except OptionsError:
        return False
    return True


@pytest.mark.parametrize("tool", TOOLS.values(), ids=TOOLS)
def test_the_schema_is_a_valid_json_schema_and_openapi_3_0_shaped(tool):
    schema = tool.OPTIONS_SCHEMA
    Draft202012Validator.check_schema(schema)
    Draft4Validator.check_schema(schema)  # OpenAPI 3.0's schema objects are a draft-4 dialect
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(tool.OPTIONS.fields)

    def walk(node):
        if isinstance(node, dict):
            assert "const" not in node and "if" not in node and "propertyNames" not in node
            assert not isinstance(node.get("type"), list) and node.get("type") != "null"
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(schema)


def test_the_schema_declares_types_ranges_choices_and_defaults():
    top_values = profile.OPTIONS_SCHEMA["properties"]["top_values"]
    assert {k: top_values[k] for k in ("type", "minimum", "maximum", "default")} == {
        "type": "integer",
        "minimum": 0,
        "maximum": 100,
        "default": 5,
    }
    rule = master.OPTIONS_SCHEMA["properties"]["default_rule"]
    assert rule["enum"] == ["most_frequent", "most_recent", "longest", "first_non_null"]
    assert rule["default"] == "most_frequent"
    assert clean.OPTIONS_SCHEMA["properties"]["missing"]["additionalProperties"]["required"] == ["strategy"]


EXAMPLES = [
    (profile, {}),
    (profile, {"top_values": 0, "high_null_ratio": 1}),
    (profile, {"top_values": 5.0}),
    (profile, {"top_values": 5.5}),
    (profile, {"top_values": True}),
    (profile, {"top_values": 101}),
    (profile, {"high_null_ratio": "0.5"}),
    (profile, {"bogus": 1}),
    (clean, {"case": {"a": "title"}, "standardize": "none", "phone_region": "GB"}),
    (clean, {"case": {"a": "shout"}}),
    (clean, {"standardize": {"a": "email"}}),
    (clean, {"standardize": {"a": "zip"}}),
    (clean, {"phone_region": "gb"}),
    (clean, {"phone_region": "US\n"}),
    (clean, {"trim_whitespace": 1}),
    (clean, {"missing": {"*": {"strategy": "constant", "value": False}}}),
    (clean, {"missing": {"a": {"strategy": "constant"}}}),
    (clean, {"missing": {"a": {"strategy": "mean", "value": None}}}),
    (clean, {"missing": {"a": {"strategy": "mean", "extra": 1}}}),
    (clean, {"missing": {"a": {}}}),
    (master, {"match_columns": ["a", "b"], "threshold": 0.5, "weights": {"a": 2}}),
    (master, {"match_columns": []}),
    (master, {"match_columns": ["a", "a"]}),
    (master, {"match_columns": [""]}),
    (master, {"weights": {"a": -1}}),
    (master, {"default_rule": "most_recent"}),
    (master, {"default_rule": "most_recent", "recency_column": "seen"}),
    (master, {"survivorship": {"a": "most_recent"}}),
    (master, {"survivorship": {"a": "most_recent"}, "recency_column": "seen"}),
    (master, {"max_block_size": 5000}),
    (master, {"max_block_size": 5001}),
]


@pytest.mark.parametrize("tool, value", EXAMPLES)
def test_the_schema_agrees_with_parse_options(tool, value):
    assert Draft202012Validator(tool.OPTIONS_SCHEMA).is_valid(value) == accepts(tool, value)


PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.mark.parametrize("tool", TOOLS.values(), ids=TOOLS)
def test_everything_the_schema_allows_is_accepted(tool):
    @PROPERTY_SETTINGS
    @given(from_schema(tool.OPTIONS_SCHEMA))
    def check(value):
        tool.parse_options(value)

    check()


# Values near the declared ones: right and wrong types, bounds, choices, nested rules.
SCALARS = st.sampled_from(
    [
        *(None, True, False, 0, 1, -1, 2, 5, 5.0, 5.5, 100, 101, 5000, 5001, 10_001, 0.5, 1.0, 1.5, 100.5),
        *("", " ", "5", "US", "us", "USA", "US\n", "auto", "none", "lower", "shout", "email", "zip", "a"),
        *("drop", "constant", "mean", "most_recent", "longest", "newest"),
    ]
)
KEYS = st.sampled_from(["a", "b", "*", "strategy", "value", "x"])
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=8
)


@pytest.mark.parametrize("tool", TOOLS.values(), ids=TOOLS)
def test_the_schema_and_parse_options_agree_on_arbitrary_values(tool):
    names = st.sampled_from([*tool.OPTIONS.fields, "bogus"])
    validator = Draft202012Validator(tool.OPTIONS_SCHEMA)

    # an arbitrary object, or a valid one with a few options overwritten
    bases = st.just({}) | from_schema(tool.OPTIONS_SCHEMA)
    values = st.tuples(bases, st.dictionaries(names, VALUES, max_size=3)).map(lambda pair: {**pair[0], **pair[1]})

    @settings(PROPERTY_SETTINGS, max_examples=200)
    @given(values)
    def check(value):
        assert validator.is_valid(value) == accepts(tool, value), value

    check()


def test_the_tools_import_without_django_or_drf():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = (
        "import sys\n"
        "import agents.tools.clean, agents.tools.master, agents.tools.profile\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
