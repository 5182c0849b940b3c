"""A run's settings: one typed dataclass whose fields are the scripts' flags.

Each flag is declared once, here, as a field of :class:`RunConfig` (or of a script's
subclass: :class:`CifarConfig`, :class:`ImageNetConfig`) made with :func:`flag`: its name,
type, default, help and check.  :mod:`.cli` generates the argparse flags from these fields and
builds the config from the parsed flags; the training code reads the fields.  A field made
without :func:`flag` is a setting a script gives, not a flag (``channels_last_cpu``).

A field without a default (``arch``, ``epochs``, ...) takes the script's value (the defaults
dict a script hands to :func:`cli.run_config`); building a config checks it is complete: a
field without a value (no flag, no default, and a type that does not admit None) is a
``TypeError`` when the config is built, before any run starts, instead of an
``AttributeError`` or a None halfway through one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gatekit import GatekitError

from .budgets import DEFAULT_EVAL_BUDGETS, BudgetRange, budget_range_arg, eval_budgets_arg
from .ramp import Ramp, ramp_arg

#: ``check(config, value, flag)``: the error message for a value no run can use, else None.
Check = Callable[[Any, Any, str], "str | None"]


@dataclass(frozen=True)
class Flag:
    """How a field of the config is a command-line flag (the argparse keywords but ``dest`` and
    ``default``).  ``help`` may name fields in braces (``{epochs}``): the script's default of
    that field is shown there.  ``gater``: the flag changes the gater, and ``--no-gate`` (which
    trains none) refuses it."""

    group: str
    help: str
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    action: Any = None
    nargs: str | None = None
    const: Any = None
    required: bool = False
    check: Check | None = None
    gater: bool = False

    @staticmethod
    def of(field: dataclasses.Field) -> Flag | None:
        return field.metadata.get("flag")


def flag(group: str, help: str, default: Any = dataclasses.MISSING, **how: Any) -> Any:
    """A field of the config that is a flag (``--name-with-dashes``); ``default`` missing: the
    script gives it.  ``how``: the rest of :class:`Flag`."""
    return dataclasses.field(default=default, metadata={"flag": Flag(group, help, **how)})


# --------------------------------------------------------------------------------------
# the flags' types and checks
# --------------------------------------------------------------------------------------


def prior_arg(value: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A,B (two numbers), got {value!r}") from None
    if not (a > 0 and b > 0):
        raise argparse.ArgumentTypeError(f"Beta prior parameters must be > 0, got {a},{b}")
    return a, b


def budget_arg(value: str) -> Ramp:
    """``B``, ``A:B`` or ``A:B:K`` with A and B in [0, 1]: a budget that may move."""
    ramp = ramp_arg(value)
    if not all(0.0 <= v <= 1.0 for v in (ramp.start, ramp.end) if v is not None):
        raise argparse.ArgumentTypeError(
            f"must lie in [0, 1] (a fraction of the gated convs' FLOPs), got {value!r}")
    return ramp


def budget_ends_arg(value: str) -> float:
    try:
        ends = float(value)
    except ValueError:
        ends = float("nan")
    if not 0.0 <= ends <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected the fraction of each batch given the range's two ends, in [0, 1], "
            f"got {value!r}")
    return ends


def sites_arg(value: str) -> str | list[str]:
    return [s for s in value.split(",") if s] if "," in value else value


def _at_least_one(config: Any, value: int, name: str) -> str | None:
    return None if value >= 1 else f"{name} must be >= 1, got {value}"


def _positive(config: Any, value: float, name: str) -> str | None:
    return None if value > 0 else f"{name} must be > 0, got {value}"


def _needs_a_range(config: RunConfig, value: float | Ramp, name: str) -> str | None:
    active = value.active if isinstance(value, Ramp) else bool(value)
    if active and config.budget_range is None:
        shown = value if isinstance(value, Ramp) else f"{value:g}"
        return (f"{name} {shown} acts on the budgets that --budget-range draws; add "
                "--budget-range LO:HI[:K] or drop it")
    return None


def _counts_a_budget(config: RunConfig, value: str, name: str) -> str | None:
    if value != "train" and config.budget is None and config.budget_range is None:
        return (f"{name} {value} chooses the gates the budget loss counts, and there is no "
                "budget: add --budget B (or --budget-range LO:HI) or drop it")
    return None


def _needs_a_budget(config: RunConfig, value: str | None, name: str) -> str | None:
    if value and not config.no_gate and config.budget is None and config.budget_range is None:
        return (f"{name} {value} keeps the filters the ranking keeps at a budget: add --budget B "
                "(or --budget-range LO:HI)")
    return None


# How the flags that take a ramp read (the help's epilog).
RAMP_HELP = """

