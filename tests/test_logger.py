"""The Logger facade: metrics.csv (a header that grows, resume truncation), console and progress lines, wandb offline
records (read back with wandb's reader), graph images, and the pieces of the online fallback."""
import importlib.util
import logging
import re
import socket
import sys

import numpy as np
import pytest
import torch
from core_utils import read_csv
from wandb_records import isolate_wandb, of_type, offline_runs, wandb_records

from commformer.config import LoggerConfig
from commformer.training.csv_sink import CsvWriter
from commformer.training.logger import Logger
from commformer.training.sweep_naming import RunContext, run_context, sweep_group
from commformer.training.wandb_sink import run_tags, unreachable
from commformer.training.media import graph_media


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
    """wandb in offline mode: its run folder lands under <run_dir>/wandb and its records (read by wandb's reader)
    hold the run name, the config and the logged keys against env_steps; NaN values are left out."""
    pytest.importorskip("wandb")
    isolate_wandb(monkeypatch, tmp_path / "wandb_home")
    run_dir = tmp_path / "run"
    logger = Logger(quiet(wandb="offline", project="commformer-tests", group="g1", tags=["extra"]), run_dir,
                    {"env": {"name": "pp", "family": "predator_prey"}, "algo": {"name": "commformer",
                                                                               "sparsity_marker": 0.123}},
                    100, "offline_run_name")
    logger.log({"iteration": 1, "env_steps": 10, "train/return": 0.5, "loss/policy": float("nan")})
    logger.log({"iteration": 2, "env_steps": 20, "train/return": 0.75, "eval/success_marker": 1.0})
    logger.close()
    runs = offline_runs(run_dir)
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    records = wandb_records(runs[0])
    (run,) = of_type(records, "run")
    assert run["display_name"] == "offline_run_name" and run["run_group"] == "g1" and run["job_type"] == "train"
    assert run["tags"] == ["pp", "predator_prey", "commformer", "extra"]
    assert run["config"]["update"]["algo"]["sparsity_marker"] == 0.123
    history = [h["item"] for h in of_type(records, "history")]
    assert [(h["env_steps"], h["iteration"], h["train/return"]) for h in history] == [(10, 1, 0.5), (20, 2, 0.75)]
    assert "loss/policy" not in history[0] and history[1]["eval/success_marker"] == 1
    assert len(read_csv(run_dir / "metrics.csv")[1]) == 2


@pytest.mark.parametrize("media_on", [True, False])
def test_media_become_wandb_images_only_with_logger_media(tmp_path, monkeypatch, media_on):
    """log(media=...) turns figures and arrays into wandb images at the row's env_steps (logger.media=true); with
    logger.media=false nothing is pictured."""
    pytest.importorskip("wandb")
    pytest.importorskip("PIL")  # wandb pictures arrays and figures with Pillow
    isolate_wandb(monkeypatch, tmp_path / "wandb_home")
    logger = Logger(quiet(wandb="offline", project="commformer-tests", media=media_on), tmp_path, {}, 100, "run")
    assert logger.wants_media is media_on
    alpha = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0], [2.0, 1.0, 1.0]])
    media = graph_media(alpha, alpha > 1.5, [0.25, 1.0, 0.5])
    media["media/array"] = np.zeros((4, 6, 3), dtype=np.uint8)
    logger.log({"iteration": 1, "env_steps": 16, "eval/return": 1.0}, media=media)
    logger.close()
    (run,) = offline_runs(tmp_path)
    (item,) = [h["item"] for h in of_type(wandb_records(run), "history")]
    pngs = list((run / "files" / "media").rglob("*.png")) if (run / "files" / "media").is_dir() else []
    if media_on:
        assert {item[f"{k}._type"] for k in ("media/alpha", "media/gate_rate", "media/array")} == {"image-file"}
        assert item["media/array.width"] == 6 and item["media/array.height"] == 4
        assert len(pngs) == 3 and item["env_steps"] == 16
    else:
        assert not any(k.startswith("media/") for k in item) and not pngs


