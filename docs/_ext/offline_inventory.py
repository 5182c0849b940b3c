"""Small intersphinx inventories of the PyTorch and Python names gatekit's pages refer to.

The full inventories live on docs.pytorch.org and docs.python.org and need the network.
So that a build without network still links ``torch.nn.Module`` or ``ValueError`` to their
documentation, :func:`write_inventories` writes Sphinx inventory files (format version 2)
holding just the names below, with their pages on those sites.  A name missing here
renders as plain code, not as an error.  ``GATEKIT_DOCS_INTERSPHINX=1`` uses the full
online inventories instead.
"""

from __future__ import annotations

import zlib
from pathlib import Path

TORCH_URL = "https://docs.pytorch.org/docs/stable/"
PYTHON_URL = "https://docs.python.org/3/"

# (name, role, page); the anchor is the name itself, as on both sites.
_TORCH_GENERATED = [
    ("torch.nn.Module", "class"),
    ("torch.nn.Conv1d", "class"),
    ("torch.nn.Conv2d", "class"),
    ("torch.nn.Conv3d", "class"),
    ("torch.nn.BatchNorm2d", "class"),
    ("torch.nn.Linear", "class"),
    ("torch.nn.Identity", "class"),
    ("torch.nn.parallel.DistributedDataParallel", "class"),
    ("torch.nn.functional.conv2d", "function"),
    ("torch.nn.functional.gumbel_softmax", "function"),
    ("torch.compile", "function"),
    ("torch.manual_seed", "function"),
    ("torch.sigmoid", "function"),
    ("torch.func.vmap", "function"),
]
_TORCH_ON_PAGE = [
    ("torch.Tensor", "class", "tensors.html"),
    ("torch.dtype", "class", "tensor_attributes.html"),
    ("torch.device", "class", "tensor_attributes.html"),
    ("torch.fx", "module", "fx.html"),
    ("torch.fx.Tracer", "class", "fx.html"),
    ("torch.fx.GraphModule", "class", "fx.html"),
    ("torch.fx.Graph", "class", "fx.html"),
    ("torch.library.custom_op", "function", "library.html"),
    ("torch.library.triton_op", "function", "library.html"),
    ("torch.library.wrap_triton", "function", "library.html"),
    ("torch.library.opcheck", "function", "library.html"),
    ("torch.utils.data.DataLoader", "class", "data.html"),
]
# Where a class is defined is how autodoc names it (``Bases: Module``, type hints).
_TORCH_ALIASES = [
    ("torch.nn.modules.module.Module", "class", "generated/torch.nn.Module.html#torch.nn.Module"),
    ("torch.nn.modules.conv.Conv2d", "class", "generated/torch.nn.Conv2d.html#torch.nn.Conv2d"),
    ("torch.fx.node.Node", "class", "fx.html#torch.fx.Node"),
    ("torch.fx.graph_module.GraphModule", "class", "fx.html#torch.fx.GraphModule"),
]
_PYTHON = [
    ("ValueError", "exception", "library/exceptions.html"),
    ("TypeError", "exception", "library/exceptions.html"),
    ("argparse", "module", "library/argparse.html"),
    ("doctest", "module", "library/doctest.html"),
    ("pathlib.Path", "class", "library/pathlib.html"),
    ("collections.abc.Sequence", "class", "library/collections.abc.html"),
    ("collections.abc.Callable", "class", "library/collections.abc.html"),
    ("typing.Any", "data", "library/typing.html"),
    ("copy.deepcopy", "function", "library/copy.html"),
]


def _entries(items: list[tuple[str, str, str]]) -> list[str]:
    lines = []
    for name, role, page in items:
        anchor = f"module-{name}" if role == "module" else "$"
        lines.append(f"{name} py:{role} 1 {page}#{anchor} -")
    return lines


def _write(path: Path, project: str, version: str, lines: list[str]) -> None:
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.write_bytes(header.encode() + zlib.compress(("\n".join(lines) + "\n").encode()))


def write_inventories(directory: Path) -> dict[str, tuple[str, str]]:
    """Write ``torch.inv`` and ``python.inv`` into ``directory``; return an intersphinx mapping."""
    directory.mkdir(parents=True, exist_ok=True)
    torch_items = [(n, r, f"generated/{n}.html") for n, r in _TORCH_GENERATED] + _TORCH_ON_PAGE
    aliases = [f"{name} py:{role} 1 {uri} -" for name, role, uri in _TORCH_ALIASES]
    _write(directory / "torch.inv", "PyTorch", "stable", _entries(torch_items) + aliases)
    _write(directory / "python.inv", "Python", "3", _entries(_PYTHON))
    return {
        "torch": (TORCH_URL, str(directory / "torch.inv")),
        "python": (PYTHON_URL, str(directory / "python.inv")),
    }
