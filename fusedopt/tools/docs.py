"""Tables generated into documents: the text between a start and an end marker line."""

from __future__ import annotations


def replace_between(text: str, start: str, end: str, table: str) -> str:
    """``text`` with everything between the ``start`` and ``end`` markers replaced by
    ``table``; raises naming the two marker lines when either is missing."""
    if start not in text or end not in text:
        raise ValueError(f"the markers are missing; add these two lines where the table goes:\n"
                         f"{start}\n{end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"
