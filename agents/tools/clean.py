"""clean-my-data: configurable clean-up steps with a change log per step and column.

Steps run in this order: trim whitespace → blanks (and declared placeholders such as N/A) to
nulls → case → standardise (emails, phones, dates, numbers, booleans; optionally nulling values
that are not of their column's kind) → missing values → drop exact duplicates. Type coercion only
changes how the cleaned values are returned as JSON rows.
"""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal, InvalidOperation

import pandas as pd
import phonenumbers

from agents.tools.dataset import Dataset
from agents.tools.inference import (
    BOOL_FALSE,
    BOOL_TRUE,
    EMAIL_PATTERN,
    FLOAT_PATTERN,
    MONEY_PATTERN,
    PHONE_NAME,
    classify,
    dominant_kind,
    parse_dates,
    parse_money,
    to_frame,
)
from agents.tools.options import (
    Boolean,
    Choice,
    Either,
    List,
    Mapping,
    Object,
    Options,
    OptionsError,
    RequiredWhen,
    Scalar,
    String,
)

STANDARD_KINDS = ("email", "phone", "date", "datetime", "number", "boolean")
CASES = ("lower", "upper", "title")
STRATEGIES = ("drop", "constant", "mean", "median", "mode")
AUTO_SHARE = 0.8  # a column is standardised as a kind when this share of its values is of that kind
PHONE_SAMPLE = 1000  # distinct values tried as phone numbers before an "auto" column is called a phone column
NUMBER_TEXT = re.compile(rf"(?:{MONEY_PATTERN})|\s*(?:{FLOAT_PATTERN})\s*")  # 1,234.50, $12, 1.2E+3
NUMBER_NOISE = re.compile(r"[\s,$€£]")
MAX_NUMBER_EXPONENT = 30  # 1E+400 stays as written rather than becoming 400 digits of text
BOOLEAN_DIGITS = {"1": "true", "0": "false"}  # only in a column standardised as boolean
WORD = re.compile(r"\S+")


MISSING_RULE = Object(
    {
        "strategy": Choice(STRATEGIES, required=True),
        "value": Scalar(description="The fill value of the constant strategy."),
    },
    rules=(RequiredWhen("value", "strategy", ("constant",), "Required for the constant strategy."),),
)
OPTIONS = Options(
    {
        "trim_whitespace": Boolean(default=True, description="Trim values and collapse runs of whitespace."),
        "blank_as_null": Boolean(default=True, description="Turn blank values into nulls."),
        "null_values": List(
            String(max_length=100),
            description="Placeholders that mean missing, such as N/A, NULL or -: turned into nulls like blank "
            "values (compared trimmed, ignoring case). None unless given.",
        ),
        "case": Mapping(
            Choice(CASES),
            default={},
            description="{column: lower|upper|title}. title re-cases only values written all in capitals or all in "
            "lower case, giving each word the spelling it has in the column's mixed-case values (McDonald, LLC) "
            "or else a capital first letter; mixed-case values are kept as written.",
        ),
        "standardize": Either(
            (Choice(("auto", "none")), Mapping(Choice(STANDARD_KINDS))),
            message=f'Use "auto", "none" or {{column: one of {", ".join(STANDARD_KINDS)}}}.',
            default="auto",
            description='"auto" (by what each column holds), "none", or {column: kind}.',
        ),
        "phone_region": String(
            min_length=2,
            max_length=2,
            pattern=r"^[A-Z]{2}$",
            hint="Must be a two-letter region code in capitals, such as US.",
            default="US",
            description="Where phone numbers without a country code are from.",
        ),
        "invalid_as_null": Boolean(
            description="Turn values that are not of their standardised column's kind (a number column's "
            '"twelve", a date column\'s "TBD") into nulls, logged as invalid_as_null, so that a missing rule can '
            "fill them. False unless given."
        ),
        "coerce_types": Boolean(default=True, description="Return real numbers and booleans in JSON rows."),
        "missing": Mapping(
            MISSING_RULE, default={}, description='{column or "*": {"strategy": ..., "value": ...}} for missing values.'
        ),
        "drop_duplicates": Boolean(default=True, description="Drop rows that exactly duplicate an earlier row."),
    }
)
OPTIONS_SCHEMA = OPTIONS.schema()


def parse_options(raw: dict) -> dict:
    """The options with defaults filled; `OptionsError` for unknown options or bad values."""
    return OPTIONS.parse(raw)


