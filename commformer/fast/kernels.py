"""Which CPU kernel runs a dense layer: the choice is by shape alone (so a run is reproducible), measured on this
project's 2-core AMD EPYC CPU with torch's default build (MKL for matrix products, oneDNN for some eltwise ops).

- linear(): from LINEAR_ROWS rows on, the forward product and the input gradient run on oneDNN's inner product,
  about 2.3x faster than MKL's sgemm there (MKL takes a slower code path on AMD CPUs); the weight gradient stays on
  MKL (oneDNN needs both operands transposed, which costs more than it saves). Below that, and where oneDNN is
  missing or fails its one-time check, F.linear (MKL).
- small_tensor_kernels(): a context in which eltwise ops take ATen's own kernels instead of oneDNN's: on an acting
  step's few thousand values oneDNN's fixed cost per call dominates (GELU about 5 us instead of 1.3 us).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("commformer")

LINEAR_ROWS = 256  # oneDNN from this many rows on (measured: 320 rows 42 us vs 45 us; 3840 rows 250 us vs 594 us)
_onednn_ok: bool | None = None  # None: not checked yet


def _pointwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b on oneDNN; x [R,I] contiguous, W [O,I], b [O] or None."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _pointwise(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = _pointwise(grad, weight.t().contiguous(), None) if ctx.needs_input_grad[0] else None
        gw = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def onednn_linear_ok() -> bool:
    """Whether oneDNN's inner product is there and agrees with F.linear (checked once per process)."""
    global _onednn_ok
    if _onednn_ok is None:
        _onednn_ok = False
        try:
            if torch.backends.mkldnn.is_available():
                g = torch.Generator().manual_seed(0)
                x, w, b = (torch.randn(s, generator=g) for s in ((LINEAR_ROWS, 16), (8, 16), (8,)))
                _onednn_ok = torch.allclose(_pointwise(x, w, b), F.linear(x, w, b), rtol=1e-4, atol=1e-4)
                if not _onednn_ok:
                    log.warning("oneDNN's linear disagrees with F.linear here; dense layers use F.linear")
        except (RuntimeError, AttributeError) as e:  # no such op in this torch build
            log.debug("oneDNN linear unavailable (%s); dense layers use F.linear", e)
    return _onednn_ok


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias) for x [...,I], on the kernel that is fastest for its shape (module docstring)."""
    rows = x.numel() // max(x.shape[-1], 1)
    if (rows < LINEAR_ROWS or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
            or not onednn_linear_ok()):
        return F.linear(x, weight, bias)
    y = _OneDNNLinear.apply(x.reshape(rows, x.shape[-1]).contiguous(), weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


def dense(layer: nn.Linear, x: Tensor) -> Tensor:
    """layer(x) through linear()."""
    return linear(x, layer.weight, layer.bias)


def gelu_mlp_forward(mlp: nn.Sequential, x: Tensor) -> Tensor:
    """A Linear -> GELU -> Linear block (attention.gelu_mlp) through linear()."""
    return dense(mlp[2], F.gelu(dense(mlp[0], x)))


class small_tensor_kernels:
    """A context in which eltwise ops take ATen's own kernels instead of oneDNN's (module docstring). A no-op where
    torch exposes no such switch."""

    _get = getattr(torch._C, "_get_mkldnn_enabled", None)
    _set = getattr(torch._C, "_set_mkldnn_enabled", None)

    def __enter__(self) -> None:
        if self._set is not None:
            self._prev = type(self)._get()
            type(self)._set(False)

    def __exit__(self, *exc: object) -> None:
        if self._set is not None:
            type(self)._set(self._prev)
