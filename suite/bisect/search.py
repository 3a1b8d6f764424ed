"""The bisect search, framework-free: the fewest blocks to keep in fp32 for a run to pass.

Given the blocks ranked most suspect first, and a test ``passes(kept)`` (a short training run with
those blocks kept in fp32) known to fail with nothing kept and to pass with every block kept, the
search finds culprits one at a time: the shortest prefix of the ranking that passes, kept together
with the culprits already found, ends in a culprit (the same prefix one shorter fails). Its
length is found by galloping (1, 2, 4, … blocks) then halving, so a culprit the ranking put first
costs one trial and a culprit at rank r about 2·log₂(r); then the culprits found so far are tried
alone, and the search stops when they pass. For k culprits among n blocks: at most
k·(2·⌈log₂ n⌉ + 1) + 1 trials, about k + 1 when the ranking is right.

What it returns is 1-minimal along the ranking when ``passes`` is monotone (keeping more never
hurts): dropping any one culprit fails. Trials are memoised by the set kept, so a resumed search
asks nothing twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Trial:
    """One test of the search: the blocks kept, whether it passed, and why it was asked."""

    kept: tuple[str, ...]
    passed: bool
    purpose: str


@dataclass
class SearchResult:
    keep: list[str]  # the culprits, in the order found
    trials: list[Trial] = field(default_factory=list)


def trial_bound(n_blocks: int, culprits: int = 1) -> int:
    """The most trials the search makes for ``culprits`` culprits among ``n_blocks`` blocks."""
    if n_blocks <= 0:
        return 0
    return culprits * (2 * math.ceil(math.log2(max(n_blocks, 2))) + 1) + 1


def find_culprits(ranked: list[str], passes: Callable[[tuple[str, ...]], bool]) -> SearchResult:
    """The blocks of ``ranked`` (most suspect first) to keep so that ``passes``; assumes
    ``passes(())`` is False and ``passes(tuple(ranked))`` True (the endpoints, checked by the
    caller). ``passes`` gets the kept blocks in ranking order."""
    result = SearchResult([])
    order = {name: i for i, name in enumerate(ranked)}
    memo: dict[frozenset[str], bool] = {frozenset(): False, frozenset(ranked): True}

    def test(kept: set[str] | list[str], purpose: str) -> bool:
        key = frozenset(kept)
        if key not in memo:
            names = tuple(sorted(key, key=order.__getitem__))
            memo[key] = bool(passes(names))
            result.trials.append(Trial(names, memo[key], purpose))
        return memo[key]

    found: list[str] = []
    remaining = list(ranked)  # where the next culprit is: ranked before the last one found
    while remaining:
        # The shortest passing prefix of ``remaining`` (with ``found``): gallop, then halve.
        hi, lo = 1, 0  # invariant: prefix lo fails (0: the caller's endpoint), prefix hi is tried next
        while hi < len(remaining) and not test(set(found) | set(remaining[:hi]), f"gallop: top {hi}"):
            lo, hi = hi, min(2 * hi, len(remaining))
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if test(set(found) | set(remaining[:mid]), f"halve: top {mid}"):
                hi = mid
            else:
                lo = mid
        culprit = remaining[hi - 1]
        found.append(culprit)
        remaining = remaining[: hi - 1]
        if not remaining or test(found, f"check: {len(found)} culprit(s) alone"):
            break
    result.keep = found
    return result


# ---------------------------------------------------------------- the proxy ranking
# A block's own relative error above this (per compute dtype, about 20 units of rounding) counts
# as diverging from fp32 at that step.
DIVERGED_REL_ERROR = {"float16": 1e-2, "bfloat16": 8e-2}


@dataclass(frozen=True)
class BlockSensitivity:
    """One block's proxy over the probed steps: its worst own activation and gradient errors
    against fp32, the non-finite values it produced, the first step it diverged at."""

    name: str
    activation_rel_error: float | None
    gradient_rel_error: float | None
    nonfinite: int
    first_divergent_step: int | None
    position: int  # in forward order

    @property
    def worst_error(self) -> float:
        return max((e for e in (self.activation_rel_error, self.gradient_rel_error) if e is not None), default=0.0)


def rank_blocks(names: list[str], errors: list[Any], compute_dtype: str) -> list[BlockSensitivity]:
    """``names`` ranked most suspect first from ``errors`` (``BlockError``-shaped: name, step,
    activation_rel_error, gradient_rel_error, nonfinite): blocks producing non-finite values, then
    by the earliest step they diverged, then by their worst error; forward order breaks ties (and
    ranks blocks the probe did not measure, last)."""
    limit = DIVERGED_REL_ERROR.get(compute_dtype, 1e-2)
    by_name: dict[str, list[Any]] = {name: [] for name in names}
    for error in errors:
        by_name.setdefault(error.name, []).append(error)
    ranked = []
    for position, name in enumerate(names):
        seen = sorted(by_name[name], key=lambda e: e.step)

        def worst(values: list[float | None]) -> float | None:
            finite = [v for v in values if v is not None]
            return max(finite) if finite else None

        diverged = [
            e.step for e in seen if e.nonfinite or max(e.activation_rel_error, e.gradient_rel_error or 0.0) > limit
        ]
        ranked.append(
            BlockSensitivity(
                name,
                worst([e.activation_rel_error for e in seen]),
                worst([e.gradient_rel_error for e in seen]),
                sum(e.nonfinite for e in seen),
                diverged[0] if diverged else None,
                position,
            )
        )

    def key(s: BlockSensitivity) -> tuple:
        measured = s.activation_rel_error is not None
        step = s.first_divergent_step if s.first_divergent_step is not None else math.inf
        return (not measured, s.nonfinite == 0, step, -s.worst_error, s.position)

    return sorted(ranked, key=key)
