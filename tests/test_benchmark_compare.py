"""scripts/benchmark.py --compare (commformer/analysis/compare.py): overrides, ratios, the table, reading a run,
process-tree memory, and one tiny real comparison of this checkout with its own HEAD in a git worktree."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from commformer.analysis import compare
from commformer.analysis.compare import (RunResult, comparison_rows, comparison_table, merge_overrides, ratio_stats,
                                         read_metrics)
from commformer.analysis.methods_bench import methods_main, methods_rows
from commformer.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def run(wall=10.0, cpu=8.0, steps=1000, iters=5, rollout=2.0, update=4.0, mem=300.0) -> RunResult:
    return RunResult(wall, cpu, steps, iters, rollout, update, mem, "PSS")


def test_merge_overrides_later_key_wins_in_place():
    assert merge_overrides(["logger=quiet", "seed=1"], ["seed=2", "+x=1"], ["algo.clip=0.05"]) == [
        "logger=quiet", "seed=2", "+x=1", "algo.clip=0.05"]
    assert merge_overrides(["a=1", "b=2"], ["a=3"]) == ["b=2", "a=3"]
    with pytest.raises(UsageError, match="expected key=value"):
        merge_overrides(["oops"])


def test_ratio_stats_min_and_median_per_pair():
    assert ratio_stats([2.0, 3.0, 4.0], [1.0, 1.0, 1.0]) == (2.0, 3.0)
    assert ratio_stats([1.0, 2.0], [2.0, 2.0], higher_is_better=False) == (1.0, 1.5)  # times: B / A
    lo, med = ratio_stats([1.0], [0.0])
    assert lo != lo and med != med  # nan where a side is 0
    with pytest.raises(ValueError, match="same number"):
        ratio_stats([1.0], [1.0, 2.0])


def test_run_result_rates():
    r = run()
    assert r.steps_per_wall_s == 100 and r.steps_per_cpu_s == 125 and r.rollout_steps_per_s == 500
    assert r.update_s_per_iter == 0.8


def test_comparison_table_has_every_row_with_speedups():
    a = [run(cpu=4.0, rollout=1.0), run(cpu=5.0, rollout=1.0), run(cpu=4.0, rollout=0.5)]
    b = [run(cpu=8.0), run(cpu=8.0), run(cpu=8.0)]
    rows = comparison_rows(a, b)
    assert [r[0] for r in rows[:3]] == ["env steps / wall s (whole run)", "env steps / CPU s (process tree)",
                                        "rollout env steps / s (sum of perf/rollout_s)"]
    cpu = rows[1]
    assert cpu[1] == "250" and cpu[2] == "125" and cpu[3] == "1.60x" and cpu[4] == "2.00x"
    assert rows[2][3] == "2.00x" and rows[2][4] == "2.00x"  # rollout: min 2x, median 2x
    assert rows[-1][0].startswith("peak memory") and rows[-1][1] == "300"
    text = comparison_table(a, b, "new", "old")
    lines = text.splitlines()
    assert lines[0].startswith("| metric | A: new (median) | B: old (median) | speedup A/B (min) |")
    assert len(lines) == 2 + len(rows)


def test_read_metrics_sums_perf_columns(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "iteration,env_steps,perf/rollout_s,perf/update_s,eval/return\n"
        "0,0,,,1.0\n"  # an eval-at-start row has no perf columns
        "1,100,0.5,1.0,\n"
        "2,200,0.25,2.0,3.0\n")
    assert read_metrics(tmp_path) == (200, 2, 0.75, 3.0)


def test_config_differences_name_changed_and_one_sided_keys(tmp_path):
    (tmp_path / "a.yaml").write_text("num_envs: 8\nrun_dir: /x\nalgo:\n  clip: 0.05\n  lr_decay: true\n"
                                     "logger:\n  progress: false\n")
    (tmp_path / "b.yaml").write_text("num_envs: 32\nrun_dir: /y\nalgo:\n  clip: 0.05\nlogger:\n  progress: true\n")
    diff = compare.config_differences(compare.flat_config(tmp_path / "a.yaml"), compare.flat_config(tmp_path / "b.yaml"))
    assert diff == ["num_envs: A=8 B=32", "only A has 1 keys: algo.lr_decay=True"]
    assert compare.flat_config(tmp_path / "missing.yaml") == {}


def test_tree_memory_of_this_process():
    kb, kind = compare.process_memory_kb(os.getpid())
    assert kb > 1000 and kind in ("PSS", "RSS")
    assert os.getpid() in compare.tree_pids(os.getpid())


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_compare_this_checkout_with_its_head_in_a_worktree(tmp_path):
    """The real path on a tiny budget: a worktree of HEAD, both sides' scripts/train.py as subprocesses, one pair.
    A ratio near 1 is not asserted (one pair on a shared machine), only that the table has its rows."""
    out = tmp_path / "table.md"
    text = compare.compare_main("HEAD", pairs=1, preset=None, out=out, warmup=False, b_overrides=[],
                                overrides=["total_env_steps=32", "num_envs=2", "rollout_length=16", "ppo_epochs=5",
                                           "eval_episodes=2", "eval_envs=2", "algo.warmup_iters=0"])
    assert out.read_text() == text
    assert "FEWER THAN 3 PAIRS" in text
    for label, _, _, _ in compare.METRICS:
        assert f"| {label} |" in text
    assert "| peak memory of the process tree" in text
    assert "- resolved configs" in text
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "commformer-bench-" not in worktrees  # removed again


def test_methods_rows_ratio_per_round_to_the_first_method():
    """Each method's median env steps per CPU s, and the median over rounds of its rate / the first method's rate in
    the same round (the load of a round cancels)."""
    rows = methods_rows({"commformer": [run(cpu=4.0), run(cpu=8.0), run(cpu=5.0)],
                         "mappo": [run(cpu=8.0), run(cpu=16.0), run(cpu=20.0)]})
    assert [r[0] for r in rows] == ["commformer", "mappo"]
    assert rows[0][1] == "200" and rows[0][5] == "1.00x"  # 1000 / median(4, 8, 5) CPU s
    assert rows[1][1] == "62" and rows[1][5] == "0.50x"  # ratios per round 0.5, 0.5, 0.25
    assert rows[1][3] == "16.0"


def test_methods_mode_runs_each_method_and_rejects_a_repeated_name(tmp_path):
    """The real path on a tiny budget: each method's scripts/train.py as a subprocess, one round."""
    with pytest.raises(UsageError, match="name each method once"):
        methods_main(["ippo", "ippo"], rounds=1, preset=None, overrides=[], out=None, warmup=False)
    out = tmp_path / "methods.md"
    text = methods_main(["nocomm", "ippo"], rounds=1, preset=None, out=out, warmup=False,
                                overrides=["total_env_steps=32", "num_envs=2", "rollout_length=16", "ppo_epochs=2",
                                           "eval_episodes=2", "eval_envs=2", "algo.warmup_iters=0"])
    assert out.read_text() == text and "FEWER THAN 3 ROUNDS" in text
    lines = [line for line in text.splitlines() if line.startswith("| nocomm |") or line.startswith("| ippo |")]
    assert len(lines) == 2 and lines[0].endswith("| 1.00x |")
    assert "algo=<method>" in text
