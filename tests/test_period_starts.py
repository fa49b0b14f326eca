"""engine.accounts.budgets.period_starts: the cached (day, month) starts equal the computed ones for
any order of times, across midnights, month ends and leap days."""

from __future__ import annotations

import calendar
import random

from engine.accounts.budgets import day_start, month_start, period_starts


def test_cached_period_starts_match_the_computed_ones_in_any_order() -> None:
    base = calendar.timegm((2028, 2, 28, 0, 0, 0))  # a leap February
    times = [base + day * 86400 + offset for day in range(-70, 400, 3) for offset in (-1e-6, 0.0, 1e-6, 43200.0, 86399.999)]
    shuffled = times[:]
    random.Random(7).shuffle(shuffled)
    for now in shuffled + sorted(times) + sorted(times, reverse=True):
        assert period_starts(now) == (day_start(now), month_start(now)), now
