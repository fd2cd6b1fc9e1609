"""Config validation and the command line: bad values give one ConfigError line naming key, value and the allowed
range; `scripts/train.py` turns them into exit status != 0 without a traceback; every algo preset composes."""
import subprocess
import sys
import warnings

import pytest
from core_utils import CONF, ROOT, signal_env
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from commformer.config import Config, ConfigError
from commformer.hydra_glue import load_config

TRAIN = ROOT / "scripts" / "train.py"


def raw(**over):
    """A minimal valid raw config (as Hydra would compose it) with top-level and dotted overrides."""
    cfg = OmegaConf.create({"env": signal_env(), "algo": {}, "logger": {"wandb": "disabled"}})
    for key, value in over.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return cfg


def config_error(**over) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw(**over))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_config_loads():
    cfg = load_config(raw(num_envs=4, rollout_length=10, total_env_steps=100))
    assert isinstance(cfg, Config)
    assert cfg.batch_env_steps == 40 and cfg.iterations == 3  # ceil(100 / 40)
    assert cfg.algo.graph == "learned" and cfg.algo.sparsity == 0.4


def test_learned_graph_needs_ppo_epochs_at_least_arch_every():
    message = config_error(ppo_epochs=4)  # arch_every defaults to 5
    assert "ppo_epochs=4" in message and "algo.arch_every=5" in message
    assert "algo.arch_every=3" in config_error(ppo_epochs=2, algo__arch_every=3)
    load_config(raw(ppo_epochs=5))  # equal is fine
    load_config(raw(ppo_epochs=4, algo__graph="full"))  # no alpha: no constraint


def test_arch_every_below_two_is_rejected():
    message = config_error(algo__arch_every=1)
    assert "algo.arch_every=1" in message and ">= 2" in message
    load_config(raw(algo__arch_every=1, algo__graph="none"))


@pytest.mark.parametrize("key,value,allowed", [
    ("algo.sparsity", 1.5, "(0, 1]"),
    ("algo.sparsity", 0.0, "(0, 1]"),
    ("algo.graph", "foo", "learned"),
    ("num_envs", 0, ">= 1"),
    ("logger.wandb", "maybe", "offline"),
    ("algo.bilevel", "both", "split"),
    ("algo.gamma", 1.2, "(0, 1]"),
    ("algo.clip", 0.0, "(0, 1)"),
    ("device", "tpu", "cuda"),
])
def test_bad_values_name_key_value_and_range(key, value, allowed):
    message = config_error(**{key.replace(".", "__"): value})
    assert key in message and str(value) in message and allowed in message


def test_wrong_type_names_the_key():
    message = config_error(num_envs="many")
    assert "num_envs" in message


def test_unknown_top_level_key_is_rejected():
    assert "nonsense" in config_error(nonsense=1)


def test_split_needs_two_env_columns():
    assert "num_envs=1" in config_error(num_envs=1, algo__bilevel="split")


