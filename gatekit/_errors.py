"""The one exception class gatekit raises for bad input."""

from __future__ import annotations

__all__ = ["GatekitError"]


class GatekitError(ValueError):
    """Raised for every invalid argument, model or tensor that gatekit is given.

    Messages say what was expected, what was got, and how to fix it.  It subclasses
    :class:`ValueError` so that code catching ``ValueError`` keeps working.

    >>> import gatekit
    >>> try:
    ...     gatekit.get_gate("no_such_gate")
    ... except gatekit.GatekitError as e:
    ...     print(type(e).__name__)
    GatekitError
    """