Loss weights (--gate-loss-weight, --target-rate-weight, --budget-weight, --batch-shaping,
--distill-weight, --inplace-distill) and the budget itself (--budget) take a constant W, or A:B to move linearly from A to B over the whole run, or A:B:K to move from A
to B over the first K epochs (fractions allowed) and stay at B after: 0:2:3 ramps a weight up
over three epochs, 1:0:5 anneals it to 0 over five; --budget 1:0.56:5 moves the budget from
every FLOP to 56% over five epochs, as gradual pruning does.
"""


# --------------------------------------------------------------------------------------
# the flags
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The settings the training code reads: the flags both scripts share, and
    ``channels_last_cpu``."""

    # model
    arch: str = flag("model", "backbone name (default: {arch})")
    gater: str = flag("model", "gater trunk name: a backbone name, or \"conv\" (two strided 3x3 "
                      "convs, a gater for small backbones) (default: {gater})")
    no_gate: bool = flag("model", "train the plain backbone with the same recipe (for comparison)",
                         False, action="store_true")
    sites: str | list[str] = flag(  # a policy name, or conv names (``--sites a,b``)
        "model", "which convs to gate: residual, inner, all, or comma-separated conv names "
        "(default: residual)", "residual", type=sites_arg)
    estimator: str = flag("model", "gate estimator for gatekit.get_gate (default: semhash)",
                          "semhash")
    bottleneck: int = flag("model", "gater head bottleneck (default: 8)", 8, type=int)
    group_size: int = flag("model", "channels per gate (default: 1)", 1, type=int)
    init_bias: float = flag("model", "initial bias of the gate logits; > 0 starts with gates open "
                            "(default: {init_bias})", 0.0, type=float)
    gater_resolution: int | None = flag(
        "model", "the gater sees the image resized to RxR (antialiased bilinear): a cheaper gater "
        "(default: the full image)", None, type=int, metavar="R", gater=True)
    freeze_gater: bool = flag(
        "model", "keep the gater trunk's weights and BatchNorm statistics fixed (use with "
        "--init-gater): only the gater head learns, and the trunk runs without a backward pass",
        False, action="store_true", gater=True)
    # warm start
    init_from: Path | None = flag(
        "warm start", "load the backbone's weights from a run's checkpoint.pt (plain or gated) or "
        "a state_dict file; keys and shapes must match exactly", None, type=Path, metavar="PATH")
    init_gater: bool = flag(
        "warm start", "also load the gater trunk from --init-from (same architecture as the "
        "backbone, or a gated run's gater; the classifier layer is dropped)", False,
        action="store_true", gater=True)
    init_gates: str | None = flag(
        "warm start", "start the gates where static pruning stands (gatekit.init_gates_): every "
        "image keeps the filters the ranking keeps at the final --budget, the same fraction of "
        "every site; with --budget-range, nested masks, budget b keeping the top b of every "
        "site.  l1: the filters' L1 norms (gatekit.filter_l1_norms) after --init-from "
        "(default: off)", None, choices=("l1",), metavar="RANKING", check=_needs_a_budget,
        gater=True)
    # torchvision weights by name: a flag of imagenet_gaternet.py (ImageNetConfig), None here
    backbone_weights: str | None = None
    # recipe
    epochs: int = flag("recipe", "(default: {epochs})", type=int, check=_at_least_one)
    batch_size: int = flag("recipe", "batch size per process (default: {batch_size})", type=int,
                           check=_at_least_one)
    lr: float = flag("recipe", "peak learning rate (default: {lr})", 0.1, type=float,
                     check=_positive)
    momentum: float = flag("recipe", "nesterov momentum (default: 0.9)", 0.9, type=float)
    weight_decay: float = flag("recipe", "weight decay, not applied to norms and biases "
                               "(default: {weight_decay})", 5e-4, type=float)
    warmup_epochs: float = flag("recipe", "linear warm-up before the cosine decay "
                                "(default: {warmup_epochs})", type=float)
    label_smoothing: float = flag("recipe", "(default: {label_smoothing})", 0.0, type=float)
    gate_loss_weight: Ramp = flag("recipe", "weight of gatekit.gate_l1_loss, the pull towards "
                                  "closed gates (default: {gate_loss_weight})", 0.0, type=ramp_arg)
    target_rate: float | None = flag("recipe", "optional target open fraction "
                                     "(gatekit.target_rate_loss)", None, type=float)
    target_rate_weight: Ramp = flag("recipe", "weight of the target-rate loss (default: 1.0)",
                                    Ramp(1.0), type=ramp_arg)
    budget: Ramp | None = flag(
        "recipe", "pull the batch's FLOPs-weighted open fraction of the gated convs to B in "
        "[0, 1] (gatekit.flops_budget_loss with gatekit.gate_costs); A:B:K moves the budget from "
        "A to B over K epochs", None, type=budget_arg, metavar="B")
    budget_range: BudgetRange | None = flag(  # one model for any budget
        "recipe", "one model for any budget: the gater's head reads a per-sample budget "
        "(gatekit.gate_model(budget_input=True)), drawn uniformly from [LO, HI] for every sample "
        "at every step, each sample pulled to its own budget; with K the range widens from HI "
        "down to LO over the first K epochs", None, type=budget_range_arg, metavar="LO:HI[:K]",
        gater=True)
    budget_ends: float = flag(  # the fraction of each batch at the range's two ends
        "recipe", "with --budget-range: the sandwich rule per sample; a fraction F/2 of every "
        "batch trains at the range's low end and F/2 at its high end, the rest at uniform draws "
        "(default: 0, all uniform)", 0.0, type=budget_ends_arg, metavar="F",
        check=_needs_a_range, gater=True)
    eval_budgets: tuple[float, ...] = flag(
        "recipe", "with --budget-range: the budgets results.json evaluates the model at "
        f"(default: {','.join(f'{b:g}' for b in DEFAULT_EVAL_BUDGETS)})", DEFAULT_EVAL_BUDGETS,
        type=eval_budgets_arg, metavar="B,B,...")
    budget_weight: Ramp = flag("recipe", "weight of the budget loss (default: 1.0)", Ramp(1.0),
                               type=ramp_arg)
    budget_gates: str = flag(
        "recipe", "the gates the budget loss counts: train, the estimator's training gates "
        "(GaterNet.last_gates), which may meet the budget only in expectation; eval, the hard "
        "gates evaluation keeps (GaterNet.last_eval_gates, with the open probabilities' "
        "gradient), so the budget holds as evaluated (default: train)", "train",
        choices=("train", "eval", "both"), check=_counts_a_budget)
    count_downstream: bool = flag(
        "recipe", "count, in the budget and in the reported FLOPs, what a closed gate also saves "
        "in the ungated convs that read its channel (gatekit.gate_costs(downstream=True); exact "
        "for --sites inner of basic blocks)", False, action="store_true")
    batch_shaping: Ramp = flag(
        "recipe", "weight of gatekit.batch_shaping_loss on the gates' open probabilities "
        "(GaterNet.last_probs): each gate's distribution over the batch is pulled to a Beta "
        "prior, so it cannot sit always on or always off (default: {batch_shaping}; 0 turns it "
        "off)", 0.0, type=ramp_arg, metavar="W")
    batch_shaping_prior: tuple[float, float] = flag(
        "recipe", "the Beta(A, B) prior of batch shaping (default: 0.6,0.4)", (0.6, 0.4),
        type=prior_arg, metavar="A,B")
    # distillation
    distill_from: Path | None = flag(
        "distillation", "distil from a trained dense teacher: a run's checkpoint.pt or a "
        "state_dict of --arch (every key checked); the teacher runs in eval mode without "
        "gradients, and its cost is not counted in the model's FLOPs", None, type=Path,
        metavar="PATH")
    distill_weight: Ramp = flag("distillation", "weight of gatekit.distillation_loss, added to "
                                "the cross-entropy (default: 1.0)", Ramp(1.0), type=ramp_arg,
                                metavar="W")
    distill_temperature: float = flag("distillation", "softening temperature of the "
                                      "distillation loss (default: 4.0)", 4.0, type=float,
                                      metavar="T")
    inplace_distill: Ramp = flag(
        "distillation", "with --budget-range: in-place distillation (universally slimmable "
        "networks): the model itself at the range's high end (training mode, hard gates, "
        "without gradients) teaches every sample at its own budget (gatekit.distillation_loss at "
        "--distill-temperature, beside any --distill-from teacher; default: 0, off)",
        Ramp(0.0), type=ramp_arg, metavar="W", check=_needs_a_range)
    # run time
    device: str = flag("run time", "auto, cpu, cuda or cuda:N (default: auto)", "auto")
    precision: str = flag("run time", "autocast dtype; auto is bf16 on GPU, fp32 on CPU "
                          "(default: auto)", "auto", choices=("auto", "bf16", "fp16", "fp32"))
    channels_last: bool | None = flag(  # None: see channels_last_on
        "run time", "channels_last memory format (default: on GPU; on CPU: {channels_last_cpu})",
        None, action=argparse.BooleanOptionalAction)
    channels_last_cpu: bool = False  # the script's default for channels_last on CPU
    compile: bool = flag("run time", "torch.compile the model", False, action="store_true")
    compile_mode: str = flag("run time", "torch.compile mode, e.g. reduce-overhead (CUDA graphs) "
                             "or max-autotune-no-cudagraphs (default: default)", "default")
    workers: int = flag("run time", "data-loading worker processes (default: {workers})",
                        type=int)
    seed: int = flag("run time", "(default: 0)", 0, type=int)
    limit: int | None = flag("run time", "use a fixed random subset of N training images (a "
                             "quick check)", None, type=int)
    limit_val: int | None = flag("run time", "use a fixed random subset of N evaluation images",
                                 None, type=int)
    log_every: int = flag("run time", "progress line every N steps when not on a terminal "
                          "(default: {log_every})", type=int)
    # output
    name: str = flag("output", "run name (default: {name})")
    output_dir: str | None = flag("output", "where checkpoints, metrics, plots and results go "
                                  "(default: runs/<name>)", None)
    resume: str | None = flag(  # a checkpoint path, or "auto" (--resume without a path)
        "output", "continue from CHECKPOINT (default: <output-dir>/checkpoint.pt)", None,
        nargs="?", const="auto", metavar="CHECKPOINT")

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for name, value in vars(self).items():
            hint = hints[name]
            if hint is Ramp and isinstance(value, int | float) and not isinstance(value, bool):
                # a script's default weight is a number: a constant ramp
                object.__setattr__(self, name, Ramp(float(value)))
            elif value is None and not _admits_none(hint):
                raise TypeError(f"{type(self).__name__}.{name} has no value: give its flag a "
                                "default, or add it to the script's defaults")

    @property
    def channels_last_on(self) -> bool:
        """Whether the model and data are channels_last: ``--channels-last`` if given, else on
        GPU, else the script's default on CPU."""
        if self.channels_last is not None:
            return self.channels_last
        uses_cuda = self.device.startswith("cuda") or (
            self.device == "auto" and torch.cuda.is_available())
        return uses_cuda or self.channels_last_cpu

    @property
    def budgets(self) -> BudgetRange | None:
        """What a budget-input run draws each sample's budget from (``--budget-range`` with the
        share of its two ends); None without a budget input."""
        if self.budget_range is None:
            return None
        return dataclasses.replace(self.budget_range, ends=self.budget_ends)

    def check(self) -> None:
        """Raise :class:`GatekitError` for settings no run can use (before any work): each
        flag's own check, then the flags that change a gater ``--no-gate`` does not train."""
        fields = [(f, Flag.of(f)) for f in dataclasses.fields(self)]
        for f, how in fields:
            if how is not None and how.check is not None:
                message = how.check(self, getattr(self, f.name), cli_name(f.name))
                if message:
                    raise GatekitError(message)
        if self.no_gate:
            for f, how in fields:
                if how is not None and how.gater and getattr(self, f.name):
                    raise GatekitError(f"{cli_name(f.name)} changes the gater, but --no-gate "
                                       "trains none; drop one of the two flags")

    def on_all_images(self) -> RunConfig:
        """These settings without ``--limit`` and ``--limit-val``: every image of both splits."""
        return dataclasses.replace(self, limit=None, limit_val=None)

    def record(self) -> dict[str, Any]:
        """Every setting, and the resolved ``channels_last_on``: what ``args.json`` and the
        checkpoint record."""
        return {**vars(self), "channels_last_on": self.channels_last_on}


