"""Where benchmarks put their figures: bench/results/<name>.json and, as Markdown, <name>.md."""

import json
from collections.abc import Iterable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def table(header: Iterable[str], rows: Iterable[Iterable]) -> list[str]:
    """A Markdown table, as lines."""
    header = list(header)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def write(name: str, payload: dict, lines: list[str]) -> None:
    """Write the JSON and the Markdown of one benchmark, and print the Markdown."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
