"""The hostile-world suite's cases, each runnable at two scales.

A case is a function ``run(n, workdir) -> dict`` registered with ``@case``: it repeats
its attack ``n`` times (iterations, kill cycles, generated inputs ...) in ``workdir`` and
returns its figures, always with ``"failures"``: the count of outcomes that must never
happen (an escape, a lost or duplicated file, a crash, a hang, an undetected tamper).
The pytest files call it with the case's ``fast`` count (CI) and assert no failures;
``bench/hostile.py`` calls every case with its ``full`` count and prints one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

Figures = dict[str, "int | float | str"]


@dataclass(frozen=True)
class Case:
    number: str           # the numbering: "1", "5", "13b" ...
    title: str
    run: Callable[[int, Path], Figures]
    fast: int             # n in CI
    full: int             # n in bench/hostile.py
    unit: str = "iterations"


CASES: dict[str, Case] = {}


def case(number: str, title: str, *, fast: int, full: int, unit: str = "iterations"):
    """Register ``run(n, workdir) -> figures`` as hostile case *number*."""
    def register(fn: Callable[[int, Path], Figures]) -> Callable[[int, Path], Figures]:
        if number in CASES:
            raise ValueError(f"hostile case {number} registered twice")
        CASES[number] = Case(number, title, fn, fast, full, unit)
        return fn
    return register


def check(figures: Figures) -> None:
    """For the pytest side: no failures, and say which figures when there are."""
    assert "failures" in figures, f"a case must report failures: {figures}"
    assert figures["failures"] == 0, f"failures: {figures}"
