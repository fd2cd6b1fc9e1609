"""The devices this machine can run, for the config's `device` key."""
from __future__ import annotations


def available_devices() -> list[str]:
    """The device names this machine can run: cpu, and cuda / cuda:<index> where CUDA works."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return out


def check_device(device: str) -> None:
    """ValueError unless `device` is one this machine can run (one line naming what is)."""
    allowed = available_devices()
    if device in allowed:
        return
    if device == "cuda" or device.startswith("cuda:"):
        raise ValueError(f"device={device!r}: no CUDA device here; allowed: {', '.join(allowed)}")
    raise ValueError(f"device={device!r}; allowed: {', '.join(allowed)} (cuda, cuda:<index> where CUDA works)")
