"""Studies as configs (conf/study/*.yaml, `python scripts/train.py -m +study=<name>`): every study composes, its grid
(hydra.sweeper.params) is expanded and checked before Hydra starts like a command-line sweep, and the tiny study runs
end to end through the real CLI into scripts/report.py (tables, intervals, LaTeX, marl-eval JSON, figures)."""
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from core_utils import CONF, ROOT

from commformer import cli
from commformer.analysis.report import report_main
from commformer.analysis.stats import (bootstrap_ci, iqm, probability_of_improvement, probability_of_improvement_ci,
                                       wilson_interval)
from commformer.compose import _compose, expand_sweep, sweeper_params, with_params
from commformer.training.sweep_naming import swept_keys

TRAIN = ROOT / "scripts" / "train.py"

# study -> (its grid's sweep axes and their values, the fixed env and budget)
STUDIES = {
    "c1c3_pcp": ({"algo": ["nocomm", "random", "commformer", "commformer_gated", "full"], "seed": list("12345")},
                 "pcp", "300000"),
    "c1c3_pp_easy": ({"algo": ["nocomm", "random", "commformer", "commformer_gated", "full"],
                      "seed": list("12345")}, "pp_easy", "300000"),
    "c4_split_pcp": ({"algo.bilevel": ["alternate", "split"], "seed": list("12345")}, "pcp", "300000"),
    "sparsity_pcp_medium": ({"algo.sparsity": ["0.2", "0.4", "0.6", "1.0"], "seed": list("123")}, "pcp_medium",
                            "500000"),
    "gate_cost_pcp": ({"algo.comm_cost": ["0", "0.01", "0.05", "0.1"], "seed": list("123")}, "pcp", "300000"),
    "tiny": ({"algo": ["nocomm", "full"], "seed": ["1", "2"]}, "pcp", "2000"),
    "scout": ({"algo": ["commformer_score", "commformer", "full", "random"], "seed": list("12345")}, "pcp_scout",
              "600000"),
    "signal8": ({"algo": ["commformer", "random"], "algo.sparsity": ["0.125", "0.4"], "seed": list("12345")},
                "signal8", "32000"),
    "matched_pp_medium": ({"algo": ["commformer", "random"], "algo.sparsity": ["0.2", "0.4"], "algo.warmup_iters": ["0"],
                           "seed": list("123")},
                          "pp_medium", "1000000"),
    "methods_pp_medium": ({"algo": ["commformer", "full", "nocomm", "random", "mappo", "ippo", "commnet", "ic3net",
                                    "tarmac", "gacomm", "magic"], "algo.warmup_iters": ["0"], "seed": list("123")},
                          "pp_medium", "1000000"),
}


