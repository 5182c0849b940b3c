"""CIFAR-10/100 as uint8 tensors, decoded once and cached.

``--data`` may be an ImageFolder tree (``train/`` and ``test/``, e.g. the CIFAR-10 JPEG tree,
possibly one folder down), a ``.tar.gz`` of such a tree (extracted once into the cache
directory, never next to the archive), or a torchvision CIFAR directory
(``cifar-10-batches-py`` / ``cifar-100-python``; ``--download`` fetches it there).  The
decoded arrays are saved as one ``.pt`` file in the cache directory, so later runs start in
a second instead of re-decoding 60,000 JPEGs.  :func:`load_data` hands them to :func:`train`
as ``examples/cifar_gaternet.py`` trains on them (and as a rebuilt run is evaluated).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
from http.client import HTTPException
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gatekit import GatekitError

from . import models
from .checkpoint import save_atomic
from .config import CifarConfig
from .distributed import Dist
from .image_folder import IMAGE_EXTENSIONS, check_image_folder, load_image
from .tensor_data import TensorBatches
from .train import Data, batch_options, fixed_subset

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
TORCHVISION_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def default_cache_dir() -> Path:
    base = os.environ.get("GATEKIT_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "gatekit" if base else Path.home() / ".cache" / "gatekit"


def _key(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Extract ``archive`` once into ``cache_dir``; returns the extracted folder."""
    st = archive.stat()
    dest = cache_dir / f"{archive.name.split('.')[0]}-{_key(archive.resolve(), st.st_size, st.st_mtime_ns)}"
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GatekitError(f"cannot extract {archive} ({e}); expected a .tar.gz of an "
                           "ImageFolder tree") from None
    try:
        os.replace(tmp, dest)
    except OSError:  # another process extracted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _find_image_folder_root(path: Path, train_dir: str) -> Path | None:
    if (path / train_dir).is_dir():
        return path
    children = [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
    if len(children) == 1 and (children[0] / train_dir).is_dir():
        return children[0]
    return None


def _decode_split(root: Path, split: str, classes: list[str], workers: int) -> tuple[Tensor, Tensor]:
    """Decode every image of ``root/split`` into uint8 ``(N, H, W, 3)`` with a worker pool."""
    from torch.utils.data import DataLoader
    from torchvision import datasets

    ds = datasets.ImageFolder(str(root / split), loader=load_image, transform=_pil_to_uint8,
                              is_valid_file=lambda p: Path(p).suffix.lower() in IMAGE_EXTENSIONS)
    if ds.classes != classes:
        raise GatekitError(f"{root / split} has classes {ds.classes}, {root} train has "
                           f"{classes}; both splits need the same class folders")
    xs, ys = [], []
    loader = DataLoader(ds, batch_size=500, num_workers=workers, collate_fn=_stack_same_size)
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _pil_to_uint8(img: Any) -> Tensor:
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)


