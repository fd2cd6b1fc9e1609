"""The run's graph history (graph_history.jsonl), the plot command (scripts/plot_graph.py) and evaluate --video."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from core_utils import TINY_PP, make_config, read_csv

from commformer.analysis.graph_plots import pick_panels, plot_graph_main
from commformer.analysis.reevaluate import evaluate_main
from commformer.training.graph_history import HISTORY_FILE, GraphHistory, read_history
from commformer.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def history(run_dir):
    return [json.loads(line) for line in (run_dir / HISTORY_FILE).read_text().splitlines()]


def capture_alpha(monkeypatch):
    """Record (iteration, alpha, deterministic graph) at the start of every Trainer.evaluate call."""
    seen = []
    original = Trainer.evaluate

    def evaluate(self):
        g = self.policy.graph
        seen.append((self.iteration, g.alpha.detach().clone() if g.learned else None, g.deterministic().clone()))
        return original(self)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return seen


def test_one_record_per_evaluation_with_the_trainers_alpha(tmp_path, monkeypatch):
    """eval_every=1, 3 iterations on the signal game (4 agents, k = 1): 3 records whose alpha is the trainer's
    alpha when it evaluated (alpha changes between them), graph = top-k(alpha), messages = the metrics row's."""
    seen = capture_alpha(monkeypatch)
    tr = Trainer(make_config(tmp_path, iterations=3, eval_every=1), tmp_path)
    tr.train()
    recs = history(tmp_path)
    assert [r["iteration"] for r in recs] == [1, 2, 3] == [s[0] for s in seen]
    assert [r["env_steps"] for r in recs] == [16, 32, 48]
    for rec, (_, alpha, det) in zip(recs, seen):
        assert torch.equal(torch.tensor(rec["alpha"], dtype=torch.float32), alpha)
        assert rec["graph"] == det.int().tolist()
        assert rec["k"] == 1 and rec["mode"] == "learned" and rec["graph_choice"] == "deterministic"
        assert all(sum(row) == 1 for row in rec["graph"])  # k = 1 sender per receiver
        assert rec["gate_open"] is None  # no gate
        top2 = torch.sort(alpha.masked_fill(torch.eye(4, dtype=torch.bool), -1e9), dim=1, descending=True).values
        assert np.allclose(rec["margins"], (top2[:, 0] - top2[:, 1]).tolist(), atol=1e-6)
    assert not torch.equal(seen[0][1], seen[-1][1])  # the graph learned: the records can tell times apart
    _, rows = read_csv(tmp_path / "metrics.csv")
    assert [float(r["comm/eval_messages_per_step"]) for r in rows] == [r["messages_per_step"] for r in recs]


def test_gated_and_fixed_graph_records(tmp_path):
    """A gated run records each agent's gate-open rate in [0, 1]; a full graph has no alpha and no margins."""
    Trainer(make_config(tmp_path / "gated", iterations=1, algo={"gate": True}), tmp_path / "gated").train()
    (rec,) = history(tmp_path / "gated")
    assert len(rec["gate_open"]) == 4 and all(0.0 <= g <= 1.0 for g in rec["gate_open"])
    Trainer(make_config(tmp_path / "full", iterations=1, algo={"graph": "full"}), tmp_path / "full").train()
    (rec,) = history(tmp_path / "full")
    assert rec["alpha"] is None and rec["margins"] is None and rec["mode"] == "full"
    assert rec["graph"] == [[int(i != j) for j in range(4)] for i in range(4)]
    assert rec["messages_per_step"] == 12.0


def test_resume_drops_records_past_the_checkpoint_and_appends(tmp_path):
    """A run that evaluated past its last checkpoint resumes from the checkpoint: the later record is dropped and
    the resumed evaluations follow the kept ones; a fresh run in the same folder starts the file afresh."""
    cfg = make_config(tmp_path, iterations=3, eval_every=1, checkpoint_every=2)
    tr = Trainer(cfg, tmp_path)
    for _ in range(3):  # evaluate after every iteration but checkpoint after two, as a run killed before its save
        tr.logger.log({**tr.iterate(), **tr.evaluate()})
        if tr.iteration == 2:
            tr.save()
            alpha_at_2 = tr.policy.graph.alpha.detach().clone()
    tr.logger.close()
    stale = history(tmp_path)[2]
    assert [r["iteration"] for r in history(tmp_path)] == [1, 2, 3]
    resumed = Trainer(dataclasses.replace(cfg, resume=str(tmp_path)), tmp_path)
    assert [r["iteration"] for r in history(tmp_path)] == [1, 2]
    assert torch.equal(torch.tensor(history(tmp_path)[1]["alpha"]), alpha_at_2)
    resumed.train()
    recs = history(tmp_path)
    assert [r["iteration"] for r in recs] == [1, 2, 3]
    assert torch.equal(torch.tensor(recs[2]["alpha"]), resumed.policy.graph.alpha.detach())
    assert stale["iteration"] == 3
    Trainer(make_config(tmp_path, iterations=1), tmp_path).train()  # a new run (no resume) in the same folder
    assert [r["iteration"] for r in history(tmp_path)] == [1]


def test_truncate_and_read_errors(tmp_path):
    h = GraphHistory(tmp_path, resume_iteration=0)
    for it in (0, 5, 10):
        h.append({"iteration": it, "graph": [[0]]})
    GraphHistory(tmp_path, resume_iteration=5)
    assert [r["iteration"] for r in read_history(tmp_path)] == [0, 5]
    (tmp_path / HISTORY_FILE).write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        read_history(tmp_path)
    with pytest.raises(ValueError, match="no graph history"):
        read_history(tmp_path / "elsewhere")