def validate_against(dataset: Dataset, options: dict) -> None:
    """Options that name columns must name real ones ("*", every column, only for `missing`)."""
    known = set(dataset.columns)
    errors = {}
    for option, wildcard in (("case", set()), ("missing", {"*"})):
        unknown = sorted(set(options[option]) - known - wildcard)
        if unknown:
            errors[option] = [f"Unknown column(s): {', '.join(unknown)}."]
    if isinstance(options["standardize"], dict):
        unknown = sorted(set(options["standardize"]) - known)
        if unknown:
            errors["standardize"] = [f"Unknown column(s): {', '.join(unknown)}."]
    if errors:
        raise OptionsError(errors)


class _ChangeLog:
    def __init__(self):
        self.counts: dict[tuple[str, str | None], int] = {}

    def add(self, step: str, column: str | None, count: int) -> None:
        if count:
            self.counts[(step, column)] = self.counts.get((step, column), 0) + int(count)

    def diff(self, step: str, column: str, before: pd.Series, after: pd.Series) -> None:
        changed = ~((before == after) | (before.isna() & after.isna()))
        self.add(step, column, changed.sum())

    def as_list(self) -> list[dict]:
        return [{"step": step, "column": column, "count": n} for (step, column), n in self.counts.items()]


def _standard_kind(name: str, values: pd.Series, region: str) -> str | None:
    """Which standard form an "auto" column should take, if any."""
    present = values.dropna()
    if present.empty:
        return None
    if PHONE_NAME.search(name):  # and the values agree: "hotel" and "satellite" contain "tel"
        distinct = present.drop_duplicates()
        sample = distinct.sample(min(len(distinct), PHONE_SAMPLE), random_state=0)
        if sample.map(lambda value: _e164(value, region) is not None).mean() >= AUTO_SHARE:
            return "phone"
    kinds = classify(present)
    share = kinds.value_counts(normalize=True)
    if share.get("email", 0) >= AUTO_SHARE:
        return "email"
    if share.get("boolean", 0) >= AUTO_SHARE:
        return "boolean"
    if share.get("date", 0) + share.get("datetime", 0) >= AUTO_SHARE:
        return dominant_kind(kinds[kinds.isin(["date", "datetime"])])
    looks_numeric = present.str.fullmatch(MONEY_PATTERN).mean() >= AUTO_SHARE
    leading_zeros = present.str.match(r"0\d").any()  # zip codes, account numbers: keep as text
    if looks_numeric and not leading_zeros:
        return "number"
    return None


def _recase(values: pd.Series, case: str) -> pd.Series:
    present = values.dropna()
    if case != "title":
        return values.where(values.isna(), getattr(present.str, case)())
    # Only values written in one case are re-cased: "McDonald", "van Dyke" and "Acme LLC" are as meant,
    # and their words show how the column spells them ("MCDONALD" → "McDonald", not "Mcdonald").
    uniform = present.str.isupper() | present.str.islower()
    spellings = Counter(word for value in present[~uniform] for word in value.split())
    spelling: dict[str, str] = {}
    for word, _ in spellings.most_common():
        spelling.setdefault(word.casefold(), word)

    def title(value: str) -> str:
        return WORD.sub(lambda word: spelling.get(word[0].casefold(), word[0].title()), value)

    return values.where(values.isna() | ~uniform.reindex(values.index, fill_value=False), present[uniform].map(title))


def _canonical_number(text: str | None) -> str | None:
    """A plain decimal ("1234.50" from "$1,234.50" or "1.2345E+3"); the text itself when it is none."""
    if text is None:
        return None
    try:
        number = Decimal(NUMBER_NOISE.sub("", text))
    except InvalidOperation:
        return text
    if not number.is_finite() or abs(number.adjusted()) > MAX_NUMBER_EXPONENT:
        return text
    return f"{number:f}"


def _standardize(values: pd.Series, kind: str, region: str) -> tuple[pd.Series, pd.Series]:
    """The values in the kind's standard form, and which of them are of that kind (nulls are)."""
    present = values.dropna()
    if kind == "email":
        out = present.str.strip().str.lower()
        recognised = out.str.fullmatch(EMAIL_PATTERN)
        out = out.where(recognised, present)
    elif kind == "phone":
        formatted = {value: _e164(value, region) for value in present.unique()}
        out = present.map(formatted)
        recognised = out.notna()
        out = out.where(recognised, present)
    elif kind in ("date", "datetime"):
        parsed, _ = parse_dates(present)
        recognised = parsed.notna()
        out = parsed.dt.strftime("%Y-%m-%d" if kind == "date" else "%Y-%m-%dT%H:%M:%S").where(recognised, present)
    elif kind == "number":
        recognised = present.str.fullmatch(NUMBER_TEXT)
        out = present.where(~recognised, present[recognised].map(_canonical_number))
    elif kind == "boolean":
        lowered = present.str.strip().str.lower()
        out = lowered.map(lambda v: "true" if v in BOOL_TRUE else "false" if v in BOOL_FALSE else BOOLEAN_DIGITS.get(v))
        recognised = out.notna()
        out = out.where(recognised, present)
    else:
        raise ValueError(kind)
    return (
        values.where(values.isna(), out.reindex(values.index)),
        recognised.astype(bool).reindex(values.index, fill_value=True),
    )


