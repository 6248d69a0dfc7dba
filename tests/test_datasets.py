"""Parsing input into a Dataset: CSV lines without quotes are split instead of read (the records
must be exactly what `csv.reader` reads, quoted fields spanning lines and stray quotes included);
a dataset is held and sent by column and still reads, and fingerprints, as rows."""

import csv
import hashlib
import io
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
@given(st.text('ab1 ,\n\x00é\t"', max_size=60))
def test_csv_reads_as_csv_reader_reads_it(text):
    assert list(datasets._records(text)) == list(csv.reader(io.StringIO(text)))
    fast = outcome(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets, "_records", lambda text: csv.reader(io.StringIO(text)))
        assert fast == outcome(text)


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
