"""commformer.training.adam.Adam makes torch.optim.Adam's updates bit for bit and shares its state_dict format."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from commformer.fast.adam import Adam


def _nets(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    b = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    b.load_state_dict(a.state_dict())
    return a, b


def _groups(net: nn.Module) -> list[dict]:
    return [{"params": list(net[0].parameters()), "lr": 3e-3}, {"params": list(net[2].parameters()), "lr": 1e-2}]


def _loss(net: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)
    return ((net(x) - y) ** 2).mean()


def _train(net: nn.Module, opt, steps: range) -> None:
    for t in steps:
        opt.zero_grad(set_to_none=True)
        _loss(net, t).backward()
        if t % 4 == 3:
            net[2].bias.grad = None  # a parameter without a gradient this step is left alone
        for group, lr in zip(opt.param_groups, (3e-3, 1e-2)):
            group["lr"] = lr * (1 - t / 40)  # a schedule changes lr between steps
        opt.step()


def test_same_updates_as_torch_adam_bit_for_bit():
    ours, theirs = _nets()
    opt_ours, opt_theirs = Adam(_groups(ours), lr=1.0, eps=1e-5), torch.optim.Adam(_groups(theirs), lr=1.0, eps=1e-5)
    _train(ours, opt_ours, range(25))
    _train(theirs, opt_theirs, range(25))
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(ours[0].weight, _nets()[0][0].weight)  # it did train


def test_state_dict_moves_between_the_two_and_resumes_exactly():
    ours, theirs = _nets()
    opt_ours, opt_theirs = Adam(_groups(ours), eps=1e-5), torch.optim.Adam(_groups(theirs), eps=1e-5)
    _train(ours, opt_ours, range(10))
    _train(theirs, opt_theirs, range(10))
    # torch's state into ours and ours into torch's, then both continue: still equal to each other
    a, b = _nets()
    a.load_state_dict(theirs.state_dict())
    b.load_state_dict(ours.state_dict())
    opt_a, opt_b = Adam(_groups(a), eps=1e-5), torch.optim.Adam(_groups(b), eps=1e-5)
    opt_a.load_state_dict(opt_theirs.state_dict())
    opt_b.load_state_dict(opt_ours.state_dict())
    _train(a, opt_a, range(10, 20))
    _train(b, opt_b, range(10, 20))
    _train(theirs, opt_theirs, range(10, 20))
    for p, q, r in zip(a.parameters(), b.parameters(), theirs.parameters()):
        assert torch.equal(p, r) and torch.equal(q, r)
    assert opt_a.state_dict()["state"][0]["step"].item() == 20.0


def test_load_state_dict_of_other_groups_is_refused():
    net, _ = _nets()
    opt = Adam(net.parameters())
    with pytest.raises(ValueError, match="different number of parameter groups"):
        opt.load_state_dict(Adam(_groups(net)).state_dict())


def test_building_the_optimisers_does_not_import_dynamo():
    code = ("import sys; from commformer.fast.adam import Adam; import torch; "
            "Adam([torch.nn.Parameter(torch.zeros(2))]); sys.exit(int('torch._dynamo' in sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True)
