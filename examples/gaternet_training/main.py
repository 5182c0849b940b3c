"""The scripts' entry point: parse flags, fill the script's defaults, run, report errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch

from gatekit import GatekitError

from . import cli
from .train import Backbone, train


def _error_text(e: BaseException) -> str:
    text = str(e)
    # An error raised in a DataLoader worker arrives wrapped with the worker's traceback;
    # the last line holds the original message.
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split("GatekitError: ", 1)[-1]
    return text


def _check(args: argparse.Namespace) -> None:
    for flag in ("epochs", "batch_size", "image_size"):
        value = getattr(args, flag, 1)
        if value is not None and value < 1:
            raise GatekitError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.lr <= 0:
        raise GatekitError(f"--lr must be > 0, got {args.lr}")
    if args.no_gate:
        for flag in ("gater_resolution", "freeze_gater", "init_gater"):
            if getattr(args, flag, None):
                raise GatekitError(f"--{flag.replace('_', '-')} changes the gater, but --no-gate "
                                   "trains none; drop one of the two flags")


def main(parser: argparse.ArgumentParser, defaults: Callable[[argparse.Namespace], dict[str, Any]],
         load_data: Callable[..., Any], argv: list[str] | None = None,
         backbone: Callable[[argparse.Namespace], Backbone] | None = None) -> int:
    """Run the script; returns the process exit status (2 for bad input)."""
    args = parser.parse_args(argv)
    cli.fill_defaults(args, defaults(args))
    args.sites = cli.sites_arg(args.sites)
    uses_cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    args.channels_last_on = (args.channels_last if args.channels_last is not None
                             else uses_cuda or args.channels_last_cpu)
    try:
        _check(args)
        train(args, load_data, backbone(args) if backbone is not None else None)
    except GatekitError as e:
        print(f"error: {_error_text(e)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last completed epoch's checkpoint is intact (--resume)",
              file=sys.stderr)
        return 130
    return 0
