"""profile-my-data: per-column types, nulls and distinct values; duplicate rows."""

from rest_framework import serializers

from agents.datasets import Dataset


class ConfigSerializer(serializers.Serializer):
    top_values = serializers.IntegerField(min_value=0, max_value=100, default=5)


def _infer_type(values: list) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "empty"
    kinds = set()
    for value in present:
        if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in {"true", "false"}):
            kinds.add("boolean")
            continue
        text = str(value).strip()
        try:
            int(text)
            kinds.add("integer")
            continue
        except ValueError:
            pass
        try:
            float(text)
            kinds.add("float")
            continue
        except ValueError:
            kinds.add("text")
    if kinds <= {"integer"}:
        return "integer"
    if kinds <= {"integer", "float"}:
        return "float"
    if kinds == {"boolean"}:
        return "boolean"
    return "text"


def run(dataset: Dataset, config: dict) -> dict:
    seen: set[tuple] = set()
    duplicate_rows = 0
    for row in dataset.rows:
        key = tuple(row[c] for c in dataset.columns)
        if key in seen:
            duplicate_rows += 1
        else:
            seen.add(key)
    columns = []
    for name in dataset.columns:
        values = [row[name] for row in dataset.rows]
        counts: dict = {}
        for value in values:
            if value is not None:
                counts[value] = counts.get(value, 0) + 1
        top = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))[: config["top_values"]]
        columns.append(
            {
                "name": name,
                "type": _infer_type(values),
                "null_count": sum(1 for v in values if v is None),
                "distinct_count": len(counts),
                "top_values": [{"value": value, "count": count} for value, count in top],
            }
        )
    warnings = [f"Column {c['name']!r} is entirely empty." for c in columns if c["type"] == "empty"]
    return {"row_count": len(dataset.rows), "duplicate_rows": duplicate_rows, "columns": columns, "warnings": warnings}
