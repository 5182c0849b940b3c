"""One training epoch and one evaluation pass, with the gate loss and reduced metrics.

Metrics are summed on the device and synchronised only when shown or at the end of the
epoch, so the loop never waits on the device per step.  Sums are reduced over ranks, so
every rank reports the numbers of the whole data set.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gatekit
from gatekit import GatekitError

from .distributed import Dist
from .gate_losses import GateLosses
from .progress import Progress


class Engine:
    """Trains and evaluates ``model`` (a DDP or compiled wrapper of ``inner``, or ``inner``)."""

    def __init__(self, model: nn.Module, inner: nn.Module, *, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: torch.amp.GradScaler, dist: Dist,
                 amp_dtype: torch.dtype | None, label_smoothing: float,
                 gate_losses: GateLosses | None, log_every: int) -> None:
        self.model, self.inner = model, inner
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.dist, self.amp_dtype = dist, amp_dtype
        self.label_smoothing = label_smoothing
        self.gate_losses = gate_losses
        self.gated = isinstance(inner, gatekit.GaterNet)
        self.log_every = log_every
        self.step = 0

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype)

    def train_epoch(self, batches: Iterable[tuple[Tensor, Tensor]], epoch: int, epochs: int,
                    steps: int) -> dict[str, float]:
        self.model.train()
        sums = torch.zeros(4, device=self.dist.device, dtype=torch.float64)
        one = torch.ones((), device=self.dist.device, dtype=torch.float64)  # no host copy per step
        progress = Progress(steps, f"epoch {epoch + 1}/{epochs} train",
                            enabled=self.dist.is_main, log_every=self.log_every)
        for x, y in batches:
            with self._autocast():
                out = self.model(x)
                loss = F.cross_entropy(out.float(), y, label_smoothing=self.label_smoothing)
                opened = torch.zeros((), device=x.device)
                if self.gated:
                    gates = self.inner.last_gates
                    if self.gate_losses is not None and self.gate_losses.active:
                        loss = loss + self.gate_losses(self.inner, self.step / steps, epochs)
                    opened = (gates.detach() > 0.5).float().mean()
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            n = y.shape[0]
            sums += torch.stack([loss.detach().double() * n, (out.argmax(1) == y).sum().double(),
                                 one * n,
                                 opened.double() * n])
            progress.update(partial(_numbers, sums))
        progress.close()
        totals = self.dist.all_reduce_sum(sums)
        result = _numbers(totals)
        if not math.isfinite(result["loss"]):
            raise GatekitError(
                f"training diverged: the loss is {result['loss']} in epoch {epoch + 1}; no "
                "checkpoint was written. Lower --lr or the gate-loss weights, or resume from the "
                "last checkpoint"
            )
        return result

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[Tensor, Tensor]], *,
                 stats: gatekit.GateStats | None = None, desc: str = "eval") -> dict[str, float]:
        """Loss (no label smoothing), accuracy and open fraction over the whole split."""
        # The unwrapped model: DDP would sync buffers per call, and ranks may see a different
        # number of evaluation batches.
        model = self.inner
        if self.dist.enabled:
            # BatchNorm statistics drift apart over the last training step of each rank;
            # evaluate every rank with rank 0's, which are the ones checkpointed.
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        model.eval()
        sums = torch.zeros(4, device=self.dist.device, dtype=torch.float64)
        one = torch.ones((), device=self.dist.device, dtype=torch.float64)  # no host copy per step
        progress = Progress(len(batches), desc, enabled=self.dist.is_main,  # type: ignore[arg-type]
                            log_every=max(self.log_every, 10**9))
        for x, y in batches:
            with self._autocast():
                out = model(x)
            loss = F.cross_entropy(out.float(), y, reduction="sum")
            opened = torch.zeros((), device=x.device)
            if self.gated:
                gates = model.last_gates
                opened = (gates > 0.5).float().mean()
                if stats is not None:
                    stats.update(gates, y)
            n = y.shape[0]
            sums += torch.stack([loss.double(), (out.argmax(1) == y).sum().double(),
                                 one * n,
                                 opened.double() * n])
            progress.update(partial(_numbers, sums))
        progress.close()
        return _numbers(self.dist.all_reduce_sum(sums))


def _numbers(sums: Tensor) -> dict[str, float]:
    loss, correct, count, opened = sums.tolist()
    count = max(count, 1.0)
    return {"loss": loss / count, "acc": correct / count, "open": opened / count}
