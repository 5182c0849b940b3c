"""Checkpoints: atomic writes, RNG capture and restore, and checks before anything is loaded.

A checkpoint is written to a temporary file in the same directory, flushed to disk and
renamed over the old one, so a crash at any moment leaves either the old or the new file,
never a partial one.  Loading validates the file and the architecture before touching the
model, so a bad checkpoint fails the run before it can write anything.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import torch

from gatekit import GatekitError

FORMAT = "gatekit-gaternet-checkpoint/1"


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def rng_state() -> dict[str, Any]:
    """This process's RNG states: python, numpy (if imported), torch CPU and CUDA."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if "numpy" in sys.modules:
        kind, keys, pos, has_gauss, gauss = sys.modules["numpy"].random.get_state()
        # Plain lists so the checkpoint loads with weights_only=True.
        state["numpy"] = (kind, keys.tolist(), pos, has_gauss, gauss)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_atomic`; clear errors for anything else."""
    if not path.is_file():
        raise GatekitError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError...
        raise GatekitError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "it is truncated or not a gatekit training checkpoint. Resume from another file "
            "or start afresh with another --output-dir"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise GatekitError(
            f"checkpoint {path} is not a gatekit training checkpoint (expected format {FORMAT!r})"
        )
    return ckpt


def check_config(ckpt: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose architecture or data differ from this run's."""
    saved = ckpt.get("config", {})
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {v!r}"
             for k, v in config.items() if saved.get(k) != v]
    if diffs:
        raise GatekitError(
            f"checkpoint {path} was written for another model or data set ("
            + "; ".join(diffs) + "). Resume with the same flags, or use another --output-dir"
        )
