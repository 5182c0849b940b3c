"""ImageFolder trees (``root/<split>/<class>/<image>``): validation with clear messages, an
image loader that names the file it cannot read, and the DataLoader pipeline with the
standard ImageNet augmentation for ``--data``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gatekit import GatekitError

from .distributed import Dist

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_image_folder(root: Path, split: str) -> list[str]:
    """Check that ``root/split`` is an ImageFolder tree; return its class names (sorted)."""
    if not root.exists():
        raise GatekitError(f"data directory {root} does not exist; pass a directory DIR with "
                           f"DIR/{split}/<class>/<image> files")
    if not root.is_dir():
        raise GatekitError(f"data path {root} is not a directory (expected an ImageFolder tree)")
    split_dir = root / split
    if not any(root.iterdir()):
        raise GatekitError(f"data directory {root} is empty; expected an ImageFolder tree "
                           f"{root}/{split}/<class>/<image>")
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise GatekitError(
            f"{root} is not an ImageFolder tree: it has no {split}/ folder (found folders: "
            f"{found or 'none'}); expected {root}/{split}/<class>/<image>, or set the split "
            "names with --train-dir/--val-dir"
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise GatekitError(f"{split_dir} holds no class folders; expected "
                           f"{split_dir}/<class>/<image> (an ImageFolder tree)")
    empty = [c for c in classes if not any(_is_image(p) for p in (split_dir / c).iterdir())]
    if empty:
        raise GatekitError(f"{split_dir} has class folders without images: {empty[:5]} "
                           f"(image extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return classes


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str) -> Any:
    """Open an image as RGB; an unreadable file raises an error naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as e:
        raise GatekitError(f"cannot read image {path} ({type(e).__name__}: {e}); "
                           "remove or replace the file") from None


def image_dataset(root: Path, split: str, transform: Any, classes: list[str]) -> Any:
    from torchvision import datasets

    ds = datasets.ImageFolder(str(root / split), transform=transform, loader=load_image,
                              is_valid_file=lambda p: Path(p).suffix.lower() in IMAGE_EXTENSIONS)
    if ds.classes != classes:
        raise GatekitError(f"{root / split} has classes {ds.classes[:5]}..., the training split "
                           f"has {classes[:5]}...; both splits need the same class folders")
    return ds


class LoaderBatches:
    """Batches from a multi-worker DataLoader, moved to the device; sharded per rank.

    Training shuffles with a :class:`DistributedSampler` (seeded, re-shuffled per epoch)
    and draws the workers' augmentation seeds from a generator whose state goes into
    checkpoints, so a resumed run sees the same batches and crops as an uninterrupted one.
    """

    def __init__(self, dataset: Any, *, batch_size: int, train: bool, workers: int, dist: Dist,
                 seed: int, channels_last: bool) -> None:
        from torch.utils.data import DataLoader, DistributedSampler, Subset

        self.train, self.dist, self.channels_last = train, dist, channels_last
        self.dataset_size = len(dataset)
        self.generator = torch.Generator().manual_seed(seed + 7919 * dist.rank)
        if train:
            self.sampler = DistributedSampler(dataset, num_replicas=dist.world_size,
                                              rank=dist.rank, shuffle=True, seed=seed,
                                              drop_last=True)
        else:
            # Every sample exactly once over all ranks (no padding), so reduced sums are exact.
            self.sampler = None
            dataset = Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                 shuffle=False, num_workers=workers, drop_last=train,
                                 pin_memory=dist.device.type == "cuda",
                                 generator=self.generator, persistent_workers=False)
        self.num_samples = len(dataset) if not train else len(self.sampler) // batch_size * batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in self.loader:
            yield (x.to(self.dist.device, non_blocking=True, memory_format=fmt),
                   y.to(self.dist.device, non_blocking=True))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def imagenet_transforms(image_size: int, train: bool) -> Any:
    from torchvision import transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(),
                          T.ToTensor(), normalize])
    return T.Compose([T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size),
                      T.ToTensor(), normalize])
