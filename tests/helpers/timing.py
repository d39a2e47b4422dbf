"""Timing-equality checks that a busy machine cannot fail by chance.

A timing oracle is systematic: every round of measurements shows it. Noise from other processes is
not: it comes and goes. So a check measures up to `rounds` times and passes on the first round
within the bound; an oracle still fails every round. The gaps of all rounds are in the message.
"""

from __future__ import annotations

from collections.abc import Callable


def gaps_until_within(measure: Callable[[], float], bound: float, rounds: int = 3) -> list[float]:
    """Gaps (seconds) measured until one is within `bound` in absolute value, at most `rounds` of them."""
    gaps: list[float] = []
    for _ in range(rounds):
        gaps.append(measure())
        if abs(gaps[-1]) < bound:
            break
    return gaps


def gaps_until_beyond(measure: Callable[[], float], bound: float, rounds: int = 3) -> list[float]:
    """For a broken twin: gaps measured until one exceeds `bound`, at most `rounds` of them."""
    gaps: list[float] = []
    for _ in range(rounds):
        gaps.append(measure())
        if gaps[-1] > bound:
            break
    return gaps


def in_ms(gaps: list[float]) -> str:
    return ", ".join(f"{g * 1000:.2f} ms" for g in gaps)
