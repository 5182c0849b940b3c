"""The scripts' entry point: parse the flags into the run's config, run, report errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from gatekit import GatekitError

from .config import RunConfig
from .train import Backbone, train


def _error_text(e: BaseException) -> str:
    text = str(e)
    # An error raised in a DataLoader worker arrives wrapped with the worker's traceback;
    # the last line holds the original message.
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split("GatekitError: ", 1)[-1]
    return text


def main(parse: Callable[[list[str] | None], RunConfig], load_data: Callable[..., Any],
         argv: list[str] | None = None,
         backbone: Callable[[Any], Backbone] | None = None) -> int:
    """Run the script; returns the process exit status (2 for bad input).

    ``parse`` turns ``argv`` into the script's :class:`RunConfig` (a bad flag exits with
    status 2, as argparse does); ``backbone`` builds the script's backbone hook from it.
    """
    config = parse(argv)
    try:
        config.check()
        train(config, load_data, backbone(config) if backbone is not None else None)
    except GatekitError as e:
        print(f"error: {_error_text(e)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # train said what is left
        return 130
    return 0
