"""scripts/ratio_from_marl_eval.py: IQM ratio and P(X > Y) from a tiny marl-eval JSON with known answers."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from commformer.analysis import stats

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "ratio_from_marl_eval.py"


def load_script():
    spec = importlib.util.spec_from_file_location("ratio_from_marl_eval", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_entry(final, curve=(0.0,)):
    """One run in marl-eval's layout: a curve ending at `final`, and absolute_metrics holding `final`."""
    steps = {f"step_{k}": {"step_count": 100 * (k + 1), "success": [v]} for k, v in enumerate(list(curve) + [final])}
    return {**steps, "absolute_metrics": {"success": [final]}}


def write_json(tmp_path, groups):
    data = {"family": {"task": {algo: {f"run_{i + 1}": run_entry(v) for i, v in enumerate(values)}
                                for algo, values in groups.items()}}}
    path = tmp_path / "marl_eval.json"
    path.write_text(json.dumps(data))
    return path


def test_constant_groups_give_exact_ratio_and_probability(tmp_path, capsys):
    path = write_json(tmp_path, {"a": [0.8, 0.8, 0.8, 0.8], "b": [0.4, 0.4, 0.4]})
    lines = load_script().main([str(path), "a", "b", "--threshold", "0.95", "--episodes", "100"])
    assert lines[1].startswith("a: 4 runs, final 0.8 0.8 0.8 0.8; IQM 0.8, variance between runs 0")
    assert "p(1-p)/100 0.0016" in lines[1]  # 0.8 x 0.2 / 100
    assert lines[3].startswith("IQM(a) / IQM(b) = 2 [2, 2]")
    assert lines[4] == "IQM(a) >= 0.95 x IQM(b): holds"
    assert lines[5] == "P(a > b) = 1 [1, 1]"
    assert capsys.readouterr().out.splitlines() == lines


def test_matches_the_stats_module_and_uses_the_final_value(tmp_path):
    x, y = [0.2, 0.9, 0.6, 0.7, 0.5], [0.6, 0.8, 0.7]
    path = write_json(tmp_path, {"x": x, "y": y})
    data = json.loads(path.read_text())
    del data["family"]["task"]["x"]["run_1"]["absolute_metrics"]  # the last step_k is then the final value
    path.write_text(json.dumps(data))
    lines = load_script().main([str(path), "x", "y", "--threshold", "0.95"])
    low, high = stats.iqm_ratio_ci(x, y, 2000, 0.95, 0)
    assert lines[3].startswith(f"IQM(x) / IQM(y) = {stats.iqm(x) / stats.iqm(y):.4g} [{low:.4g}, {high:.4g}]")
    assert lines[4] == "IQM(x) >= 0.95 x IQM(y): undecided"
    p_low, p_high = stats.probability_of_improvement_ci(x, y, 2000, 0.95, 0)
    assert lines[5] == f"P(x > y) = {stats.probability_of_improvement(x, y):.4g} [{p_low:.4g}, {p_high:.4g}]"


@pytest.mark.parametrize("args, message", [
    (["nope", "b"], "error: algo 'nope' not in the JSON; allowed: a, b\n"),
    (["a", "b", "--metric", "won"], "error: --metric='won'; not logged by every run of 'a'\n"),
])
def test_bad_input_is_one_error_line(tmp_path, args, message):
    path = write_json(tmp_path, {"a": [0.5, 0.6], "b": [0.4, 0.5]})
    done = subprocess.run([sys.executable, str(SCRIPT), str(path), *args], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "" and done.stderr == message


def write_evaluations(path, rates):
    """A scripts/evaluate.py --out JSON with one checkpoint per rate (only the fields the script reads)."""
    results = [{"checkpoint": f"run{i}/checkpoints/last.pt", "metrics": {"success": {"n": 500, "mean": r}}}
               for i, r in enumerate(rates)]
    path.write_text(json.dumps({"results": results}))
    return path


def test_evaluations_mode_compares_two_evaluate_outputs(tmp_path):
    """--evaluations X.json Y.json: each file's checkpoints are one group, named by the file's stem; the ratio of
    constant groups is exact and the verdict follows the threshold; a file without the metric is one error line."""
    x = write_evaluations(tmp_path / "learned.json", [0.9, 0.9, 0.9])
    y = write_evaluations(tmp_path / "random.json", [0.3, 0.3, 0.3])
    lines = load_script().main(["--evaluations", str(x), str(y), "--threshold", "0.95"])
    assert lines[1].startswith("learned: 3 runs, final 0.9 0.9 0.9; IQM 0.9")
    assert lines[3].startswith("IQM(learned) / IQM(random) = 3 [3, 3]")
    assert lines[4] == "IQM(learned) >= 0.95 x IQM(random): holds"
    lines = load_script().main(["--evaluations", str(y), str(x), "--threshold", "0.95"])
    assert lines[4] == "IQM(random) >= 0.95 x IQM(learned): does not hold"
    r = subprocess.run([sys.executable, str(SCRIPT), "--evaluations", str(x), str(y), "--metric", "won"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "'won'" in r.stderr and "success" in r.stderr
