"""clean-my-data: configurable clean-up steps with a change log per step and column.

Steps run in this order: trim whitespace → blanks to nulls → case → standardise
(emails, phones, dates, numbers, booleans) → missing values → drop exact duplicates.
Type coercion only changes how the cleaned values are returned as JSON rows.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import pandas as pd
import phonenumbers

from agents.tools.dataset import Dataset
from agents.tools.inference import (
    BOOL_FALSE,
    BOOL_TRUE,
    EMAIL_PATTERN,
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
        "case": Mapping(Choice(CASES), default={}, description="{column: lower|upper|title}"),
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


def _standard_kind(name: str, values: pd.Series) -> str | None:
    """Which standard form an "auto" column should take, if any."""
    present = values.dropna()
    if present.empty:
        return None
    if PHONE_NAME.search(name):
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


def _canonical_number(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return str(Decimal(text.strip().replace(",", "").lstrip("$€£").strip()))
    except InvalidOperation:
        return text


def _standardize(values: pd.Series, kind: str, region: str) -> pd.Series:
    present = values.dropna()
    if kind == "email":
        out = present.str.strip().str.lower()
        return values.where(values.isna(), out.where(out.str.fullmatch(EMAIL_PATTERN), present))
    if kind == "phone":
        formatted = {value: _e164(value, region) for value in present.unique()}
        return values.map(lambda v: formatted.get(v, v) if v is not None else None)
    if kind in ("date", "datetime"):
        parsed, _ = parse_dates(present)
        fmt = "%Y-%m-%d" if kind == "date" else "%Y-%m-%dT%H:%M:%S"
        out = parsed.dt.strftime(fmt)
        return values.where(values.isna() | parsed.reindex(values.index).isna(), out.reindex(values.index))
    if kind == "number":
        is_number = present.str.fullmatch(MONEY_PATTERN)
        out = present.where(~is_number, present[is_number].map(_canonical_number))
        return values.where(values.isna(), out)
    if kind == "boolean":
        lowered = present.str.strip().str.lower()
        out = lowered.map(lambda v: "true" if v in BOOL_TRUE else "false" if v in BOOL_FALSE else None)
        return values.where(values.isna(), out.where(out.notna(), present))
    raise ValueError(kind)


def _e164(value: str, region: str) -> str:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return value
    if not phonenumbers.is_possible_number(number):
        return value
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
        frame[column] = values

    for column, case in config["case"].items():
        values = frame[column]
        cased = getattr(values.str, case)()
        cased = values.where(values.isna(), cased)
        log.diff(f"case_{case}", column, values, cased)
        frame[column] = cased

    standardize = config["standardize"]
    kinds: dict[str, str | None] = {}
    if standardize == "auto":
        kinds = {column: _standard_kind(column, frame[column]) for column in dataset.columns}
    elif isinstance(standardize, dict):
        kinds = dict(standardize)
    for column, kind in kinds.items():
        if kind is None:
            continue
        standardized = _standardize(frame[column], kind, config["phone_region"])
        log.diff(f"standardize_{kind}", column, frame[column], standardized)
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
