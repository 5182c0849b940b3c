"""Knowledge distillation: a gated (or pruned) student learns from a trained dense teacher.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (2015): the KL
divergence from the teacher's to the student's class distribution, both softened by a
temperature, scaled by its square so the gradient's size does not depend on it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._errors import GatekitError

__all__ = ["distillation_loss"]


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))`` averaged over samples.

    ``student_logits`` and ``teacher_logits`` are ``(N, C)`` (or ``(N, C, ...)``, classes in
    dim 1, averaged over samples and positions).  The teacher's logits are detached: the
    teacher is not trained by this loss (run it in eval mode under ``torch.no_grad``).
    Computed in float32 at least, so half-precision logits give a finite loss and gradient.
    Zero exactly when the two distributions agree; the ``T^2`` factor keeps the gradient's
    scale that of the cross-entropy as ``T`` grows.

    >>> import torch
    >>> t = torch.tensor([[2.0, 0.0, -1.0]])
    >>> distillation_loss(t.clone(), t).item()
    0.0
    >>> round(distillation_loss(torch.zeros(1, 3), t, temperature=1.0).item(), 4)
    0.5743
    """
    fn = "distillation_loss"
    for what, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise GatekitError(f"{fn} expects {what} as a floating-point tensor, got {got}")
        if x.ndim < 2 or x.numel() == 0:
            raise GatekitError(
                f"{fn} expects {what} of shape (N, num_classes), got {tuple(x.shape)}"
            )
    if student_logits.shape != teacher_logits.shape:
        raise GatekitError(
            f"{fn} expects student and teacher logits of one shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}; the teacher "
            f"must predict the same classes"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise GatekitError(f"{fn} expects a temperature > 0 (finite), got {temperature!r}")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    s = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    t = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
    # sum over classes, mean over every other position (samples, and pixels if any)
    kl = (t.exp() * (t - s)).sum(1).mean()
    return kl * temperature**2
