"""clean-my-data: trim whitespace, turn blank strings into nulls, drop exact duplicate rows."""

import re

from rest_framework import serializers

from agents.datasets import Dataset

_SPACES = re.compile(r"\s+")


class ConfigSerializer(serializers.Serializer):
    trim_whitespace = serializers.BooleanField(default=True)
    blank_as_null = serializers.BooleanField(default=True)
    drop_duplicates = serializers.BooleanField(default=True)


def run(dataset: Dataset, config: dict) -> dict:
    changes: dict[tuple[str, str | None], int] = {}

    def count(step: str, column: str | None) -> None:
        changes[(step, column)] = changes.get((step, column), 0) + 1

    cleaned = []
    for row in dataset.rows:
        new_row = dict(row)
        for column, value in row.items():
            if not isinstance(value, str):
                continue
            if config["trim_whitespace"]:
                trimmed = _SPACES.sub(" ", value).strip()
                if trimmed != value:
                    count("trim_whitespace", column)
                    value = trimmed
            if config["blank_as_null"] and value.strip() == "":
                count("blank_as_null", column)
                value = None
            new_row[column] = value
        cleaned.append(new_row)

    if config["drop_duplicates"]:
        seen: set[tuple] = set()
        unique = []
        for row in cleaned:
            key = tuple(row[c] for c in dataset.columns)
            if key in seen:
                count("drop_duplicates", None)
                continue
            seen.add(key)
            unique.append(row)
        cleaned = unique

    return {
        "data": dataset.to_payload(cleaned),
        "changes": [{"step": step, "column": column, "count": n} for (step, column), n in changes.items()],
    }
