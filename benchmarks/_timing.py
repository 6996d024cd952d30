"""The one timing loop every A-vs-B benchmark shares: warm both sides, alternate them, report median and spread.

Why a shared loop: a round timed while caches, allocators, thread pools or lazy imports are still cold is
not a measurement of the steady state (``pretrain_step.py`` once showed a bare round at 168 images/s and
the next at 931). So every side runs ``warmup`` untimed rounds first; then the timed rounds alternate
which side goes first (A B, B A, A B, ...), so slow drift in the machine's load falls on both sides alike.
On a machine shared with other jobs a single round can be slowed by several times; the median round is
the headline, and the spread (min, max and interquartile range) says how far to trust it.

Each side is a callable returning a rate (images/s, files/s): the callable times its own steady-state
part, so set-up it must repeat each round (building a Trainer, say) stays out of the figure.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping

__all__ = ["alternate", "paired_ratios", "print_rounds", "spread"]


def alternate(sides: Mapping[str, Callable[[], float]], rounds: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Run every side ``warmup`` untimed rounds, then ``rounds`` timed rounds in alternating order.

    Returns:
        The timed rates per side, in round order.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            rates[name].append(float(sides[name]()))
    return rates


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and the quartiles of ``values`` (rounded for a JSON line)."""
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        k: round(v, 4)
        for k, v in {
            "median": statistics.median(ordered),
            "min": ordered[0],
            "max": ordered[-1],
            "q1": q1,
            "q3": q3,
        }.items()
    }


def paired_ratios(ours: list[float], theirs: list[float]) -> list[float]:
    """Round-by-round ``ours / theirs``: the two sides of a round ran back to back, under the same load."""
    return [a / b for a, b in zip(ours, theirs, strict=True)]


def print_rounds(rates: Mapping[str, list[float]], unit: str) -> None:
    """A table: one row per side with median, min-max, and every round."""
    print(f"{'side':<28}{'median':>10}{'min':>10}{'max':>10}   rounds ({unit})")
    for name, values in rates.items():
        s = spread(values)
        print(
            f"{name:<28}{s['median']:>10.1f}{s['min']:>10.1f}{s['max']:>10.1f}   "
            f"{', '.join(f'{v:.1f}' for v in values)}"
        )
