"""Tables generated into documents: the text between a start and an end marker line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def replace_between(text: str, start: str, end: str, table: str) -> str:
    """``text`` with everything between the ``start`` and ``end`` markers replaced by
    ``table``; raises naming the two marker lines when either is missing."""
    if start not in text or end not in text:
        raise ValueError(f"the markers are missing; add these two lines where the table goes:\n"
                         f"{start}\n{end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def table_main(argv, doc: str, start: str, end: str, make: Callable, document: str,
               options: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The command line of a generated table: print it, or with ``--write PATH`` replace it
    between ``start`` and ``end`` in PATH (``document`` names the usual one). ``make(args)``
    makes the table; ``options(parser)`` adds a tool's own arguments. ``doc``: the tool's
    docstring, whose first line describes it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--write", type=Path, metavar="PATH",
                        help=f"replace the table between the markers in PATH ({document})")
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    table = make(args)
    if args.write is None:
        print(table)
    else:
        args.write.write_text(replace_between(args.write.read_text(), start, end, table))
        print(f"wrote the table to {args.write}")
    return 0
