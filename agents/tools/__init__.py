"""The data agents' tools: plain data code (pandas, rapidfuzz, phonenumbers), no Django, no DRF.

Each tool module (`profile`, `clean`, `master`) has `run(dataset, options)`, `parse_options(raw)`,
`validate_against(dataset, options)` and `OPTIONS_SCHEMA`; see `agents.tools.options`.
"""
