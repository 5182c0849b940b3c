"""A run's settings: one typed dataclass, built from the parsed flags by :func:`cli.run_config`.

The training code reads fields of :class:`RunConfig`; a script's own flags (its data) are the
fields of its subclass (:class:`CifarConfig`, :class:`ImageNetConfig`).  Building a config
checks it is complete: a flag without a field, or a field without a value (no flag, no
default, and a type that does not admit None), is a ``TypeError`` when the config is built,
before any run starts, instead of an ``AttributeError`` or a None halfway through one.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gatekit import GatekitError

from .budgets import BudgetRange
from .ramp import Ramp


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The settings the training code reads, one field per flag (and ``channels_last_cpu``)."""

    # model
    arch: str
    gater: str
    no_gate: bool
    sites: str | list[str]  # a policy name, or conv names (``--sites a,b``)
    estimator: str
    bottleneck: int
    group_size: int
    init_bias: float
    gater_resolution: int | None
    freeze_gater: bool
    # warm start
    init_from: Path | None
    init_gater: bool
    init_gates: str | None  # start the gates from a filter ranking (--init-gates l1)
    backbone_weights: str | None  # torchvision weights by name (a flag of imagenet_gaternet.py)
    # recipe
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    gate_loss_weight: Ramp
    target_rate: float | None
    target_rate_weight: Ramp
    budget: Ramp | None
    budget_range: BudgetRange | None  # one model for any budget (--budget-range)
    budget_ends: float  # the fraction of each batch at the range's two ends (--budget-ends)
    eval_budgets: tuple[float, ...]
    budget_weight: Ramp
    count_downstream: bool
    batch_shaping: Ramp
    batch_shaping_prior: tuple[float, float]
    # distillation
    distill_from: Path | None
    distill_weight: Ramp
    distill_temperature: float
    # run time
    device: str
    precision: str
    channels_last: bool | None  # the flag; None: see channels_last_on
    channels_last_cpu: bool  # the script's default for channels_last on CPU
    compile: bool
    compile_mode: str
    workers: int
    seed: int
    limit: int | None
    limit_val: int | None
    log_every: int
    # output
    name: str
    output_dir: str | None
    resume: str | None  # a checkpoint path, or "auto" (--resume without a path)

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for name, value in vars(self).items():
            hint = hints[name]
            if hint is Ramp and isinstance(value, int | float) and not isinstance(value, bool):
                # a script's default weight is a number: a constant ramp
                object.__setattr__(self, name, Ramp(float(value)))
            elif value is None and not _admits_none(hint):
                raise TypeError(f"{type(self).__name__}.{name} has no value: give its flag a "
                                "default, or add it to the script's defaults (cli.defaults)")

    @property
    def channels_last_on(self) -> bool:
        """Whether the model and data are channels_last: ``--channels-last`` if given, else on
        GPU, else the script's default on CPU."""
        if self.channels_last is not None:
            return self.channels_last
        uses_cuda = self.device.startswith("cuda") or (
            self.device == "auto" and torch.cuda.is_available())
        return uses_cuda or self.channels_last_cpu

    def counts(self) -> dict[str, int]:
        """The settings that must be >= 1, by name (a subclass adds its own)."""
        return {"epochs": self.epochs, "batch_size": self.batch_size}

    def check(self) -> None:
        """Raise :class:`GatekitError` for settings no run can use (before any work)."""
        for name, value in self.counts().items():
            if value < 1:
                raise GatekitError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.lr <= 0:
            raise GatekitError(f"--lr must be > 0, got {self.lr}")
        if self.budget_ends and self.budget_range is None:
            raise GatekitError(f"--budget-ends {self.budget_ends:g} shapes the budgets that "
                               "--budget-range draws; add --budget-range LO:HI[:K] or drop it")
        if self.init_gates and not self.no_gate and self.budget is None and self.budget_range is None:
            raise GatekitError(f"--init-gates {self.init_gates} keeps the filters the ranking keeps "
                               "at a budget: add --budget B (or --budget-range LO:HI)")
        if self.no_gate:
            for name, value in (("budget_range", self.budget_range),
                                ("budget_ends", self.budget_ends),
                                ("gater_resolution", self.gater_resolution),
                                ("freeze_gater", self.freeze_gater),
                                ("init_gater", self.init_gater),
                                ("init_gates", self.init_gates)):
                if value:
                    raise GatekitError(f"--{name.replace('_', '-')} changes the gater, but "
                                       "--no-gate trains none; drop one of the two flags")

    def record(self) -> dict[str, Any]:
        """Every setting, and the resolved ``channels_last_on``: what ``args.json`` and the
        checkpoint record."""
        return {**vars(self), "channels_last_on": self.channels_last_on}


@dataclass(frozen=True, kw_only=True)
class CifarConfig(RunConfig):
    """``examples/cifar_gaternet.py``: the CIFAR data."""

    data: Path
    dataset: str
    download: bool
    cache_dir: Path | None
    train_dir: str
    val_dir: str


@dataclass(frozen=True, kw_only=True)
class ImageNetConfig(RunConfig):
    """``examples/imagenet_gaternet.py``: an ImageFolder tree, or the stand-in without ``--data``."""

    data: Path | None
    train_dir: str
    val_dir: str
    image_size: int
    standin_train: int
    standin_val: int

    def counts(self) -> dict[str, int]:
        return {**super().counts(), "image_size": self.image_size}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _admits_none(hint: Any) -> bool:
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return hint is type(None) or hint is Any or (union and type(None) in typing.get_args(hint))

