"""Masked reductions shared by the method and the trainer."""
from __future__ import annotations

from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over entries where mask is True (0 when none); x and mask share a shape."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)