@dataclass(frozen=True, kw_only=True)
class CifarConfig(RunConfig):
    """``examples/cifar_gaternet.py``: the CIFAR data."""

    data: Path = flag("data", "CIFAR ImageFolder tree, its .tar.gz, or a torchvision CIFAR "
                      "directory", type=Path, required=True)
    dataset: str = flag("data", "for a torchvision directory or --download (default: cifar10)",
                        "cifar10", choices=("cifar10", "cifar100"))
    download: bool = flag("data", "download CIFAR with torchvision into --data (needs internet)",
                          False, action="store_true")
    cache_dir: Path | None = flag(
        "data", "where archives are extracted and decoded images cached (default: "
        "$GATEKIT_CACHE/gatekit, else $XDG_CACHE_HOME/gatekit, else ~/.cache/gatekit)", None,
        type=Path)
    train_dir: str = flag("data", "training split folder (default: train)", "train")
    val_dir: str = flag("data", "test split folder (default: test)", "test")


# The CIFAR runs' defaults of the flags whose default is the script's: of
# examples/cifar_gaternet.py, of the static-pruning baseline built on it, and of a run rebuilt
# from its recorded command (rebuild).
CIFAR_DEFAULTS: dict[str, Any] = dict(
    arch="resnet20", gater="resnet20", epochs=160, batch_size=128, warmup_epochs=1, workers=2,
    log_every=50, name="cifar_gaternet", channels_last_cpu=True,
)


