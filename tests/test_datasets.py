"""Parsing input into a Dataset: CSV lines without quotes are split instead of read (the records
must be exactly what `csv.reader` reads, quoted fields spanning lines and stray quotes included);
a dataset is held and sent by column and still reads, and fingerprints, as rows."""

import csv
import hashlib
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import datasets, runner
from agents.datasets import Dataset, DatasetError, parse_csv, parse_rows


def outcome(text: str):
    try:
        dataset = parse_csv(text)
    except DatasetError as exc:
        return ("error", str(exc), exc.field)
    return (dataset.columns, dataset.rows)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text('ab1 ,\n\x00é\t"\r', max_size=60), st.text("ab ,\n", max_size=60)))
def test_csv_reads_as_csv_reader_reads_it(text):
    """Splitting the lines (and reading only quoted ones) gives what reading the whole text with
    `csv.reader` gives, errors included."""
    fast = outcome(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets, "_split_records", lambda text: None)
        assert outcome(text) == fast


def test_every_short_csv_reads_as_csv_reader_reads_it():
    texts = ["".join(characters) for n in range(1, 6) for characters in itertools.product('a,\n" \r', repeat=n)]
    split = [outcome(text) for text in texts]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets, "_split_records", lambda text: None)
        assert [outcome(text) for text in texts] == split


def test_quoted_fields_spanning_lines_between_plain_lines():
    text = 'a,b\n1,2\n"x\ny",3\n4,"5 ""q"""\n\n6,7'
    assert outcome(text) == (
        ["a", "b"],
        [{"a": "1", "b": "2"}, {"a": "x\ny", "b": "3"}, {"a": "4", "b": '5 "q"'}, {"a": "6", "b": "7"}],
    )


def test_csvs_field_size_limit_still_applies():
    with pytest.raises(DatasetError, match="cannot be read"):
        parse_csv("a\n" + "x" * (csv.field_size_limit() + 1) + "\n")


def test_a_dataset_travels_by_column_and_reads_as_rows():
    dataset = parse_csv("a,b\n1,\nx,2\n")
    assert dataset.values == {"a": ["1", "x"], "b": [None, "2"]} and dataset.row_count == 2
    assert dataset.rows == [{"a": "1", "b": None}, {"a": "x", "b": "2"}]
    again = Dataset.from_message(json.loads(json.dumps(dataset.to_message())))  # as a queued run stores it
    assert (again.columns, again.rows, again.source_format) == (dataset.columns, dataset.rows, "csv")
    legacy = {"columns": ["a"], "rows": [{"a": "1"}, {"a": None}], "source_format": "rows"}  # stored before
    assert Dataset.from_message(legacy).values == {"a": ["1", None]}
    no_columns = parse_rows([{}, {}])
    assert Dataset.from_message(no_columns.to_message()).row_count == 2


def test_the_request_fingerprint_is_unchanged_by_the_column_layout():
    """Replays across a deploy compare fingerprints: they must read as the row-by-row digest did."""
    rows = [{"a": "1", "b": None}, {"a": "x", "b": 2.5}]
    for dataset in (parse_rows(rows), parse_rows([{}, {}])):
        digest = hashlib.sha256()
        digest.update(json.dumps(["profile-my-data", {"k": 1}, dataset.columns], sort_keys=True, default=str).encode())
        for row in dataset.rows:
            digest.update(json.dumps([row[c] for c in dataset.columns], default=str).encode())
        assert runner._fingerprint("profile-my-data", {"k": 1}, dataset) == digest.hexdigest()


def test_gc_pauses_nest_and_restore_the_collector_once():
    import gc

    from agents.tools.dataset import gc_paused

    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_text_is_known_plain_only_without_a_nul_or_a_lone_surrogate():
    """Factorising trusts `plain_text` to skip its NUL/surrogate check: texts pandas' hash table
    would merge must still count apart."""
    from agents.tools import profile

    assert parse_csv("a\nx\n").plain_text and not parse_rows([{"a": "x"}]).plain_text
    config = profile.parse_options({})
    for text in ("a\nx\0y\nx\n", "a\nx\ud800\nx\n"):
        dataset = parse_csv(text)
        assert not dataset.plain_text
        assert profile.run(dataset, config)["columns"][0]["distinct_count"] == 2
        assert not Dataset.from_message(json.loads(json.dumps(dataset.to_message()))).plain_text
    assert Dataset.from_message(json.loads(json.dumps(parse_csv("a\nx\n").to_message()))).plain_text


def test_text_the_reader_stops_early_on_is_not_split_first(settings):
    """Splitting holds a list per line: text over the row limit, a header the reader refuses or a
    plain line of another width goes to the reader, which stops where it fails (the 10 MB of blank
    lines below would otherwise take about 200 MB of the web process)."""
    import tracemalloc

    settings.AGENT_MAX_ROWS = 1000
    settings.AGENT_MAX_INPUT_BYTES = 20_000_000
    blank_lines = "a\n" + "\n" * 2_000_000  # valid: a header and no rows
    cases = [blank_lines, "a\n" * 1002, "," * 2000 + "\n" + "," * 2000 + "\n", "a,b\n" + "1\n" + "1,2\n" * 500]
    for text in cases:
        assert datasets._split_records(text) is None
    tracemalloc.start()
    dataset = parse_csv(blank_lines)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (dataset.columns, dataset.row_count) == (["a"], 0) and peak < 20_000_000
    assert datasets._split_records("a,b\n" + "1,2\n" * 999 + "\n") is not None  # within the limit
