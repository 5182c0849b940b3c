"""Run one epoch of the examples' training step on a fixed tiny problem; for the DDP test.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_harness.py OUT
    python tests/ddp_harness.py OUT          # one process, the same global batch

Everything that may legitimately differ between ranks is taken out, so that two processes
with half the batch each must compute what one process computes on the whole batch: no
BatchNorm (per-rank batch statistics), no augmentation (per-rank random crops), a
deterministic gate estimator (per-rank gate noise), no gate losses (batch-level losses
see only a rank's half).  Each image carries its own index in pixel (0, 0, channel 0), so
the harness records which samples each rank trained on.  Writes ``OUT/rank{R}.pt`` with the
final parameters and the sample indices.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from gaternet_training.distributed import setup, teardown
from gaternet_training.losses import Losses
from gaternet_training.optim import make_optimizer, make_scheduler
from gaternet_training.tensor_data import TensorBatches
from gaternet_training.train import Run, train_one_epoch
from torch import nn

import gatekit

SAMPLES, GLOBAL_BATCH, SIZE = 96, 16, 8


class Net(nn.Module):
    def __init__(self, classes: int = 4, features: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Identity() if features else nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x / 255.0))))
        return self.fc(x.mean((2, 3)))


class Recording:
    """The batches, recording the sample index written into each image."""

    def __init__(self, batches: TensorBatches) -> None:
        self.batches = batches
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for x, y in self.batches:
            self.seen += x[:, 0, 0, 0].round().long().tolist()
            yield x, y


def main(out: Path) -> None:
    dist = setup("cpu")
    try:
        _run(dist, out)  # the DDP wrapper dies with its frame, before the group (teardown)
        if dist.enabled:
            torch.distributed.barrier()
    finally:
        teardown()


def _run(dist, out: Path) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (SAMPLES, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)
    images[:, 0, 0, 0] = torch.arange(SAMPLES, dtype=torch.uint8)
    labels = torch.randint(0, 4, (SAMPLES,), generator=g)
    inner = gatekit.gate_model(Net(), Net(features=True), sites="all", estimator="st_sigmoid",
                               gater_features=8, init_bias=1.0)
    model: nn.Module = inner
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(inner)
    batches = TensorBatches(images, labels, batch_size=GLOBAL_BATCH // dist.world_size, train=True,
                            dist=dist, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3, pad=0,
                            flip=False, seed=0, channels_last=False)
    optimizer = make_optimizer(inner, lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = make_scheduler(optimizer, len(batches), 0)
    run = Run(model, inner, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), dist,
              amp_dtype=None, label_smoothing=0.0, losses=Losses(), log_every=10**9)
    initial = {k: v.detach().clone() for k, v in inner.named_parameters()}
    recording = Recording(batches)
    train_one_epoch(run, recording, 0, 1)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"params": {k: v.detach().clone() for k, v in inner.named_parameters()},
                "initial": initial,
                "seen": recording.seen, "world_size": dist.world_size},
               out / f"rank{dist.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
