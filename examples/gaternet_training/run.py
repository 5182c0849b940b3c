"""A whole training run: data, model, resume, the epoch loop, checkpoints and the final report.

Both example scripts call :func:`run` with their own data loader; everything else is shared.
Only rank 0 writes files; every rank computes the same reduced metrics.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gatekit
from gatekit import GatekitError

from . import checkpoint, models
from .distributed import Dist, setup, teardown
from .engine import Engine
from .gate_losses import GateLosses
from .optim import make_optimizer, make_scheduler
from .progress import MetricsLog
from .report import flop_counts, gate_report, gate_report_1_99
from .warm_start import warm_start


@dataclass
class Data:
    """What a script's data loader hands to :func:`run`."""

    train: Any  # TensorBatches or LoaderBatches
    val: Any
    classes: list[str]
    image_size: int
    source: str
    extra: dict[str, Any] = field(default_factory=dict)


def run(args: Any, load_data: Callable[[Any, Dist], Data]) -> dict[str, Any] | None:
    """Train as ``args`` say; returns the results dict on rank 0 (None on other ranks)."""
    dist = setup(args.device)
    try:
        return _run(args, dist, load_data)
    finally:
        teardown()


def _paths(args: Any) -> tuple[Path, Path, Path | None]:
    out_dir = Path(args.output_dir or Path("runs") / args.name)
    ckpt_path = out_dir / "checkpoint.pt"
    resume = None
    if args.resume is not None:
        resume = ckpt_path if args.resume == "auto" else Path(args.resume)
    elif ckpt_path.exists():
        raise GatekitError(
            f"{ckpt_path} already exists; pass --resume to continue that run, or choose another "
            "--output-dir (nothing was overwritten)"
        )
    return out_dir, ckpt_path, resume


def _config(args: Any, data: Data) -> dict[str, Any]:
    """What must match between a checkpoint and the run resuming it."""
    return {"arch": args.arch, "gated": not args.no_gate,
            "gater": None if args.no_gate else args.gater,
            "sites": None if args.no_gate else args.sites,
            "estimator": None if args.no_gate else args.estimator,
            "bottleneck": None if args.no_gate else args.bottleneck,
            "group_size": None if args.no_gate else args.group_size,
            "gater_resolution": None if args.no_gate else getattr(args, "gater_resolution", None),
            "freeze_gater": None if args.no_gate else (getattr(args, "freeze_gater", False) or None),
            "num_classes": len(data.classes), "image_size": data.image_size}


