"""Words in messages: the one home of plurals ("1 epoch", "20 epochs", "1,500 files"), of alternatives
("a, b or c"), of subjects taken together ("a and b are") and of lists cut short ("a, b, … (7 more)")."""

from __future__ import annotations

#: Nouns whose plural is not the singular plus "s".
_IRREGULAR = {"class": "classes", "process": "processes", "batch": "batches", "box": "boxes"}


def plural(n: float, noun: str) -> str:
    """``noun`` as it goes after the number ``n``: singular for exactly 1, plural otherwise."""
    return noun if n == 1 else _IRREGULAR.get(noun, noun + "s")


def count(n: float, noun: str) -> str:
    """``n`` and ``noun`` agreeing: a whole number with thousands separators, a fraction as ``:g`` writes it."""
    number = f"{n:,}" if isinstance(n, int) else f"{n:g}"
    return f"{number} {plural(n, noun)}"


def either(names: list[str] | tuple[str, ...]) -> str:
    """Alternatives in a sentence: ``a``, ``a or b``, ``a, b or c``."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def are(names: list[str] | tuple[str, ...]) -> str:
    """Names as the subject of a sentence, with its verb: ``a is``, ``a and b are``, ``a, b and c are``."""
    names = list(names)
    if len(names) == 1:
        return f"{names[0]} is"
    return f"{', '.join(names[:-1])} and {names[-1]} are"


def listed(names: list[str] | tuple[str, ...], most: int) -> str:
    """``names`` comma-separated, the first ``most`` of them when there are more: then an ellipsis and how
    many are left out, so that a reader sees the list is cut."""
    names = list(names)
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])}, … ({len(names) - most} more)"
