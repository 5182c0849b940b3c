"""The training program both example scripts run, top to bottom.

1. the data (each script brings its own loader);
2. the model: a backbone gated by a gater trunk with :func:`gatekit.gate_model`, optionally
   warm-started from trained weights;
3. the optimiser and schedule;
4. the step: forward, task loss plus gate losses, backward, optimiser step;
5. after every epoch an evaluation pass and a checkpoint;
6. at the end the gate statistics (:class:`gatekit.GateStats`), FLOPs and ``results.json``.

Plumbing lives beside it: ``config`` (the run's settings, read as typed fields),
``checkpoint``, ``distributed``, ``progress``, ``optim``, ``models`` (backbones and trunks
by name), ``losses`` (the loss terms: gate losses, and ``distill``'s distillation),
``warm_start``, ``report`` and the data modules.  Only rank 0 writes files; every rank
computes the same reduced metrics.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gatekit
from gatekit import GatekitError
from gatekit.stats import OPEN_THRESHOLD

from . import checkpoint, models
from .budgets import BudgetRange
from .config import RunConfig
from .distill import distillation_term, inplace_distillation_term
from .distributed import Dist, setup, teardown
from .losses import Losses, Step, gate_terms
from .optim import make_optimizer, make_scheduler
from .progress import MetricsLog, Progress
from .report import flop_counts, gate_report, gate_report_1_99
from .warm_start import warm_start


@dataclass
class Data:
    """What a script's data loader hands to :func:`train`."""

    train: Any  # TensorBatches or LoaderBatches: iterable of (images, labels), len() = steps
    val: Any
    classes: list[str]
    image_size: int
    source: str
    extra: dict[str, Any] = field(default_factory=dict)


def fixed_subset(size: int, n: int | None) -> Tensor | None:
    """The indices of a fixed random subset of ``n`` of ``size`` items (``--limit``,
    ``--limit-val``), the same in every run, so a limited run still sees every class; None
    when ``n`` is unset or covers them all."""
    if not n or n >= size:
        return None
    return torch.randperm(size, generator=torch.Generator().manual_seed(0))[:n]


@dataclass
class Run:
    """What one step needs besides the batch: the model, its optimiser and the recipe."""

    model: nn.Module  # what is called: a DDP or compiled wrapper of ``inner``, or ``inner``
    inner: nn.Module  # the GaterNet (or plain backbone) itself: last_gates, state_dict
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    dist: Dist
    amp_dtype: torch.dtype | None
    label_smoothing: float
    losses: Losses  # the terms added to the cross-entropy: gate losses, distillation
    log_every: int
    step: int = 0
    budgets: BudgetRange | None = None  # a budget input: what each sample's budget is drawn from

    def budget_kwargs(self, n: int, epoch: float, device: torch.device) -> dict[str, Any]:
        """``budget=`` for a training forward of ``n`` samples (nothing without a budget input)."""
        return {} if self.budgets is None else {"budget": self.budgets.draw(n, epoch, device)}

    @property
    def gated(self) -> bool:
        return isinstance(self.inner, gatekit.GaterNet)

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype)


@dataclass
class Backbone:
    """How a script builds its backbone when not by ``--arch`` name alone (a pruned model).

    ``build(config, num_classes)`` returns the backbone (deterministic in ``config``, so that
    ``--resume`` rebuilds the same one); ``dense(num_classes)`` the dense model whose FLOPs
    the reported ``backbone_dense`` counts, so that a smaller backbone is compared with the
    model it was made from.
    """

    build: Callable[[Any, int], nn.Module]  # (the script's RunConfig, number of classes)
    dense: Callable[[int], nn.Module]
    info: dict[str, Any] = field(default_factory=dict)  # what build did, for results.json


def batch_options(config: RunConfig, dist: Dist) -> dict[str, Any]:
    """What a script's batches take from the run: its processes, seed and memory format."""
    return {"dist": dist, "seed": config.seed, "channels_last": config.channels_last_on}


