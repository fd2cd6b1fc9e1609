"""Shared test setup.

Tests run with one torch thread: the batched envs are small, and extra threads only contend on a shared machine.
"""
import torch

torch.set_num_threads(1)

import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def restore_root_logging():
    """Hydra's app (run in-process by some tests) installs root log handlers bound to that test's captured streams;
    put the root logger back as it was so later tests never write to a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
