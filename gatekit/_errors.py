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


class InputShapeError(GatekitError, RuntimeError):
    """A :class:`GatekitError` for an input a gated model cannot read (wrong rank or channels).

    It is also a :class:`RuntimeError`, the class of the conv error PyTorch raised for such an
    input before gatekit checked it, so code that caught that keeps working.
    """
