"""Shared test setup.

Tests run with one torch thread: the batched envs are small, and extra threads only contend on a shared machine.
"""
import torch

torch.set_num_threads(1)
