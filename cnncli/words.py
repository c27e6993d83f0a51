"""Counts in messages: the one home of plurals ("1 epoch", "20 epochs", "1,500 files")."""

from __future__ import annotations

#: Nouns whose plural is not the singular plus "s".
_IRREGULAR = {"class": "classes", "process": "processes", "batch": "batches"}


def plural(n: float, noun: str) -> str:
    """``noun`` as it goes after the number ``n``: singular for exactly 1, plural otherwise."""
    return noun if n == 1 else _IRREGULAR.get(noun, noun + "s")


def count(n: float, noun: str) -> str:
    """``n`` and ``noun`` agreeing: a whole number with thousands separators, a fraction as ``:g`` writes it."""
    number = f"{n:,}" if isinstance(n, int) else f"{n:g}"
    return f"{number} {plural(n, noun)}"
