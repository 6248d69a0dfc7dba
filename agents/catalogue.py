"""The 22 priced agents and their default costs (credits per run, 20–150)."""

from typing import NamedTuple


class CatalogueEntry(NamedTuple):
    agent_id: str
    name: str
    description: str
    cost_credits: int


DEFAULT_AGENTS: tuple[CatalogueEntry, ...] = (
    CatalogueEntry(
        "profile-my-data",
        "Profile my data",
        "Column types, nulls, distinct values, statistics and data-quality warnings for a table.",
        25,
    ),
    CatalogueEntry(
        "clean-my-data",
        "Clean my data",
        "Trims, normalises, standardises and de-duplicates a table, with a change log.",
        40,
    ),
    CatalogueEntry(
        "master-my-data",
        "Master my data",
        "Finds records of the same entity, clusters them and builds golden records.",
        60,
    ),
    CatalogueEntry(
        "validate-my-data",
        "Validate my data",
        "Checks a table against rules: required fields, formats, ranges and references.",
        30,
    ),
    CatalogueEntry(
        "enrich-my-data",
        "Enrich my data",
        "Adds derived and reference attributes such as country names, domains and geocodes.",
        80,
    ),
    CatalogueEntry(
        "classify-my-data",
        "Classify my data",
        "Tags columns as personal, financial or sensitive data for governance.",
        35,
    ),
    CatalogueEntry(
        "anonymize-my-data",
        "Anonymise my data",
        "Masks, hashes or generalises personal data while keeping the table usable.",
        50,
    ),
    CatalogueEntry(
        "match-my-data", "Match my data", "Links the records of two tables that describe the same entities.", 70
    ),
    CatalogueEntry(
        "deduplicate-my-data",
        "Deduplicate my data",
        "Finds and removes exact and near-duplicate rows within a table.",
        45,
    ),
    CatalogueEntry(
        "standardize-my-data",
        "Standardise my data",
        "Brings dates, phone numbers, addresses and units to one format.",
        30,
    ),
    CatalogueEntry(
        "transform-my-data",
        "Transform my data",
        "Reshapes tables: pivot, unpivot, split, merge and derive columns.",
        35,
    ),
    CatalogueEntry(
        "join-my-data", "Join my data", "Joins tables on exact or fuzzy keys and reports unmatched rows.", 40
    ),
    CatalogueEntry(
        "summarize-my-data",
        "Summarise my data",
        "Writes a plain-language summary of a table's contents and trends.",
        55,
    ),
    CatalogueEntry(
        "visualize-my-data", "Visualise my data", "Suggests and renders the charts that best show a table.", 45
    ),
    CatalogueEntry("forecast-my-data", "Forecast my data", "Forecasts a time series with prediction intervals.", 120),
    CatalogueEntry(
        "detect-anomalies", "Detect anomalies", "Flags unusual rows and values with a score and an explanation.", 90
    ),
    CatalogueEntry("segment-my-data", "Segment my data", "Clusters records into segments and describes each one.", 100),
    CatalogueEntry(
        "query-my-data",
        "Query my data",
        "Answers a question about a table in plain language with the query it ran.",
        50,
    ),
    CatalogueEntry(
        "document-my-data",
        "Document my data",
        "Writes a data dictionary: column meanings, types, examples and caveats.",
        40,
    ),
    CatalogueEntry("map-my-schema", "Map my schema", "Maps the columns of a source table onto a target schema.", 65),
    CatalogueEntry(
        "monitor-my-data", "Monitor my data", "Compares a new batch with the last one and reports drift.", 75
    ),
    CatalogueEntry(
        "govern-my-data", "Govern my data", "Checks lineage, ownership and retention rules across tables.", 150
    ),
)