def _stack_same_size(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    shapes = {tuple(x.shape) for x, _ in batch}
    if len(shapes) != 1:
        raise GatekitError(f"images of different sizes {sorted(shapes)[:3]}; the in-memory "
                           "CIFAR pipeline needs one image size (CIFAR is 32x32)")
    return torch.stack([x for x, _ in batch]), torch.tensor([y for _, y in batch])


def load_cifar(data: Path, *, dataset: str, cache_dir: Path, download: bool, workers: int,
               train_dir: str = "train", val_dir: str = "test") -> dict[str, Any]:
    """Train and test images as uint8 ``(N, H, W, 3)`` tensors, labels and class names."""
    data = Path(data).expanduser()
    if data.is_file() and data.name.endswith((".tar.gz", ".tgz", ".tar")):
        data = extract_archive(data, cache_dir)
    root = _find_image_folder_root(data, train_dir) if data.is_dir() else None
    if root is not None:
        classes = check_image_folder(root, train_dir)
        check_image_folder(root, val_dir)
        files = sum(1 for _ in (root / train_dir).rglob("*"))
        cache = cache_dir / f"decoded-{_key(root.resolve(), train_dir, val_dir, files)}.pt"
        if cache.is_file():
            try:
                return torch.load(cache, weights_only=True)
            except Exception:
                cache.unlink()  # a stale or damaged cache is rebuilt, not trusted
        out = {"classes": classes, "source": str(root)}
        out["train_x"], out["train_y"] = _decode_split(root, train_dir, classes, workers)
        out["test_x"], out["test_y"] = _decode_split(root, val_dir, classes, workers)
        save_atomic(out, cache)
        return out
    tv_dir = TORCHVISION_DIRS[dataset]
    if download or (data / tv_dir).is_dir():
        from torchvision import datasets

        cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
        try:
            splits = [cls(str(data), train=t, download=download) for t in (True, False)]
        except (OSError, HTTPException) as e:  # URLError, timeouts, a dropped connection
            if not download:
                raise
            raise GatekitError(
                f"--download: torchvision could not download {cls.__name__} from {cls.url} into "
                f"{data} ({type(e).__name__}: {e}); without internet access, pass --data a local "
                f"ImageFolder tree ({train_dir}/, {val_dir}/), its .tar.gz, or a directory that "
                f"already holds torchvision's CIFAR download ({tv_dir}/), without --download"
            ) from None
        return {
            "classes": list(splits[0].classes), "source": str(data / tv_dir),
            "train_x": torch.from_numpy(splits[0].data), "train_y": torch.tensor(splits[0].targets),
            "test_x": torch.from_numpy(splits[1].data), "test_y": torch.tensor(splits[1].targets),
        }
    if not data.exists():
        raise GatekitError(f"--data {data} does not exist; pass the CIFAR ImageFolder tree, its "
                           f".tar.gz, or a torchvision CIFAR directory (add --download to fetch one)")
    raise GatekitError(
        f"--data {data} is neither an ImageFolder tree (no {train_dir}/ folder in it or one "
        f"level down), a .tar.gz of one, nor a torchvision CIFAR directory (no {tv_dir}/); "
        "pass one of those, or --download to fetch CIFAR with torchvision"
    )


def load_data(config: CifarConfig, dist: Dist) -> Data:
    """The CIFAR split of ``--data`` for :func:`train`: on the device, augmented there (random
    crop with 4-pixel padding, horizontal flip), ``--limit``/``--limit-val`` applied."""
    models.check_cifar(config)
    cache_dir = config.cache_dir or default_cache_dir()
    # Rank 0 extracts and decodes; the others wait and then read the cache.
    if dist.is_main:
        arrays = load_cifar(config.data, dataset=config.dataset, cache_dir=cache_dir,
                            download=config.download, workers=config.workers,
                            train_dir=config.train_dir, val_dir=config.val_dir)
    dist.barrier()
    if not dist.is_main:
        arrays = load_cifar(config.data, dataset=config.dataset, cache_dir=cache_dir,
                            download=False, workers=config.workers,
                            train_dir=config.train_dir, val_dir=config.val_dir)
    x, y, xv, yv = (arrays[k] for k in ("train_x", "train_y", "test_x", "test_y"))
    if (keep := fixed_subset(len(x), config.limit)) is not None:
        x, y = x[keep], y[keep]
    if (keep := fixed_subset(len(xv), config.limit_val)) is not None:
        xv, yv = xv[keep], yv[keep]
    if x.shape[1:3] != (32, 32):
        print(f"note: images are {x.shape[1]}x{x.shape[2]}, not CIFAR's 32x32", file=sys.stderr)
    kw = dict(mean=CIFAR_MEAN, std=CIFAR_STD, **batch_options(config, dist))
    return Data(
        train=TensorBatches(x, y, batch_size=config.batch_size, train=True, pad=4, **kw),
        val=TensorBatches(xv, yv, batch_size=1000, train=False, **kw),
        classes=list(arrays["classes"]), image_size=int(x.shape[1]), source=arrays["source"],
        extra={"dataset": config.dataset},
    )
