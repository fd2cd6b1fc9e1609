"""The Logger facade: metrics.csv (a header that grows, resume truncation), console lines, and wandb offline files."""
import importlib.util
import logging
import time

import pytest
from core_utils import read_csv

from commformer.config import LoggerConfig
from commformer.training.logger import CsvWriter, Logger


def quiet(**over) -> LoggerConfig:
    return LoggerConfig(**{"wandb": "disabled", "progress": False, **over})


def test_csv_header_grows_when_a_new_key_appears(tmp_path):
    path = tmp_path / "metrics.csv"
    w = CsvWriter(path)
    w.write({"iteration": 1, "env_steps": 10, "train/return": 0.5})
    assert path.read_text().splitlines() == ["iteration,env_steps,train/return", "1,10,0.5"]
    w.write({"iteration": 2, "env_steps": 20, "train/return": 0.25, "eval/success": 1.0})
    assert path.read_text().splitlines() == ["iteration,env_steps,train/return,eval/success",
                                             "1,10,0.5,", "2,20,0.25,1.0"]
    w.write({"iteration": 3, "env_steps": 30, "eval/success": 0.0})  # a known key missing: empty cell
    header, rows = read_csv(path)
    assert header == ["iteration", "env_steps", "train/return", "eval/success"]
    assert rows[2] == {"iteration": "3", "env_steps": "30", "train/return": "", "eval/success": "0.0"}
    assert not list(tmp_path.glob("*.tmp"))


def test_csv_resume_keeps_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.csv"
    w = CsvWriter(path)
    for i in range(1, 5):
        w.write({"iteration": i, "env_steps": 10 * i})
    resumed = CsvWriter(path, resume=True)
    resumed.truncate_after(2)
    assert [r["iteration"] for r in read_csv(path)[1]] == ["1", "2"]
    resumed.write({"iteration": 3, "env_steps": 30, "new": 7})
    header, rows = read_csv(path)
    assert header == ["iteration", "env_steps", "new"]
    assert [(r["iteration"], r["new"]) for r in rows] == [("1", ""), ("2", ""), ("3", "7")]


def test_fresh_writer_replaces_an_old_file(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old,header\n1,2\n")
    CsvWriter(path).write({"iteration": 1, "env_steps": 5})
    assert path.read_text().splitlines() == ["iteration,env_steps", "1,5"]


def test_console_lines(tmp_path, caplog):
    logger = Logger(quiet(console_every=2), tmp_path, {}, 100, "run")
    with caplog.at_level(logging.INFO, logger="commformer"):
        logger.log({"iteration": 1, "env_steps": 10, "train/return": 0.5})  # not a console iteration
        logger.log({"iteration": 2, "env_steps": 20, "train/return": 0.25})
        logger.log({"iteration": 3, "env_steps": 30, "eval/success": 1.0})  # evaluations always print
    logger.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["iter 2 | steps 20 | train/return 0.25", "iter 3 | steps 30 | eval/success 1"]
    assert not (tmp_path / "wandb").exists()


def test_tensorboard_without_the_extra(tmp_path):
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    with pytest.raises(ImportError, match=r"\[tensorboard\]"):
        Logger(quiet(tensorboard=True), tmp_path, {}, 100, "run")


def test_wandb_offline_writes_into_the_run_folder(tmp_path, monkeypatch):
    """wandb in offline mode: its run folder lands under <run_dir>/wandb and its .wandb file holds the logged keys
    and the config."""
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    run_dir = tmp_path / "run"
    logger = Logger(quiet(wandb="offline", project="commformer-tests"), run_dir,
                    {"algo": {"graph": "learned", "sparsity_marker": 0.123}}, 100, "offline_run_name")
    logger.log({"iteration": 1, "env_steps": 10, "train/return": 0.5, "loss/policy": float("nan")})
    logger.log({"iteration": 2, "env_steps": 20, "train/return": 0.75, "eval/success_marker": 1.0})
    logger.close()
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    files = list(runs[0].glob("*.wandb"))
    assert len(files) == 1
    wanted = (b"train/return", b"eval/success_marker", b"sparsity_marker", b"offline_run_name")
    # wandb's service process finishes writing the file shortly after finish() returns
    deadline = time.monotonic() + 30.0
    while not all(t in files[0].read_bytes() for t in wanted) and time.monotonic() < deadline:
        time.sleep(0.2)
    data = files[0].read_bytes()
    assert data.startswith(b":W&B")
    for text in wanted:
        assert text in data, text
    assert len(read_csv(run_dir / "metrics.csv")[1]) == 2
