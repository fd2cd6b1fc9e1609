"""Nothing lost, nothing silent: every bad input and fault ends with one line and exit status 2 (or 128 + signal),
no traceback, no folder left behind, and nothing already saved is lost.

Most cases call the entry point in-process (commformer.cli.train(argv)); a handful run scripts/train.py for real.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from core_utils import ROOT, TINY_PP, make_config, run_cli

from commformer.training.checkpoint import FORMAT, load_checkpoint, non_finite
from commformer.training.trainer import Trainer

TRAIN = ROOT / "scripts" / "train.py"
TINY = ["logger=quiet", "num_envs=2", "rollout_length=8", "eval_episodes=4"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-iteration run on Predator-Prey (its folder, with checkpoints/last.pt)."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    Trainer(make_config(run_dir, env=TINY_PP, iterations=2), run_dir).train()
    return run_dir


class Pickled:
    """An arbitrary Python object: a checkpoint holding one must be refused without running any code."""


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    text = d / "notes.txt"
    text.write_text("not a checkpoint\n")
    pickled = d / "pickled.pt"
    torch.save({"format": FORMAT, "obj": Pickled()}, pickled)
    return {"text": text, "pickled": pickled}


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


# (overrides, a fragment the one line must hold)
BAD_INPUTS = [
    (["num_env=8"], "did you mean num_envs"),
    (["algo.sparsityy=0.5"], "did you mean algo.sparsity"),
    (["logger.wandbb=offline"], "did you mean logger.wandb"),
    (["env.dimm=5"], "dim"),
    (["+env.dimm=5"], "dim"),
    (["env.dim=abc"], "env.dim"),
    (["env=nope"], "env=nope: no such option"),
    (["algo=fulll"], "did you mean full"),
    (["logger=loud"], "allowed: default, quiet"),
    (["+foo=1"], "foo=1: unknown key; allowed:"),
    (["seed=abc"], "seed=abc"),
    (["seed=["], "cannot parse"),
    (["algo.sparsity=1.5"], "algo.sparsity=1.5; must be in (0, 1]"),
    (["algo.sparsity=0"], "algo.sparsity=0"),
    (["algo.graph=foo"], "algo.graph='foo'; allowed"),
    (["algo.bilevel=both"], "algo.bilevel='both'; allowed"),
    (["algo.lr=inf"], "algo.lr=inf; must be > 0 and finite"),
    (["algo.lr=-1"], "algo.lr=-1"),
    (["algo.graph_lr=nan"], "algo.graph_lr=nan"),
    (["algo.gate_lr=0"], "algo.gate_lr=0"),
    (["algo.gamma=1.2"], "algo.gamma=1.2"),
    (["algo.clip=0"], "algo.clip=0"),
    (["algo.heads=3"], "divisible by algo.heads=3"),
    (["algo.hidden=0"], "algo.hidden=0"),
    (["algo.dropout=1.0"], "algo.dropout=1.0"),
    (["algo.gate_init_p=1.0"], "algo.gate_init_p=1.0"),
    (["algo.comm_cost=-1"], "algo.comm_cost=-1"),
    (["algo.entropy_coef=inf"], "algo.entropy_coef=inf"),
    (["algo.arch_every=1"], "algo.arch_every=1"),
    (["ppo_epochs=4"], "ppo_epochs=4"),
    (["algo.minibatches=2000"], "algo.minibatches=2000; must be <= the 1280 rows"),
    (["num_envs=4", "rollout_length=8", "algo.bilevel=split", "algo.minibatches=16", "algo.warmup_iters=0"],
     "algo.minibatches=16; must be <= the 8 rows the graph gets"),
    (["num_envs=1", "algo.bilevel=split"], "num_envs=1"),
    (["algo.split_fraction=1.0"], "algo.split_fraction=1.0"),
    (["algo.freeze_fraction=0"], "algo.freeze_fraction=0"),
    (["algo.warmup_iters=-1"], "algo.warmup_iters=-1"),
    (["num_envs=0"], "num_envs=0; must be >= 1"),
    (["rollout_length=0"], "rollout_length=0"),
    (["total_env_steps=0"], "total_env_steps=0"),
    (["eval_every=0"], "eval_every=0"),
    (["checkpoint_every=0"], "checkpoint_every=0"),
    (["eval_episodes=0"], "eval_episodes=0"),
    (["eval_envs=0"], "eval_envs=0"),
    (["torch_threads=0"], "torch_threads=0"),
    (["device=mps"], "device='mps'; allowed: cpu"),
    (["device=tpu"], "device='tpu'; allowed: cpu"),
    (["logger.wandb=maybe"], "logger.wandb='maybe'; allowed"),
    (["logger.console_every=0"], "logger.console_every=0"),
    (["resume=/nonexistent/run"], "no such checkpoint"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["device=cuda"], "device='cuda': no CUDA device here"))


@pytest.mark.parametrize("overrides,fragment", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_leaves_no_folder(overrides, fragment, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, err = run_cli(overrides + [f"hydra.run.dir={run_dir}"], tmp_path, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert not run_dir.exists() and not (tmp_path / "runs").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("kind,fragment", [("text", "not a torch checkpoint archive"),
                                           ("pickled", "pickled Python objects, which are never loaded")])
def test_resume_from_a_file_that_is_no_checkpoint(kind, fragment, bad_files, tmp_path, capsys):
    code, err = run_cli([f"resume={bad_files[kind]}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err and str(bad_files[kind]) in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,fragment", [
    ("env=pcp", "env=pcp: a resume continues the checkpoint's run and cannot change env"),
    ("algo.lr=0.001", "cannot change algo.lr; a resume may change only: total_env_steps"),
    ("algo=full", "cannot change algo"),
    ("total_env_steps=8", "total_env_steps=8: below the 32 env steps this run already did"),
])
def test_resume_overrides_that_cannot_apply(override, fragment, tiny_run, tmp_path, capsys):
    before = (tiny_run / "checkpoints" / "last.pt").read_bytes()
    code, err = run_cli([f"resume={tiny_run}", override], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
    assert (tiny_run / "checkpoints" / "last.pt").read_bytes() == before


def test_a_multirun_reports_the_bad_job_and_runs_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    done = cli("-m", "algo=nocomm,fulll", "total_env_steps=16", f"hydra.sweep.dir={sweep}", *TINY, cwd=tmp_path)
    code, err = done.returncode, done.stderr
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines[0].startswith("error: job 1 of 2") and "algo=fulll: no such option" in lines[0]
    assert "1 job(s) of the sweep were rejected" in lines[-1]
    runs = [p for p in sweep.iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "metrics.csv").is_file()


def test_a_multirun_job_rejected_only_in_combination_leaves_no_folder(tmp_path):
    """ppo_epochs=4 is fine for nocomm but not for commformer (arch_every 5): only that job is skipped."""
    sweep = tmp_path / "sweep"
    done = cli("-m", "algo=nocomm,commformer", "ppo_epochs=4", "total_env_steps=16", f"hydra.sweep.dir={sweep}",
               *TINY, cwd=tmp_path)
    code, err = done.returncode, done.stderr
    assert code == 2 and "job 1 of 2 (algo=commformer" in err and "ppo_epochs=4" in err
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(runs) == 1 and "nocomm" in runs[0]


# ---- NaN guard -----------------------------------------------------------------------------------------------------

def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN reward in iteration 3 makes the loss NaN: the run stops with one line naming iteration 3 and the loss,
    and checkpoints/last.pt stays the finite one of iteration 2."""
    from commformer.errors import TrainingStopped

    cfg = make_config(tmp_path, env=TINY_PP, iterations=5, checkpoint_every=1)
    tr = Trainer(cfg, tmp_path)
    original = tr.env.step
    calls = {"n": 0}

    def step(actions):
        out = original(actions)
        calls["n"] += 1
        if calls["n"] > 2 * cfg.rollout_length:  # from the third rollout on
            out.reward = torch.full_like(out.reward, float("nan"))
        return out

    monkeypatch.setattr(tr.env, "step", step)
    with pytest.raises(TrainingStopped) as info:
        tr.train()
    message = str(info.value)
    assert "\n" not in message and message.startswith("iteration 3:") and "not finite" in message
    assert "checkpoints/last.pt of iteration 2 is kept" in message
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["iteration"] == 2 and non_finite(ckpt["policy"]) is None


def test_diverging_learning_rates_stop_with_one_line(tmp_path):
    """The reported case: algo.lr=1e3 algo.graph_lr=1e6 must not exit 0 with NaN weights in last.pt."""
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, str(TRAIN), "algo.lr=1e3", "algo.graph_lr=1e6", "total_env_steps=12800",
                           "checkpoint_every=1", "algo.warmup_iters=0", f"run_dir={run_dir}", "logger=quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if done.returncode == 0:  # it did not diverge: then every saved weight must be finite
        ckpt = load_checkpoint(run_dir)
        assert non_finite(ckpt["policy"]) is None
        return
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1 and "not finite" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    if (run_dir / "checkpoints" / "last.pt").exists():
        ckpt = load_checkpoint(run_dir)
        assert non_finite(ckpt["policy"]) is None


def test_evaluate_refuses_a_non_finite_checkpoint(tiny_run, tmp_path, capsys):
    from commformer.analysis.reevaluate import evaluate_main

    ckpt = load_checkpoint(tiny_run)
    key = next(k for k, v in ckpt["policy"].items() if v.is_floating_point())
    ckpt["policy"][key] = torch.full_like(ckpt["policy"][key], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(ckpt, bad)
    with pytest.raises(SystemExit) as info:
        evaluate_main([str(bad)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and key in err and "not finite" in err


# ---- faults while writing -----------------------------------------------------------------------------------------

def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    from commformer.training import checkpoint

    cfg = make_config(tmp_path, env=TINY_PP, iterations=2, checkpoint_every=1)
    tr = Trainer(cfg, tmp_path)
    tr.iterate()
    tr.save()
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    tr.iterate()
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(checkpoint.CheckpointError) as info:
        tr.save()
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message and "previous checkpoint" in message
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    tr.logger.close()
    tr.close()


def test_orphaned_temp_files_are_removed(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.pt.abc123.tmp").write_bytes(b"partial")
    tr = Trainer(make_config(tmp_path, env=TINY_PP, iterations=1), tmp_path)
    assert not list(ckpts.glob("*.tmp"))
    tr.logger.close()
    tr.close()


def test_a_checkpoints_path_that_is_a_file_gives_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("in the way")
    done = cli("total_env_steps=16", f"run_dir={run_dir}", *TINY, cwd=tmp_path)
    code, err = done.returncode, done.stderr
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot write checkpoint" in errors[0] and "checkpoints" in errors[0], err


def test_a_run_folder_below_a_file_gives_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = cli("total_env_steps=16", f"run_dir={blocker / 'run'}", *TINY, cwd=tmp_path)
    code, err = done.returncode, done.stderr
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "cannot be written" in errors[0] and "Traceback" not in err, err


# ---- resume ---------------------------------------------------------------------------------------------------------

def test_resume_from_a_copied_folder_continues_in_the_copy(tmp_path):
    original = tmp_path / "a"
    done = cli("total_env_steps=32", f"hydra.run.dir={original}", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    snapshot = {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()}
    done = cli(f"resume={copy}", "total_env_steps=64", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    after = {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()}
    assert after == snapshot  # the original folder is untouched
    rows = (copy / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[-1].split(",")[0] == "4"  # header + iterations 1..4, continuing
    assert (copy / ".hydra" / "overrides.yaml").read_text() == (original / ".hydra" / "overrides.yaml").read_text()
    assert list((copy / ".hydra").glob("resume_*/overrides.yaml"))  # the resume recorded its own
    assert load_checkpoint(copy)["iteration"] == 4
    assert not (tmp_path / "runs").exists()  # no new folder elsewhere


def test_resuming_a_finished_run_prints_its_final_evaluation(tiny_run, tmp_path):
    copy = tmp_path / "done"
    shutil.copytree(tiny_run, copy)
    done = cli(f"resume={copy}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "final eval/success:" in done.stderr + done.stdout


def test_sigterm_writes_a_checkpoint_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(TRAIN), "total_env_steps=100000", f"hydra.run.dir={run_dir}",
                             "checkpoint_every=1000", *TINY], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        csv = run_dir / "metrics.csv"
        if csv.is_file() and len(csv.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "stopped by SIGTERM" in errors[0] and "Traceback" not in err
    ckpt = load_checkpoint(run_dir)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert ckpt["iteration"] == len(rows) - 1 >= 2
    done = cli(f"resume={run_dir}", f"total_env_steps={16 * (ckpt['iteration'] + 1)}", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run_dir)["iteration"] == ckpt["iteration"] + 1


# ---- report.py on damaged run folders ---------------------------------------------------------------------------------

def report_error(roots, capsys) -> str:
    from commformer.analysis.report import report_main

    with pytest.raises(SystemExit) as info:
        report_main([str(r) for r in roots])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return err


def test_report_names_a_config_that_is_a_yaml_list(tmp_path, capsys):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "config.yaml").write_text("- 1\n- 2\n")
    (run / "metrics.csv").write_text("iteration,env_steps,eval/success\n1,10,0.5\n")
    err = report_error([tmp_path], capsys)
    assert f"{run / 'config.yaml'}: holds a YAML list" in err and "could be read" in err


def test_report_names_a_binary_metrics_file(tmp_path, capsys):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "config.yaml").write_text("env: {name: pp, family: predator_prey}\nalgo: {name: commformer}\nseed: 1\n")
    (run / "metrics.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 50)
    err = report_error([tmp_path], capsys)
    assert str(run / "metrics.csv") in err


def test_report_without_evaluations_does_not_blame_an_unset_metric(tmp_path, capsys):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "config.yaml").write_text("env: {name: pp, family: predator_prey}\nalgo: {name: commformer}\nseed: 1\n")
    (run / "metrics.csv").write_text("iteration,env_steps,train/return\n1,10,-1\n")
    err = report_error([tmp_path], capsys)
    assert "--metric" not in err and "logged an evaluation" in err
