"""scripts/claims.py on hand-written study folders: the verdict rule and each claim's numbers and sentence."""
import pytest

from commformer.analysis.claims import both, claims_main, verdict
from commformer.errors import UsageError
from test_report_protocol import write_run


def test_verdict_rule():
    assert verdict(0.96, 1.0, 0.95) == "holds"
    assert verdict(0.95, 0.99, 0.95) == "holds"  # at the threshold counts
    assert verdict(0.5, 0.94, 0.95) == "does not hold"
    assert verdict(0.9, 1.0, 0.95) == "undecided"
    assert both("holds", "holds") == "holds"
    assert both("holds", "undecided") == "undecided"
    assert both("undecided", "does not hold") == "does not hold"


def _c1c3(root, finals, messages):
    sweep = root / "c1c3_pcp" / "2026-01-01_00-00-00"
    for algo, values in finals.items():
        graph = {"full": "full", "nocomm": "none", "random": "random"}.get(algo, "learned")
        for seed, v in enumerate(values, start=1):
            write_run(sweep / f"algo={algo},seed={seed}", algo, seed, [(100, 0.0, 3.0), (200, v, messages[algo])],
                      graph=graph)
    (sweep / "algo=full,seed=1" / "git_revision.txt").write_text("abcdef0123456789\n")
    return sweep


def test_c1_c2_c3_from_a_study(tmp_path, capsys):
    finals = {"full": [1.0, 1.0, 1.0, 1.0, 0.9], "commformer": [1.0, 0.98, 0.99, 1.0, 0.97],
              "random": [0.6, 0.5, 0.7, 0.6, 0.55], "nocomm": [0.1, 0.0, 0.2, 0.1, 0.0],
              "commformer_gated": [0.2, 0.3, 0.25, 0.3, 0.2]}
    messages = {"full": 6.0, "commformer": 3.0, "random": 3.0, "nocomm": 0.0, "commformer_gated": 1.0}
    _c1c3(tmp_path, finals, messages)
    text = claims_main(["--studies", str(tmp_path), "--out", str(tmp_path / "claims.md")])
    assert (tmp_path / "claims.md").read_text() == text
    assert "c1c3_pcp/2026-01-01_00-00-00 (commit abcdef0)" in text
    # full: IQM of [0.9, 1, 1, 1, 1] drops one at each end -> 1.0; commformer's IQM (0.98 + 0.99 + 1) / 3
    assert "| commformer | 5 | 0.99 |" in text and "| full | 5 | 1 |" in text
    assert "P(full > nocomm) = 1.00 [1, 1]: yes." in text
    assert "**C1 holds**: IQM(commformer) 0.990" in text and "0.95 x IQM(full) = 0.950" in text
    assert "**C2 holds**: P(commformer > random) = 1.00 [1, 1]; P(random > nocomm) = 1.00 [1, 1]" in text
    # gated: 67% fewer messages, but IQM (0.2 + 0.25 + 0.3) / 3 = 0.25, far under 0.95 x 0.99
    assert "**C3 does not hold**: commformer_gated sends 1 messages per step against 3 (67% fewer" in text
    assert "IQM 0.250" in text
    assert "Not run: `python scripts/train.py -m +study=c4_split_pcp`." in text
    assert "### c1c3_pp_easy" in text and "Not run: `python scripts/train.py -m +study=c1c3_pp_easy`." in text


def test_c2_fails_when_random_matches_the_learned_graph(tmp_path):
    finals = {p: [1.0] * 5 for p in ("full", "commformer", "random", "commformer_gated")}
    finals["nocomm"] = [0.0] * 5
    _c1c3(tmp_path, finals, {"full": 6.0, "commformer": 3.0, "random": 3.0, "nocomm": 0.0, "commformer_gated": 3.0})
    text = claims_main(["--studies", str(tmp_path)])
    assert "**C2 does not hold**: P(commformer > random) = 0.50 [0.5, 0.5]" in text  # ties count one half
    assert "**C3 does not hold**" in text and "(0% fewer" in text


def test_no_study_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        claims_main(["--studies", str(tmp_path / "none")])
    assert e.value.code != 0
    assert "no study has run under" in capsys.readouterr().err
