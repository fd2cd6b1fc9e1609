"""The last bad inputs (docs/tools.md, "Allowed values and what the errors say"): each ends with one line on stderr
naming the key or option, the value and what is allowed, exit status 2, no traceback and no folder or file left
behind; the legitimate ones are handled as documented.

One parametrised test per entry point (train.py, evaluate.py, report.py), each called in-process; then the cases
that need a run, a file or a log line of their own.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from core_utils import ROOT, TINY_PP, make_config, run_cli

from commformer.config import MAX_ENVS, RESUME_RESEED_STRIDE, SEED_MAX, SEED_ROOM, ConfigError

TRAIN = ROOT / "scripts" / "train.py"
TINY = ["logger=quiet", "num_envs=2", "rollout_length=8", "eval_episodes=4"]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*"))


# ---- train.py --------------------------------------------------------------------------------------------------------

# (overrides, environment variables, words the one line must hold)
TRAIN_CASES = [
    (["num_envs=99999999999999999999"], {}, ["num_envs=99999999999999999999", "must be <= 1,000,000"]),
    (["seed=18446744073709551616"], {}, ["seed=18446744073709551616", f"must be in [0, {SEED_MAX}]"]),
    (["seed=-1"], {}, ["seed=-1", f"must be in [0, {SEED_MAX}]"]),
    (["seed=2137483648"], {}, ["seed=2137483648", "31-bit"]),
    (["env=mpe_simple_spread", "seed=2137483647", "total_env_steps=12800000"], {},
     ["seed=2137483647 with 10000 iterations", "7919 x iterations", "lower seed or total_env_steps"]),
    (["eval_episodes=2000000"], {}, ["eval_episodes=2000000", "must be <= 1,000,000"]),
    (["eval_envs=2000000"], {}, ["eval_envs=2000000", "must be <= 1,000,000"]),
    ([], {"WANDB_MODE": "sometimes"}, ["WANDB_MODE='sometimes'", "allowed: online, offline, disabled"]),
    (["env_settings=zzz"], {}, ["env_settings=zzz: no such option", "allowed: ", "pp", "smax_3m"]),
    (["env_settings=null"], {}, ["env_settings=null", "allowed: ", "~env_settings"]),
    (["algo.gate=2"], {}, ["algo.gate=2; must be true or false"]),
    (["algo.gate=yes"], {}, ["algo.gate='yes'; must be true or false"]),
    (["logger.media=1"], {}, ["logger.media=1; must be true or false"]),
    (["eval_sampled=2"], {}, ["eval_sampled=2; must be true or false"]),
    (["algo.value_norm=0"], {}, ["algo.value_norm=0; must be true or false"]),
    (["run_dir="], {}, ["run_dir=''", "must be a non-empty path", "null"]),
    (["resume="], {}, ["resume=''", "must be a non-empty path"]),
    (["algo.warmup_iters=1000", "total_env_steps=5120"], {},
     ["algo.warmup_iters=1000", "the run's 4 iterations", "alpha never steps", "total_env_steps"]),
    (["algo=commformer_gated", "algo.graph=full", "algo.warmup_iters=4", "total_env_steps=5120"], {},
     ["algo.warmup_iters=4", "the run's 4 iterations", "the gate never steps"]),
    (["env.vision=100"], {}, ["env.vision=100", "must be <= env.dim - 1 = 4", "env.dim=5"]),
    (["env="], {}, ["env=: no option given; allowed:", "pp", "pcp", "signal", "smax_3m"]),
    (["algo="], {}, ["algo=: no option given; allowed: commformer, commformer_gated, commformer_score, commnet, "
                     "full, gacomm, ic3net, ippo, magic, mappo, nocomm, random, tarmac"]),
]


@pytest.mark.parametrize("overrides,environ,words", TRAIN_CASES, ids=[" ".join(o) or str(e) for o, e, _ in TRAIN_CASES])
def test_train_bad_input_is_one_line_exit_2_and_leaves_no_folder(overrides, environ, words, tmp_path, capsys,
                                                                 monkeypatch):
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "run"
    code, err = run_cli(overrides + [f"hydra.run.dir={run_dir}"], tmp_path, capsys)
    line = one_error_line(err)
    assert code == 2
    for word in words:
        assert word in line, line
    assert files_under(tmp_path) == []  # no run folder, no runs/, no outputs/


def test_legal_values_at_the_bounds_load(tmp_path):
    assert make_config(tmp_path, env=TINY_PP, seed=0).seed == 0
    assert make_config(tmp_path, env=TINY_PP, seed=SEED_MAX).seed == SEED_MAX
    assert SEED_MAX == 2**31 - 1 - SEED_ROOM == 2_137_483_647
    cfg = make_config(tmp_path, env=TINY_PP, num_envs=4, algo={"graph": "full"})
    assert cfg.num_envs == 4 and MAX_ENVS == 1_000_000
    # Predator-Prey saves its state: no resume reseeding, so no bound on iterations from the seed
    make_config(tmp_path, env=TINY_PP, seed=SEED_MAX, iterations=10_000, algo={"graph": "full"})


def test_the_largest_derived_seed_of_a_legal_run_is_a_31_bit_integer():
    """The arithmetic of docs/tools.md: every offset added to a legal seed stays within SEED_ROOM."""
    from commformer.analysis.loaded_run import EVALUATE_SEED_OFFSET
    from commformer.analysis.reevaluate import MAX_CHUNK, MAX_EPISODES
    from commformer.training.evaluation import EVAL_SEED_OFFSET

    training_copies = MAX_ENVS - 1
    evaluation = EVAL_SEED_OFFSET + MAX_ENVS - 1
    evaluate_py = EVALUATE_SEED_OFFSET + (MAX_EPISODES // MAX_CHUNK - 1) + (MAX_CHUNK - 1)
    assert max(training_copies, evaluation, evaluate_py) == 2_010_998 <= SEED_ROOM
    assert SEED_MAX + 2_010_998 <= 2**31 - 1
    # a resumed env without its state: seed + 7919 x iteration + copy, checked per run; the worst legal seed still
    # allows (10,000,000 - 1,000,000) / 7919 iterations with a million envs
    assert SEED_MAX + RESUME_RESEED_STRIDE * ((SEED_ROOM - MAX_ENVS) // RESUME_RESEED_STRIDE) + MAX_ENVS - 1 <= 2**31 - 1


def test_the_default_warmup_on_a_short_run_is_allowed_and_bools_in_yaml_are_checked():
    """algo.warmup_iters is checked only when the command sets it: the preset's 10 on a 1-iteration smoke run trains
    (its summary says it ended in warm-up). A non-bool value of a bool key in a config file is an error too."""
    from commformer.compose import compose_job
    from commformer.hydra_glue import load_config

    cfg = compose_job(["total_env_steps=16", *TINY], ROOT / "conf")
    assert cfg.iterations == 1 and cfg.algo.warmup_iters == 10
    raw = {"env": dict(TINY_PP), "algo": {"gate": 2}, "logger": {"wandb": "disabled"}}
    with pytest.raises(ConfigError, match=r"^algo.gate=2; must be true or false$"):
        load_config(raw)


def test_a_run_with_run_dir_leaves_nothing_under_runs(tmp_path):
    """Hydra's own files (.hydra/, train.log) go into run_dir; no runs/<date>/<time>_.../ appears."""
    run_dir = tmp_path / "mine"
    done = subprocess.run([sys.executable, str(TRAIN), "total_env_steps=16", "algo=nocomm", f"run_dir={run_dir}",
                           *TINY], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outputs").exists()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file() and (run_dir / "train.log").is_file()
    assert (run_dir / "metrics.csv").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_an_empty_wandb_mode_in_the_environment_counts_as_unset(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, str(TRAIN), "total_env_steps=16", "algo=nocomm", f"run_dir={run_dir}",
                           "num_envs=2", "rollout_length=8", "eval_episodes=4", "logger.wandb=offline",
                           "logger.progress=false", "logger.media=false"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "WANDB_MODE": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and list((run_dir / "wandb").glob("offline-run-*"))


def test_a_run_killed_during_its_first_checkpoint_write(tmp_path, capsys):
    """The folder holds only checkpoints/last.pt.<random>.tmp: the resume says the run has no complete checkpoint
    yet and removes the temp file."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    tmp = run / "checkpoints" / "last.pt.k2j4x9.tmp"
    tmp.write_bytes(b"partial")
    code, err = run_cli([f"resume={run}"], tmp_path, capsys)
    line = one_error_line(err)
    assert code == 2 and "no complete checkpoint yet" in line and "first checkpoint write" in line
    assert "start it again" in line and tmp.name in line
    assert not tmp.exists() and files_under(tmp_path) == [run, run / "checkpoints"]


def test_the_held_out_fraction_is_logged_when_it_differs(tmp_path, caplog):
    from commformer.training.trainer import Trainer

    def notes(fraction: float, num_envs: int) -> list[str]:
        caplog.clear()
        cfg = make_config(tmp_path / f"{fraction}_{num_envs}", env=TINY_PP, num_envs=num_envs,
                          algo={"bilevel": "split", "split_fraction": fraction})
        with caplog.at_level(logging.WARNING, logger="commformer"):
            tr = Trainer(cfg, cfg.run_dir)
        tr.logger.close()
        tr.close()
        return [r.getMessage() for r in caplog.records if "split_fraction" in r.getMessage()]

    (line,) = notes(0.1, 4)
    assert line.startswith("algo.split_fraction=0.1 holds out 1 of 4 env columns (0.25)")
    assert notes(0.25, 4) == []


def test_minibatches_split_exactly_into_n_parts():
    from commformer.training.update import minibatches

    batch = {"obs": torch.arange(6.0).view(6, 1), "actions": torch.arange(6)}
    torch.manual_seed(0)
    parts = minibatches(batch, 4)
    assert [len(p["obs"]) for p in parts] == [2, 2, 1, 1]
    assert sorted(torch.cat([p["actions"] for p in parts]).tolist()) == list(range(6))
    for p in parts:  # rows stay together across the batch's tensors
        assert p["obs"].view(-1).long().tolist() == p["actions"].tolist()
    # where n divides the rows, the parts are chunk's (the numbers of runs before the change)
    batch = {"obs": torch.arange(8.0).view(8, 1)}
    torch.manual_seed(3)
    new = [p["obs"] for p in minibatches(batch, 4)]
    torch.manual_seed(3)
    old = [batch["obs"][idx] for idx in torch.randperm(8).chunk(4)]
    assert all(torch.equal(a, b) for a, b in zip(new, old)) and len(new) == 4
    assert minibatches(batch, 1) == [batch]


def test_predator_prey_vision_above_dim_minus_one_is_rejected():
    from envs.core import EnvConfigError
    from envs.predator_prey import PredatorCapturePrey, PredatorPrey

    assert PredatorPrey(num_envs=1, dim=5, vision=4).vision == 4
    with pytest.raises(EnvConfigError, match=r"^env.vision=5; must be <= env.dim - 1 = 4 \(env.dim=5"):
        PredatorPrey(num_envs=1, dim=5, vision=5)
    with pytest.raises(EnvConfigError, match=r"env.vision=100"):
        PredatorCapturePrey(num_envs=1, vision=100)


# ---- evaluate.py -----------------------------------------------------------------------------------------------------

EVALUATE_CASES = [
    ([], ["missing CHECKPOINT_OR_RUN_DIR", "--help"]),
    (["run", "--episodes", "0"], ["--episodes=0; must be in [1, 10000000]"]),
    (["run", "--episodes", "-5"], ["--episodes=-5; must be in [1, 10000000]"]),
    (["run", "--episodes", "abc"], ["--episodes='abc'; must be an integer"]),
    (["run", "--episodes", "10000001"], ["--episodes=10000001; must be in [1, 10000000]"]),
    (["run", "--seed", "abc"], ["--seed='abc'; must be an integer in [0, 2137483647]"]),
    (["run", "--seed", "-1"], ["--seed=-1; must be in [0, 2137483647]"]),
    (["run", "--seed", "2137483648"], ["--seed=2137483648; must be in [0, 2137483647]"]),
    (["run", "--graph", "foo"], ["--graph='foo'; allowed: auto, deterministic, sample, full"]),
    (["run", "--gate", "foo"], ["--gate='foo'; allowed: auto, threshold, open, sample"]),
    (["run", "--n-boot", "0"], ["--n-boot=0; must be >= 1"]),
    (["run", "--video-episodes", "0"], ["--video-episodes=0; must be >= 1"]),
    (["run", "--episodes"], ["--episodes: expected one argument"]),
    (["run", "--bogus"], ["unrecognized arguments: --bogus"]),
]


@pytest.mark.parametrize("argv,words", EVALUATE_CASES, ids=[" ".join(a) or "no arguments" for a, _ in EVALUATE_CASES])
def test_evaluate_bad_option_is_one_line_exit_2(argv, words, tmp_path, capsys, monkeypatch):
    from commformer.analysis.reevaluate import evaluate_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        evaluate_main(argv)
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert info.value.code == 2 and captured.out == "" and "usage:" not in captured.err
    for word in words:
        assert word in line, line
    assert files_under(tmp_path) == []


# ---- report.py -------------------------------------------------------------------------------------------------------

def write_run(folder: Path, seed: int, metrics: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    config = {"env": {"name": "pp", "family": "predator_prey"}, "algo": {"name": "commformer", "lr": 5e-4},
              "seed": seed}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.csv").write_bytes(metrics if metrics is not None else
                                         b"iteration,env_steps,train/return,eval/success\n1,10,-1,0.5\n2,20,-1,0.75\n")
    return folder


@pytest.fixture
def report_roots(tmp_path) -> dict[str, Path]:
    runs = tmp_path / "runs"
    write_run(runs / "s1", 1)
    write_run(runs / "s2", 2)
    garbage = tmp_path / "garbage"
    write_run(garbage / "s1", 1, b"iteration,env_steps,eval/success\n\x00\x00garbage,\x00zz,1,2,3\nq\x00\n")
    long = tmp_path / "long"
    write_run(long / "s1", 1, b"iteration,env_steps,eval/success\n1,10,0.5,7,8\n")
    (tmp_path / "some_file.txt").write_text("not a folder\n")
    (tmp_path / "a_file").write_text("in the way\n")
    return {"runs": runs, "garbage": garbage, "long": long, "file": tmp_path / "some_file.txt", "a_file": tmp_path / "a_file",
            "out": tmp_path / "out"}


# (arguments; {name} is a path of report_roots; words the one line must hold)
REPORT_CASES = [
    ([], ["missing RUN_DIR_OR_PARENT", "--help"]),
    (["{runs}", "--n-boot", "0"], ["--n-boot=0; must be >= 1"]),
    (["{runs}", "--n-boot", "abc"], ["--n-boot='abc'; must be an integer >= 1"]),
    (["{runs}", "--grid-points", "0"], ["--grid-points=0; must be >= 1"]),
    (["{runs}", "--metric", "iteration"], ["--metric='iteration': not a metric column", "eval/", "eval_sampled/",
                                           "train/", "comm/", "loss/"]),
    (["{runs}", "--metric", "env_steps"], ["--metric='env_steps': not a metric column"]),
    (["{runs}", "--merge", "nokey"], ["--merge='nokey': no run's config has this key",
                                      "keys that split these runs' groups"]),
    (["{runs}", "--merge", "algx"], ["--merge='algx'", "did you mean algo?"]),
    (["{runs}", "--plot", "{out}/x.txt"], ["--plot=", "x.txt", "allowed: ", ".png", ".pdf", ".svg"]),
    (["{runs}", "--out-dir", "{a_file}"], ["--out-dir=", "a_file", "is a file; give a folder"]),
    (["{runs}", "--out", "{a_file}/report.md"], ["--out=", "a_file/report.md", "cannot be written", "is a file"]),
    (["{runs}", "--latex", "{runs}"], ["--latex=", "is a folder; give a file name"]),
    (["{file}"], ["some_file.txt", "is a file, not a folder"]),
    (["{garbage}"], ["garbage/s1/metrics.csv", "NUL bytes"]),
    (["{long}"], ["long/s1/metrics.csv", "line 2 has more fields than the header"]),
]


@pytest.mark.parametrize("argv,words", REPORT_CASES, ids=[" ".join(a) or "no arguments" for a, _ in REPORT_CASES])
def test_report_bad_input_is_one_line_exit_2(argv, words, report_roots, tmp_path, capsys):
    from commformer.analysis.report import report_main

    if "--plot" in argv:
        pytest.importorskip("matplotlib")
    before = files_under(tmp_path)
    with pytest.raises(SystemExit) as info:
        report_main([a.format(**report_roots) for a in argv])
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert info.value.code == 2 and "usage:" not in captured.err and captured.out == ""  # before any table
    for word in words:
        assert word.format(**report_roots) in line, line
    assert files_under(tmp_path) == before  # nothing written


def test_report_merge_accepts_a_key_or_a_prefix(report_roots, capsys):
    from commformer.analysis.report import report_main

    for key in ("algo.lr", "algo"):
        (row,) = report_main([str(report_roots["runs"]), "--merge", key])
        assert row["metric"] == "eval/success"
    capsys.readouterr()
