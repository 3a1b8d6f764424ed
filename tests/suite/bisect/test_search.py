"""The bisect search against simulated runs whose culprits are known: it must name exactly them,
within its stated trial bound, whatever the ranking."""

from __future__ import annotations

import itertools
import random

import pytest
from precision_suite.bisect.search import find_culprits, trial_bound


def oracle(culprits: set[str]):
    asked = []

    def passes(kept: tuple[str, ...]) -> bool:
        asked.append(kept)
        return culprits <= set(kept)

    return passes, asked


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 40])
def test_one_culprit_anywhere_in_the_ranking_is_found_within_the_bound(n):
    ranked = [f"b{i}" for i in range(n)]
    for where in range(n):
        passes, asked = oracle({ranked[where]})
        result = find_culprits(ranked, passes)
        assert result.keep == [ranked[where]]
        assert len(asked) == len(result.trials) <= trial_bound(n, 1)
        assert len(set(asked)) == len(asked), "a trial is never asked twice"


def test_a_culprit_ranked_first_costs_one_trial():
    passes, asked = oracle({"b0"})
    assert find_culprits([f"b{i}" for i in range(13)], passes).keep == ["b0"]
    assert asked == [("b0",)]


def test_several_culprits_are_all_found_and_nothing_else():
    rng = random.Random(7)
    for n, k in itertools.product([6, 13, 30], [2, 3]):
        for _ in range(20):
            ranked = [f"b{i}" for i in range(n)]
            rng.shuffle(ranked)
            culprits = set(rng.sample(ranked, k))
            passes, asked = oracle(culprits)
            result = find_culprits(ranked, passes)
            assert set(result.keep) == culprits
            assert len(asked) <= trial_bound(n, k)


def test_interacting_blocks_give_a_one_minimal_set():
    """Passing needs a or b (either one): the search keeps one of them, and dropping it fails."""
    ranked = ["x", "a", "y", "b", "z"]

    def passes(kept):
        return "a" in kept or "b" in kept

    result = find_culprits(ranked, passes)
    assert result.keep == ["a"]
    assert all(t.passed == passes(t.kept) for t in result.trials)