def test_every_study_is_listed_here():
    assert {p.stem for p in (CONF / "study").glob("*.yaml")} == set(STUDIES)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_a_study_composes_into_its_grid_on_the_joblib_launcher(name):
    axes, env, budget = STUDIES[name]
    cfg = _compose([f"+study={name}"], CONF, return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    assert cfg.hydra.sweep.dir.startswith(f"runs/studies/{name}/")
    jobs = expand_sweep(with_params(sweeper_params([f"+study={name}"], CONF), [f"+study={name}"]))
    assert len(jobs) == int(np.prod([len(v) for v in axes.values()]))
    for key, values in axes.items():
        assert sorted({o.split("=", 1)[1] for job in jobs for o in job if o.startswith(key + "=")}) == sorted(values)
    assert all(f"env={env}" in job and f"total_env_steps={budget}" in job for job in jobs)
    # every job passes the checks of the real command, nothing rejected, the command line unchanged
    assert cli.prepare_train(["-m", f"+study={name}"], True, [f"+study={name}"]) == (["-m", f"+study={name}"], 0)


def test_the_command_line_replaces_a_study_param_and_adds_sweeps():
    def grid(*overrides):
        return expand_sweep(with_params(sweeper_params(list(overrides), CONF), list(overrides)))

    assert [job[:2] for job in grid("+study=tiny")] == [["algo=nocomm", "seed=1"], ["algo=nocomm", "seed=2"],
                                                          ["algo=full", "seed=1"], ["algo=full", "seed=2"]]
    assert [job[:2] for job in grid("+study=tiny", "seed=7")] == [["algo=nocomm", "seed=7"], ["algo=full", "seed=7"]]
    assert len(grid("+study=tiny", "algo.lr=0.001,0.002")) == 8
    assert sweeper_params(["algo=full"], CONF) == []  # no study: no params, command-line sweeps as before


@pytest.fixture
def conf_with_bad_study(tmp_path, monkeypatch):
    """A copy of conf/ with a study whose grid names a preset that does not exist; cli checks against it."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    text = (conf / "study" / "tiny.yaml").read_text().replace("algo: nocomm,full", "algo: nocomm,fulll,full")
    (conf / "study" / "bad.yaml").write_text(text)
    monkeypatch.setattr(cli, "CONF_DIR", conf)
    return conf


def test_a_bad_value_in_a_study_grid_is_reported_per_job_and_dropped(conf_with_bad_study, capsys):
    argv, rejected = cli.prepare_train(["-m", "+study=bad"], True, ["+study=bad"])
    err = capsys.readouterr().err.splitlines()
    assert rejected == 2 and len(err) == 2
    assert err[0].startswith("error: job 2 of 6 (algo=fulll seed=1 env=pcp") and "did you mean full?" in err[0]
    assert err[1].startswith("error: job 3 of 6 (algo=fulll seed=2")
    # the kept values replace the study's param on the command line Hydra gets
    assert argv == ["-m", "+study=bad", "algo=nocomm,full"]
    argv, rejected = cli.prepare_train(["-m", "+study=bad", "algo=full"], True, ["+study=bad", "algo=full"])
    assert (argv, rejected) == (["-m", "+study=bad", "algo=full"], 0)  # the command line replaced the bad grid


def test_a_study_whose_every_job_is_rejected_exits_2(conf_with_bad_study, capsys):
    with pytest.raises(SystemExit) as info:
        cli.prepare_train(["-m", "+study=bad", "ppo_epochs=0"], True, ["+study=bad", "ppo_epochs=0"])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 7 and all("ppo_epochs=0" in line for line in err[:6])
    assert err[-1] == "error: every job of the sweep was rejected (6 of 6; see the lines above)"


# ---- the tiny study end to end (the CI acceptance test) ------------------------------------------------------------

def final_values(job: Path, metric: str) -> tuple[float, float]:
    """(the metric, messages per step) of the job's last evaluation row, read straight from its metrics.csv."""
    with (job / "metrics.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r[metric] != ""]
    return float(rows[-1][metric]), float(rows[-1]["comm/eval_messages_per_step"])


def g(x: float) -> str:
    return f"{x:.4g}"


def test_tiny_study_runs_from_its_config_and_reports(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, str(TRAIN), "-m", "+study=tiny", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == [f"algo={a},env=pcp,seed={s},total_env_steps=2000" for a in ("full", "nocomm") for s in (1, 2)]
    assert swept_keys(sweep) == {"algo", "seed"}  # wandb and console names see the study's grid

    # the default report: success rates, every file
    out = tmp_path / "report"
    rows = report_main([str(sweep), "--per-run", "--out-dir", str(out)])
    text = capsys.readouterr().out
    assert (out / "report.md").read_text() == text
    assert [(r["env"], r["label"], r["metric"], r["seeds"]) for r in rows] == [
        ("pcp", "full", "eval/success", 2), ("pcp", "nocomm", "eval/success", 2)]
    for png in ("curves.png", "profiles.png", "messages.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # per run: the success rate of its last evaluation's 20 episodes with the Wilson interval
    assert "| 95% CI (Wilson) | msgs/step | env steps/s | run |" in text
    job = sweep / "algo=full,env=pcp,seed=1,total_env_steps=2000"
    success, messages = final_values(job, "eval/success")
    k = round(success * 20)
    lo, hi = wilson_interval(k, 20)
    assert (f"| pcp | full | 1 | 2000 | eval/success | {g(success)} | {k}/20 | [{g(lo)}, {g(hi)}] | {g(messages)} |"
            in text)

    # marl-eval's layout: env family -> task -> algorithm -> run -> step_k {step_count, metric: [v]}, absolute_metrics
    data = json.loads((out / "marl_eval.json").read_text())
    assert list(data) == ["predator_capture_prey"] and list(data["predator_capture_prey"]) == ["pcp"]
    algos = data["predator_capture_prey"]["pcp"]
    assert sorted(algos) == ["full", "nocomm"] and all(sorted(a) == ["run_1", "run_2"] for a in algos.values())
    run = algos["full"]["run_1"]
    assert list(run) == ["step_0", "step_1", "step_2", "step_3", "absolute_metrics"]
    assert [run[f"step_{k}"]["step_count"] for k in range(4)] == [500, 1000, 1500, 2000]  # every 5 iterations of 100
    assert set(run["step_3"]) == {"step_count", "return", "success", "steps", "messages_per_step"}
    assert run["step_3"]["success"] == [success] and run["absolute_metrics"]["success"] == [success]
    assert run["absolute_metrics"]["messages_per_step"] == [messages] == [6.0]  # 3 agents, each to both others

    # returns (continuous) for the numbers: IQM, bootstrap interval and P(X > Y), recomputed from each run's file
    tex = tmp_path / "returns.tex"
    report_main([str(sweep), "--metric", "eval/return", "--latex", str(tex)])
    text = capsys.readouterr().out
    finals = {a: [final_values(sweep / f"algo={a},env=pcp,seed={s},total_env_steps=2000", "eval/return")[0]
                  for s in (1, 2)] for a in ("full", "nocomm")}
    latex = tex.read_text()
    for algo, values in finals.items():
        lo, hi = bootstrap_ci(values, iqm, 2000, 0.95, 0)
        msgs = 6 if algo == "full" else 0
        line = (f"| pcp | {algo} | eval/return | 2 | {g(iqm(values))} | [{g(lo)}, {g(hi)}] | {g(np.mean(values))} | "
                f"2000 | {msgs} [{msgs}, {msgs}] | ")
        assert line in text
        # then the runs' env steps per second (a real run logs it), then the notes
        assert re.search(re.escape(line) + r"[1-9][\d,]* \| fewer than 5 seeds \|", text)
        assert f"pcp & {algo} & eval/return & 2 & {g(iqm(values))} & [{g(lo)}, {g(hi)}] & {msgs} \\\\" in latex
    x, y = sorted(finals, key=lambda a: (-iqm(finals[a]), a))  # X: the higher IQM
    p = probability_of_improvement(finals[x], finals[y])
    lo, hi = probability_of_improvement_ci(finals[x], finals[y], 2000, 0.95, 0)
    assert f"| pcp | {x} | {y} | eval/return | {g(p)} | [{g(lo)}, {g(hi)}] | - | - | 2 / 2 |" in text
    assert f"pcp & {x} & {y} & eval/return & {g(p)} & [{g(lo)}, {g(hi)}] & 2 / 2 \\\\" in latex
    assert latex.count("\\begin{tabular}") == 2 and latex.count("\\bottomrule") == 2
