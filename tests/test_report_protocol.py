"""scripts/report.py's protocol on hand-written run folders: groups split by every differing config key and labelled
by what sets them apart, one run per seed, curves on a common env-step grid, the probability of improvement."""
import csv
import os

import numpy as np
import pytest
import yaml

from commformer.analysis.protocol import common_grid, group_curves, group_runs, on_grid
from commformer.analysis.report import report_main
from commformer.analysis.runs import read_run
from commformer.analysis.stats import probability_of_improvement, probability_of_improvement_ci

PP = {"name": "pp", "family": "predator_prey"}


def write_run(folder, algo, seed, evals, graph="learned", **algo_keys):
    """A run folder: config.yaml and metrics.csv with one row per (env_steps, success, messages) evaluation and a
    training-only row between evaluations."""
    folder.mkdir(parents=True)
    config = {"env": PP, "algo": {"name": algo, "graph": graph, "sparsity": 0.4, **algo_keys}, "seed": seed,
              "run_dir": str(folder), "total_env_steps": 400}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    keys = ["iteration", "env_steps", "train/return", "eval/success", "eval/episodes", "comm/eval_messages_per_step"]
    with (folder / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for i, (steps, success, messages) in enumerate(evals):
            w.writerow({"iteration": 2 * i + 1, "env_steps": steps - 50, "train/return": -1.0})
            w.writerow({"iteration": 2 * i + 2, "env_steps": steps, "train/return": -1.0, "eval/success": success,
                        "eval/episodes": 10, "comm/eval_messages_per_step": messages})
    return folder


@pytest.fixture
def sparsity_runs(tmp_path):
    """pp: commformer at S = 0.2 and 0.4 and full, 3 seeds each; final success rates below."""
    finals = {("commformer", 0.2): [0.2, 0.4, 0.3], ("commformer", 0.4): [0.6, 0.9, 0.7],
              ("full", 0.4): [0.8, 0.5, 1.0]}
    for (algo, s), values in finals.items():
        graph = "full" if algo == "full" else "learned"
        messages = 6.0 if graph == "full" else 3.0 * s / 0.4
        for seed, v in enumerate(values, start=1):
            write_run(tmp_path / f"{algo}_{s}_{seed}", algo, seed, [(100, 0.0, 3.0), (200, v, messages)],
                      graph=graph, sparsity=s)
    return tmp_path, finals


def test_groups_split_by_every_differing_key_labelled_by_what_sets_them_apart(sparsity_runs, capsys):
    root, finals = sparsity_runs
    rows = report_main([str(root)])
    # algo.graph differs too, but the preset sets it: only the sparsity, which splits commformer, is shown
    assert [(r["label"], r["keys"], r["seeds"], r["values"]) for r in rows] == [
        ("commformer algo.sparsity=0.2", {"algo.sparsity": 0.2}, 3, finals[("commformer", 0.2)]),
        ("commformer algo.sparsity=0.4", {"algo.sparsity": 0.4}, 3, finals[("commformer", 0.4)]),
        ("full", {}, 3, finals[("full", 0.4)])]
    assert [r["messages"] for r in rows] == pytest.approx([1.5, 3.0, 6.0])
    text = capsys.readouterr().out
    assert "| pp | commformer algo.sparsity=0.2 | eval/success | 3 | 0.3 | " in text
    assert "| 200 | 6 [6, 6] | - | fewer than 5 seeds |" in text  # messages per step beside the numbers
    # every pair of the env, X the one with the higher IQM: full (0.767) > S=0.4 (0.733) > S=0.2 (0.3)
    comps = [(c["x"], c["y"]) for c in rows[0]["comparisons"] + rows[2]["comparisons"]]
    assert ("commformer algo.sparsity=0.4", "commformer algo.sparsity=0.2") in comps
    assert ("full", "commformer algo.sparsity=0.2") in comps and ("full", "commformer algo.sparsity=0.4") in comps


def test_compare_one_pair_by_label_or_preset(sparsity_runs, capsys):
    root, finals = sparsity_runs
    rows = report_main([str(root), "--compare", "commformer algo.sparsity=0.4", "full"])
    (c,) = {id(c): c for r in rows for c in r["comparisons"]}.values()
    x, y = finals[("commformer", 0.4)], finals[("full", 0.4)]
    # by hand: 0.6 beats none of (0.8, 0.5, 1.0) but 0.5; 0.9 beats 0.8 and 0.5; 0.7 beats 0.5 -> 4 of 9
    assert c["p"] == pytest.approx(4 / 9) == probability_of_improvement(x, y)
    assert c["ci"] == list(probability_of_improvement_ci(x, y, 2000, 0.95, 0))
    text = capsys.readouterr().out
    assert f"| pp | commformer algo.sparsity=0.4 | full | eval/success | 0.4444 | [{c['ci'][0]:.4g}, " in text
    with pytest.raises(SystemExit) as info:
        report_main([str(root), "--compare", "commformer", "full"])  # two commformer groups: ambiguous
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --compare 'commformer' 'full': no env has both; groups: commformer algo.sparsity=0.2, "
                   "commformer algo.sparsity=0.4, full"]


