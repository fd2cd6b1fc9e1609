"""Output tensors of an env that reuse memory no caller holds any more (fresh CPU memory page-faults on first touch)."""
from __future__ import annotations

import torch
from torch import Tensor


def _storage_users(t: Tensor) -> int | None:
    """How many tensors share t's storage (None where this torch build does not tell)."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else int(count(t.untyped_storage()._cdata))


class RecycledBuffers:
    """Fresh-looking output tensors of one shape that reuse memory nobody holds any more.

    On CPU a fresh multi-megabyte tensor is new memory from the OS, and touching it page-faults: at B=4096 that
    halved the env's throughput. get() hands back a kept buffer once no tensor outside this pool (a Step field, a
    view of one, a slice) uses its storage, else a new one; a Step the caller still holds is never overwritten.
    Where torch does not expose the storage use count, every call allocates.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device, keep: int = 6):
        self.shape, self.device, self.keep = shape, device, keep
        self._kept: list[tuple[Tensor, int]] = []  # (buffer, its use count while only the pool holds it)

    def get(self) -> Tensor:
        """A tensor of `shape` (uninitialised); a new view, so holding it keeps its memory out of the pool."""
        for buf, idle in self._kept:
            if _storage_users(buf) == idle:
                return buf.view(self.shape)
        buf = torch.empty(self.shape, device=self.device)
        idle = _storage_users(buf)
        if idle is not None and len(self._kept) < self.keep:
            self._kept.append((buf, idle))
        return buf.view(self.shape)
