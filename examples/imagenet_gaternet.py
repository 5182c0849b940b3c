"""Train a GaterNet on ImageNet (or any ImageFolder tree), or on the built-in stand-in.

    python examples/imagenet_gaternet.py                      # stand-in, ~3 min on 2 CPU cores
    python examples/imagenet_gaternet.py --data /path/to/imagenet
    torchrun --nproc-per-node 8 examples/imagenet_gaternet.py --data /path/to/imagenet

With ``--data DIR`` it reads ``DIR/train`` and ``DIR/val`` (ImageFolder layout) with the
standard ImageNet augmentation, a ResNet-50 backbone gated by a ResNet-18 trunk.  Without
it, it trains on a procedurally drawn, learnable stand-in (shapes, 10 classes, 32x32), with
the CIFAR ResNet-20 backbone gated by a ResNet-20 trunk (the released GaterNet
configuration).  Checkpoints, metrics (JSON lines), gate statistics, plots and
``results.json`` go to ``runs/<name>``.
"""

from __future__ import annotations

import argparse
import sys

from gaternet_training import cli
from gaternet_training.config import IMAGENET_DEFAULTS, STANDIN_DEFAULTS, ImageNetConfig
from gaternet_training.distributed import Dist
from gaternet_training.image_folder import (
    LoaderBatches,
    check_image_folder,
    image_dataset,
    imagenet_transforms,
)
from gaternet_training.main import main
from gaternet_training.standin import CLASSES, make_standin
from gaternet_training.tensor_data import TensorBatches
from gaternet_training.train import Data, batch_options, fixed_subset
from torch.utils.data import Subset

# The defaults of the flags whose default is this script's: with --data (IMAGENET) and on the
# stand-in (STANDIN); both are declared in gaternet_training.config.
IMAGENET, STANDIN = IMAGENET_DEFAULTS, STANDIN_DEFAULTS


def _both(key: str) -> str:
    with_data, standin = (cli.default_of(ImageNetConfig, key, d) for d in (IMAGENET, STANDIN))
    return f"{with_data} with --data, {standin} on the stand-in"


def parser() -> argparse.ArgumentParser:
    return cli.parser(ImageNetConfig, __doc__, STANDIN,
                      shown={k: _both(k) for k in IMAGENET.keys() | STANDIN.keys()})


def config(argv: list[str] | None = None) -> ImageNetConfig:
    """The run's config from ``argv`` (default: the command line)."""
    args = parser().parse_args(argv)
    return cli.run_config(ImageNetConfig, args, IMAGENET if args.data is not None else STANDIN)


def load_data(config: ImageNetConfig, dist: Dist) -> Data:
    if config.data is None:
        return _standin(config, dist)
    root, size = config.data, config.image_size
    classes = check_image_folder(root, config.train_dir)
    check_image_folder(root, config.val_dir)
    train = image_dataset(root, config.train_dir, imagenet_transforms(size, True), classes)
    val = image_dataset(root, config.val_dir, imagenet_transforms(size, False), classes)
    if (keep := fixed_subset(len(train), config.limit)) is not None:
        train = Subset(train, keep.tolist())
    if (keep := fixed_subset(len(val), config.limit_val)) is not None:
        val = Subset(val, keep.tolist())
    kw = dict(workers=config.workers, **batch_options(config, dist))
    return Data(
        train=LoaderBatches(train, batch_size=config.batch_size, train=True, **kw),
        val=LoaderBatches(val, batch_size=config.batch_size, train=False, **kw),
        classes=classes, image_size=size, source=str(root),
    )


def _standin(config: ImageNetConfig, dist: Dist) -> Data:
    size = config.image_size
    if dist.is_main:
        print(f"no --data given: training on the built-in stand-in ({len(CLASSES)} classes of "
              f"procedurally drawn shapes, {size}x{size}, made on the fly, "
              f"nothing downloaded); pass --data DIR for ImageNet", flush=True)
    n_train = config.limit or config.standin_train
    n_val = config.limit_val or config.standin_val
    x, y = make_standin(n_train, size, seed=1)
    xv, yv = make_standin(n_val, size, seed=2)
    # Statistics of the stand-in's colours (uniform colours on uniform backgrounds).
    kw = dict(mean=(0.5, 0.5, 0.5), std=(0.3, 0.3, 0.3), **batch_options(config, dist))
    return Data(
        train=TensorBatches(x, y, batch_size=config.batch_size, train=True,
                            pad=max(1, size // 8), **kw),
        val=TensorBatches(xv, yv, batch_size=max(config.batch_size, 256), train=False, **kw),
        classes=list(CLASSES), image_size=size, source="built-in stand-in",
    )


def cli_main(argv: list[str] | None = None) -> int:
    """Run the script with ``argv`` (default: the command line); returns the exit status."""
    return main(config, load_data, argv)


if __name__ == "__main__":
    sys.exit(cli_main())
