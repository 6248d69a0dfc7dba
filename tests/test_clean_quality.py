"""clean-my-data on a planted-defect fixture: the generator and scorer of `bench.clean_quality`,
on a few hundred seeded rows instead of the benchmark's thousands."""

import pytest

from bench.clean_quality import CUSTOMERS, KINDS, SUPPLIERS, evaluate, plant, score

ROWS = 500


@pytest.fixture(scope="module")
def customers():
    return evaluate(CUSTOMERS, ROWS, examples=5)


@pytest.mark.parametrize("table", [CUSTOMERS, SUPPLIERS], ids=lambda table: table.name)
def test_clean_fixes_95_percent_of_planted_defects_and_leaves_good_cells_alone(table, figures):
    result = evaluate(table, ROWS)
    figures(
        f"clean-my-data on {ROWS} planted {table.name} rows: {result['fixed_share']:.1%} of "
        f"{result['planted']} defects fixed, {result['good_changed_share']:.2%} of good cells changed"
    )
    assert result["fixed_share"] >= 0.95
    assert result["good_changed_share"] <= 0.005
    assert result["good_rows_wrongly_dropped"] == 0


def test_every_kind_of_defect_is_planted_and_mostly_fixed_in_the_tuned_table(customers):
    planted = {kind for kind, counts in customers["defects"].items() if counts["planted"]}
    assert planted == set(KINDS) - {"datetime format"}  # customers has no datetime column
    assert customers["unrecoverable"]["planted"] > 0
    # Per kind, so that one broken step cannot hide in the total. Dates are the weakest: two-digit
    # years (08/30/19) are not read.
    for kind, counts in customers["defects"].items():
        assert counts["share"] >= 0.75, (kind, counts, customers["misses"])
    assert customers["defects"]["duplicate (exact)"]["share"] == 1


def test_the_scorer_counts_nothing_fixed_when_nothing_is_cleaned():
    planted = plant(CUSTOMERS, ROWS)
    untouched = score(planted, [dict(row.raw) for row in planted.rows])
    assert untouched["fixed"] == 0 and untouched["good_changed"] == 0
    blanked = [dict.fromkeys(row.raw, "") | {"customer_id": row.raw["customer_id"]} for row in planted.rows]
    assert score(planted, blanked)["good_changed_share"] > 0.8
