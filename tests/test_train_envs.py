"""One trainer for every env family: a tiny-budget run per family through the real Hydra configs, and the one-line
errors of bad env configs through the real command line."""
from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from commformer.hydra_glue import load_config
from commformer.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def has_jaxmarl() -> bool:
    from envs import smax

    with contextlib.suppress(ImportError):
        smax.import_jaxmarl()
        return True
    return False


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return load_config(compose("config", overrides=overrides))


# (env config, its task metric column or None, extra overrides)
RUNS = [
    ("pp", "eval/success", []),
    ("pcp", "eval/success", []),
    ("signal", "eval/success", []),
    ("mpe_simple_spread", None, ["env.workers=0"]),
    ("mpe_simple_speaker_listener", None, ["env.workers=0"]),
    pytest.param("smax_3m", "eval/won", [], marks=pytest.mark.skipif(not has_jaxmarl(), reason="needs [smax]")),
]


@pytest.mark.parametrize("env,metric,extra", RUNS)
def test_tiny_run_per_env_family(tmp_path, env, metric, extra):
    """2 iterations of 2 envs x 8 steps with 4 eval episodes: one row per iteration, evaluation at the end, the
    env's task metric logged, a checkpoint written, and the learned graph's k senders per receiver in the log."""
    cfg = composed([f"env={env}", "logger=quiet", "num_envs=2", "rollout_length=8", "total_env_steps=32",
                    "eval_every=1", "eval_episodes=4", "algo.warmup_iters=1", "ppo_epochs=5", *extra])
    trainer = Trainer(cfg, tmp_path)
    result = trainer.train()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert [int(r["env_steps"]) for r in rows] == [16, 32]
    assert result["eval/episodes"] >= 4
    if metric is not None:
        assert metric in rows[-1] and 0.0 <= float(rows[-1][metric]) <= 1.0
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    spec = trainer.env.spec
    k = trainer.policy.graph.k
    # iteration 2 samples learned graphs: k senders per receiver, none dead in these envs at the first step
    assert float(rows[-1]["comm/messages_per_step"]) <= spec.n_agents * k + 1e-6


def run_cli(*overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SC2PATH"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "logger=quiet", *overrides],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


@pytest.mark.parametrize("overrides,must_name", [
    (["env=mpe_simple_spread", "env.factory=nosuch.module:parallel_env"], "nosuch.module"),
    (["env=mpe_simple_spread", "env.kwargs.continuous_actions=true"], "Discrete"),
    (["env=smacv2_protoss_5_vs_5"], "install_sc2.sh"),
    pytest.param(["env=smax_3m", "env.scenario=nosuch"], "nosuch",
                 marks=pytest.mark.skipif(not has_jaxmarl(), reason="needs [smax]")),
])
def test_bad_env_config_exits_with_one_line(tmp_path, overrides, must_name):
    out = run_cli(f"run_dir={tmp_path}", *overrides)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    first = out.stderr.strip().splitlines()[0]
    assert first.startswith("error: ") and must_name in first, out.stderr
