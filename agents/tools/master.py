"""master-my-data: entity resolution — block, compare, weigh, cluster, build golden records.

1. Each match column becomes a field of a kind (name, text, id, date, email, phone), normalised.
2. Blocking: one pass per field and key (exact value, phonetic key, first token, transposition-
   proof keys …); a pair that a pass puts in one block is compared when it shares a key in two
   fields (or in all but one of the fields both records fill) or the value of an identifying
   field. Oversized blocks carry no signal and are skipped.
3. Each candidate pair gets a comparison level per field, and a match probability from
   Fellegi–Sunter weights learned on the data itself (`agents.tools.linkage`).
4. Pairs reaching `threshold` are linked; within each linked component, clusters form by
   average linkage, so one weak link does not chain unrelated records.
5. One golden record per cluster, column by column, by a survivorship rule; with `explain`, each
   cluster lists its scored pairs and what each field contributed.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

from agents.tools import linkage
from agents.tools.dataset import Dataset
from agents.tools.inference import parse_dates, to_frame
from agents.tools.options import (
    Boolean,
    Choice,
    Integer,
    List,
    Mapping,
    Number,
    Options,
    OptionsError,
    RequiredWhen,
    String,
)

RULES = ("most_frequent", "most_recent", "longest", "first_non_null")


NEEDS_RECENCY = "Required by the most_recent rule."
OPTIONS = Options(
    {
        "match_columns": List(String(), description="The columns to compare (default: all columns)."),
        "threshold": Number(
            0.0, 1.0, default=0.85, description="Pairs whose match probability reaches this are linked."
        ),
        "weights": Mapping(
            Number(0.0, 100.0),
            default={},
            description="{column: factor} scaling the evidence learned for a column (default 1; 0 ignores it).",
        ),
        "survivorship": Mapping(Choice(RULES), default={}, description="{column: rule} for the golden records."),
        "default_rule": Choice(RULES, default="most_frequent", description="The rule for the other columns."),
        "recency_column": String(description="The date column the most_recent rule compares."),
        "max_block_size": Integer(
            2, 5000, default=60, description="Blocks of more records than this carry no signal and are skipped."
        ),
        "explain": Boolean(
            default=False, description="List each cluster's scored pairs and what each field contributed."
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


def _survivor(values: list, rule: str, recency: list) -> object:
    first = values[0]
    if first is not None and all(v == first for v in values) and str(first).strip() != "":
        return first  # the usual case, whatever the rule: the records agree
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
    keys = [str(v).strip() for _, v in present]
    if len(set(keys)) == 1:  # the usual case: the records agree
        return present[0][1]
    counts = Counter(keys)
    best = max(counts.values())
    return next(v for (_, v), key in zip(present, keys, strict=True) if counts[key] == best)  # ties: first non-null


def _fields(frame: pd.DataFrame, columns: list[str]) -> list[linkage.Field]:
    return [linkage.make_field(column, frame[column]) for column in columns]


def candidate_pairs(dataset: Dataset, config: dict, at_most: int) -> int:
    """How many record pairs `run` would compare, at most (a pair found by two blocking passes
    counts twice); computed from the blocks alone, so a run too big to afford is refused first.
    When even the blocks' worst case (every record in a block of `max_block_size` in every pass)
    stays within `at_most`, that worst case is the answer and no block is built."""
    columns = config.get("match_columns") or dataset.columns
    worst = linkage.MAX_PASSES_PER_FIELD * len(columns) * dataset.row_count * (config["max_block_size"] - 1) // 2
    if worst <= at_most:
        return worst
    frame = to_frame(dataset)
    return linkage.estimate_pairs(_fields(frame, columns), config["max_block_size"])


def _clusters(records: int, pairs: np.ndarray, log_odds: np.ndarray, threshold: float, fields, model, weights):
    """Clusters (sorted row lists) and every scored pair inside their components: {(a, b): log2 odds}."""
    threshold_bits = math.log2(threshold / (1 - threshold)) if 0 < threshold < 1 else (-60 if threshold <= 0 else 60)
    groups = linkage.bounded_components(records, pairs, log_odds, threshold_bits)
    # Only pairs inside one linked component matter from here on.
    component = np.full(records, -1)
    for number, members in enumerate(groups):
        component[members] = number
    inside = np.flatnonzero((component[pairs[:, 0]] >= 0) & (component[pairs[:, 0]] == component[pairs[:, 1]]))
    # Unscored pairs inside small components: scored now, so that clusters are judged whole.
    small = [members for members in groups if len(members) <= linkage.COMPLETE_COMPONENTS_UP_TO]
    within = np.concatenate([linkage.pairs_of(members) for members in small]) if small else np.empty((0, 2), int)
    extra = within[~np.isin(within[:, 0] * records + within[:, 1], pairs[inside, 0] * records + pairs[inside, 1])]
    extra_odds = linkage.log_odds(model, fields, extra, linkage.compare(fields, extra), weights)
    odds = dict(zip(map(tuple, pairs[inside].tolist()), log_odds[inside].tolist(), strict=True))
    odds.update(zip(map(tuple, extra.tolist()), extra_odds.tolist(), strict=True))
    clusters = []
    for members in groups:
        if len(members) <= linkage.COMPLETE_COMPONENTS_UP_TO:
            clusters.extend(linkage.average_linkage(members, odds, threshold_bits))
        else:  # still this large after linking it 40 bits more strictly: records alike throughout
            clusters.append(members.tolist())
    clusters.sort(key=lambda rows: rows[0])
    return clusters, odds


def run(dataset: Dataset, config: dict) -> dict:
    frame = to_frame(dataset)
    columns = config.get("match_columns") or dataset.columns
    fields = _fields(frame, columns)
    records = len(frame)
    weights = np.array([config["weights"].get(c, 1.0) for c in columns], dtype=float)

    pairs = linkage.candidate_pairs(fields, records, config["max_block_size"])
    gamma = linkage.compare(fields, pairs)
    model = linkage.estimate_model(fields, gamma, records)
    log_odds = linkage.log_odds(model, fields, pairs, gamma, weights)
    del gamma
    clusters_rows, odds = _clusters(records, pairs, log_odds, config["threshold"], fields, model, weights)
    explain = config["explain"]

    def explanation(rows: list[int]) -> list[dict]:
        """Every pair in the cluster, compared again (a handful), with each field's level and weight."""
        within = np.array([(a, b) for i, a in enumerate(rows) for b in rows[i + 1 :]], dtype=np.int64)
        levels = linkage.compare(fields, within)
        contributions = linkage.field_bits(model, fields, within, levels, weights)
        pair_odds = linkage.log_odds(model, fields, within, levels, weights)
        return [
            {
                "row_ids": [a, b],
                "score": _probability(float(pair_odds[index])),
                "fields": {
                    column: {
                        "level": "missing" if levels[index, f] < 0 else linkage.LEVELS[levels[index, f]],
                        "weight": round(float(contributions[index, f]), 2),
                    }
                    for f, column in enumerate(columns)
                },
            }
            for index, (a, b) in enumerate(within.tolist())
        ]

    recency_column = config.get("recency_column")
    recency = parse_dates(frame[recency_column].dropna())[0].reindex(frame.index) if recency_column else None
    rows = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
    clusters, golden_records = [], []
    for members in clusters_rows:
        cluster_id = len(clusters)
        within = [odds[(a, b)] for i, a in enumerate(members) for b in members[i + 1 :] if (a, b) in odds]
        cluster = {"cluster_id": cluster_id, "row_ids": members, "score": _probability(min(within))}
        if explain:
            cluster["pairs"] = explanation(members)
        clusters.append(cluster)
        recency_values = [None if recency is None or pd.isna(recency[m]) else recency[m] for m in members]
        record = {
            column: _survivor(
                [rows[m][index] for m in members],
                config["survivorship"].get(column, config["default_rule"]),
                recency_values,
            )
            for index, column in enumerate(dataset.columns)
        }
        golden_records.append({"cluster_id": cluster_id, "row_ids": members, "record": record})
    summary = {
        "records": records,
        "clusters": len(clusters),
        "records_in_clusters": sum(len(c["row_ids"]) for c in clusters),
        "pairs_compared": len(pairs),
        "match_columns": {f.name: f.kind for f in fields},
        "method": "fellegi_sunter",
        "blocking_passes": [f"{f.name}:{key}" for f, key in linkage.blocking_passes(fields)],
        "match_prior": round(model.prior, 6),
        "em_iterations": model.iterations,
    }
    if explain:
        summary["field_weights"] = {
            f.name: {level: round(float(model.bits()[i, j]), 2) for j, level in enumerate(linkage.LEVELS)}
            for i, f in enumerate(fields)
        }
    return {"clusters": clusters, "golden_records": golden_records, "summary": summary}


def _probability(log_odds: float) -> float:
    """A match probability from log2 odds, as the JSON score (never exactly 0)."""
    return max(round(1 / (1 + 2 ** -max(min(log_odds, 60), -60)), 4), 0.0001)