def _e164(value: str, region: str) -> str | None:
    """The number in E.164, or None when it is not a possible phone number."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _fill_value(values: pd.Series, strategy: str, constant) -> object:
    if strategy == "constant":
        return constant if isinstance(constant, str) else str(constant)
    if strategy == "mode":
        modes = values.dropna().mode()
        return modes.iloc[0] if len(modes) else None
    numbers = parse_money(values).dropna()
    if numbers.empty:
        return None
    result = numbers.mean() if strategy == "mean" else numbers.median()
    return _canonical_number(f"{round(float(result), 6):f}".rstrip("0").rstrip("."))


def _coerce(value: str | None, kind: str | None):
    if value is None or kind is None:
        return value
    if kind == "number":
        try:
            number = Decimal(value)
        except InvalidOperation:
            return value
        return int(number) if number == number.to_integral_value() and "." not in value else float(number)
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def run(dataset: Dataset, config: dict) -> dict:
    frame = to_frame(dataset)
    log = _ChangeLog()
    rows_in = len(frame)
    placeholders = {value.strip().casefold() for value in config.get("null_values", [])}

    for column in dataset.columns:
        values = frame[column]
        if config["trim_whitespace"]:
            cleaned = values.where(values.isna(), values.str.replace(r"\s+", " ", regex=True).str.strip())
            log.diff("trim_whitespace", column, values, cleaned)
            values = cleaned
        if config["blank_as_null"]:
            blank = values.notna() & (values.str.strip() == "")
            log.add("blank_as_null", column, blank.sum())
            values = values.mask(blank, None)
        if placeholders:
            placeholder = values.notna() & values.str.strip().str.casefold().isin(placeholders)
            log.add("null_values", column, placeholder.sum())
            values = values.mask(placeholder, None)
        frame[column] = values

    for column, case in config["case"].items():
        values = frame[column]
        cased = _recase(values, case)
        log.diff(f"case_{case}", column, values, cased)
        frame[column] = cased

    standardize = config["standardize"]
    kinds: dict[str, str | None] = {}
    if standardize == "auto":
        kinds = {column: _standard_kind(column, frame[column], config["phone_region"]) for column in dataset.columns}
    elif isinstance(standardize, dict):
        kinds = dict(standardize)
    for column, kind in kinds.items():
        if kind is None:
            continue
        standardized, recognised = _standardize(frame[column], kind, config["phone_region"])
        log.diff(f"standardize_{kind}", column, frame[column], standardized)
        if config.get("invalid_as_null", False):
            invalid = standardized.notna() & ~recognised
            log.add("invalid_as_null", column, invalid.sum())
            standardized = standardized.mask(invalid, None)
        frame[column] = standardized

    # Drops first, so that means, medians and modes describe the rows that are returned.
    rules = {c: config["missing"].get(c) or config["missing"].get("*") for c in dataset.columns}
    for column, rule in rules.items():
        if rule and rule["strategy"] == "drop":
            gaps = frame[column].isna()
            log.add("missing_drop", column, gaps.sum())
            frame = frame[~gaps]
    for column, rule in rules.items():
        gaps = frame[column].isna()
        if not rule or rule["strategy"] == "drop" or not gaps.any():
            continue
        fill = _fill_value(frame[column], rule["strategy"], rule.get("value"))
        if fill is not None:
            frame.loc[gaps, column] = fill
            log.add(f"missing_{rule['strategy']}", column, gaps.sum())

    if config["drop_duplicates"]:
        duplicated = frame.fillna("\x00").duplicated()
        log.add("drop_duplicates", None, duplicated.sum())
        frame = frame[~duplicated]

    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    if dataset.source_format == "rows" and config["coerce_types"]:
        rows = [{column: _coerce(value, kinds.get(column)) for column, value in row.items()} for row in rows]
    return {
        "data": dataset.to_payload(rows),
        "changes": log.as_list(),
        "summary": {"rows_in": rows_in, "rows_out": len(rows), "standardized": {c: k for c, k in kinds.items() if k}},
    }