def _run(args: Any, dist: Dist, load_data: Callable[[Any, Dist], Data]) -> dict[str, Any] | None:
    start = time.perf_counter()
    out_dir, ckpt_path, resume = _paths(args)
    ckpt = checkpoint.load(resume) if resume is not None else None  # fail before any work
    cuda = dist.device.type == "cuda"
    if cuda:
        # Shapes are fixed from step to step, so cuDNN's measured choice of conv algorithm
        # pays off; its heuristic choice can be several times slower for small CIFAR convs.
        torch.backends.cudnn.benchmark = True
    precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    channels_last = args.channels_last_on

    for name, what in ((args.arch, "model"), (None if args.no_gate else args.gater, "gater")):
        if name is not None:
            models.check_name(name, what)
    data = load_data(args, dist)
    config = _config(args, data)
    if ckpt is not None:
        checkpoint.check_config(ckpt, config, resume)

    # Seeded after loading the data, whose decoding may or may not draw random numbers
    # (a cache hit draws none), so the initial weights depend on the seed alone.
    random.seed(args.seed + dist.rank)
    torch.manual_seed(args.seed)  # same initial weights on every rank

    inner = models.build(args, len(data.classes))
    # Warm start before anything is written: a file that does not fit fails the run here.
    warm = warm_start(inner, args) if ckpt is None else []
    inner = inner.to(dist.device)
    gate_losses = (None if args.no_gate
                   else GateLosses(args, inner, data.image_size, dist.device))
    if channels_last:
        inner = inner.to(memory_format=torch.channels_last)
    steps_per_epoch = len(data.train)
    optimizer = make_optimizer(inner, args.lr, args.momentum, args.weight_decay, dist.device)
    scheduler = make_scheduler(optimizer, args.epochs * steps_per_epoch,
                               round(args.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(dist.device.type, enabled=precision == "fp16")
    start_epoch, best = 0, 0.0
    # Per-rank random streams (gate noise) differ; weights are synchronised by DDP.
    torch.manual_seed(args.seed + 1000003 * dist.rank)

    metrics = MetricsLog(out_dir / "metrics.jsonl")
    if ckpt is not None:
        _restore(ckpt, resume, inner, optimizer, scheduler, scaler, data, dist)
        start_epoch, best = ckpt["epoch"], ckpt.get("best_acc", 0.0)
        if dist.is_main:
            metrics.truncate_after(start_epoch)
            print(f"resumed from {resume} at epoch {start_epoch}", flush=True)
    if dist.is_main:
        for line in warm:
            print(line, flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "args.json").write_text(json.dumps(vars(args), indent=1, default=str))

    model: nn.Module = inner
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(inner, device_ids=[dist.device.index] if cuda else None)
    if args.compile:
        model = torch.compile(model, mode=args.compile_mode)
    engine = Engine(model, inner, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                    dist=dist, amp_dtype=amp_dtype, label_smoothing=args.label_smoothing,
                    gate_losses=gate_losses, log_every=args.log_every)
    engine.step = start_epoch * steps_per_epoch
    if dist.is_main:
        kind = "plain" if args.no_gate else f"gated by {args.gater} ({inner.num_gates} gates)"
        print(f"{args.arch} {kind}, {models.count_params(inner):,} parameters; "
              f"{data.train.dataset_size} training / {data.val.dataset_size} evaluation images of {len(data.classes)} classes; "
              f"{dist.world_size} process(es) "
              f"on {dist.device.type}, {precision}{', channels_last' if channels_last else ''}"
              f"{', compiled' if args.compile else ''}", flush=True)

    epoch_seconds = []
    for epoch in range(start_epoch, args.epochs):
        t0 = time.perf_counter()
        data.train.set_epoch(epoch)
        train = engine.train_epoch(data.train, epoch, args.epochs, steps_per_epoch)
        if cuda:
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
        val = engine.evaluate(data.val, desc=f"epoch {epoch + 1}/{args.epochs} eval")
        best = max(best, val["acc"])
        seconds = time.perf_counter() - t0
        epoch_seconds.append(train_seconds)
        states = dist.gather_objects({"rng": checkpoint.rng_state(), "data": data.train.state_dict()})
        record = {"event": "epoch", "epoch": epoch + 1, "step": engine.step,
                  "lr": optimizer.param_groups[0]["lr"],
                  **{f"train_{k}": v for k, v in train.items()},
                  **{f"val_{k}": v for k, v in val.items()},
                  "train_seconds": train_seconds, "epoch_seconds": seconds}
        if dist.is_main:
            checkpoint.save_atomic({
                "format": checkpoint.FORMAT, "config": config, "args": _plain(vars(args)),
                "epoch": epoch + 1, "step": engine.step, "best_acc": best,
                "model": inner.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "world_size": dist.world_size, "rank_states": states,
            }, ckpt_path)
            metrics.write(record)
            gate = f", open {100 * val['open']:.1f}%" if not args.no_gate else ""
            print(f"epoch {epoch + 1}/{args.epochs}: train loss {train['loss']:.4f} acc "
                  f"{100 * train['acc']:.2f}% | val loss {val['loss']:.4f} acc "
                  f"{100 * val['acc']:.2f}%{gate} | {train_seconds:.1f}s train, {seconds:.1f}s "
                  f"total", flush=True)
        dist.barrier()

    return _final_report(args, dist, engine, inner, data, out_dir, metrics, best,
                         epoch_seconds, time.perf_counter() - start)


def _restore(ckpt: dict[str, Any], path: Path, inner: nn.Module, optimizer: Any, scheduler: Any,
             scaler: Any, data: Data, dist: Dist) -> None:
    try:
        inner.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise GatekitError(f"checkpoint {path} does not fit this model "
                           f"({str(e).splitlines()[0]}); resume with the flags it was written with") from None
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    states = ckpt["rank_states"]
    if ckpt.get("world_size") == dist.world_size:
        checkpoint.set_rng_state(states[dist.rank]["rng"])
        data.train.load_state_dict(states[dist.rank]["data"])
    elif dist.is_main:
        print(f"warning: {path} was written by {ckpt.get('world_size')} processes, this run has "
              f"{dist.world_size}; weights and optimiser are restored, random streams start anew",
              file=sys.stderr)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v))
            for k, v in d.items() if not callable(v)}


