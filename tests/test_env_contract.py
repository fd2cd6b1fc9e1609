"""One contract suite over every env config in conf/env/ (envs/core.py): shapes and dtypes of every Step, episode
ends and auto-reset, episode statistics, and seeding. Configs added later are picked up by the glob."""
import math
import contextlib
import os
from pathlib import Path

import pytest
import torch
import yaml
from core_utils import check_step

from envs.core import random_available
from envs.registry import make_env

CONF_ENV = Path(__file__).resolve().parent.parent / "conf" / "env"
B = 4
SC2_MISSING = "StarCraft II not found: set SC2PATH or run scripts/install_sc2.sh"


def env_configs() -> list:
    """One pytest.param per conf/env/*.yaml; SMAX maps other than smax_3m are slow."""
    params = []
    for path in sorted(CONF_ENV.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        slow = cfg.get("family") == "smax" and path.stem != "smax_3m"
        params.append(pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if slow else []))
    return params


def load(path: Path) -> dict:
    """The config, after skipping families whose outside dependency is missing."""
    cfg = yaml.safe_load(path.read_text())
    if cfg.get("family") == "smacv2" and not os.environ.get("SC2PATH"):
        pytest.skip(SC2_MISSING)
    if cfg.get("family") == "smax":
        from envs import smax

        with contextlib.suppress(ImportError):
            smax.import_jaxmarl()  # contains jaxmarl's import-time prints and stream reset
        pytest.importorskip("jaxmarl")
    return cfg


def test_every_config_is_found():
    names = {p.stem for p in CONF_ENV.glob("*.yaml")}
    assert {"pp", "pp_easy", "pp_medium", "pp_hard", "pcp", "pcp_medium"} <= names


@pytest.mark.parametrize("path", env_configs())
def test_steps_follow_the_contract(path):
    cfg = load(path)
    env = make_env(cfg, num_envs=B)
    try:
        spec = env.spec
        out = env.reset(seed=0)
        check_step(out, B, spec)
        assert not out.done.any(), "reset() must not report finished episodes"
        gen = torch.Generator().manual_seed(0)
        length = torch.zeros(B)  # steps since each env's episode began
        ret = torch.zeros(B, dtype=torch.float64)  # sum over time of the mean reward over agents
        finished = 0
        obs_changed = False
        for _ in range(spec.episode_limit + 3):
            actions = random_available(out.avail_actions.cpu(), gen)
            assert bool(out.avail_actions.cpu().gather(2, actions[..., None]).all())
            out = env.step(actions.to(out.obs.device))
            check_step(out, B, spec)
            out = out.to("cpu")
            assert bool(torch.isfinite(out.reward).all()) and bool(torch.isfinite(out.obs).all())
            length += 1
            ret += out.reward.double().mean(dim=1)
            done = out.done
            assert not bool((out.terminated & out.truncated).any()), "terminated and truncated at once"
            keep = ~done
            assert torch.equal(out.final_obs[keep], out.obs[keep]), "final_obs must equal obs where not finished"
            assert torch.equal(out.final_state[keep], out.state[keep])
            assert torch.equal(out.final_alive[keep], out.alive[keep])
            for b in done.nonzero().flatten().tolist():
                finished += 1
                assert out.episode["length"][b].item() == length[b].item() <= spec.episode_limit
                assert math.isclose(out.episode["return"][b].item(), ret[b].item(), rel_tol=1e-4, abs_tol=1e-4)
                for metric in spec.task_metrics:
                    assert out.episode[metric][b].item() in (0.0, 1.0), metric
                obs_changed |= not torch.equal(out.obs[b], out.final_obs[b])
            length[done], ret[done] = 0, 0.0
        assert finished >= 1, f"no episode ended within episode_limit + 3 = {spec.episode_limit + 3} steps"
        assert obs_changed, "no finished env restarted with a new observation"
    finally:
        env.close()


@pytest.mark.parametrize("path", env_configs())
def test_same_seed_same_steps(path):
    cfg = load(path)
    envs = [make_env(cfg, num_envs=B) for _ in range(2)]
    try:
        gens = [torch.Generator().manual_seed(1) for _ in envs]
        outs = [env.reset(seed=7).to("cpu") for env in envs]
        for t in range(11):
            a, b = outs
            for name in ("obs", "state", "avail_actions", "reward", "terminated", "truncated", "alive", "active",
                         "final_obs", "final_state", "final_alive"):
                assert torch.equal(getattr(a, name), getattr(b, name)), f"step {t}: {name} differs"
            for key in a.episode:
                assert torch.equal(a.episode[key], b.episode[key]), f"step {t}: episode[{key!r}] differs"
            if t == 10:
                break
            actions = [random_available(o.avail_actions.cpu(), g) for o, g in zip(outs, gens)]
            outs = [env.step(act.to(env.device)).to("cpu") for env, act in zip(envs, actions)]
    finally:
        for env in envs:
            env.close()
