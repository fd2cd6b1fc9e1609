"""docs/extending.md's example policy, run as the page shows it: its module and preset are read from the page,
trained through the real Trainer and command line, checkpointed, resumed and re-evaluated."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from core_utils import ROOT, TINY_PP, make_config, read_csv

from commformer.config import ConfigError
from commformer.training.trainer import Trainer

PAGE = ROOT / "docs" / "extending.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", PAGE.read_text(), flags=re.S)


@pytest.fixture()
def example(tmp_path, monkeypatch):
    """The page's module written as my_policies/independent.py on the path; returns its preset (a dict)."""
    pkg = tmp_path / "lib" / "my_policies"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "independent.py").write_text(blocks("python")[0])
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    for name in [m for m in sys.modules if m.startswith("my_policies")]:
        del sys.modules[name]
    return yaml.safe_load(blocks("yaml")[0])


def test_the_example_trains_resumes_and_evaluates(tmp_path, example):
    algo = {**example, "hidden": 16}
    cfg = make_config(tmp_path / "run", env=TINY_PP, iterations=4, num_envs=4, rollout_length=25, algo=algo)
    assert type(cfg.algo).__name__ == "IndependentConfig" and cfg.algo.hidden == 16
    tr = Trainer(cfg, tmp_path / "run")
    before = [p.detach().clone() for p in tr.policy.parameters()]
    final = tr.train()
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.policy.parameters())), "the update changed nothing"
    _, rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 4
    for r in rows:
        assert float(r["comm/messages_per_step"]) == 0.0
        assert abs(float(r["loss/first_epoch_ratio_max"]) - 1.0) < 1e-5  # score() replays act() exactly
        assert float(r["loss/acting_log_prob_gap"]) < 1e-5
    assert 0.0 <= final["eval/success"] <= 1.0
    # resume from the checkpoint: a fresh Trainer continues with the same weights and re-evaluates the same
    more = make_config(tmp_path / "run", env=TINY_PP, iterations=4, num_envs=4, rollout_length=25, algo=algo,
                       resume=str(tmp_path / "run"))
    again = Trainer(more, tmp_path / "run")
    assert again.iteration == 4
    assert all(torch.equal(a, b) for a, b in zip(again.policy.parameters(), tr.policy.parameters()))
    assert again.evaluate()["eval/success"] == final["eval/success"]
    again.logger.close()


def test_the_example_schema_is_checked(tmp_path, example):
    with pytest.raises(ConfigError, match=r"algo.hiden=.*unknown key \(did you mean algo.hidden\?\)"):
        make_config(tmp_path, env=TINY_PP, algo={**example, "hiden": 3})
    with pytest.raises(ConfigError, match="algo.hidden=0; must be >= 1"):
        make_config(tmp_path, env=TINY_PP, algo={**example, "hidden": 0})
    with pytest.raises(ConfigError, match="algo.warmup_iters"):  # a CommFormer key is not one of its keys
        make_config(tmp_path, env=TINY_PP, algo={**example, "warmup_iters": 0})


def test_the_example_from_the_command_line(tmp_path, example):
    """scripts/train.py with the preset's keys as overrides (the page's preset file would be conf/algo/...)."""
    overrides = [f"algo.{k}={v}" for k, v in example.items()]
    env = {"PYTHONPATH": str(tmp_path / "lib"), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides, "algo.hidden=8", "logger=quiet",
           "total_env_steps=640", "num_envs=4", "rollout_length=40", "eval_episodes=4", f"run_dir={tmp_path / 'cli'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cli" / "checkpoints" / "last.pt").is_file()
    bad = subprocess.run(cmd[:-1] + ["algo.hiden=8", f"run_dir={tmp_path / 'bad'}"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode == 2 and "algo.hiden=8: unknown key (did you mean algo.hidden?)" in bad.stderr
    assert not (tmp_path / "bad").exists()