def test_media_without_pillow_are_skipped_without_a_warning(tmp_path, monkeypatch, caplog):
    """A fresh install has no Pillow (wandb.Image needs it): logger.media then records no images and says so at
    debug level only; the row itself is logged and figures are still closed."""
    pytest.importorskip("wandb")
    isolate_wandb(monkeypatch, tmp_path / "wandb_home")
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` raises ImportError
    with caplog.at_level(logging.DEBUG, logger="commformer"):
        logger = Logger(quiet(wandb="offline", project="commformer-tests", media=True), tmp_path, {}, 100, "run")
        assert not logger.wants_media
        logger.log({"iteration": 1, "env_steps": 16, "eval/return": 1.0},
                   media={"media/array": np.zeros((4, 6, 3), dtype=np.uint8)})
        logger.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert any(r.levelno == logging.DEBUG and "PIL" in r.getMessage() for r in caplog.records)
    (run,) = offline_runs(tmp_path)
    (item,) = [h["item"] for h in of_type(wandb_records(run), "history")]
    assert item["eval/return"] == 1.0 and not any(k.startswith("media/") for k in item)


def test_a_value_wandb_cannot_picture_still_warns(caplog):
    """Failures other than a missing Pillow keep their warning, and end the pictures of the run."""
    pytest.importorskip("wandb")
    pytest.importorskip("PIL")
    from commformer.training.wandb_sink import wandb_images

    with caplog.at_level(logging.WARNING, logger="commformer"):
        images, still_works = wandb_images({"media/bad": object(), "media/ok": np.zeros((2, 2, 3), np.uint8)})
    assert images == {} and not still_works
    assert "no more images this run (media/bad" in caplog.text


def test_graph_images_without_matplotlib_are_plain_arrays():
    """The matplotlib-free pictures: an N x N heatmap of CELL_PX squares (the diagonal grey, min and max at the ends
    of the colour ramp) and one bar per agent as tall as its rate."""
    from commformer.training.media import BAR_PX, CELL_PX, _bars_array, _heatmap_array

    values = np.array([[np.nan, 0.0], [2.0, np.nan]])
    img = _heatmap_array(values)
    assert img.shape == (2 * CELL_PX, 2 * CELL_PX, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [200, 200, 200]  # the diagonal
    assert img[0, CELL_PX].tolist() == [68, 1, 84] and img[CELL_PX, 0].tolist() == [253, 231, 37]
    bars = _bars_array(np.array([0.5, 1.0, 0.0]))
    assert bars.shape == (BAR_PX, 3 * CELL_PX, 3)
    filled = (bars[:, :, 0] != 255).sum(axis=0)  # coloured pixels per column
    assert filled[CELL_PX // 2] == BAR_PX // 2 and filled[CELL_PX + CELL_PX // 2] == BAR_PX
    assert filled[2 * CELL_PX + CELL_PX // 2] == 0


def test_graph_media_are_figures_with_matplotlib():
    plt = pytest.importorskip("matplotlib.pyplot")
    media = graph_media(torch.ones(3, 3), None, None)
    assert list(media) == ["media/alpha"] and hasattr(media["media/alpha"], "savefig")
    plt.close(media["media/alpha"])


def test_sweep_group_and_context_outside_hydra():
    assert sweep_group("runs/multirun/2026-01-02/10-11-12") == "2026-01-02_10-11-12"
    assert sweep_group("/scratch/my_sweep") == "my_sweep"
    assert run_context("pp_commformer_s1", "g") == RunContext("pp_commformer_s1", "g", False)
    assert run_tags({"env": {"name": "pp", "family": "predator_prey"}, "algo": {"name": "full"}}, ["pp", "x"]) == [
        "pp", "predator_prey", "full", "x"]


def test_unreachable_names_the_host_and_passes_a_listening_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert unreachable(f"http://127.0.0.1:{port}") is None
    why = unreachable(f"http://127.0.0.1:{port}", timeout=1.0)  # closed now
    assert why is not None and f"127.0.0.1:{port}" in why


def test_plain_progress_lines_without_a_bar(tmp_path, caplog):
    """No terminal (pytest's stderr): no bar; with logger.progress the console lines carry the percentage done and
    an ETA, counted from where a resumed run started."""
    logger = Logger(quiet(progress=True, console_every=1), tmp_path, {}, 100, "run", start_env_steps=50)
    assert logger.bar is None
    with caplog.at_level(logging.INFO, logger="commformer"):
        logger.log({"iteration": 6, "env_steps": 75})
    logger.close()
    assert re.fullmatch(r"iter 6 \| steps 75 \| 50% eta \dm\d\ds", caplog.records[-1].getMessage())
