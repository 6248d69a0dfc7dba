"""master-my-data: entity resolution — block, fuzzy-match, cluster, build golden records.

1. Normalise each match column by what it holds (e-mails lower-cased, phones to their last
   ten digits, dates to ISO, text case-folded without punctuation).
2. Block: records are only compared when they share a blocking key (an exact normalised
   e-mail/phone/date, or the first or last three letters of a text value), so the work grows
   with the data, not with its square. Oversized blocks carry no signal and are skipped.
3. Score each candidate pair with rapidfuzz: the weighted mean similarity of the match columns
   both records fill (at least two of them when two or more are configured).
4. Pairs scoring at least `threshold` are linked; connected records form a cluster.
5. One golden record per cluster, column by column, by a survivorship rule.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict

import pandas as pd
from rapidfuzz import fuzz

from agents.tools.dataset import Dataset
from agents.tools.inference import EMAIL_PATTERN, PHONE_NAME, classify, parse_dates, to_frame
from agents.tools.options import Choice, Integer, List, Mapping, Number, Options, OptionsError, RequiredWhen, String

RULES = ("most_frequent", "most_recent", "longest", "first_non_null")
_PUNCTUATION = re.compile(r"[^\w\s@.+-]", re.UNICODE)
_SPACES = re.compile(r"\s+")


NEEDS_RECENCY = "Required by the most_recent rule."
OPTIONS = Options(
    {
        "match_columns": List(String(), description="The columns to compare (default: all columns)."),
        "threshold": Number(0.0, 1.0, default=0.85, description="Pairs scoring at least this are linked."),
        "weights": Mapping(
            Number(0.0, 100.0), default={}, description="{column: weight}; e-mail and phone weigh 2, others 1."
        ),
        "survivorship": Mapping(Choice(RULES), default={}, description="{column: rule} for the golden records."),
        "default_rule": Choice(RULES, default="most_frequent", description="The rule for the other columns."),
        "recency_column": String(description="The date column the most_recent rule compares."),
        "max_block_size": Integer(
            2, 5000, default=300, description="Blocks of more records than this carry no signal and are skipped."
        ),
    },
    rules=(
        RequiredWhen("recency_column", "default_rule", ("most_recent",), NEEDS_RECENCY),
        RequiredWhen("recency_column", "survivorship", ("most_recent",), NEEDS_RECENCY),
    ),
)
OPTIONS_SCHEMA = OPTIONS.schema()


def parse_options(raw: dict) -> dict:
    """The options with defaults filled; `OptionsError` for unknown options or bad values
    (`recency_column` is required when a most_recent rule is used)."""
    return OPTIONS.parse(raw)


def validate_against(dataset: Dataset, options: dict) -> None:
    """Options that name columns must name real ones."""
    known = set(dataset.columns)
    errors = {}
    unknown = [c for c in options.get("match_columns", []) if c not in known]
    if unknown:
        errors["match_columns"] = [f"Unknown column(s): {', '.join(unknown)}."]
    for option in ("weights", "survivorship"):
        bad = sorted(set(options[option]) - known)
        if bad:
            errors[option] = [f"Unknown column(s): {', '.join(bad)}."]
    recency = options.get("recency_column")
    if recency is not None and recency not in known:
        errors["recency_column"] = [f"Unknown column {recency!r}."]
    if errors:
        raise OptionsError(errors)


def _column_kind(name: str, values: pd.Series) -> str:
    if PHONE_NAME.search(name):
        return "phone"
    kinds = classify(values.dropna())
    if kinds.empty:
        return "text"
    top = kinds.value_counts(normalize=True)
    if top.get("email", 0) >= 0.8:
        return "email"
    if top.get("date", 0) + top.get("datetime", 0) >= 0.8:
        return "date"
    return "text"


def _normalise(values: pd.Series, kind: str) -> pd.Series:
    present = values.dropna().astype(str)
    if kind == "email":
        out = present.str.strip().str.lower()
        out = out.where(out.str.fullmatch(EMAIL_PATTERN))
    elif kind == "phone":
        digits = present.str.replace(r"\D", "", regex=True).str[-10:]
        out = digits.where(digits.str.len() >= 7)
    elif kind == "date":
        parsed, _ = parse_dates(present)
        out = parsed.dt.strftime("%Y-%m-%d")
    else:
        out = present.str.casefold().str.replace(_PUNCTUATION, " ", regex=True)
        out = out.str.replace(_SPACES, " ", regex=True).str.strip()
        out = out.where(out != "")
    return out.reindex(values.index)


def _blocking_keys(column: str, kind: str, value: str) -> list[tuple]:
    if kind in ("email", "phone", "date"):
        return [(column, value)]
    return [(column, "^", value[:3]), (column, "$", value[-3:])] if len(value) >= 3 else [(column, "=", value)]


def _similarity(kind: str, a: str, b: str) -> float:
    if a == b:
        return 1.0
    if kind == "text":
        return max(fuzz.ratio(a, b), fuzz.token_sort_ratio(a, b)) / 100
    return fuzz.ratio(a, b) / 100  # e-mail/phone/date typos still count a little


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _survivor(values: list, rule: str, recency: list) -> object:
    present = [(i, v) for i, v in enumerate(values) if v is not None and str(v).strip() != ""]
    if not present:
        return None
    if rule == "first_non_null":
        return present[0][1]
    if rule == "longest":
        return max(present, key=lambda iv: (len(str(iv[1])), -iv[0]))[1]
    if rule == "most_recent":
        dated = [(recency[i], i, v) for i, v in present if recency[i] is not None]
        return max(dated)[2] if dated else present[0][1]
    counts = Counter(str(v).strip() for _, v in present)
    best = max(counts.values())
    return next(v for _, v in present if counts[str(v).strip()] == best)  # ties: first non-null


def _blocks(frame: pd.DataFrame, columns: list[str], kinds: dict[str, str]) -> tuple[dict, dict[tuple, list[int]]]:
    """The normalised match columns and the blocks of rows that share a blocking key."""
    normalised = {c: _normalise(frame[c], kinds[c]).tolist() for c in columns}
    blocks: dict[tuple, list[int]] = defaultdict(list)
    for column in columns:
        for row, value in enumerate(normalised[column]):
            if isinstance(value, str):
                for key in _blocking_keys(column, kinds[column], value):
                    blocks[key].append(row)
    return normalised, blocks


def _compared_blocks(blocks: dict[tuple, list[int]], max_block_size: int) -> list[list[int]]:
    return [members for members in blocks.values() if 2 <= len(members) <= max_block_size]


def candidate_pairs(dataset: Dataset, config: dict) -> int:
    """How many record pairs `run` would compare, at most (a pair in two blocks counts twice);
    computed from the blocks alone, so a run too big to afford is refused before it starts."""
    frame = to_frame(dataset)
    columns = config.get("match_columns") or dataset.columns
    kinds = {c: _column_kind(c, frame[c]) for c in columns}
    _, blocks = _blocks(frame, columns, kinds)
    return sum(len(m) * (len(m) - 1) // 2 for m in _compared_blocks(blocks, config["max_block_size"]))


def run(dataset: Dataset, config: dict) -> dict:
    frame = to_frame(dataset)
    columns = config.get("match_columns") or dataset.columns
    kinds = {c: _column_kind(c, frame[c]) for c in columns}
    normalised, blocks = _blocks(frame, columns, kinds)
    weights = {c: config["weights"].get(c, 2.0 if kinds[c] in ("email", "phone") else 1.0) for c in columns}
    min_shared = 2 if len(columns) >= 2 else 1

    scores: dict[tuple[int, int], float] = {}
    for members in _compared_blocks(blocks, config["max_block_size"]):
        for a, b in itertools.combinations(members, 2):
            if (a, b) in scores:
                continue
            total = weight = 0.0
            shared = 0
            for column in columns:
                va, vb = normalised[column][a], normalised[column][b]
                if isinstance(va, str) and isinstance(vb, str):
                    total += weights[column] * _similarity(kinds[column], va, vb)
                    weight += weights[column]
                    shared += 1
            scores[(a, b)] = total / weight if shared >= min_shared and weight else 0.0

    links = _UnionFind()
    edges: dict[int, list[float]] = defaultdict(list)
    linked = [(a, b, score) for (a, b), score in scores.items() if score >= config["threshold"]]
    for a, b, _ in linked:
        links.union(a, b)
    for a, _, score in linked:
        edges[links.find(a)].append(score)
    members_of: dict[int, list[int]] = defaultdict(list)
    for row in list(links.parent):
        members_of[links.find(row)].append(row)

    recency_column = config.get("recency_column")
    recency = parse_dates(frame[recency_column].dropna())[0].reindex(frame.index) if recency_column else None
    rows = frame.astype(object).where(frame.notna(), None)
    clusters, golden_records = [], []
    for root, members in sorted(members_of.items(), key=lambda item: min(item[1])):
        if len(members) < 2:
            continue
        members.sort()
        cluster_id = len(clusters)
        clusters.append({"cluster_id": cluster_id, "row_ids": members, "score": round(min(edges[root]), 4)})
        recency_values = [None if recency is None or pd.isna(recency[m]) else recency[m] for m in members]
        record = {
            column: _survivor(
                [rows.at[m, column] for m in members],
                config["survivorship"].get(column, config["default_rule"]),
                recency_values,
            )
            for column in dataset.columns
        }
        golden_records.append({"cluster_id": cluster_id, "row_ids": members, "record": record})
    return {
        "clusters": clusters,
        "golden_records": golden_records,
        "summary": {
            "records": len(frame),
            "clusters": len(clusters),
            "records_in_clusters": sum(len(c["row_ids"]) for c in clusters),
            "pairs_compared": len(scores),
            "match_columns": {c: kinds[c] for c in columns},
        },
    }
