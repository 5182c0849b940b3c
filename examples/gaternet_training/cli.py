"""Command-line flags shared by both example scripts, the defaults they share, and the run's
config built from the parsed flags (:func:`run_config`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .budgets import DEFAULT_EVAL_BUDGETS, budget_ends_arg, budget_range_arg, eval_budgets_arg
from .config import RunConfig
from .ramp import Ramp, ramp_arg

C = TypeVar("C", bound=RunConfig)

# The defaults of the flags whose default depends on the script, where the scripts agree; a
# script gives the rest, and what it changes, to :func:`defaults`.  ``arch``, ``gater``,
# ``epochs``, ``batch_size``, ``warmup_epochs``, ``workers``, ``log_every`` and ``name`` have
# no shared value: a script that leaves one out cannot build its config.
SHARED_DEFAULTS: dict[str, Any] = dict(
    lr=0.1, weight_decay=5e-4, label_smoothing=0.0, gate_loss_weight=0.0, init_bias=0.0,
    batch_shaping=0.0,
    channels_last_cpu=False,  # a setting, not a flag: channels_last on CPU without --channels-last
    backbone_weights=None,  # a flag of imagenet_gaternet.py only (torchvision_weights=True)
)


def defaults(**script: Any) -> dict[str, Any]:
    """A script's defaults: :data:`SHARED_DEFAULTS` with the script's values."""
    return {**SHARED_DEFAULTS, **script}

RAMP_HELP = """

