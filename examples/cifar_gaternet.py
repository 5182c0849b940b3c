"""Train a GaterNet on CIFAR-10/100 with the CIFAR ResNets, or the plain backbone (--no-gate).

    python examples/cifar_gaternet.py --data ../shared/data/cifar10-jpeg.tar.gz
    python examples/cifar_gaternet.py --data ../shared/data/cifar10-jpeg.tar.gz --no-gate
    python examples/cifar_gaternet.py --data ~/datasets --download --dataset cifar100

As in GaterNet's released code: a CIFAR ResNet backbone (20/56/110/164) gated after each
block's last conv+BN by a ResNet-20 gater with bottleneck 8.  ``--data`` takes the CIFAR
ImageFolder tree (``train/``, ``test/``), its ``.tar.gz`` (extracted once into the cache
directory), or a torchvision CIFAR directory.  The images are decoded once into a uint8
tensor cache, kept on the device and augmented there in batches (random crop with 4-pixel
padding, horizontal flip), so small CIFAR models are not held back by data loading; two
runs (plain and gated) can share one GPU.  ``results.json`` in the output directory holds
test error, parameters, FLOPs and the gate statistics.
"""

from __future__ import annotations

import argparse
import sys

from gaternet_training import cli
from gaternet_training.cifar_data import CIFAR_MEAN, CIFAR_STD, default_cache_dir, load_cifar
from gaternet_training.config import CifarConfig
from gaternet_training.distributed import Dist
from gaternet_training.main import main
from gaternet_training.models import CIFAR_DEPTHS
from gaternet_training.tensor_data import TensorBatches
from gaternet_training.train import Data, fixed_subset

from gatekit import GatekitError

# The flags whose default is this script's (the rest: gaternet_training.config).
DEFAULTS = dict(
    arch="resnet20", gater="resnet20", epochs=160, batch_size=128, warmup_epochs=1, workers=2,
    log_every=50, name="cifar_gaternet", channels_last_cpu=True,
)


def parser() -> argparse.ArgumentParser:
    return cli.parser(CifarConfig, __doc__, DEFAULTS)


def config(argv: list[str] | None = None) -> CifarConfig:
    """The run's config from ``argv`` (default: the command line)."""
    return cli.run_config(CifarConfig, parser().parse_args(argv), DEFAULTS)


def load_data(config: CifarConfig, dist: Dist) -> Data:
    if config.arch not in CIFAR_DEPTHS:
        raise GatekitError(f"--arch {config.arch!r} is not a CIFAR ResNet; expected one of "
                           f"{', '.join(CIFAR_DEPTHS)}")
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
    kw = dict(dist=dist, mean=CIFAR_MEAN, std=CIFAR_STD, seed=config.seed,
              channels_last=config.channels_last_on)
    return Data(
        train=TensorBatches(x, y, batch_size=config.batch_size, train=True, pad=4, **kw),
        val=TensorBatches(xv, yv, batch_size=1000, train=False, **kw),
        classes=list(arrays["classes"]), image_size=int(x.shape[1]), source=arrays["source"],
        extra={"dataset": config.dataset},
    )


def cli_main(argv: list[str] | None = None) -> int:
    """Run the script with ``argv`` (default: the command line); returns the exit status."""
    return main(config, load_data, argv)


if __name__ == "__main__":
    sys.exit(cli_main())
