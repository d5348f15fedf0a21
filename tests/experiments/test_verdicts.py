"""experiments/sweep/verdicts.py on synthetic run records: the spread (max - min over seeds),
the assumed spread for one-seed settings, and "held" only beyond the spread."""
import pytest

from experiments.sweep import verdicts
from experiments.sweep.verdicts import HELD, MISSING, REVERSED, WITHIN


def row(setting, loss, seed=1234, scale=1, status="ok"):
    return {"name": f"{setting}_x{scale}_{seed}", "setting": setting, "seed": seed, "scale": scale,
            "status": status, "val_loss": loss}


def seeded(setting, losses, scale=1):
    return [row(setting, v, 1234 + i, scale) for i, v in enumerate(losses)]


def test_spread_is_max_minus_min_over_seeds_and_only_finished_runs_count():
    rows = seeded("dense", [2.70, 2.73, 2.71]) + [row("dense", 9.9, 1237, status="failed"), row("lowrank_32", 2.85)]
    found = verdicts.groups(rows)
    dense = found[("dense", "x1")]
    assert dense.losses == [2.70, 2.73, 2.71] and dense.mean == pytest.approx(2.7133333)
    assert dense.spread == pytest.approx(0.03)
    assert found[("lowrank_32", "x1")].spread is None
    assert verdicts.assumed_spread(found) == pytest.approx(0.03)


def test_assumed_spread_is_the_largest_measured_one():
    found = verdicts.groups(seeded("dense", [2.70, 2.72]) + seeded("lowrank_32", [2.80, 2.85, 2.82])
                            + [row("blockdense_32", 2.9)])
    assert verdicts.assumed_spread(found) == pytest.approx(0.05)
    assert verdicts.assumed_spread(verdicts.groups([row("dense", 2.7)])) is None


@pytest.mark.parametrize("upper, expected", [(2.760, HELD), (2.740, WITHIN), (2.700, WITHIN), (2.660, REVERSED)])
def test_an_ordering_holds_only_beyond_the_larger_spread(upper, expected):
    # dense mean 2.71, spread 0.04; the other setting one seed: the assumed spread is 0.04 too
    found = verdicts.groups(seeded("dense", [2.69, 2.73, 2.71]) + [row("lowrank_32", upper)])
    c = verdicts.compare(found[("dense", "x1")], found[("lowrank_32", "x1")], verdicts.assumed_spread(found))
    assert c.verdict == expected and c.noise == pytest.approx(0.04) and c.assumed
    assert c.diff == pytest.approx(upper - 2.71)
    assert expected in c.text() and "(assumed)" in c.text()


def test_the_larger_of_two_measured_spreads_is_used():
    found = verdicts.groups(seeded("dense", [2.70, 2.71, 2.705]) + seeded("lowrank_32", [2.74, 2.80, 2.77]))
    c = verdicts.compare(found[("dense", "x1")], found[("lowrank_32", "x1")], verdicts.assumed_spread(found))
    assert c.noise == pytest.approx(0.06) and not c.assumed
    assert c.diff == pytest.approx(0.065) and c.verdict == HELD
    assert verdicts.compare(None, found[("dense", "x1")], 0.06, "x", "dense").verdict == MISSING


def test_without_any_seed_spread_nothing_is_held():
    found = verdicts.groups([row("dense", 2.7), row("lowrank_32", 3.5)])
    c = verdicts.compare(found[("dense", "x1")], found[("lowrank_32", "x1")], verdicts.assumed_spread(found))
    assert c.noise is None and c.verdict == WITHIN


def _full(dense=2.70, lr32=2.85, sgt=2.72, extra=()):
    rows = seeded("dense", [dense - 0.01, dense, dense + 0.01]) + seeded("lowrank_32", [lr32 - 0.01, lr32, lr32 + 0.01])
    rows += seeded("lowrank_32_sgt", [sgt - 0.01, sgt, sgt + 0.01])
    rows += [row("blockdense_32", 2.87), row("blockshuffle_32", 2.91), row("lowrank_63", 2.76),
             row("blockdense_63", 2.79), row("blockshuffle_63", 2.82), row("blockdense_32_sgt", 2.73),
             row("blockshuffle_32_sgt", 2.75), row("lowrank_32_flops", 2.78)]
    rows += [row("dense", 2.50, scale=4), row("lowrank_32", 2.60, scale=4), row("lowrank_32_sgt", 2.52, scale=4)]
    return rows + list(extra)


def test_the_papers_orderings_on_a_sweep_that_shows_them():
    result = verdicts.expectations(_full())
    assert [e["verdict"] for e in result] == [HELD] * 5
    dense_best, shares, kinds, sgt, long = result
    assert len(dense_best["comparisons"]) == 6 and len(shares["comparisons"]) == 3 and len(kinds["comparisons"]) == 4
    assert all(c["noise"] == pytest.approx(0.02) for c in dense_best["comparisons"])
    assert "lowrank: 87% of the gap closed" in sgt["note"] and "without guidance on the dense run's FLOPs" in sgt["note"]
    assert long["comparisons"][0]["assumed"]                 # one seed at x4: the assumed spread


def test_one_ordering_against_the_paper_beyond_the_spread_fails_the_expectation():
    rows = [r for r in _full() if r["setting"] != "blockshuffle_32"] + [row("blockshuffle_32", 2.80)]
    kinds = verdicts.expectations(rows)[2]
    assert kinds["verdict"] == REVERSED
    assert [c["verdict"] for c in kinds["comparisons"]] == [HELD, REVERSED, HELD, HELD]


def test_self_guided_must_close_half_the_gap_by_more_than_the_spread():
    # gap 0.15: the midpoint is 2.775; 2.765 is below it by less than the 0.02 spread
    sgt = verdicts.expectations(_full(sgt=2.765))[3]
    assert sgt["comparisons"][0]["verdict"] == WITHIN and sgt["verdict"] == WITHIN
    assert verdicts.expectations(_full(sgt=2.80))[3]["comparisons"][0]["verdict"] == REVERSED


def test_missing_runs_are_not_measured():
    rows = [r for r in _full() if not (r["setting"] == "lowrank_63")]
    result = verdicts.expectations(rows)
    assert result[1]["verdict"] == MISSING and result[1]["comparisons"][0]["verdict"] == MISSING
    assert result[0]["verdict"] == MISSING
    assert result[2]["verdict"] == MISSING and result[3]["verdict"] == HELD
