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
from gaternet_training.cifar_data import load_data
from gaternet_training.config import CIFAR_DEFAULTS, CifarConfig
from gaternet_training.main import main


def parser() -> argparse.ArgumentParser:
    return cli.parser(CifarConfig, __doc__, CIFAR_DEFAULTS)


def config(argv: list[str] | None = None) -> CifarConfig:
    """The run's config from ``argv`` (default: the command line)."""
    return cli.run_config(CifarConfig, parser().parse_args(argv), CIFAR_DEFAULTS)


def cli_main(argv: list[str] | None = None) -> int:
    """Run the script with ``argv`` (default: the command line); returns the exit status."""
    return main(config, load_data, argv)


if __name__ == "__main__":
    sys.exit(cli_main())
