"""Warm start: load a trained backbone (and, optionally, the gater trunk) before training.

Sources, all read before anything is written:

- a checkpoint of these scripts (``checkpoint.pt``, plain or gated run): its model weights; of
  a gated run, the backbone part (``backbone.*``) and the gater trunk part (``gater.*``);
- a bare ``state_dict`` file (``torch.save(model.state_dict(), path)``);
- torchvision weights by name (``--backbone-weights IMAGENET1K_V2``, downloaded by torchvision
  on first use into ``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``;
  a file already there is read, so a copy placed there works offline).

Keys must match exactly: a missing or unexpected key, or a shape that differs, raises one
:class:`GatekitError` that lists them all.  The only keys that may be left over are those of
the classifier layer a gater trunk does not have (``fc``, ``classifier``, ``head``, ``heads``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

import gatekit
from gatekit import GatekitError

from . import checkpoint, models
from .config import RunConfig

_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "heads.")


def read_state_dict(path: Path, flag: str = "--init-from") -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """``(backbone_state, gater_trunk_state_or_None)`` from a checkpoint or state_dict file;
    ``flag`` names the option that gave ``path`` in error messages."""
    path = Path(path)
    if not path.is_file():
        raise GatekitError(f"{flag} {path}: no such file; expected a checkpoint.pt of these "
                           "scripts or a file saved with torch.save(model.state_dict(), path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise GatekitError(f"{flag} {path}: cannot be read as a torch file "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(obj, dict) and obj.get("format") == checkpoint.FORMAT:
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise GatekitError(f"{flag} {path}: expected a state_dict (names to tensors) or a "
                           f"checkpoint of these scripts, got {type(obj).__name__}")
    if any(k.startswith("backbone.") for k in obj):  # a gated run's GaterNet
        backbone = _strip(obj, "backbone.")
        gater = _strip(obj, "gater.") or None
        return backbone, gater
    return dict(obj), dict(obj)


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _why(e: BaseException) -> str:
    """``Type: first line of the message``, to quote an exception in a one-line error."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def torchvision_state_dict(arch: str, weights: str) -> dict[str, Tensor]:
    """torchvision's ``weights`` (e.g. ``IMAGENET1K_V2``) for ``arch``; downloads on first use."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise GatekitError(f"--backbone-weights: torchvision has no weights for {arch!r}") from None
    names = [w.name for w in enum]
    if weights == "DEFAULT":
        chosen = enum.DEFAULT
    elif weights in names:
        chosen = enum[weights]
    else:
        raise GatekitError(f"--backbone-weights {weights!r} is not a weight set of {arch}; "
                           f"expected one of {', '.join([*names, 'DEFAULT'])}")
    # Where torch.hub keeps the file (it follows $TORCH_HOME): read from there when present,
    # downloaded there otherwise.
    url = chosen.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    offline = f"pass --init-from PATH with a local state_dict file of {arch}"
    try:
        return chosen.get_state_dict(progress=True)
    except Exception as e:  # a failed download and a damaged file both come in many types
        if not cached.is_file():  # nothing was cached: the download failed
            raise GatekitError(
                f"--backbone-weights {weights}: torchvision could not download {cached.name} "
                f"from {url} ({_why(e)}); without internet access, copy that file to {cached} "
                f"(torch.hub's cache, $TORCH_HOME/hub/checkpoints/), or {offline}") from None
        raise GatekitError(
            f"--backbone-weights {weights}: the cached file {cached} cannot be read as torch "
            f"weights ({_why(e)}), as happens when it is truncated or corrupt; delete it and run "
            f"again to download it anew from {url}, or {offline}") from None


def load_into(module: nn.Module, state: dict[str, Tensor], *, what: str, source: str,
              allow_extra_classifier: bool = False) -> int:
    """Copy ``state`` into ``module`` after checking every key and shape; returns tensors loaded."""
    own = module.state_dict()
    extra = sorted(set(state) - set(own))
    if allow_extra_classifier:
        extra = [k for k in extra if not k.startswith(_CLASSIFIER_PREFIXES)]
    missing = sorted(set(own) - set(state))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or extra or shapes:
        parts = []
        for label, keys in (("missing in the file", missing), ("not in the model", extra),
                            ("shape differs", shapes)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                parts.append(f"{label}: {shown}")
        raise GatekitError(f"{source} does not fit the {what}: " + "; ".join(parts) +
                           ". Pass weights of the same architecture (--arch / --gater), or a "
                           "state_dict saved from it")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])
    return len(own)


def warm_start(model: nn.Module, config: RunConfig) -> list[str]:
    """Apply ``--init-from`` / ``--init-gater`` / ``--backbone-weights``, then ``--init-gates``;
    returns lines to print."""
    lines = _load_weights(model, config)
    if config.init_gates is not None and isinstance(model, gatekit.GaterNet):
        lines.append(init_gates(model, config))
    return lines


def init_gates(model: gatekit.GaterNet, config: RunConfig) -> str:
    """``--init-gates l1``: the head set so that every image keeps the filters the backbone's
    L1 ranking keeps at the run's final budget (:func:`gatekit.init_gates_`)."""
    scores = gatekit.filter_l1_norms(model)
    if model.budget_input:
        gatekit.init_gates_(model, scores)
        return (f"gates: from the backbone's {config.init_gates} ranking, nested for every budget "
                "(budget b keeps the top b of every site)")
    budget = config.budget.end if config.budget.end is not None else config.budget.start
    keep = gatekit.init_gates_(model, scores, budget)
    group = config.group_size
    what = "filters" if group == 1 else f"gates (groups of {group} filters)"
    return (f"gates: from the backbone's {config.init_gates} ranking at budget {budget:g}: "
            f"{int(keep.sum())} of {keep.numel()} {what} kept for every image")


def _load_weights(model: nn.Module, config: RunConfig) -> list[str]:
    init_from, weights, init_gater = config.init_from, config.backbone_weights, config.init_gater
    if init_from is None and weights is None:
        if init_gater:
            raise GatekitError("--init-gater needs --init-from (the weights to copy into the "
                               "gater trunk)")
        return []
    if init_from is not None and weights is not None:
        raise GatekitError("--init-from and --backbone-weights both give backbone weights; "
                           "pass one of them")
    gated = isinstance(model, gatekit.GaterNet)
    if init_gater and not gated:
        raise GatekitError("--init-gater loads the gater trunk, but the model is plain (it has "
                           "no gater); drop --init-gater or gate the model")
    if init_from is not None:
        backbone_state, gater_state = read_state_dict(Path(init_from))
        source = f"--init-from {init_from}"
    else:
        backbone_state, gater_state = torchvision_state_dict(config.arch, weights), None
        source = f"--backbone-weights {weights}"
    target = model.backbone if gated else model
    lines = []
    n = load_into(target, backbone_state, what=models.label(config), source=source)
    lines.append(f"warm start: backbone from {source} ({n} tensors)")
    if init_gater:
        if gater_state is None:
            raise GatekitError(f"{source} holds no gater weights to copy into the gater trunk")
        n = load_into(models.unwrap_trunk(model.gater), gater_state,
                      what=f"gater trunk ({config.gater})", source=source,
                      allow_extra_classifier=True)
        lines.append(f"warm start: gater trunk from {source} ({n} tensors)")
    return lines
