"""master-my-data: cluster records whose normalised match columns are equal; build golden records."""

import re

from rest_framework import serializers

from agents.datasets import Dataset

_SPACES = re.compile(r"\s+")


class ConfigSerializer(serializers.Serializer):
    match_columns = serializers.ListField(child=serializers.CharField(), required=False, allow_empty=False)
    threshold = serializers.FloatField(min_value=0.0, max_value=1.0, default=0.85)


def _normalise(value) -> str:
    return _SPACES.sub(" ", str(value)).strip().casefold() if value is not None else ""


def validate_against(dataset: Dataset, config: dict) -> None:
    unknown = [c for c in config.get("match_columns", []) if c not in dataset.columns]
    if unknown:
        raise serializers.ValidationError({"match_columns": [f"Unknown column(s): {', '.join(unknown)}."]})


def run(dataset: Dataset, config: dict) -> dict:
    match_columns = config.get("match_columns") or dataset.columns
    groups: dict[tuple, list[int]] = {}
    for position, row in enumerate(dataset.rows):
        key = tuple(_normalise(row[c]) for c in match_columns)
        if any(key):
            groups.setdefault(key, []).append(position)
    clusters, golden_records = [], []
    for row_ids in groups.values():
        if len(row_ids) < 2:
            continue
        cluster_id = len(clusters)
        clusters.append({"cluster_id": cluster_id, "row_ids": row_ids, "score": 1.0})
        golden = {
            column: next((dataset.rows[i][column] for i in row_ids if dataset.rows[i][column] is not None), None)
            for column in dataset.columns
        }
        golden_records.append({"cluster_id": cluster_id, "record": golden})
    return {"clusters": clusters, "golden_records": golden_records, "method": "exact-normalised"}