def test_a_repeated_seed_counts_once_the_latest_run(tmp_path, caplog):
    old = write_run(tmp_path / "a_old", "full", 1, [(100, 0.1, 6.0)], graph="full")
    write_run(tmp_path / "b_new", "full", 1, [(100, 0.9, 6.0)], graph="full")
    write_run(tmp_path / "c", "full", 2, [(100, 0.5, 6.0)], graph="full")
    os.utime(old / "metrics.csv", (1e9, 1e9))  # the older of seed 1's two runs, though its folder sorts first
    (row,) = report_main([str(tmp_path)])
    assert row["seeds"] == 2 and row["values"] == [0.9, 0.5]
    assert "seed 1: 2 runs, the latest counted" in row["notes"]
    assert f"left out: {old}" in caplog.text


def test_curves_are_interpolated_on_a_common_grid(tmp_path):
    a = read_run(write_run(tmp_path / "a", "full", 1, [(100, 0.0, 6.0), (300, 0.4, 6.0)], graph="full"))
    b = read_run(write_run(tmp_path / "b", "full", 2, [(200, 0.2, 6.0), (400, 1.0, 6.0)], graph="full"))
    # different evaluation steps: evenly spaced over the range both cover, 200..300
    grid = common_grid([[(100, 0.0), (300, 0.4)], [(200, 0.2), (400, 1.0)]], points=3)
    np.testing.assert_array_equal(grid, [200, 250, 300])
    found_grid, values = group_curves([a, b], ["eval/success", "comm/eval_messages_per_step"], points=3)
    np.testing.assert_array_equal(found_grid, grid)
    np.testing.assert_allclose(values["eval/success"], [[0.2, 0.3, 0.4], [0.2, 0.4, 0.6]])
    np.testing.assert_allclose(values["comm/eval_messages_per_step"], np.full((2, 3), 6.0))
    # the same evaluation steps: exactly those, no interpolation
    np.testing.assert_array_equal(common_grid([[(100, 1.0), (200, 2.0)], [(100, 3.0), (200, 4.0)]]), [100, 200])
    assert common_grid([[(100, 1.0)], [(200, 2.0)]]) is None  # no overlap
    np.testing.assert_allclose(on_grid([(0, 0.0), (10, 1.0)], np.array([5.0])), [0.5])


def test_merge_pools_a_key_and_groups_sort_by_env_then_label(tmp_path):
    runs = [read_run(write_run(tmp_path / f"r{s}", "commformer", s, [(100, 0.5, 3.0)], lr=lr))
            for s, lr in [(1, 1e-3), (2, 2e-3)]]
    assert [g.label for g in group_runs(runs)] == ["commformer algo.lr=0.001", "commformer algo.lr=0.002"]
    (merged,) = group_runs(runs, merge=["algo.lr"])
    assert merged.label == "commformer" and [r.seed for r in merged.runs] == [1, 2]


def test_env_steps_per_second_is_the_median_per_run_then_the_iqm_over_runs(tmp_path, capsys):
    """The speed column: each run's median over iterations of perf/env_steps_per_s (one slow iteration does not move
    it), the IQM over runs in the summary; '-' for a group whose runs do not log it."""
    speeds = {1: [100.0, 1000.0, 1100.0, 1200.0, 50.0], 2: [2000.0, 2100.0, 2200.0], 3: [3000.0, 10.0, 3100.0]}
    for seed, values in speeds.items():
        folder = write_run(tmp_path / f"ic3net_{seed}", "ic3net", seed, [(100, 0.5, 2.0)])
        rows = list(csv.DictReader((folder / "metrics.csv").open()))
        with (folder / "metrics.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) + ["perf/env_steps_per_s"])
            w.writeheader()
            for i, v in enumerate(values):
                w.writerow({**(rows[i] if i < len(rows) else {"iteration": 10 + i, "env_steps": 100}),
                            "perf/env_steps_per_s": v})
    write_run(tmp_path / "nocomm_1", "nocomm", 1, [(100, 0.5, 0.0)])
    rows = report_main([str(tmp_path), "--per-run"])
    ic3net, nocomm = rows
    assert [p["throughput"] for p in ic3net["per_run"]] == [1000.0, 2100.0, 3000.0]
    assert ic3net["throughput"] == pytest.approx(6100.0 / 3)  # the IQM of 3 runs drops none: their mean
    assert nocomm["throughput"] is None and nocomm["per_run"][0]["throughput"] is None
    text = capsys.readouterr().out
    assert "| 2,033 |" in text and "| 1,000 |" in text and "| 2,100 |" in text
    nocomm_line = next(line for line in text.splitlines() if line.startswith("| pp | nocomm | eval/success | 1 |"))
    assert "| - |" in nocomm_line
