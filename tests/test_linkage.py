"""master-my-data's linkage on small fixtures: levels per field kind, missing values, multi-pass
blocking, no chaining through one weak link, and the explanation of a match."""

import numpy as np
import pandas as pd

from agents.datasets import parse_rows
from agents.tools import linkage, master


def field(kind: str, *values):
    return linkage.make_field(kind, pd.Series(list(values), dtype=object), kind)


def levels(fld, pairs):
    return linkage.compare([fld], np.array(pairs, dtype=np.int64))[:, 0].tolist()


def test_dates_transposed_day_month_and_year_typos_are_close_not_different():
    dates = field("date", "1984-03-07", "1984-07-03", "1948-03-07", "19840307", "2001-11-30", None)
    assert levels(dates, [(0, 3), (0, 1), (0, 2), (0, 4), (0, 5)]) == [3, 2, 2, 0, -1]


def test_ids_one_typo_or_two_transposed_digits_are_close():
    ids = field("id", "5304218", "5302418", "5304219", "5304-218", "9911873")
    assert levels(ids, [(0, 3), (0, 1), (0, 2), (0, 4)]) == [3, 2, 2, 0]
    short = field("id", "1", "2", "12", "13")  # one digit apart is a different record number, not a typo
    assert levels(short, [(0, 1), (2, 3)]) == [0, 0]


def test_names_close_by_spelling_or_sound():
    names = field("name", "katherine", "catherine", "kathryn", "zoltan")
    found = levels(names, [(0, 1), (0, 2), (0, 3)])
    assert found[0] == 2 and found[1] >= 1 and found[2] == 0


def test_a_missing_value_neither_agrees_nor_disagrees():
    rows = [{"name": "Ada Byron", "email": "ada@example.com"}, {"name": "Ada Byron", "email": None}]
    fields = [linkage.make_field(c, pd.Series([r[c] for r in rows], dtype=object)) for c in ("name", "email")]
    gamma = linkage.compare(fields, np.array([[0, 1]]))
    assert gamma.tolist() == [[linkage.EXACT, -1]]


def test_a_typo_in_every_field_but_one_still_makes_a_candidate_pair():
    """One blocking pass per field: each pair below shares exactly one exact value."""
    names = ["smith", "jones", "taylor", "brown", "wilson", "evans"]
    frame = pd.DataFrame(
        {
            "surname": [*names, "smyth", "jonse", "tailor", "brown", "wilsno", "evnas"],
            "dob": [f"19{60 + i}0{i + 1}1{i}" for i in range(6)] * 2,
            "ssn": [f"{i}1234{i}{i}" for i in range(6)] + [f"{i}1243{i}{i}" for i in range(6)],
        }
    )
    frame.loc[6:, "dob"] = [f"19{60 + i}1{i}0{i + 1}" for i in range(6)]  # day and month swapped
    frame.loc[[9], "ssn"] = "999"  # record 9 agrees only on its surname
    fields = [linkage.make_field(c, frame[c].astype(object)) for c in frame.columns]
    pairs = {tuple(p) for p in linkage.candidate_pairs(fields, len(frame), 60).tolist()}
    assert {(i, i + 6) for i in range(6)} <= pairs


def test_one_weak_link_does_not_chain_two_clusters():
    """0–1 and 2–3 are sure matches; 1–2 alone is strong; every other cross pair says no."""
    strong, weak = 10.0, -10.0
    odds = {(0, 1): strong, (2, 3): strong, (1, 2): strong, (0, 2): weak, (0, 3): weak, (1, 3): weak}
    assert linkage.average_linkage(np.array([0, 1, 2, 3]), odds, threshold_bits=2.5) == [[0, 1], [2, 3]]
    odds.update({(0, 2): strong, (0, 3): strong, (1, 3): strong})
    assert linkage.average_linkage(np.array([0, 1, 2, 3]), odds, threshold_bits=2.5) == [[0, 1, 2, 3]]


def test_explain_lists_the_scored_pairs_and_what_each_field_contributed():
    rows = [
        {"name": "Jon Smith", "email": "jon@example.com", "city": None},
        {"name": "John Smith", "email": "jon@example.com", "city": "Salem"},
        {"name": "Grace Hopper", "email": "grace@example.com", "city": "Salem"},
    ]
    config = master.parse_options({"explain": True})
    result = master.run(parse_rows(rows), config)
    (cluster,) = result["clusters"]
    assert cluster["row_ids"] == [0, 1]
    (pair,) = cluster["pairs"]
    assert pair["row_ids"] == [0, 1] and pair["score"] == cluster["score"] >= config["threshold"]
    assert pair["fields"]["email"]["level"] == "exact" and pair["fields"]["email"]["weight"] > 0
    assert pair["fields"]["name"]["level"] in ("close", "similar")
    assert pair["fields"]["city"] == {"level": "missing", "weight": 0.0}
    assert set(result["summary"]["field_weights"]) == {"name", "email", "city"}
    assert "pairs" not in master.run(parse_rows(rows), master.parse_options({}))["clusters"][0]


def test_pairs_alike_in_one_field_of_three_are_not_compared_unless_the_others_are_empty():
    """A pair must share a blocking key in two fields (or, where the records fill fewer fields,
    in all but one of those both fill): one typo never loses a pair, one shared postcode finds none."""
    frame = pd.DataFrame(
        {
            "surname": ["smith", "smyth", "jones", "taylor", "brown", "brown"],
            "postcode": ["2600", "2600", "2600", "2600", "4000", None],
            "ssn": ["5304218", "5304281", "8812345", "7711111", "6600000", None],
        }
    )
    fields = [linkage.make_field(c, frame[c].astype(object)) for c in frame.columns]
    pairs = {tuple(p) for p in linkage.candidate_pairs(fields, len(frame), 60).tolist()}
    # 0–1: a surname typo (same sound) and two transposed ssn digits, same postcode: compared.
    # 0–2, 0–3, 2–3 …: the same postcode only: not compared.
    # 4–5: the same surname, postcode and ssn missing on one side: compared.
    assert pairs == {(0, 1), (4, 5)}
    two = [linkage.make_field(c, frame[c].astype(object)) for c in ("postcode", "ssn")]
    # With two fields, one shared key is enough: a typo in the other must not lose the pair.
    assert {(0, 1), (0, 2)} <= {tuple(p) for p in linkage.candidate_pairs(two, len(frame), 60).tolist()}


def test_the_same_value_of_an_identifying_field_is_enough_to_compare_a_pair():
    """The same e-mail under a nickname, a new phone and a new city: one field alike, but it identifies."""
    others = range(2, 10)
    frame = pd.DataFrame(
        {
            "name": ["david jones", "dave jones", *(f"person {chr(97 + i)}{chr(98 + i)}" for i in others)],
            "email": ["dj51760@mail.com", "dj51760@mail.com", *(f"p{i}@mail.com" for i in others)],
            "phone": ["5551810111", "5557966646", *(f"55500000{i:02d}" for i in others)],
            "city": ["austin", "atlanta", *(["atlanta", "austin"] * 4)],
        }
    )
    fields = [linkage.make_field(c, frame[c].astype(object)) for c in frame.columns]
    pairs = {tuple(p) for p in linkage.candidate_pairs(fields, len(frame), 60).tolist()}
    assert (0, 1) in pairs  # the e-mail, whose every value is nearly unique, identifies
    assert (1, 2) not in pairs and (0, 3) not in pairs  # the same city only: not compared


def test_values_differing_after_a_nul_stay_different():
    ids = field("text", "ann smith", "ann smith\x00jones", "bob")
    assert len(set(ids.codes.tolist())) == 3
