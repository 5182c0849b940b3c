"""Exporting a GaterNet that still skips per image: :func:`torch.export` and ONNX.

- :func:`exportable`: an eval-mode GaterNet as one module whose gates and channel choices
  are tensor operations (see :class:`ExportGaterNet`);
- :func:`export_program`: that module through :func:`torch.export.export`, an
  :class:`~torch.export.ExportedProgram` with a dynamic batch (save it with
  :func:`torch.export.save` as ``.pt2``) whose images keep different filters on the
  union path, per image, or whichever is cheaper per call (``batching``);
- :func:`export_onnx`: the program as an ONNX file for ONNX Runtime
  (``pip install "gatekit[export]"``), its sliced convs optionally in ONNX Runtime's
  blocked NCHWc layout (``nchwc_block``, ``_nchwc``).
"""

from ._api import export_onnx, export_program
from ._nchwc import runtime_nchwc_block
from ._net import (
    BATCHING,
    BATCHINGS,
    DENSE_ABOVE,
    GATHER_COST,
    NCHWC_BLOCKS,
    NCHWC_DENSE_ABOVE,
    ExportGaterNet,
    exportable,
)

__all__ = ["BATCHING", "BATCHINGS", "DENSE_ABOVE", "GATHER_COST", "NCHWC_BLOCKS",
           "NCHWC_DENSE_ABOVE", "ExportGaterNet", "export_onnx", "export_program", "exportable",
           "runtime_nchwc_block"]