def train(config: RunConfig, load_data: Callable[[Any, Dist], Data],
          backbone: Backbone | None = None) -> dict[str, Any] | None:
    """Train as ``config`` says; returns the results dict on rank 0 (None on other ranks).

    ``load_data(config, dist)`` is the script's loader; it reads the script's own fields."""
    dist = setup(config.device)
    try:
        try:
            results = _train(config, dist, load_data, backbone)
        except KeyboardInterrupt:
            print("interrupted; the last completed epoch's checkpoint is intact (--resume)",
                  file=sys.stderr)
            raise
        # Every rank leaves together, and with nothing left that holds the process group:
        # the DDP wrapper's reducer (freed with _train's frame, its reference cycles by the
        # collection) keeps the gloo group and its work alive past destroy_process_group,
        # and a gloo group freed at interpreter exit aborts the process now and then
        # ("terminate called without an active exception": 2 of 70 two-process runs of a
        # small DDP script on gloo, none of 120 with this collection first).
        gc.collect()
        dist.barrier()
        return results
    finally:
        teardown()


def _train(config: RunConfig, dist: Dist, load_data: Callable[[Any, Dist], Data],
           build: Backbone | None) -> dict[str, Any] | None:
    start = time.perf_counter()
    out_dir, ckpt_path, resume = _paths(config)
    ckpt = checkpoint.load(resume) if resume is not None else None  # fail before any work
    precision = _precision(config, dist)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]

    # 1. The data.
    models.check_names(config)
    data = load_data(config, dist)
    ckpt_config = _checkpoint_config(config, data)
    if ckpt is not None:
        checkpoint.check_config(ckpt, ckpt_config, resume)

    # 2. The model (warm-started unless resumed) and the loss terms the flags ask for, checked
    # before any write: the gate losses (none for a plain backbone), then distillation from a
    # dense teacher.
    inner, warm = _build_model(config, data, dist, build, warm=ckpt is None)
    terms = (gate_terms(config, inner, data.image_size, dist.device)
             if isinstance(inner, gatekit.GaterNet) else [])
    teacher = distillation_term(config, len(data.classes), dist.device)
    inplace = inplace_distillation_term(config)
    losses = Losses([*terms, *(t for t in (teacher, inplace) if t is not None)])

    # 3. The optimiser and schedule, stepped every iteration.
    steps_per_epoch = len(data.train)
    optimizer = make_optimizer(inner, config.lr, config.momentum, config.weight_decay)
    scheduler = make_scheduler(optimizer, config.epochs * steps_per_epoch,
                               round(config.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(dist.device.type, enabled=precision == "fp16")
    # Per-rank random streams (gate noise) differ; weights are synchronised by DDP.
    torch.manual_seed(config.seed + 1000003 * dist.rank)
    run = Run(inner, inner, optimizer, scheduler, scaler, dist, amp_dtype, config.label_smoothing,
              losses, config.log_every, budgets=config.budgets)
    metrics = MetricsLog(out_dir / "metrics.jsonl")
    start_epoch, best = _restore(ckpt, resume, run, data, metrics) if ckpt is not None else (0, 0.0)
    run.step = start_epoch * steps_per_epoch
    if dist.is_main:
        for line in warm:
            print(line, flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "args.json").write_text(json.dumps(config.record(), indent=1, default=str))
    run.model = _wrap(inner, config, dist)
    if dist.is_main:
        print(_summary(config, run, data, precision), flush=True)

    # 4 and 5. The epochs: train, evaluate, checkpoint.
    epoch_seconds = []
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        data.train.set_epoch(epoch)
        train_numbers = train_one_epoch(run, data.train, epoch, config.epochs)
        if dist.device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
        val = evaluate(run, data.val, desc=f"epoch {epoch + 1}/{config.epochs} eval")
        best = max(best, val["acc"])
        seconds = time.perf_counter() - t0
        epoch_seconds.append(train_seconds)
        _save_checkpoint(run, data, config, ckpt_config, ckpt_path, epoch + 1, best)
        if dist.is_main:
            metrics.write({"event": "epoch", "epoch": epoch + 1, "step": run.step,
                           "lr": optimizer.param_groups[0]["lr"],
                           **{f"train_{k}": v for k, v in train_numbers.items()},
                           **{f"val_{k}": v for k, v in val.items()},
                           "train_seconds": train_seconds, "epoch_seconds": seconds})
            gate = f", open {100 * val['open']:.1f}%" if run.gated else ""
            print(f"epoch {epoch + 1}/{config.epochs}: train loss {train_numbers['loss']:.4f} acc "
                  f"{100 * train_numbers['acc']:.2f}% | val loss {val['loss']:.4f} acc "
                  f"{100 * val['acc']:.2f}%{gate} | {train_seconds:.1f}s train, {seconds:.1f}s "
                  f"total", flush=True)
        dist.barrier()

    # 6. The gate statistics, FLOPs and results.json.
    return _final_report(config, run, data, out_dir, metrics, best, epoch_seconds,
                         time.perf_counter() - start, build)


def _build_model(config: RunConfig, data: Data, dist: Dist, build: Backbone | None, *,
                 warm: bool) -> tuple[nn.Module, list[str]]:
    """The run's model on its device: the backbone (``--arch``, or the script's ``build``),
    gated by the gater trunk unless ``--no-gate``; with ``warm``, warm-started as the flags ask
    (:func:`warm_start`, whose lines to print it returns too).

    Seeded here, after the data are loaded (whose decoding may or may not draw random numbers:
    a cache hit draws none), so that the initial weights depend on the seed alone, the same on
    every rank."""
    random.seed(config.seed + dist.rank)
    torch.manual_seed(config.seed)
    backbone = (build.build(config, len(data.classes)) if build is not None
                else models.backbone(config, len(data.classes)))
    inner = models.model(backbone, config)
    # Warm start before anything is written: a file that does not fit fails the run here.
    lines = warm_start(inner, config) if warm else []
    inner = inner.to(dist.device)
    if config.channels_last_on:
        inner = inner.to(memory_format=torch.channels_last)
    return inner, lines


def train_one_epoch(run: Run, batches: Iterable[tuple[Tensor, Tensor]], epoch: int,
                    epochs: int) -> dict[str, float]:
    """One pass over ``batches``: the step is forward, task loss + the loss terms (gate
    losses, distillation), backward, update.

    Metrics are summed on the device and synchronised only when shown or at the end of the
    epoch, so the loop never waits on the device per step.  Sums are reduced over ranks.
    """
    run.model.train()
    steps = len(batches)  # type: ignore[arg-type]
    sums = _Sums(run.dist.device)
    progress = Progress(steps, f"epoch {epoch + 1}/{epochs} train", enabled=run.dist.is_main,
                        log_every=run.log_every)
    for images, labels in batches:
        with run.autocast():
            logits = run.model(images, **run.budget_kwargs(images.shape[0], run.step / steps,
                                                           images.device))
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=run.label_smoothing)
            # Gate terms read the gates of this forward pass from the GaterNet itself (not its
            # DDP or compiled wrapper); distillation reads the images and the logits.
            loss = loss + run.losses(Step(run.inner, images, logits, run.step / steps, epochs))
            opened = None
            if run.gated:
                opened = (run.inner.last_gates.detach() > OPEN_THRESHOLD).float().mean()
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        run.step += 1
        sums.add(loss.detach() * labels.shape[0], logits, labels, opened)
        progress.update(partial(sums.numbers, run.gated))
    progress.close()
    result = sums.reduced(run.dist, run.gated)
    if not math.isfinite(result["loss"]):
        raise GatekitError(
            f"training diverged: the loss is {result['loss']} in epoch {epoch + 1}; no "
            "checkpoint was written. Lower --lr or the gate-loss weights, or resume from the "
            "last checkpoint"
        )
    return result


@torch.no_grad()
def evaluate(run: Run, batches: Iterable[tuple[Tensor, Tensor]], *,
             stats: gatekit.GateStats | None = None, desc: str = "eval",
             budget: float | None = None) -> dict[str, float]:
    """Loss (no label smoothing), accuracy and open fraction over the whole split; gate
    decisions go into ``stats`` when given.  A budget-input model runs at ``budget`` (by
    default the midpoint of its training range)."""
    kw: dict[str, Any] = {}
    if run.budgets is not None:
        kw["budget"] = run.budgets.midpoint if budget is None else budget
    # The unwrapped model: DDP would sync buffers per call, and ranks may see a different
    # number of evaluation batches.
    model = run.inner
    if run.dist.enabled:
        # BatchNorm statistics drift apart over the last training step of each rank;
        # evaluate every rank with rank 0's, which are the ones checkpointed.
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)
    model.eval()
    sums = _Sums(run.dist.device)
    progress = Progress(len(batches), desc, enabled=run.dist.is_main,  # type: ignore[arg-type]
                        log_every=max(run.log_every, 10**9))
    for images, labels in batches:
        with run.autocast():
            logits = model(images, **kw)
        opened = None
        if run.gated:
            opened = (model.last_gates > OPEN_THRESHOLD).float().mean()
            if stats is not None:
                stats.update(model.last_gates, labels)
        sums.add(F.cross_entropy(logits.float(), labels, reduction="sum"), logits, labels, opened)
        progress.update(partial(sums.numbers, run.gated))
    progress.close()
    return sums.reduced(run.dist, run.gated)


