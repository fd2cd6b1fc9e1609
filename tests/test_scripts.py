"""scripts/evaluate.py and scripts/report.py: a real tiny checkpoint, hand-written run folders, exact numbers."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from commformer.analysis import reevaluate
from commformer.hydra_glue import load_config
from commformer.analysis.reevaluate import EVAL_CSV_FIELDS, chunk_sizes, evaluate_main, resolve_choices
from commformer.analysis.report import aggregate_rows, config_differences, report_main
from commformer.analysis.runs import final_row
from commformer.analysis.stats import bootstrap_ci, iqm, wilson_interval

ROOT = Path(__file__).resolve().parent.parent
PP_TINY = {"name": "pp", "family": "predator_prey", "eval_episodes": 100, "dim": 5, "n_predators": 3, "vision": 1,
           "episode_limit": 20}


def tiny_config(**top):
    cfg = {"env": dict(PP_TINY), "logger": {"wandb": "disabled", "progress": False}, "num_envs": 2,
           "rollout_length": 8, "total_env_steps": 32, "ppo_epochs": 5, "eval_episodes": 8,
           "algo": {"warmup_iters": 1}}
    cfg.update(top)
    return load_config(cfg)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-iteration CommFormer run on Predator-Prey 5x5: (run folder, its metrics.csv's last row)."""
    from commformer.training.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("runs") / "tiny_pp"
    Trainer(tiny_config(), run_dir).train()
    with (run_dir / "metrics.csv").open(newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return run_dir, last


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---- evaluate ----------------------------------------------------------------------------------------------------

def test_chunk_sizes():
    assert chunk_sizes(2500, 1000) == [1000, 1000, 500]
    assert chunk_sizes(1000, 1000) == [1000]
    assert chunk_sizes(80) == [80]
    with pytest.raises(ValueError, match="episodes=0"):
        chunk_sizes(0)


def test_auto_choices_follow_the_trainers_evaluation():
    from commformer.policies import build_policy

    def policy(cfg):
        return build_policy(cfg.algo, type("Spec", (), {"n_agents": 3, "obs_dim": 4, "n_actions": 5}), 1, "cpu")

    cfg = tiny_config(algo={"warmup_iters": 10, "gate": True})
    p = policy(cfg)
    assert resolve_choices(p, "auto", "auto", cfg, iteration=2) == ("full", "open")  # in warmup
    assert resolve_choices(p, "auto", "auto", cfg, iteration=11) == ("deterministic", "threshold")
    assert resolve_choices(p, "sample", "sample", cfg, iteration=2) == ("sample", "sample")
    assert resolve_choices(p, "auto", "sample", cfg, iteration=11) == ("deterministic", "sample")
    fixed = tiny_config(algo={"graph": "full"})
    assert resolve_choices(policy(fixed), "auto", "auto", fixed, iteration=1) == ("deterministic", "threshold")


def test_evaluate_reproduces_the_training_evaluation_on_its_seed(tiny_run, tmp_path, caplog):
    run_dir, last = tiny_run
    out = tmp_path / "train_seed.json"
    evaluate_main([str(run_dir), "--episodes", "8", "--seed", str(1 + 1_000_000), "--out", str(out)])
    r = json.loads(out.read_text())["results"][0]
    assert r["episodes"] == 8 and r["graph"] == "deterministic" and r["gate"] == "threshold"
    assert r["metrics"]["return"]["mean"] == pytest.approx(float(last["eval/return"]), rel=1e-6)
    assert r["metrics"]["success"]["mean"] == pytest.approx(float(last["eval/success"]), abs=1e-9)
    assert r["metrics"]["steps"]["mean"] == pytest.approx(float(last["eval/steps"]), rel=1e-9)
    assert r["messages_per_step"] == pytest.approx(float(last["comm/eval_messages_per_step"]), rel=1e-9)
    assert "--seed=1000001 is the seed training evaluated on" in caplog.text


def test_evaluate_default_protocol_table_and_json(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "eval.json"
    results = evaluate_main([str(run_dir), "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["results"] == json.loads(json.dumps(results))
    r = data["results"][0]
    assert {"checkpoint", "env", "family", "algo", "train_seed", "iteration", "env_steps", "eval_seed", "episodes",
            "chunks", "graph", "gate", "messages_per_step", "metrics", "per_episode"} <= set(r)
    # 10x the run's 8 evaluation episodes, on the run's seed + 2,000,000, in one chunk
    assert (r["episodes"], r["eval_seed"], r["chunks"]) == (80, 2_000_001, [80])
    assert (r["env"], r["algo"], r["iteration"], r["env_steps"]) == ("pp", "commformer", 2, 32)
    assert r["checkpoint"] == str(run_dir / "checkpoints" / "last.pt")
    assert list(r["metrics"]) == ["return", "success", "steps"]
    for name, s in r["metrics"].items():
        values = np.array(r["per_episode"][name])
        assert values.shape == (80,) and s["n"] == 80
        assert s["mean"] == pytest.approx(values.mean())
        assert s["mean_ci"][0] <= s["mean"] <= s["mean_ci"][1]
        if name == "success":  # 0/1 outcomes: the rate with its Wilson interval, never an IQM
            assert s["interval"] == "wilson" and "iqm" not in s and s["successes"] == int(values.sum())
            assert s["mean_ci"] == list(wilson_interval(int(values.sum()), 80))
        else:
            assert s["interval"] == "bootstrap" and s["iqm"] == pytest.approx(iqm(values))
    assert set(r["per_episode"]["success"]) <= {0.0, 1.0}
    assert all(1 <= s <= 20 for s in r["per_episode"]["steps"])
    # k = 1 receiver per row of 3 agents: top-k(alpha) sends 3 messages per step
    assert r["messages_per_step"] == 3.0
    text = capsys.readouterr().out
    assert f"### {run_dir / 'checkpoints' / 'last.pt'}" in text
    assert "| metric | mean | 95% CI (mean) | IQM | 95% CI (IQM) |" in text
    ret = r["metrics"]["return"]
    assert (f"| return | {ret['mean']:.4g} | [{ret['mean_ci'][0]:.4g}, {ret['mean_ci'][1]:.4g}] | {ret['iqm']:.4g} |"
            in text)
    assert "| success |" in text and "| steps |" in text and "80 episodes from seed 2000001" in text
    rate = r["metrics"]["success"]
    assert "| metric | episodes | successes | rate | 95% CI (Wilson) |" in text
    assert (f"| success | 80 | {rate['successes']} | {rate['mean']:.4g} | [{rate['mean_ci'][0]:.4g}, "
            f"{rate['mean_ci'][1]:.4g}] |" in text)


def test_evaluate_in_chunks_and_with_the_full_graph(tiny_run, tmp_path, monkeypatch, capsys):
    run_dir, _ = tiny_run
    monkeypatch.setattr(reevaluate, "MAX_CHUNK", 16)
    r = evaluate_main([str(run_dir), "--episodes", "40", "--graph", "full"])[0]
    assert r["chunks"] == [16, 16, 8] and len(r["per_episode"]["return"]) == 40
    assert r["graph"] == "full" and r["messages_per_step"] == 6.0  # every agent to both others
    first = evaluate_main([str(run_dir), "--episodes", "16", "--graph", "full"])[0]
    assert r["per_episode"]["return"][:16] == first["per_episode"]["return"]  # chunk 0 uses the seed itself


def test_evaluate_writes_csv(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "eval.csv"
    r = evaluate_main([str(run_dir), str(run_dir / "checkpoints" / "last.pt"), "--episodes", "8", "--out", str(out)])
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == EVAL_CSV_FIELDS
    assert [row["metric"] for row in rows] == ["return", "success", "steps"] * 2
    assert float(rows[0]["mean"]) == pytest.approx(r[0]["metrics"]["return"]["mean"])
    assert rows[0]["episodes"] == "8"


def test_evaluate_corrupt_or_missing_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        evaluate_main([str(bad)])
    assert e.value.code == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: checkpoint {str(bad)!r} cannot be read")
    with pytest.raises(SystemExit) as e:
        evaluate_main([str(tmp_path / "nowhere")])
    assert e.value.code == 2
    assert "no such file" in one_error_line(capsys)


def test_evaluate_script_on_a_corrupt_checkpoint_prints_one_line_no_traceback(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"\x00" * 16)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), str(bad)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: checkpoint {str(bad)!r} cannot be read") and done.stderr.count("\n") == 1


def test_evaluate_rejects_a_bad_out_suffix(tiny_run, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate_main([str(tiny_run[0]), "--out", "table.txt"])
    assert e.value.code == 2
    assert one_error_line(capsys) == "error: --out='table.txt'; must end in .json or .csv"


# ---- report ------------------------------------------------------------------------------------------------------

def write_run(folder: Path, env: dict, algo: str, seed: int, rows: list, lr: float = 5e-4) -> Path:
    """A run folder as the trainer writes it: config.yaml and metrics.csv (blank cells where no eval ran)."""
    folder.mkdir(parents=True)
    config = {"env": env, "algo": {"name": algo, "lr": lr}, "seed": seed, "run_dir": str(folder),
              "logger": {"wandb": "disabled"}, "total_env_steps": 400}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    keys = ["iteration", "env_steps"] + sorted({k for r in rows for k in r} - {"iteration", "env_steps"})
    with (folder / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for i, r in enumerate(rows, start=1):
            w.writerow({"iteration": i, "env_steps": 100 * i, **r})
    return folder


PP = {"name": "pp", "family": "predator_prey"}
SMAX = {"name": "smax_3m", "family": "smax"}


def pp_rows(final: float) -> list:
    # evaluations at 100 and 300 env steps; the last row (400) has none, so 300's value is the final one
    return [{"eval/success": 0.1, "eval/return": -1.0, "train/return": -1.0}, {"train/return": -0.9},
            {"eval/success": final, "eval/return": -0.5, "train/return": -0.8}, {"train/return": -0.7}]


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for seed, final in zip(range(1, 6), [0.6, 0.2, 0.9, 0.4, 1.0]):
        write_run(root / "day1" / f"pp_commformer_s{seed}", PP, "commformer", seed, pp_rows(final))
    for seed, won in [(1, 0.25), (2, 0.75)]:
        write_run(root / "multirun" / "x" / f"{seed}_smax", SMAX, "full", seed,
                  [{"eval/won": 0.0, "eval/return": 1.0}, {"eval/won": won, "eval/return": 2.0}])
    (root / "stray").mkdir()
    (root / "stray" / "metrics.csv").write_text("iteration,env_steps\n1,10\n")  # no config.yaml: not a run
    return root


def test_final_row_is_the_last_row_with_the_metric():
    rows = [{"env_steps": "100", "eval/success": "0.1"}, {"env_steps": "200", "eval/success": ""},
            {"env_steps": "300", "eval/success": "0.7"}, {"env_steps": "400", "eval/success": "nan"}]
    assert final_row(rows, "eval/success") is rows[2]
    assert final_row(rows, "eval/won") is None


def test_report_exact_iqm_and_mean_per_group(runs_root, tmp_path, capsys):
    out = tmp_path / "report.md"
    rows = report_main([str(runs_root), "--out", str(out)])
    text = capsys.readouterr().out
    assert out.read_text() == text
    assert [(r["env"], r["algo"], r["metric"], r["seeds"]) for r in rows] == [
        ("pp", "commformer", "eval/success", 5), ("smax_3m", "full", "eval/won", 2)]
    pp, smax = rows
    # sorted finals 0.2 0.4 0.6 0.9 1.0: drop one at each end -> IQM = (0.4 + 0.6 + 0.9) / 3
    assert pp["iqm"] == pytest.approx((0.4 + 0.6 + 0.9) / 3) and pp["mean"] == pytest.approx(0.62)
    assert pp["iqm_ci"] == list(bootstrap_ci([0.6, 0.2, 0.9, 0.4, 1.0], iqm, 2000, 0.95, 0))
    assert pp["iqm_ci"][0] <= pp["iqm"] <= pp["iqm_ci"][1]
    assert pp["env_steps"] == "300" and pp["notes"] == []
    assert smax["iqm"] == 0.5 and smax["mean"] == 0.5 and smax["env_steps"] == "200"
    assert smax["notes"] == ["fewer than 5 seeds", "SMAX numbers are not comparable to SMAC"]
    lo, hi = pp["iqm_ci"]
    assert f"| pp | commformer | eval/success | 5 | 0.6333 | [{lo:.4g}, {hi:.4g}] | 0.62 | 300 |  |" in text
    assert "| smax_3m | full | eval/won | 2 | 0.5 |" in text
    assert "fewer than 5 seeds; SMAX numbers are not comparable to SMAC |" in text


def test_report_two_run_folders_and_an_explicit_metric(tmp_path, capsys):
    a = write_run(tmp_path / "a", PP, "commformer", 1, pp_rows(0.5))
    b = write_run(tmp_path / "b", PP, "commformer", 2, pp_rows(1.0), lr=1e-3)
    # a differing key splits the runs into groups labelled by it ...
    split = report_main([str(a), str(b)])
    assert [(r["label"], r["seeds"], r["iqm"]) for r in split] == [("commformer algo.lr=0.0005", 1, 0.5),
                                                                   ("commformer algo.lr=0.001", 1, 1.0)]
    # ... unless --merge pools them (the note says which keys differ)
    (row,) = report_main([str(a), str(b), "--metric", "eval/return", "--merge", "algo.lr"])
    assert row["metric"] == "eval/return" and row["seeds"] == 2
    assert row["iqm"] == -0.5 and row["mean"] == -0.5
    assert row["notes"] == ["fewer than 5 seeds", "configs differ: algo.lr"]
    (row,) = report_main([str(a), str(b), "--merge", "algo.lr"])
    assert row["iqm"] == 0.75 and row["mean"] == 0.75 and row["metric"] == "eval/success"


def test_config_differences_ignore_per_run_keys():
    base = {"seed": 1, "run_dir": "a", "logger.wandb": "offline", "algo.lr": 1e-3, "env.dim": 5}
    assert config_differences([base, {**base, "seed": 2, "run_dir": "b", "logger.wandb": "disabled"}]) == []
    assert config_differences([base, {**base, "env.dim": 10}, {**base, "algo.lr": 2e-3}]) == ["algo.lr", "env.dim"]


def test_aggregate_rows_are_stratified_by_env():
    rows = [{"algo": "a", "metric": "eval/success", "seeds": 3, "family": "predator_prey", "values": [0, 0, 0]},
            {"algo": "a", "metric": "eval/won", "seeds": 3, "family": "smax", "values": [1, 1, 1]},
            {"algo": "b", "metric": "eval/success", "seeds": 3, "family": "predator_prey", "values": [1, 1, 1]}]
    (agg,) = aggregate_rows(rows, n_boot=500)  # b is in one env only: no aggregate
    assert agg["env"] == "all (2 envs)" and agg["algo"] == "a" and agg["seeds"] == 6
    assert agg["iqm"] == 0.5 and agg["iqm_ci"] == [0.5, 0.5]  # 3 zeros and 3 ones in every replicate
    assert agg["metric"] == "eval/success, eval/won"
    assert "SMAX numbers are not comparable to SMAC" in agg["notes"]


def test_report_errors_exit_2_with_one_line(runs_root, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        report_main([str(runs_root), "--metric", "eval/nothing"])
    assert e.value.code == 2
    assert one_error_line(capsys) == "error: --metric='eval/nothing': no run among 7 logs it"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        report_main([str(empty)])
    assert e.value.code == 2 and "no run folders" in one_error_line(capsys)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(SystemExit) as e:
        report_main([str(runs_root), "--plot", str(tmp_path / "c.png")])
    assert e.value.code == 2
    assert one_error_line(capsys) == ("error: --plot needs matplotlib: pip install -e '.[plot]' "
                                      "(or pip install matplotlib)")
    assert capsys.readouterr().out == ""  # checked before any table is printed


def test_report_plot(runs_root, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    report_main([str(runs_root), "--plot", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the scripts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script, option", [("evaluate.py", "--episodes"), ("report.py", "--metric")])
def test_scripts_answer_help(script, option):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script}") and option in done.stdout
