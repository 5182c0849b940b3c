"""A whole data set held as one uint8 tensor on the device, augmented there in batches.

For small images (CIFAR, the stand-in) the per-image Python work of a DataLoader costs more
than the model.  Here the images live on the device as ``(N, H, W, 3)`` uint8, zero-padded
once; a training batch is one gather of random crops, one flip and one normalisation, all
batched.  ``(N, H, W, C)`` permuted to ``(N, C, H, W)`` is already channels_last in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributed import Dist


class TensorBatches:
    """Batches of an in-memory uint8 image tensor: shuffled, padded-crop + flip on the device.

    Shuffling uses a CPU generator seeded alike on all ranks (each rank takes every
    ``world_size``-th index of the same permutation); augmentation uses a per-rank
    generator on the device.  Both states go into checkpoints.
    """

    def __init__(self, images: Tensor, labels: Tensor, *, batch_size: int, train: bool,
                 dist: Dist, mean: Sequence[float], std: Sequence[float], pad: int = 4,
                 flip: bool = True, seed: int = 0, channels_last: bool = True) -> None:
        self.train, self.dist, self.batch_size = train, dist, batch_size
        self.pad = pad if train else 0
        self.flip = flip and train
        self.channels_last = channels_last
        self.height, self.width = images.shape[1], images.shape[2]
        device = dist.device
        self.dataset_size = len(images)
        if not train:
            # Every sample exactly once over all ranks, so reduced sums are exact.
            keep = torch.arange(dist.rank, len(images), dist.world_size)
            images, labels = images[keep], labels[keep]
        x = images.to(device)
        if self.pad:
            x = F.pad(x, (0, 0, self.pad, self.pad, self.pad, self.pad))
        self.images, self.labels = x, labels.to(device)
        self.num_total = len(images)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.shuffle = torch.Generator().manual_seed(seed)
        self.augment = torch.Generator(device=device).manual_seed(seed + 7919 * (1 + dist.rank))
        if train:
            self.per_rank = self.num_total // dist.world_size
            self.steps = self.per_rank // batch_size
        else:
            self.steps = -(-self.num_total // batch_size)
        if self.steps == 0:
            raise ValueError(f"{self.num_total} samples make no batch of {batch_size} "
                             f"on {dist.world_size} process(es); lower the batch size")
        self.num_samples = self.steps * batch_size if train else self.num_total

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        pass  # the generators carry on from epoch to epoch (and are checkpointed)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.train:
            for i in range(self.steps):
                sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield self._finish(self.images[sl]), self.labels[sl]
            return
        perm = torch.randperm(self.num_total, generator=self.shuffle)
        mine = perm[self.dist.rank::self.dist.world_size][: self.steps * self.batch_size]
        mine = mine.to(self.dist.device, non_blocking=True)
        for i in range(self.steps):
            idx = mine[i * self.batch_size:(i + 1) * self.batch_size]
            yield self._finish(self._crop_flip(self.images[idx])), self.labels[idx]

    def _crop_flip(self, x: Tensor) -> Tensor:
        n, device = x.shape[0], x.device
        if self.pad:
            span = 2 * self.pad + 1
            oy = torch.randint(0, span, (n, 1), device=device, generator=self.augment)
            ox = torch.randint(0, span, (n, 1), device=device, generator=self.augment)
            rows = oy + torch.arange(self.height, device=device)
            cols = ox + torch.arange(self.width, device=device)
            x = x[torch.arange(n, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]
        if self.flip:
            flip = torch.rand(n, device=device, generator=self.augment) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(2), x)
        return x

    def _finish(self, x: Tensor) -> Tensor:
        x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return x if self.channels_last else x.contiguous()

    def state_dict(self) -> dict[str, Any]:
        return {"shuffle": self.shuffle.get_state(), "augment": self.augment.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shuffle.set_state(state["shuffle"])
        self.augment.set_state(state["augment"])