class _Sums:
    """Loss, correct, count and open-gate sums kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.values = torch.zeros(4, device=device, dtype=torch.float64)
        self.one = torch.ones((), device=device, dtype=torch.float64)

    def add(self, loss_sum: Tensor, logits: Tensor, labels: Tensor, opened: Tensor | None) -> None:
        n = labels.shape[0]
        zero = self.one * 0
        self.values += torch.stack([loss_sum.double(), (logits.argmax(1) == labels).sum().double(),
                                    self.one * n, (opened.double() if opened is not None else zero) * n])

    def numbers(self, gated: bool, values: Tensor | None = None) -> dict[str, float]:
        loss, correct, count, opened = (self.values if values is None else values).tolist()
        count = max(count, 1.0)
        out = {"loss": loss / count, "acc": correct / count}
        if gated:
            out["open"] = opened / count
        return out

    def reduced(self, dist: Dist, gated: bool) -> dict[str, float]:
        return self.numbers(gated, dist.all_reduce_sum(self.values))


# --------------------------------------------------------------------------------------
# plumbing: paths, resume, the final report
# --------------------------------------------------------------------------------------


def _paths(config: RunConfig) -> tuple[Path, Path, Path | None]:
    out_dir = Path(config.output_dir or Path("runs") / config.name)
    ckpt_path = out_dir / "checkpoint.pt"
    resume = None
    if config.resume is not None:
        resume = ckpt_path if config.resume == "auto" else Path(config.resume)
        if not resume.is_file():
            raise GatekitError(f"checkpoint {resume} does not exist; check --resume/--output-dir")
    elif ckpt_path.exists():
        raise GatekitError(
            f"{ckpt_path} already exists; pass --resume to continue that run, or choose another "
            "--output-dir (nothing was overwritten)"
        )
    return out_dir, ckpt_path, resume


def _precision(config: RunConfig, dist: Dist) -> str:
    """``--precision``, with ``auto`` resolved: bf16 on GPU, fp32 on CPU."""
    cuda = dist.device.type == "cuda"
    if cuda:
        # Shapes are fixed from step to step, so cuDNN's measured choice of conv algorithm
        # pays off; its heuristic choice can be several times slower for small CIFAR convs.
        torch.backends.cudnn.benchmark = True
    return config.precision if config.precision != "auto" else ("bf16" if cuda else "fp32")


def _wrap(inner: nn.Module, config: RunConfig, dist: Dist) -> nn.Module:
    """What the training step calls: ``inner`` in DDP across ranks, compiled if asked."""
    model: nn.Module = inner
    if dist.enabled:
        cuda = dist.device.type == "cuda"
        model = nn.parallel.DistributedDataParallel(inner, device_ids=[dist.device.index] if cuda else None)
    if config.compile:
        model = torch.compile(model, mode=config.compile_mode)
    return model


def _summary(config: RunConfig, run: Run, data: Data, precision: str) -> str:
    return (f"{models.describe(config, run.inner)}, {models.count_params(run.inner):,} parameters; "
            f"{data.train.dataset_size} training / {data.val.dataset_size} evaluation images of "
            f"{len(data.classes)} classes; {run.dist.world_size} process(es) on "
            f"{run.dist.device.type}, {precision}{', channels_last' if config.channels_last_on else ''}"
            f"{', compiled' if config.compile else ''}")


def _save_checkpoint(run: Run, data: Data, config: RunConfig, ckpt_config: dict[str, Any],
                     path: Path, epochs: int, best: float) -> None:
    """The checkpoint after ``epochs`` epochs, written by rank 0 with every rank's random
    streams and data order (``--resume`` continues each rank where it was)."""
    states = run.dist.gather_objects({"rng": checkpoint.rng_state(), "data": data.train.state_dict()})
    if run.dist.is_main:
        checkpoint.save_atomic({
            "format": checkpoint.FORMAT, "config": ckpt_config, "args": _plain(config.record()),
            "epoch": epochs, "step": run.step, "best_acc": best,
            "model": run.inner.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "world_size": run.dist.world_size, "rank_states": states,
        }, path)


def _checkpoint_config(config: RunConfig, data: Data) -> dict[str, Any]:
    """What must match between a checkpoint and the run resuming it."""
    return {**models.identity(config),
            "num_classes": len(data.classes), "image_size": data.image_size}


def _restore(ckpt: dict[str, Any], path: Path, run: Run, data: Data,
             metrics: MetricsLog) -> tuple[int, float]:
    """Continue from a checkpoint: weights, optimiser, schedule and, written by as many
    processes, each rank's random streams and data order; returns the epochs done and the best
    accuracy so far.  Metrics of later epochs (a run that died before its checkpoint) go."""
    dist = run.dist
    try:
        run.inner.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise GatekitError(f"checkpoint {path} does not fit this model "
                           f"({str(e).splitlines()[0]}); resume with the flags it was written with") from None
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    states = ckpt["rank_states"]
    if ckpt.get("world_size") == dist.world_size:
        checkpoint.set_rng_state(states[dist.rank]["rng"])
        data.train.load_state_dict(states[dist.rank]["data"])
    elif dist.is_main:
        print(f"warning: {path} was written by {ckpt.get('world_size')} processes, this run has "
              f"{dist.world_size}; weights and optimiser are restored, random streams start anew",
              file=sys.stderr)
    epochs = ckpt["epoch"]
    if dist.is_main:
        metrics.truncate_after(epochs)
        print(f"resumed from {path} at epoch {epochs}", flush=True)
    return epochs, ckpt.get("best_acc", 0.0)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v))
            for k, v in d.items() if not callable(v)}


def _evaluate_with_stats(run: Run, data: Data, desc: str, budget: float | None = None
                         ) -> tuple[dict[str, float], gatekit.GateStats | None]:
    """An evaluation pass with gate statistics merged over ranks (on rank 0)."""
    stats = (gatekit.GateStats.for_model(run.inner, num_classes=len(data.classes))
             if run.gated else None)
    numbers = evaluate(run, data.val, stats=stats, desc=desc, budget=budget)
    if stats is not None:
        merged = run.dist.gather_objects(stats)
        stats = merged[0]
        for other in merged[1:]:
            stats.merge(other)
    return numbers, stats


def _budget_points(config: RunConfig, inner: nn.Module, data: Data,
                   at_budgets: list[tuple[float, dict[str, float], Any]]) -> list[dict[str, Any]]:
    """A budget-input model at each evaluation budget: test error, FLOPs fractions (of the
    dense backbone, and of the plain model with the gater included) and 1%/99% statistics."""
    points = []
    for b, numbers, stats in at_budgets:
        f = flop_counts(inner, data.image_size, stats, config, budget=b)
        s = gate_report_1_99(stats)
        points.append({"budget": b, "test_error": 1.0 - numbers["acc"],
                       "backbone_flops_fraction": f["backbone_fraction"],
                       "total_flops_fraction_of_plain": f["at_open_fraction"] / f["backbone_dense"],
                       "open_fraction": numbers["open"],
                       "input_dependent_fraction_1_99": s["input_dependent"] / s["num_gates"],
                       "gate_stats_1_99": s})
        print(f"budget {b:g}: {100 * numbers['acc']:.2f}% accuracy, backbone at "
              f"{100 * f['backbone_fraction']:.1f}% of its dense FLOPs", flush=True)
    return points


def _parameter_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for _, p in model.named_parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _final_report(config: RunConfig, run: Run, data: Data, out_dir: Path, metrics: MetricsLog, best: float,
                  epoch_seconds: list[float], wall: float,
                  build: Backbone | None) -> dict[str, Any] | None:
    inner, dist = run.inner, run.dist
    final, stats = _evaluate_with_stats(run, data, "final eval")
    # DDP keeps ranks in step; the digests let a user (and the tests) check it bit for bit.
    digests = dist.gather_objects(_parameter_digest(inner))
    at_budgets = []
    if run.budgets is not None:
        for b in config.eval_budgets:
            numbers, b_stats = _evaluate_with_stats(run, data, f"eval at budget {b:g}", budget=b)
            at_budgets.append((b, numbers, b_stats))
    if not dist.is_main:
        return None
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **models.names(config),
        "data": data.source, "classes": data.classes, "epochs": config.epochs,
        "seed": config.seed,
        "world_size": dist.world_size, "device": str(dist.device),
        "val_acc": final["acc"], "val_error": 1.0 - final["acc"], "val_loss": final["loss"],
        "best_val_acc": best, "params": models.param_counts(inner),
        "train_seconds_per_epoch": (sum(epoch_seconds) / len(epoch_seconds)) if epoch_seconds else None,
        "wall_seconds": wall, **data.extra,
        "rank_parameter_sha256": digests,
        "parameter_names": [name for name, _ in inner.named_parameters()],
    }
    if stats is not None:
        results["val_open_fraction"] = final["open"]
        results["gate_stats"] = gate_report(stats, out_dir, data.classes)
        results["gate_stats_1_99"] = gate_report_1_99(stats)
    results.update(run.losses.describe())  # gate_losses (a gated run), distillation
    if build is not None and build.info:
        results["backbone_build"] = build.info
    results["warm_start"] = {
        "init_from": str(config.init_from) if config.init_from is not None else None,
        "init_gater": config.init_gater, "backbone_weights": config.backbone_weights,
        "init_gates": config.init_gates}
    mid = run.budgets.midpoint if run.budgets is not None else None
    results["flops"] = flop_counts(inner, data.image_size, stats, config,
                                   dense_backbone=build.dense(len(data.classes)) if build else None,
                                   budget=mid)
    if run.budgets is not None:
        results["budget_input"] = {"range": str(run.budgets), "reported_at": mid,
                                   "points": _budget_points(config, inner, data, at_budgets)}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    metrics.write({"event": "final", "epoch": config.epochs, "val_acc": final["acc"],
                   "val_loss": final["loss"], "wall_seconds": wall})
    gate = f", {100 * final['open']:.1f}% of gates open" if run.gated else ""
    print(f"\nfinal: {100 * final['acc']:.2f}% accuracy ({100 * (1 - final['acc']):.2f}% error) "
          f"on {data.val.dataset_size} evaluation images{gate}; "
          f"{results['flops']['dense'] / 1e6:.1f} MFLOPs/image dense; wall time {wall:.0f}s")
    print(f"outputs in {out_dir}/: checkpoint.pt, metrics.jsonl, results.json"
          f"{', gates_*.png' if run.gated else ''}", flush=True)
    return results
