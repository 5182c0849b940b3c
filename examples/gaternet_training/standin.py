"""The built-in stand-in data set: procedurally drawn shapes, learnable, no download.

Every image shows one shape on a noisy two-colour gradient background; the class is the
shape (disk, square, triangle, ring, plus, cross, horizontal stripes, vertical stripes,
checkerboard, diamond).  Position, size, colours and noise are random, so a network has to
learn the shape itself.  Every class is symmetric under horizontal flips, so the usual
flip augmentation keeps labels valid.  Images are drawn from a seed in a fraction of a
second, so nothing is cached or downloaded.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CLASSES = (
    "disk", "square", "triangle", "ring", "plus",
    "cross", "h-stripes", "v-stripes", "checkerboard", "diamond",
)


def _disk(u: Tensor, v: Tensor) -> Tensor:
    return u * u + v * v < 1.0


def _ring(u: Tensor, v: Tensor) -> Tensor:
    r2 = u * u + v * v
    return (r2 > 0.55**2) & (r2 < 1.0)


def _box(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs())


# One predicate per class on coordinates scaled to the shape's radius; order = CLASSES.
_SHAPES = (
    _disk,
    lambda u, v: _box(u, v) < 0.85,
    lambda u, v: (v > -0.8) & (v < 0.8) & (u.abs() < (v + 0.8) * 0.6),
    _ring,
    lambda u, v: ((u.abs() < 0.3) | (v.abs() < 0.3)) & (_box(u, v) < 1.0),
    lambda u, v: (((u - v).abs() < 0.35) | ((u + v).abs() < 0.35)) & (_box(u, v) < 0.9),
    lambda u, v: (torch.sin(v * math.pi * 2.5) > 0) & (_box(u, v) < 0.9),
    lambda u, v: (torch.sin(u * math.pi * 2.5) > 0) & (_box(u, v) < 0.9),
    lambda u, v: (torch.sin(u * math.pi * 2) * torch.sin(v * math.pi * 2) > 0) & (_box(u, v) < 0.9),
    lambda u, v: (u.abs() + v.abs()) < 1.0,
)


def _shape_masks(u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
    """Boolean masks ``(N, H, W)``; ``u, v`` are per-image coordinates scaled to the shape size."""
    mask = torch.zeros(u.shape, dtype=torch.bool)
    for c, shape in enumerate(_SHAPES):
        idx = (labels == c).nonzero().squeeze(1)
        if idx.numel():
            mask[idx] = shape(u[idx], v[idx])
    return mask


def make_standin(num: int, image_size: int = 32, *, seed: int = 0,
                 num_classes: int = len(CLASSES)) -> tuple[Tensor, Tensor]:
    """``num`` images as uint8 ``(N, H, W, 3)`` and their labels ``(N,)``, balanced over classes.

    >>> x, y = make_standin(20, 16, seed=0)
    >>> x.shape, x.dtype, y.bincount().tolist()
    (torch.Size([20, 16, 16, 3]), torch.uint8, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    """
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"the stand-in has 2 to {len(CLASSES)} classes, got {num_classes}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num) % num_classes
    labels = labels[torch.randperm(num, generator=g)]
    size = image_size
    scale = (0.22 + 0.2 * torch.rand(num, generator=g)) * size  # shape radius in pixels
    centre = scale[:, None] + torch.rand(num, 2, generator=g) * (size - 2 * scale[:, None])
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    u = (grid[None, None, :] - centre[:, 0, None, None]) / scale[:, None, None]
    v = (grid[None, :, None] - centre[:, 1, None, None]) / scale[:, None, None]
    mask = _shape_masks(u.expand(-1, size, -1), v.expand(-1, -1, size), labels)

    # Background: a linear gradient between two random colours; foreground: a colour whose
    # brightness differs from the background's by at least 0.3, so the shape stays visible.
    bg_a, bg_b = torch.rand(num, 3, generator=g), torch.rand(num, 3, generator=g)
    angle = torch.rand(num, generator=g) * 2 * math.pi
    ramp = (torch.cos(angle)[:, None, None] * (grid[None, None, :] / size)
            + torch.sin(angle)[:, None, None] * (grid[None, :, None] / size)).clamp(0, 1)
    bg = bg_a[:, None, None, :] + (bg_b - bg_a)[:, None, None, :] * ramp[..., None]
    bright = bg.mean((1, 2, 3))
    shift = torch.where(bright > 0.5, -1.0, 1.0) * (0.3 + 0.3 * torch.rand(num, generator=g))
    fg = (bg_a + shift[:, None] + 0.25 * (torch.rand(num, 3, generator=g) - 0.5)).clamp(0, 1)
    img = torch.where(mask[..., None], fg[:, None, None, :], bg)
    img = img + 0.06 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels
