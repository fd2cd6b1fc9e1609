"""Dashboards and logs as their users expect, through the real command line (Hydra, wandb offline, submitit's local
executor, joblib): wandb's records (env_steps axis, sweep group, run names, images), the online fallback without
network, plain logs when stdout is a file (and train.log), sweep folders named by their values, resume continuing
the same wandb run, and `--help` with every key's description."""
import dataclasses
import http.server
import io
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from core_utils import ROOT, TINY_PP, make_config, read_csv
from wandb_records import isolate_wandb, of_type, offline_runs, wandb_env, wandb_records

from commformer.config import Config, LoggerConfig
from commformer.policies import CommFormerConfig
from commformer.keyhelp import field_docs
from commformer.training.checkpoint import load_checkpoint
from commformer.training.sweep_naming import sweep_group
from commformer.training.trainer import Trainer

TRAIN = ROOT / "scripts" / "train.py"
# a tiny run of the signal game: 2 envs x 4 steps = 8 env steps per iteration
TINY = ["env=signal", "num_envs=2", "rollout_length=4", "eval_episodes=2", "ppo_epochs=5", "seed=3"]


def run_train(cwd: Path, *args: str, env: dict | None = None, timeout: float = 240, **kw):
    return subprocess.run([sys.executable, str(TRAIN), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout, **kw)


def job_folders(tmp_path: Path) -> list[Path]:
    """The job folders of the one sweep under tmp_path/runs/multirun (those holding metrics.csv)."""
    sweeps = list((tmp_path / "runs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1, sweeps
    return sorted(p.parent for p in sweeps[0].glob("*/metrics.csv"))


# ---- wandb: what the dashboard receives ---------------------------------------------------------------------------

def test_sweep_run_records_env_steps_axis_group_name_tags_and_images(tmp_path):
    """A one-job sweep (-m) with wandb offline, read back from the .wandb file by wandb's reader: env_steps is the
    step metric of every key, the group is the sweep folder, the name carries the swept value (not the constant
    overrides), job_type and tags are set, and each evaluation logged an alpha heatmap and a gate-rate image whose
    files lie in the run's media folder."""
    out = run_train(tmp_path, "-m", *TINY, "algo=commformer_gated", "algo.warmup_iters=0", "total_env_steps=16",
                    "eval_every=1", "algo.sparsity=0.5,0.75", "logger.wandb=offline",
                    env=wandb_env(tmp_path / "wandb_home"))
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = job_folders(tmp_path)
    assert [j.name for j in jobs] == [
        f"signal_commformer_gated_algo.sparsity={s},algo.warmup_iters=0,algo=commformer_gated,env=signal,"
        f"eval_episodes=2,eval_every=1,num_envs=2,ppo_epochs=5,rollout_length=4,seed=3,total_env_steps=16" for s in
        ("0.5", "0.75")]
    for job, sparsity in zip(jobs, ("0.5", "0.75")):
        (wandb_run,) = offline_runs(job)
        records = wandb_records(wandb_run)
        metrics = of_type(records, "metric")
        assert {"name": "env_steps", "options": {"defined": True}} in metrics
        assert any(m.get("glob_name") == "*" and m.get("step_metric") == "env_steps" for m in metrics), metrics
        (run,) = of_type(records, "run")
        assert run["run_group"] == sweep_group(job.parent) == "_".join(job.parent.parts[-2:])
        assert run["display_name"] == f"signal_commformer_gated_s3_algo.sparsity={sparsity}"
        assert run["job_type"] == "train"
        assert {"signal", "commformer_gated"} <= set(run["tags"])
        history = [h["item"] for h in of_type(records, "history")]
        assert [h["env_steps"] for h in history] == [8, 16]
        for key in ("media/alpha", "media/gate_rate"):
            assert all(h[f"{key}._type"] == "image-file" for h in history), history
            for h in history:
                assert (wandb_run / "files" / h[f"{key}.path"]).is_file()
        assert len(list((wandb_run / "files" / "media").rglob("*.png"))) == 4


class _Server:
    """A local HTTP server that answers 404 to everything: a wandb host that is up (for the connectivity probe) but
    where no login can succeed."""

    def __enter__(self) -> str:
        class NotFound(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_error(404)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("where", ["no network", "server up, no API key"])
def test_online_without_network_or_key_falls_back_to_offline(tmp_path, where):
    """logger.wandb=online with no API key and no reachable server (an unresolvable host), or a server that accepts
    connections but no key: training starts at once, one warning line says so, the run records offline, exit 0."""
    from commformer.training.wandb_sink import INIT_TIMEOUT_S

    (tmp_path / "offline").mkdir()
    started = time.monotonic()  # the same run offline, beside it: the time a run takes on this machine's load now
    offline = run_train(tmp_path / "offline", *TINY, "total_env_steps=8", "logger.wandb=offline",
                        env=wandb_env(tmp_path / "wandb_home_offline"), timeout=120)
    reference = time.monotonic() - started
    assert offline.returncode == 0, offline.stderr[-3000:]
    with _Server() as local_url:
        url = "https://api.wandb.invalid" if where == "no network" else local_url
        started = time.monotonic()
        out = run_train(tmp_path, *TINY, "total_env_steps=8", "logger.wandb=online",
                        env=wandb_env(tmp_path / "wandb_home", WANDB_BASE_URL=url), timeout=120)
        elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr[-3000:]
    # a run that waited for wandb.init would take INIT_TIMEOUT_S (20 s) longer than the offline one
    assert elapsed < reference + INIT_TIMEOUT_S / 2, f"the run took {elapsed:.1f} s, offline {reference:.1f} s"
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    warnings = [line for line in text.splitlines() if "WARNING" in line or line.startswith("wandb:")]
    assert len(warnings) == 1, warnings
    assert "logger.wandb=online" in warnings[0] and "offline" in warnings[0]
    (run_dir,) = [p.parent for p in (tmp_path / "runs").rglob("metrics.csv")]
    assert [r["iteration"] for r in read_csv(run_dir / "metrics.csv")[1]] == ["1"]
    (wandb_run,) = offline_runs(run_dir)
    assert of_type(wandb_records(wandb_run), "run")


# ---- console and train.log ----------------------------------------------------------------------------------------

def test_stdout_to_a_file_has_no_carriage_return_and_train_log_holds_the_console_lines(tmp_path):
    """With stdout and stderr redirected to a file: no progress bar (no carriage return), plain progress lines
    instead, and every console line also in the run folder's train.log (Hydra's file handler)."""
    log_file = tmp_path / "out.txt"
    with log_file.open("w") as f:
        out = subprocess.run([sys.executable, str(TRAIN), *TINY, "total_env_steps=24", "logger.console_every=1",
                              "logger.wandb=disabled", "logger.progress=true"], cwd=tmp_path, stdout=f,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=240)
    data = log_file.read_bytes()
    assert out.returncode == 0, data[-3000:]
    assert b"\r" not in data
    console = [line for line in data.decode().splitlines() if "[commformer]" in line]
    iters = [line for line in console if "] - iter " in line]
    assert len(iters) == 3
    assert re.search(r"iter 3 \| steps 24 \|.* \| 100% eta 0m00s$", iters[-1]), iters[-1]
    (train_log,) = (tmp_path / "runs").rglob("train.log")
    assert train_log.read_text().splitlines() == console
    assert any(line.endswith("] - graph: full (the run ended in warm-up; alpha never stepped)") for line in console)


# ---- sweeps on existing engines -----------------------------------------------------------------------------------

@pytest.mark.parametrize("launcher", ["slurm_local", "local"])
def test_two_job_sweep_through_a_launcher(tmp_path, launcher):
    """hydra/launcher=slurm_local (submitit's local executor: the SLURM launcher's path without SLURM) and
    hydra/launcher=local (joblib, 2 jobs in parallel): both jobs run, each in a folder named by its swept value with
    its metrics.csv, and every console line in its train.log names its run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher" if launcher == "slurm_local"
                        else "hydra_plugins.hydra_joblib_launcher")
    out = run_train(tmp_path, "-m", f"hydra/launcher={launcher}", *TINY, "total_env_steps=8",
                    "logger.wandb=disabled", "algo.sparsity=0.5,0.75")
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = job_folders(tmp_path)
    assert len(jobs) == 2
    for job, sparsity in zip(jobs, ("0.5", "0.75")):
        assert job.name.startswith(f"signal_commformer_algo.sparsity={sparsity},")
        assert [r["iteration"] for r in read_csv(job / "metrics.csv")[1]] == ["1"]
        lines = (job / "train.log").read_text().splitlines()
        ours = [line for line in lines if "[commformer]" in line]
        assert any("iter 1 | steps 8" in line for line in ours)
        assert all(f"] - [signal_commformer_s3_algo.sparsity={sparsity}] " in line for line in ours), ours
    if launcher == "slurm_local":
        assert list(jobs[0].parent.glob(".submitit/*/*_log.out"))


# ---- resume and the wandb run -------------------------------------------------------------------------------------

def test_resume_continues_the_wandb_run_and_a_copied_folder_gets_its_own(tmp_path, monkeypatch):
    """The checkpoint keeps the wandb run id; resuming the same folder continues that run (same id, resume allowed),
    resuming a copy of the folder starts a new wandb run."""
    isolate_wandb(monkeypatch, tmp_path / "wandb_home")
    logger = {"wandb": "offline", "project": "commformer-tests", "media": False}
    run = tmp_path / "run"
    first = Trainer(make_config(run, iterations=1, logger=logger), run)
    first.train()
    (first_wandb,) = offline_runs(run)
    first_id = of_type(wandb_records(first_wandb), "run")[0]["run_id"]
    assert load_checkpoint(run)["wandb_id"] == first_id
    shutil.copytree(run, tmp_path / "copy")

    same = Trainer(dataclasses.replace(make_config(run, iterations=2, logger=logger), resume=str(run)), run)
    same.train()
    assert same.logger.wandb_id == first_id
    resumed_wandb = [p for p in offline_runs(run) if p != first_wandb]
    assert [of_type(wandb_records(p), "run")[0]["run_id"] for p in resumed_wandb] == [first_id]

    copy = tmp_path / "copy"
    other = Trainer(dataclasses.replace(make_config(copy, iterations=2, logger=logger), resume=str(copy)), copy)
    other.train()
    assert other.logger.wandb_id not in (None, first_id)
    assert load_checkpoint(copy)["wandb_id"] == other.logger.wandb_id


# ---- progress bar and summary -------------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    """A stand-in for a terminal's stderr (tqdm draws its bar only on a terminal)."""

    def isatty(self) -> bool:
        return True


def test_bar_counts_the_steps_the_run_does(tmp_path, monkeypatch):
    """total_env_steps=20 with 16 env steps per iteration is 2 iterations = 32 steps: the bar's total; a resume
    from step 32 to 48 counts the 16 it does."""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    cfg = make_config(tmp_path, total_env_steps=20, logger={"progress": True})
    tr = Trainer(cfg, tmp_path)
    assert tr.logger.bar is not None and tr.logger.bar.total == 32
    tr.train()
    resumed = Trainer(dataclasses.replace(cfg, total_env_steps=48, resume=str(tmp_path)), tmp_path)
    assert resumed.logger.bar.total == 16
    row = resumed.iterate()
    resumed.logger.log(row)
    assert resumed.logger.bar.n == 16
    resumed.logger.close()
    resumed.close()


def test_summary_names_the_graph_that_acted(tmp_path):
    """A run that ended in warm-up says the full graph acted; after warm-up the summary shows top-k(alpha)."""
    warm = Trainer(make_config(tmp_path / "warm", iterations=2, algo={"warmup_iters": 5}), tmp_path / "warm")
    warm.train()
    lines = warm.summary_lines()
    assert "graph: full (the run ended in warm-up; alpha never stepped)" in lines
    assert not any("top-k" in line or "margins" in line for line in lines)
    learned = Trainer(make_config(tmp_path / "learned", iterations=2), tmp_path / "learned")
    learned.train()
    assert any(line.startswith("graph (k=1, top-k of alpha") for line in learned.summary_lines())


# ---- --help -------------------------------------------------------------------------------------------------------

def test_help_shows_every_key_with_its_value_and_description(tmp_path):
    """`--help` lists every top-level, algo.* and logger.* key with its value in the composition and its description
    (field_docs); a group override shows its values; --hydra-help is still Hydra's."""
    out = run_train(tmp_path, "--help", timeout=120)
    assert out.returncode == 0, out.stderr
    flat = " ".join(out.stdout.split())
    presets = sorted(p.stem for p in (ROOT / "conf" / "algo").glob("*.yaml"))
    assert "algo: " + ", ".join(presets) in out.stdout
    assert f"algo.sparsity=0.4 {field_docs(CommFormerConfig)['sparsity']}" in flat
    for prefix, cls in (("", Config), ("algo.", CommFormerConfig), ("logger.", LoggerConfig)):
        for key, doc in field_docs(cls).items():
            if key in ("env", "algo", "logger"):
                continue
            assert f" {prefix}{key}=" in flat and doc in flat, (prefix + key, doc)
    assert "env.family=predator_prey" in flat
    assert not list(tmp_path.rglob("*.log"))  # help writes no run folder
    full = run_train(tmp_path, "algo=full", "--help", timeout=120)
    assert "algo.graph=full " in " ".join(full.stdout.split())
    hydra_help = run_train(tmp_path, "--hydra-help", timeout=120)
    assert hydra_help.returncode == 0 and "== Flags ==" in hydra_help.stdout


def test_video_of_an_evaluation_episode_at_the_end(tmp_path, monkeypatch):
    """logger.video=true: the run ends with one evaluation episode of its final checkpoint as a GIF in the run
    folder (videos/final.gif) and as a wandb video at the last env_steps, its file in the run's media folder."""
    pytest.importorskip("imageio")
    pytest.importorskip("PIL")
    isolate_wandb(monkeypatch, tmp_path / "wandb_home")
    cfg = make_config(tmp_path, env=TINY_PP, iterations=1,
                      logger={"wandb": "offline", "project": "commformer-tests", "media": False, "video": True})
    from commformer.analysis.video import log_final_video

    Trainer(cfg, tmp_path).train(at_end=log_final_video)  # as scripts/train.py passes it with logger.video=true
    (run,) = offline_runs(tmp_path)
    videos = [h["item"] for h in of_type(wandb_records(run), "history") if "media/eval_episode._type" in h["item"]]
    assert len(videos) == 1 and videos[0]["media/eval_episode._type"] == "video-file"
    assert videos[0]["env_steps"] == 16
    assert (run / "files" / videos[0]["media/eval_episode.path"]).is_file()
    assert (tmp_path / "videos" / "final.gif").stat().st_size > 0
