"""scripts/listeners.py: which receivers hear a sender (the scout task) or their own source (the signal game) in a
run's final evaluation graph, counting only strict choices of a learned graph."""
from core_utils import make_config, signal_env

from commformer.analysis.listeners import listeners_main, source_rows, strict_listeners
from commformer.training.graph_history import read_history
from commformer.training.trainer import Trainer


def test_a_tie_of_alpha_is_not_a_choice():
    record = {"graph": [[0, 1, 0], [1, 0, 0], [0, 1, 0]],
              "alpha": [[0.0, 2.0, 1.0], [1.0, 0.0, 1.0], [0.5, 0.7, 0.0]]}
    assert strict_listeners(record, 1, [0, 2]) == [0, 2]
    assert strict_listeners(record, 0, [1]) == []  # alpha[1, 0] ties alpha[1, 2]: top-k broke the tie, not alpha
    assert strict_listeners({"graph": record["graph"], "alpha": None}, 0, [1]) == [1]  # a fixed graph as it is
    assert strict_listeners(record, 2, [0, 1]) == []  # nobody selects sender 2


def test_source_rows_count_the_receivers_hearing_their_source(tmp_path, capsys):
    cfg = make_config(tmp_path / "run", env=signal_env(), iterations=2, algo={"sparsity": 0.25})
    Trainer(cfg, cfg.run_dir).train()
    record = read_history(tmp_path / "run")[-1]
    n = len(record["graph"])
    want = sum(1 for i in range(n) if strict_listeners(record, (i + 1) % n, [i]))
    rows = source_rows([tmp_path], 1, "eval/success")
    assert len(rows) == 1 and rows[0][3] == "1" and rows[0][5] == f"{want} of {n}"
    listeners_main([str(tmp_path), "--shift", "1"])
    assert f"{want} of {n}" in capsys.readouterr().out
