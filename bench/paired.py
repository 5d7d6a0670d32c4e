"""The goals' measurement: the paid route and the unpaid endpoint under the same server
kind in alternating slices (unpaid, paid, unpaid, ..., paid, unpaid), each paid slice over
the mean of the unpaid slices either side of it.

Why: on these machines what one endpoint serves swings 10-30% over minutes (the unpaid
endpoint alone did 6,756-8,994 req/s in one morning's cells), and the table's ratio of
two bests, taken minutes apart, carries both swings. A pair's ratio carries only what
changed within its ~3 slices; the goal is judged on the median of the pairs, with the
quartiles beside it.

The indexer builds a paid slice's last receipts after the slice, during the unpaid slice
that follows, and on PostgreSQL the database does part of that work: that CPU (the
indexer's above its idle rate, and the database's) is charged back. Each unpaid slice is
scaled up by the CPU they took from it, and the paid slice before it scaled down by the
same, both out of the machine's cores x the slice's seconds (so the ratio is not
flattered by the paid side's own builds slowing its baseline). The first unpaid slice
is scaled by its own (what earlier cells left), charged to no paid slice.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from bench.measure import tree_cpu, wrk

Probe = tuple[str, bytes, dict[str, str]]  # url, body, headers


@dataclass
class Paired:
    """One alternation's slices, in the order run."""

    paid: list[tuple[float, float]]  # (req/s, p50 ms) with the next unpaid slice's builds charged
    unpaid: list[tuple[float, float]]  # (req/s, p50 ms) with the builds in it given back
    spilled: float  # CPU s charged: indexer (above idle) and database, in unpaid slices
    paid_calls: int

    def ratios(self) -> list[float]:
        """Each paid slice's req/s over the mean of its two neighbours'."""
        around = self._neighbours()
        return [rps / mean for (rps, _), (mean, _) in zip(self.paid, around, strict=True)]

    def added_p50(self) -> list[float]:
        """Each paid slice's p50 less the mean of its two neighbours' (ms)."""
        around = self._neighbours()
        return [p50 - mean for (_, p50), (_, mean) in zip(self.paid, around, strict=True)]

    def _neighbours(self) -> list[tuple[float, float]]:
        """(req/s, p50) of the two unpaid slices around each paid one, averaged."""
        return [((a + c) / 2, (b + d) / 2) for (a, b), (c, d) in pairwise(self.unpaid)]


def alternate(
    paid: Probe, unpaid: Probe, conns: int, seconds: int, pairs: int, work: Path,
    indexer: int | None, idle: float = 0.0, database: int | None = None,
) -> Paired:  # fmt: skip
    """`pairs` paid slices of `seconds` at `conns` connections, each between two unpaid
    ones; the CPU of `indexer` (above its `idle` share of a core) and of `database` (a
    PostgreSQL postmaster: its backends) in an unpaid slice is charged to the paid
    slice before it."""
    machine = seconds * len(os.sched_getaffinity(0))  # CPU seconds a slice has

    def taken() -> float:
        return tree_cpu(indexer) + tree_cpu(database)

    def run(probe: Probe) -> tuple[float, float, int, float]:
        before = taken()
        rps, p50, _p99, bad, total = wrk(probe[0], probe[1], probe[2], conns, seconds, work)
        if bad:
            raise RuntimeError(f"{bad} of {total} calls to {probe[0]} failed")
        # at most half the slice's CPU: past that the scaling below means nothing
        return rps, p50, total, min(max(taken() - before - idle * seconds, 0.0), machine / 2)

    def regained(rps: float, spill: float) -> float:
        return rps * machine / (machine - spill)

    first = run(unpaid)
    unpaid_slices, paid_slices = [(regained(first[0], first[3]), first[1])], []
    spilled, calls = 0.0, 0
    for _ in range(pairs):
        p_rps, p_p50, p_total, _builds = run(paid)
        u_rps, u_p50, _total, spill = run(unpaid)
        spilled, calls = spilled + spill, calls + p_total
        paid_slices.append((p_rps * machine / (machine + spill), p_p50))
        unpaid_slices.append((regained(u_rps, spill), u_p50))
    return Paired(paid_slices, unpaid_slices, spilled, calls)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3
