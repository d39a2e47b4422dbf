"""Timing-equality checks that a busy machine cannot fail by chance.

A timing oracle is systematic: every round of measurements shows it. Noise from other processes is
not: it comes and goes. So a check measures up to `rounds` times and passes on the first round
within the bound; an oracle still fails every round. The gaps of all rounds are in the message.
"""

from __future__ import annotations

from collections.abc import Callable


def gaps_until(measure: Callable[[], float], done: Callable[[float], bool], rounds: int = 3) -> list[float]:
    """Gaps (seconds) measured until one is `done`, at most `rounds` of them."""
    gaps: list[float] = []
    while len(gaps) < rounds and not (gaps and done(gaps[-1])):
        gaps.append(measure())
    return gaps


def gaps_until_within(measure: Callable[[], float], bound: float) -> list[float]:
    """Until a gap is within `bound` in absolute value: the check that unknown and known accounts cost the same."""
    return gaps_until(measure, lambda gap: abs(gap) < bound)


def gaps_until_beyond(measure: Callable[[], float], bound: float) -> list[float]:
    """Until a gap exceeds `bound`: the broken twin, which must show the oracle."""
    return gaps_until(measure, lambda gap: gap > bound)


def in_ms(gaps: list[float]) -> str:
    return ", ".join(f"{g * 1000:.2f} ms" for g in gaps)