Loss weights (--gate-loss-weight, --target-rate-weight, --budget-weight, --batch-shaping,
--distill-weight) and the budget itself (--budget) take a constant W, or A:B to move linearly from A to B over the whole run, or A:B:K to move from A
to B over the first K epochs (fractions allowed) and stay at B after: 0:2:3 ramps a weight up
over three epochs, 1:0:5 anneals it to 0 over five; --budget 1:0.56:5 moves the budget from
every FLOP to 56% over five epochs, as gradual pruning does.
"""


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


def add_training_args(parser: argparse.ArgumentParser, defaults: dict[str, Any], *,
                      torchvision_weights: bool = False) -> None:
    """Model, recipe, run-time and output flags.

    ``defaults`` gives the defaults that depend on the script (and on its data): a flag left
    unset is None after parsing and :func:`run_config` fills it; the help text shows the
    string ``defaults`` gives for it.  ``torchvision_weights`` adds ``--backbone-weights``.
    """
    def h(key: str) -> str:
        return str(defaults.get(key))

    m = parser.add_argument_group("model")
    m.add_argument("--arch", help=f"backbone name (default: {h('arch')})")
    m.add_argument("--gater", help=f"gater trunk name: a backbone name, or \"conv\" (two strided 3x3 "
                                   f"convs, a gater for small backbones) (default: {h('gater')})")
    m.add_argument("--no-gate", action="store_true",
                   help="train the plain backbone with the same recipe (for comparison)")
    m.add_argument("--sites", default="residual",
                   help="which convs to gate: residual, inner, all, or comma-separated conv "
                        "names (default: %(default)s)")
    m.add_argument("--estimator", default="semhash",
                   help="gate estimator for gatekit.get_gate (default: %(default)s)")
    m.add_argument("--bottleneck", type=int, default=8, help="gater head bottleneck (default: 8)")
    m.add_argument("--group-size", type=int, default=1, help="channels per gate (default: 1)")
    m.add_argument("--init-bias", type=float,
                   help="initial bias of the gate logits; > 0 starts with gates open "
                        f"(default: {h('init_bias')})")
    m.add_argument("--gater-resolution", type=int, default=None, metavar="R",
                   help="the gater sees the image resized to RxR (antialiased bilinear): a "
                        "cheaper gater (default: the full image)")
    m.add_argument("--freeze-gater", action="store_true",
                   help="keep the gater trunk's weights and BatchNorm statistics fixed (use with "
                        "--init-gater): only the gater head learns, and the trunk runs without "
                        "a backward pass")

    w = parser.add_argument_group("warm start")
    w.add_argument("--init-from", type=Path, default=None, metavar="PATH",
                   help="load the backbone's weights from a run's checkpoint.pt (plain or "
                        "gated) or a state_dict file; keys and shapes must match exactly")
    w.add_argument("--init-gater", action="store_true",
                   help="also load the gater trunk from --init-from (same architecture as the "
                        "backbone, or a gated run's gater; the classifier layer is dropped)")
    w.add_argument("--init-gates", choices=("l1",), default=None, metavar="RANKING",
                   help="start the gates where static pruning stands (gatekit.init_gates_): every "
                        "image keeps the filters the ranking keeps at the final --budget, the same "
                        "fraction of every site; with --budget-range, nested masks, budget b "
                        "keeping the top b of every site.  l1: the filters' L1 norms "
                        "(gatekit.filter_l1_norms) after --init-from (default: off)")
    if torchvision_weights:
        w.add_argument("--backbone-weights", default=None, metavar="NAME",
                       help="load torchvision's pretrained weights NAME into the backbone, e.g. "
                            "IMAGENET1K_V2 or DEFAULT (downloaded by torchvision on first use "
                            "into $TORCH_HOME/hub/checkpoints/; offline, copy the file there or "
                            "use --init-from)")

    r = parser.add_argument_group("recipe")
    r.add_argument("--epochs", type=int, help=f"(default: {h('epochs')})")
    r.add_argument("--batch-size", type=int,
                   help=f"batch size per process (default: {h('batch_size')})")
    r.add_argument("--lr", type=float, help=f"peak learning rate (default: {h('lr')})")
    r.add_argument("--momentum", type=float, default=0.9, help="nesterov momentum (default: 0.9)")
    r.add_argument("--weight-decay", type=float,
                   help=f"weight decay, not applied to norms and biases (default: {h('weight_decay')})")
    r.add_argument("--warmup-epochs", type=float,
                   help=f"linear warm-up before the cosine decay (default: {h('warmup_epochs')})")
    r.add_argument("--label-smoothing", type=float,
                   help=f"(default: {h('label_smoothing')})")
    r.add_argument("--gate-loss-weight", type=ramp_arg,
                   help="weight of gatekit.gate_l1_loss, the pull towards closed gates "
                        f"(default: {h('gate_loss_weight')})")
    r.add_argument("--target-rate", type=float, default=None,
                   help="optional target open fraction (gatekit.target_rate_loss)")
    r.add_argument("--target-rate-weight", type=ramp_arg, default=Ramp(1.0),
                   help="weight of the target-rate loss (default: 1.0)")
    r.add_argument("--budget", type=budget_arg, default=None, metavar="B",
                   help="pull the batch's FLOPs-weighted open fraction of the gated convs to B "
                        "in [0, 1] (gatekit.flops_budget_loss with gatekit.gate_costs); A:B:K "
                        "moves the budget from A to B over K epochs")
    r.add_argument("--budget-range", type=budget_range_arg, default=None, metavar="LO:HI[:K]",
                   help="one model for any budget: the gater's head reads a per-sample budget "
                        "(gatekit.gate_model(budget_input=True)), drawn uniformly from [LO, HI] "
                        "for every sample at every step, each sample pulled to its own budget; "
                        "with K the range widens from HI down to LO over the first K epochs")
    r.add_argument("--budget-ends", type=budget_ends_arg, default=0.0, metavar="F",
                   help="with --budget-range: the sandwich rule per sample; a fraction F/2 of "
                        "every batch trains at the range's low end and F/2 at its high end, the "
                        "rest at uniform draws (default: 0, all uniform)")
    r.add_argument("--eval-budgets", type=eval_budgets_arg, default=DEFAULT_EVAL_BUDGETS,
                   metavar="B,B,...",
                   help="with --budget-range: the budgets results.json evaluates the model at "
                        f"(default: {','.join(f'{b:g}' for b in DEFAULT_EVAL_BUDGETS)})")
    r.add_argument("--budget-weight", type=ramp_arg, default=Ramp(1.0),
                   help="weight of the budget loss (default: 1.0)")
    r.add_argument("--count-downstream", action="store_true",
                   help="count, in the budget and in the reported FLOPs, what a closed gate also "
                        "saves in the ungated convs that read its channel "
                        "(gatekit.gate_costs(downstream=True); exact for --sites inner of basic "
                        "blocks)")
    r.add_argument("--batch-shaping", type=ramp_arg, metavar="W",
                   help="weight of gatekit.batch_shaping_loss on the gates' open probabilities "
                        "(GaterNet.last_probs): each gate's distribution over the batch is "
                        "pulled to a Beta prior, so it cannot sit always on or always off "
                        f"(default: {h('batch_shaping')}; 0 turns it off)")
    r.add_argument("--batch-shaping-prior", type=prior_arg, default=(0.6, 0.4), metavar="A,B",
                   help="the Beta(A, B) prior of batch shaping (default: 0.6,0.4)")

    k = parser.add_argument_group("distillation")
    k.add_argument("--distill-from", type=Path, default=None, metavar="PATH",
                   help="distil from a trained dense teacher: a run's checkpoint.pt or a "
                        "state_dict of --arch (every key checked); the teacher runs in eval mode "
                        "without gradients, and its cost is not counted in the model's FLOPs")
    k.add_argument("--distill-weight", type=ramp_arg, default=Ramp(1.0), metavar="W",
                   help="weight of gatekit.distillation_loss, added to the cross-entropy "
                        "(default: 1.0)")
    k.add_argument("--distill-temperature", type=float, default=4.0, metavar="T",
                   help="softening temperature of the distillation loss (default: 4.0)")

    parser.epilog = (parser.epilog or "") + RAMP_HELP

    t = parser.add_argument_group("run time")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    t.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="autocast dtype; auto is bf16 on GPU, fp32 on CPU (default: auto)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on GPU; on CPU: "
                        f"{h('channels_last_cpu')})")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--compile-mode", default="default",
                   help="torch.compile mode, e.g. reduce-overhead (CUDA graphs) or "
                        "max-autotune-no-cudagraphs (default: default)")
    t.add_argument("--workers", type=int,
                   help=f"data-loading worker processes (default: {h('workers')})")
    t.add_argument("--seed", type=int, default=0, help="(default: 0)")
    t.add_argument("--limit", type=int, default=None,
                   help="use a fixed random subset of N training images (a quick check)")
    t.add_argument("--limit-val", type=int, default=None,
                   help="use a fixed random subset of N evaluation images")
    t.add_argument("--log-every", type=int,
                   help=f"progress line every N steps when not on a terminal (default: {h('log_every')})")

    o = parser.add_argument_group("output")
    o.add_argument("--name", help=f"run name (default: {h('name')})")
    o.add_argument("--output-dir", default=None,
                   help="where checkpoints, metrics, plots and results go (default: runs/<name>)")
    o.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: <output-dir>/checkpoint.pt)")


def run_config(config_type: type[C], args: argparse.Namespace, defaults: Mapping[str, Any]) -> C:
    """The run's config from the parsed flags: a flag left unset (None) takes its value from
    ``defaults`` (the script's, :func:`defaults`).

    A flag without a field of ``config_type``, or a field with no value, raises ``TypeError``:
    the script and its config disagree, and no run of it can start.
    """
    values = vars(args).copy()
    for key, value in defaults.items():
        if values.get(key) is None:
            values[key] = value
    values["sites"] = sites_arg(values["sites"])
    return config_type(**values)


def sites_arg(value: str) -> str | list[str]:
    return [s for s in value.split(",") if s] if "," in value else value