def test_legal_but_surprising_combinations_warn():
    with pytest.warns(UserWarning, match="algo.comm_cost=0.1 is ignored"):
        load_config(raw(algo__comm_cost=0.1))
    with pytest.warns(UserWarning, match="bilevel=split is ignored"):
        load_config(raw(algo__graph="full", algo__bilevel="split"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(raw(algo__comm_cost=0.1, algo__gate=True))


# ---- Hydra composition ----------------------------------------------------------------------------------------------

PRESETS = {
    "commformer": {"graph": "learned", "gate": False, "sparsity": 0.4},
    "commformer_gated": {"graph": "learned", "gate": True},
    "commformer_score": {"graph": "learned", "gate": False, "graph_grad": "score"},
    "full": {"graph": "full", "gate": False},
    "nocomm": {"graph": "none", "gate": False},
    "random": {"graph": "random", "gate": False},
    # the baselines: their schema's type and the values that make each one what it is
    "mappo": {"critic_input": "state", "lr": 0.002, "entropy_coef": 0.0, "hidden": 128},
    "ippo": {"lr": 0.004, "clip": 0.05, "hidden": 128},
    "commnet": {"rounds": 2},
    "ic3net": {"rounds": 1},
    "tarmac": {"rounds": 2, "key_dim": 16},
    "gacomm": {"key_dim": 16, "tau": 1.0},
    "magic": {"rounds": 2, "tau": 1.0},
}


def compose_config(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_every_algo_preset_is_tested():
    assert {p.stem for p in (CONF / "algo").glob("*.yaml")} == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_algo_preset_composes_and_loads(name):
    cfg = load_config(compose_config([f"algo={name}"]))
    assert cfg.algo.name == name and cfg.algo.policy in (name, "commformer")
    for key, value in PRESETS[name].items():
        assert getattr(cfg.algo, key) == value, key
    assert cfg.env["name"] == "pp"  # the default env


def test_default_config_matches_the_design():
    cfg = load_config(compose_config([]))
    assert (cfg.num_envs, cfg.rollout_length, cfg.ppo_epochs, cfg.torch_threads) == (32, 40, 10, 1)
    assert cfg.logger.wandb == "offline" and cfg.algo.arch_every == 5
    quiet = load_config(compose_config(["logger=quiet"]))
    assert quiet.logger.wandb == "disabled" and quiet.logger.progress is False


# ---- the command line ------------------------------------------------------------------------------------------------

def run_train(tmp_path, *overrides):
    """scripts/train.py in a subprocess from tmp_path (Hydra's run folders land there)."""
    return subprocess.run([sys.executable, str(TRAIN), *overrides], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_cli_bad_value_exits_with_one_line(tmp_path):
    out = run_train(tmp_path, "algo.sparsity=1.5")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    first = out.stderr.strip().splitlines()[0]
    assert "algo.sparsity" in first and "1.5" in first and "(0, 1]" in first


def test_cli_unknown_env_key(tmp_path):
    out = run_train(tmp_path, "env=signal", "+env.foo=1", "logger=quiet")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    first = out.stderr.strip().splitlines()[0]
    assert "env.foo=1" in first and "n_symbols" in first  # names the key and the allowed ones


def test_cli_unknown_env(tmp_path):
    out = run_train(tmp_path, "env=nope")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    first = out.stderr.strip().splitlines()[0]
    assert "env/nope" in first
    assert "signal" in out.stderr  # the available options are listed


def test_cli_help(tmp_path):
    out = run_train(tmp_path, "--help")
    assert out.returncode == 0
    assert "algo: " + ", ".join(sorted(PRESETS)) in out.stdout


def test_per_env_settings_apply_and_the_command_line_wins():
    """conf/env_settings/<env>.yaml is chosen with its env (smax_3m: 64 envs x 100 steps, lr decay, 4 minibatches;
    pp: lr and entropy decay); other envs keep the global defaults; a command-line value wins over the per-env one."""
    from commformer.compose import compose_job

    cfg = compose_job(["env=smax_3m"], CONF)
    assert (cfg.num_envs, cfg.rollout_length, cfg.algo.minibatches) == (64, 100, 4)
    assert cfg.algo.lr_decay and cfg.algo.entropy_coef_final == 0.0 and cfg.algo.sparsity == 0.4
    mine = compose_job(["env=smax_3m", "num_envs=8", "algo.lr_decay=false"], CONF)
    assert mine.num_envs == 8 and not mine.algo.lr_decay and mine.rollout_length == 100
    pp = compose_job(["env=pp"], CONF)
    assert (pp.num_envs, pp.rollout_length, pp.algo.minibatches, pp.algo.lr_decay) == (32, 40, 1, True)
    assert pp.algo.entropy_coef_final == 0.0
    pcp = compose_job(["env=pcp"], CONF)
    assert (pcp.num_envs, pcp.rollout_length, pcp.algo.lr_decay, pcp.algo.entropy_coef_final) == (32, 40, False, None)
