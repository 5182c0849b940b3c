"""Reading measured numbers out of the JSON files that benchmarks and training runs write.

One reader and one format for the two places that quote those files: the table directives
of ``gatekit_docs.py`` (the docs build) and ``tests/test_doc_numbers.py`` (the numbers the
README and the pages quote in prose).  Nothing here needs Sphinx, so the test runs without
the docs extra.
"""

from __future__ import annotations

import contextlib
from typing import Any


def lookup(record: Any, dotted: str) -> Any:
    """The value at ``dotted`` (``"a.b.0.c"``: dict keys, list indices), None if absent."""
    for key in dotted.split("."):
        if isinstance(record, dict) and key in record:
            record = record[key]
        elif isinstance(record, list) and key.isdigit() and int(key) < len(record):
            record = record[int(key)]
        else:
            return None
    return record


def cell(value: Any, spec: str) -> str:
    """``value`` as a page shows it: ``format(value, spec)``; without a spec (or one that
    does not fit the value), floats to 4 significant digits; None as a dash."""
    if value is None:
        return "\u2014"
    if spec:
        with contextlib.suppress(TypeError, ValueError):
            return format(value, spec)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
