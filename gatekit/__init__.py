"""gatekit: gating primitives for input-dependent dynamic filter selection in CNNs.

A global gater network looks at the image and switches the backbone's filters on or off
per sample (GaterNet, Chen et al., CVPR 2019).  The public surface is small:

- the transform: :func:`gate_model` turns a CNN and a gater trunk into a :class:`GaterNet`;
  :func:`get_gate_sites` lists the :class:`GateSite` s it would gate;
- gate estimators: :class:`Gate`, :class:`ImprovedSemHash`, :class:`StraightThroughSigmoid`,
  :class:`GumbelSigmoid`, :class:`HardConcrete`, :func:`get_gate`;
- gate losses: :func:`gate_l1_loss`, :func:`target_rate_loss`, :func:`expected_l0_loss`,
  :func:`flops_budget_loss` (with :func:`gate_costs`, the FLOPs each gate saves) and
  :func:`batch_shaping_loss`; :func:`distillation_loss` from a trained dense teacher;
- functional forms in :mod:`gatekit.functional`;
- :func:`init_gates_`: start the gates as static pruning's ranking keeps (:func:`filter_l1_norms`,
  :func:`ranking_thresholds`);
- :func:`calibrate_budget`: a budget-input model's budget made the FLOPs fraction it keeps;
- inference that skips the closed filters: :func:`skip_compute` returns a
  :class:`SkipComputeNet` (the CPU; :func:`tune_batching` fits how it batches to the
  machine), :func:`fuse_gated_convs` one fused op per site (Triton on CUDA);
- deployment that keeps per-image skipping: :func:`export_program` (torch.export),
  :func:`export_onnx` (ONNX Runtime), both through :func:`exportable`;
- gate statistics over an evaluation pass: :class:`GateStats`, per layer
  :class:`LayerStats`; their plots in :mod:`gatekit.plots`;
- :class:`GatekitError`, the one exception raised for bad input.

>>> import torch, gatekit
>>> gatekit.get_gate("semhash").eval()(torch.tensor([[0.5, -0.5]]))
tensor([[1., 0.]])
"""

from . import functional, plots
from ._errors import GatekitError
from .calibration import calibrate_budget
from .costs import gate_costs
from .distillation import distillation_loss
from .estimators import (
    Gate,
    GumbelSigmoid,
    HardConcrete,
    ImprovedSemHash,
    StraightThroughSigmoid,
    get_gate,
)
from .export import export_onnx, export_program, exportable
from .gater import GaterNet
from .inference import SkipComputeNet, fuse_gated_convs, skip_compute, tune_batching
from .losses import (
    batch_shaping_loss,
    expected_l0_loss,
    flops_budget_loss,
    gate_l1_loss,
    target_rate_loss,
)
from .ranking import filter_l1_norms, init_gates_, ranking_thresholds
from .sites import GateSite, get_gate_sites
from .stats import GateStats, LayerStats
from .transform import gate_model

__version__ = "0.1.0"

__all__ = [
    "Gate",
    "GateSite",
    "GateStats",
    "GatekitError",
    "GaterNet",
    "GumbelSigmoid",
    "HardConcrete",
    "ImprovedSemHash",
    "LayerStats",
    "SkipComputeNet",
    "StraightThroughSigmoid",
    "batch_shaping_loss",
    "calibrate_budget",
    "distillation_loss",
    "expected_l0_loss",
    "export_onnx",
    "export_program",
    "exportable",
    "filter_l1_norms",
    "flops_budget_loss",
    "functional",
    "fuse_gated_convs",
    "gate_costs",
    "gate_l1_loss",
    "gate_model",
    "get_gate",
    "get_gate_sites",
    "init_gates_",
    "plots",
    "ranking_thresholds",
    "skip_compute",
    "target_rate_loss",
    "tune_batching",
]