@dataclass(frozen=True, kw_only=True)
class ImageNetConfig(RunConfig):
    """``examples/imagenet_gaternet.py``: an ImageFolder tree, or the stand-in without ``--data``."""

    data: Path | None = flag("data", "ImageFolder root with train/ and val/; omit for the "
                             "built-in stand-in", None, type=Path)
    train_dir: str = flag("data", "training split folder (default: train)", "train")
    val_dir: str = flag("data", "evaluation split folder (default: val)", "val")
    image_size: int = flag("data", "training crop size (default: {image_size})", type=int,
                           check=_at_least_one)
    standin_train: int = flag("data", "stand-in training images (default: 2560)", 2560, type=int)
    standin_val: int = flag("data", "stand-in evaluation images (default: 1000)", 1000, type=int)
    backbone_weights: str | None = flag(
        "warm start", "load torchvision's pretrained weights NAME into the backbone, e.g. "
        "IMAGENET1K_V2 or DEFAULT (downloaded by torchvision on first use into "
        "$TORCH_HOME/hub/checkpoints/; offline, copy the file there or use --init-from)", None,
        metavar="NAME")


# The ImageNet runs' defaults of the flags whose default is the script's
# (examples/imagenet_gaternet.py): with --data,
IMAGENET_DEFAULTS: dict[str, Any] = dict(
    arch="resnet50", gater="resnet18", epochs=90, batch_size=64, weight_decay=1e-4,
    warmup_epochs=5, label_smoothing=0.1, image_size=224, workers=8, log_every=100,
    name="imagenet_gaternet",
)
# and on the built-in stand-in.  There the gates start open and batch shaping keeps each gate's
# decisions spread over the batch, so the gates end up depending on the image (see docs:
# recipe).  The stand-in is 32x32: the CIFAR ResNet-20 suits it (torchvision's ResNet-18 stem
# shrinks it to 8x8 and barely learns in the ~300 steps a 3-minute CPU budget allows).
STANDIN_DEFAULTS: dict[str, Any] = dict(
    arch="resnet20", gater="resnet20", epochs=4, batch_size=32, warmup_epochs=0.5,
    label_smoothing=0.1, init_bias=1.5, batch_shaping=2.0, image_size=32, workers=0,
    log_every=20, name="imagenet_gaternet-standin",
)


def cli_name(field_name: str) -> str:
    """The flag of a field: ``budget_ends`` is ``--budget-ends``."""
    return "--" + field_name.replace("_", "-")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _admits_none(hint: Any) -> bool:
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return hint is type(None) or hint is Any or (union and type(None) in typing.get_args(hint))
