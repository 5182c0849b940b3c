"""Loss weights that move linearly between two values over the first K epochs.

``W`` is constant; ``A:B`` goes from A to B over the whole run; ``A:B:K`` goes from A to B
over the first K epochs and stays at B after.  Ramping a weight up from 0 lets the gates find
their use before a loss pulls on them; annealing batch shaping down to 0 lets it shape the
gates early without fighting the task loss at the end.

>>> r = Ramp.parse("1:0:4")
>>> [r.at(e, total=10) for e in (0, 1, 2, 4, 9)]
[1.0, 0.75, 0.5, 0.0, 0.0]
>>> Ramp.parse("0.5").at(3.0, total=10), str(Ramp.parse("0:2"))
(0.5, '0:2')
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Ramp:
    start: float
    end: float | None = None  # None: constant ``start``
    epochs: float | None = None  # None: the whole run

    @classmethod
    def parse(cls, text: str) -> Ramp:
        parts = str(text).split(":")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if not 1 <= len(numbers) <= 3 or len(numbers) != len(parts):
            raise ValueError(f"expected W, A:B or A:B:K (numbers), got {text!r}")
        if any(n < 0 for n in numbers[:2]):
            raise ValueError(f"loss weights must be >= 0, got {text!r}")
        if len(numbers) == 3 and numbers[2] <= 0:
            raise ValueError(f"the ramp's length K must be > 0 epochs, got {text!r}")
        return cls(*numbers)  # type: ignore[arg-type]

    def at(self, epoch: float, total: float) -> float:
        """The weight at ``epoch`` (fractional: steps done / steps per epoch) of ``total``."""
        if self.end is None:
            return self.start
        length = self.epochs if self.epochs is not None else total
        t = min(max(epoch / length, 0.0), 1.0) if length > 0 else 1.0
        return self.start + (self.end - self.start) * t

    @property
    def active(self) -> bool:
        """False when the weight is 0 throughout (the loss need not be computed)."""
        return bool(self.start or self.end)

    def __str__(self) -> str:
        parts = [self.start] if self.end is None else [self.start, self.end] + (
            [self.epochs] if self.epochs is not None else [])
        return ":".join(f"{p:g}" for p in parts)


def ramp_arg(value: str) -> Ramp:
    try:
        return Ramp.parse(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