def _parameter_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for _, p in model.named_parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _final_report(args: Any, dist: Dist, engine: Engine, inner: nn.Module, data: Data,
                  out_dir: Path, metrics: MetricsLog, best: float, epoch_seconds: list[float],
                  wall: float) -> dict[str, Any] | None:
    gated = isinstance(inner, gatekit.GaterNet)
    stats = gatekit.GateStats.for_model(inner, num_classes=len(data.classes)) if gated else None
    final = engine.evaluate(data.val, stats=stats, desc="final eval")
    # DDP keeps ranks in step; the digests let a user (and the tests) check it bit for bit.
    digests = dist.gather_objects(_parameter_digest(inner))
    if stats is not None:
        merged = dist.gather_objects(stats)
        stats = merged[0]
        for other in merged[1:]:
            stats.merge(other)
    if not dist.is_main:
        return None
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "arch": args.arch, "gated": gated, "gater": args.gater if gated else None,
        "data": data.source, "classes": data.classes, "epochs": args.epochs, "seed": args.seed,
        "world_size": dist.world_size, "device": str(dist.device),
        "val_acc": final["acc"], "val_error": 1.0 - final["acc"], "val_loss": final["loss"],
        "best_val_acc": best, "params": models.param_counts(inner),
        "train_seconds_per_epoch": (sum(epoch_seconds) / len(epoch_seconds)) if epoch_seconds else None,
        "wall_seconds": wall, **data.extra,
        "rank_parameter_sha256": digests,
        "parameter_names": [name for name, _ in inner.named_parameters()],
    }
    if gated:
        results["val_open_fraction"] = final["open"]
        results["gate_stats"] = gate_report(stats, out_dir, data.classes)
        results["gate_stats_1_99"] = gate_report_1_99(stats)
    if gated and engine.gate_losses is not None:
        results["gate_losses"] = engine.gate_losses.describe()
    results["warm_start"] = {"init_from": _plain(vars(args)).get("init_from"),
                             "init_gater": bool(getattr(args, "init_gater", False)),
                             "backbone_weights": getattr(args, "backbone_weights", None)}
    results["flops"] = flop_counts(inner, data.image_size, stats,
                                   downstream=bool(getattr(args, "count_downstream", False)))
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    metrics.write({"event": "final", "epoch": args.epochs, "val_acc": final["acc"],
                   "val_loss": final["loss"], "wall_seconds": wall})
    gate = f", {100 * final['open']:.1f}% of gates open" if gated else ""
    print(f"\nfinal: {100 * final['acc']:.2f}% accuracy ({100 * (1 - final['acc']):.2f}% error) "
          f"on {data.val.dataset_size} evaluation images{gate}; "
          f"{results['flops']['dense'] / 1e6:.1f} MFLOPs/image dense; wall time {wall:.0f}s")
    print(f"outputs in {out_dir}/: checkpoint.pt, metrics.jsonl, results.json"
          f"{', gates_*.png' if gated else ''}", flush=True)
    return results
