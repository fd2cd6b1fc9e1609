"""Minibatches in the PPO update: every row is used once per epoch, one optimiser step per minibatch."""
from __future__ import annotations

import pytest
import torch

from commformer.training.trainer import Trainer
from commformer.training.update import minibatches
from core_utils import TINY_PP, make_config


def test_minibatches_partition_the_rows():
    batch = {"obs": torch.arange(10.0)[:, None], "gate": torch.arange(10) % 2 == 0}
    torch.manual_seed(0)
    parts = minibatches(batch, 3)
    assert len(parts) == 3 and all(torch.equal(p["gate"], p["obs"][:, 0].long() % 2 == 0) for p in parts)
    rows = torch.cat([p["obs"][:, 0] for p in parts])
    assert sorted(rows.tolist()) == list(range(10))  # each row exactly once
    assert minibatches(batch, 1)[0] is batch  # one minibatch: the batch itself, in order
    with pytest.raises(ValueError, match="algo.minibatches=11"):
        minibatches(batch, 11)


def test_one_optimiser_step_per_minibatch(tmp_path, monkeypatch):
    cfg = make_config(tmp_path, env=TINY_PP, iterations=1, ppo_epochs=5, algo={"minibatches": 4, "warmup_iters": 0})
    tr = Trainer(cfg, tmp_path)
    calls = []
    original = tr.opt.step

    def step(loss, upper, max_grad_norm):
        calls.append(upper)
        return original(loss, upper, max_grad_norm)

    monkeypatch.setattr(tr.opt, "step", step)
    row = tr.iterate()
    # 5 epochs x 4 minibatches; epoch 4 (0-based) is the graph epoch
    assert calls == [False] * 16 + [True] * 4
    assert row["loss/first_epoch_ratio_max"] == 1.0