# ---- the plot command --------------------------------------------------------------------------------------------

def test_pick_panels_keeps_first_and_last():
    assert pick_panels(5, 12) == [0, 1, 2, 3, 4]
    picked = pick_panels(30, 10)
    assert picked[0] == 0 and picked[-1] == 29 and len(picked) == 10


@pytest.fixture(scope="module")
def tiny_pp_run(tmp_path_factory):
    """A 3-iteration CommFormer run on Predator-Prey 5x5 with an evaluation after every iteration."""
    run_dir = tmp_path_factory.mktemp("runs") / "pp"
    Trainer(make_config(run_dir, env=TINY_PP, iterations=3, eval_every=1, algo={"gate": True}), run_dir).train()
    return run_dir


def test_plot_command_writes_both_pictures(tiny_pp_run, tmp_path):
    pytest.importorskip("matplotlib")
    paths = plot_graph_main([str(tiny_pp_run), "--out", str(tmp_path / "pics")])
    assert [p.name for p in paths] == ["alpha_heatmaps.png", "graph.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    plot_graph_main([str(tiny_pp_run)])  # default: RUN_DIR/plots
    assert (tiny_pp_run / "plots" / "alpha_heatmaps.png").is_file() and (tiny_pp_run / "plots" / "graph.png").is_file()


def test_plot_command_on_a_folder_without_history_exits_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        plot_graph_main([str(tmp_path)])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no graph history" in lines[0], lines


def test_plot_script_answers_help():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_graph.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: plot_graph.py") and "--out" in done.stdout


# ---- evaluate --video --------------------------------------------------------------------------------------------

def test_evaluate_video_writes_one_frame_per_step(tiny_pp_run, tmp_path, caplog):
    """Two episodes of the tiny run: one GIF frame per step (the logged episode lengths add up), all one size, and
    the drawn edges' orange in them."""
    iio = pytest.importorskip("imageio.v3")
    from envs.render import EDGE

    out = tmp_path / "episode.gif"
    with caplog.at_level("INFO", logger="commformer"):
        evaluate_main([str(tiny_pp_run), "--episodes", "2", "--video", str(out), "--video-episodes", "2"])
    frames = iio.imread(out)
    lengths = [float(m.split("length ")[1].split(",")[0]) for m in caplog.messages if m.startswith("video episode")]
    assert len(lengths) == 2 and frames.shape[0] == sum(lengths) > 10
    assert frames.ndim == 4 and frames.shape[-1] == 3
    assert np.all(frames[0].reshape(-1, 3) == EDGE, axis=1).sum() > 50  # k = 1: 3 arrows in the first frame


def test_evaluate_video_bad_suffix_exits_2_with_one_line(tiny_pp_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate_main([str(tiny_pp_run), "--video", str(tmp_path / "x.avi")])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--video" in lines[0] and ".gif" in lines[0], lines


def test_evaluate_video_of_an_env_that_cannot_draw_exits_2_with_one_line(tmp_path, capsys):
    Trainer(make_config(tmp_path / "signal", iterations=1), tmp_path / "signal").train()
    capsys.readouterr()  # the training's own log lines
    with pytest.raises(SystemExit) as e:
        evaluate_main([str(tmp_path / "signal"), "--episodes", "2", "--video", str(tmp_path / "x.gif")])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot draw frames" in lines[0] and "predator_prey" in lines[0], lines
    assert not (tmp_path / "x.gif").exists()


def test_alpha_grads_are_recorded_at_evaluations_and_plotted(tmp_path):
    """logger.alpha_grads=true: each evaluation's record holds one [N,N] gradient per loss term (the rollout before
    it; zeros on the diagonal, where there is no edge), and plot_graph.py draws them (alpha_grads.png)."""
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, iterations=4, eval_every=2, num_envs=8, rollout_length=4, ppo_epochs=10,
                      logger={"alpha_grads": True})
    Trainer(cfg, run_dir).train()
    recs = read_history(run_dir)
    assert len(recs) == 2 and all(set(r["alpha_grad"]) >= {"policy", "value", "entropy"} for r in recs)
    g = recs[-1]["alpha_grad"]["policy"]
    assert len(g) == 4 and all(g[i][i] == 0 for i in range(4)) and any(g[i][j] != 0 for i in range(4) for j in range(4))
    paths = plot_graph_main([str(run_dir), "--out", str(tmp_path / "pics")])
    assert [p.name for p in paths] == ["alpha_heatmaps.png", "graph.png", "alpha_grads.png"]


def test_a_policy_without_commformers_graph_records_per_step_or_none():
    """A recurrent communication method (no comm_graph, but an acting graph per step) is recorded as mode per_step
    with its graph mean; a policy that reports no graph at all (MAPPO) as none; CommFormer's own mode is kept."""
    from commformer.training.evaluation import EvalDetails
    from commformer.training.graph_history import graph_record

    g = torch.tensor([[0, 1], [0, 0]], dtype=torch.bool)
    rec = graph_record(None, EvalDetails(g, None, g.float() / 2), {}, 3, 30, None)
    assert rec["mode"] == rec["graph_choice"] == "per_step" and rec["graph_mean"] == [[0.0, 0.5], [0.0, 0.0]]
    rec = graph_record(None, EvalDetails(None, None), {}, 3, 30, None)
    assert rec["mode"] == rec["graph_choice"] == "none" and rec["graph"] is None
