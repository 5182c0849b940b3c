"""The gater head: GaterNet's decoder D, from the gater's features to the gate logits.

Data flow: ``features (N, D) -> fc1 -> [BatchNorm1d] -> ReLU -> fc2 -> logits (N, num_gates)``.
A head that also reads a per-sample compute budget is :class:`gatekit.budget.BudgetHead`, a
subclass; this one knows nothing of budgets.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._errors import GatekitError

__all__ = ["GaterHead"]


class GaterHead(nn.Module):
    """GaterNet's decoder D: ``Linear(D, b) -> [BatchNorm1d] -> ReLU -> Linear(b, num_gates)``.

    Initialised as the released code: linear biases 0 (weights keep PyTorch's default),
    BatchNorm weight 1 and bias 0.  The paper's text has a BatchNorm before the ReLU, the
    released code has none: ``batchnorm=False`` by default.  ``init_bias`` fills the last
    layer's bias; a positive value (e.g. 3) starts training with most gates open.

    >>> import torch
    >>> head = GaterHead(64, 336, bottleneck=8)
    >>> head(torch.randn(2, 64)).shape
    torch.Size([2, 336])
    """

    def __init__(
        self,
        in_features: int,
        num_gates: int,
        bottleneck: int = 8,
        *,
        batchnorm: bool = False,
        init_bias: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        for what, value in (("in_features", in_features), ("num_gates", num_gates),
                            ("bottleneck", bottleneck)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GatekitError(f"{what} must be an int >= 1, got {value!r}")
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(in_features, bottleneck, **kw)
        self.bn = nn.BatchNorm1d(bottleneck, **kw) if batchnorm else nn.Identity()
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(bottleneck, num_gates, **kw)
        with torch.no_grad():
            self.fc1.bias.zero_()
            self.fc2.bias.fill_(float(init_bias))

    def hidden(self, features: Tensor) -> Tensor:
        """The bottleneck before the ReLU, ``bn(fc1(features))``."""
        return self.bn(self.fc1(features))

    def forward(self, features: Tensor) -> Tensor:
        return self.fc2(self.relu(self.hidden(features)))
