"""scripts/claims.py on hand-written study folders: the verdict rules and each claim's numbers and sentence."""
import pytest

from commformer.analysis import stats
from commformer.analysis.claims import both, claims_main, ratio_verdict, verdict
from commformer.analysis.tables import BOOT_SEED, CONFIDENCE, N_BOOT
from test_report_protocol import write_run

# final success rates of 5 seeds: a tight group, and one whose IQM has a wide interval (two bad seeds)
TIGHT_HIGH = [1.0, 0.98, 0.99, 1.0, 0.97]
SPREAD = [1.0, 1.0, 1.0, 0.5, 0.4]  # IQM 0.833 [0.433, 1]


def previous_rule(x, y, ratio=0.95):
    """The rule the ratio claims replaced: X's IQM interval against ratio x IQM(Y), Y's IQM taken as exact."""
    return verdict(*stats.bootstrap_ci(x, stats.iqm, N_BOOT, CONFIDENCE, BOOT_SEED), ratio * stats.iqm(y))


def test_verdict_rule():
    assert verdict(0.96, 1.0, 0.95) == "holds"
    assert verdict(0.95, 0.99, 0.95) == "holds"  # at the threshold counts
    assert verdict(0.5, 0.94, 0.95) == "does not hold"
    assert verdict(0.9, 1.0, 0.95) == "undecided"
    assert both("holds", "holds") == "holds"
    assert both("holds", "undecided") == "undecided"
    assert both("undecided", "does not hold") == "does not hold"


@pytest.mark.parametrize("x, y, expected, previous", [
    (TIGHT_HIGH, [1.0, 1.0, 1.0, 1.0, 0.9], "holds", "holds"),  # ratio 0.99 [0.977, 1.06]
    ([0.2, 0.3, 0.25, 0.3, 0.2], TIGHT_HIGH, "does not hold", "does not hold"),  # ratio 0.253 [0.201, 0.304]
    # Y's spread counts: IQM(X) 0.85 [0.817, 0.883] is above 0.95 x 0.833 = 0.792, but the ratio's interval
    # [0.833, 1.86] straddles 0.95 (the previous rule said holds) ...
    ([0.8, 0.85, 0.85, 0.9, 0.85], SPREAD, "undecided", "holds"),
    # ... and IQM(X) 0.75 [0.717, 0.783] is below 0.792, the ratio's interval [0.733, 1.64] straddles 0.95 (the
    # previous rule said does not hold)
    ([0.7, 0.75, 0.75, 0.8, 0.75], SPREAD, "undecided", "does not hold"),
])
def test_ratio_rule_resamples_both_groups(x, y, expected, previous):
    r = ratio_verdict(x, y, 0.95)
    assert r["verdict"] == expected
    assert r["ratio"] == pytest.approx(stats.iqm(x) / stats.iqm(y))
    assert r["ci"] == pytest.approx(list(stats.iqm_ratio_ci(x, y, N_BOOT, CONFIDENCE, BOOT_SEED)))
    assert previous_rule(x, y) == previous
    # holding needs the lower end at or above 0.95, failing the upper end below it
    lo, hi = r["ci"]
    assert (expected == "holds") == (lo >= 0.95) and (expected == "does not hold") == (hi < 0.95)


def test_ratio_is_undecided_with_negative_values():
    assert ratio_verdict([-1.0, 2.0, 3.0], [1.0, 1.0, 1.0], 0.95) == {"ratio": None, "ci": None,
                                                                       "verdict": "undecided"}


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
    # every full run beats every nocomm run: the interval is [1, 1] however many runs there are, and says so
    assert ("P(full > nocomm) = 1.00 [1, 1] (complete separation, every run of full above every run of nocomm: "
            "[1, 1] whatever the number of runs): yes.") in text
    assert ("**C1 holds**: IQM(commformer) / IQM(full) = 0.990 [0.977, 1.06] against 0.95 "
            "(IQM(commformer) 0.990 [0.973, 1], IQM(full) 1.000 [0.933, 1])") in text
    assert "**C2 holds**: P(commformer > random) = 1.00 [1, 1] (complete separation" in text
    assert "P(random > nocomm) = 1.00 [1, 1] (complete separation" in text
    # gated: 67% fewer messages, but IQM (0.2 + 0.25 + 0.3) / 3 = 0.25, far under 0.95 x 0.99
    assert "**C3 does not hold**: commformer_gated sends 1 messages per step against 3 (67% fewer" in text
    assert "IQM(commformer_gated) / IQM(commformer) = 0.253 [0.201, 0.304] against 0.95" in text
    assert "This page makes 5 comparisons, each decided by its own 95% interval" in text
    assert "Not run: `python scripts/train.py -m +study=c4_split_pcp`." in text
    assert "### c1c3_pp_easy" in text and "Not run: `python scripts/train.py -m +study=c1c3_pp_easy`." in text


def test_c2_fails_when_random_matches_the_learned_graph(tmp_path):
    finals = {p: [1.0] * 5 for p in ("full", "commformer", "random", "commformer_gated")}
    finals["nocomm"] = [0.0] * 5
    _c1c3(tmp_path, finals, {"full": 6.0, "commformer": 3.0, "random": 3.0, "nocomm": 0.0, "commformer_gated": 3.0})
    text = claims_main(["--studies", str(tmp_path)])
    # ties count one half; a [0.5, 0.5] interval is no separation and gets no note
    assert "**C2 does not hold**: P(commformer > random) = 0.50 [0.5, 0.5]; " in text
    assert "**C3 does not hold**" in text and "(0% fewer" in text


def test_c1_undecided_when_full_spreads(tmp_path):
    """commformer's IQM interval lies above 0.95 x IQM(full), but full's own spread leaves the ratio undecided."""
    finals = {"full": SPREAD, "commformer": [0.8, 0.85, 0.85, 0.9, 0.85], "random": [0.6, 0.5, 0.7, 0.6, 0.55],
              "nocomm": [0.1, 0.0, 0.2, 0.1, 0.0], "commformer_gated": [0.8, 0.85, 0.85, 0.9, 0.85]}
    _c1c3(tmp_path, finals, {"full": 6.0, "commformer": 3.0, "random": 3.0, "nocomm": 0.0, "commformer_gated": 1.0})
    text = claims_main(["--studies", str(tmp_path)])
    assert previous_rule(finals["commformer"], finals["full"]) == "holds"
    assert "**C1 undecided**: IQM(commformer) / IQM(full) = 1.020 [0.833, 1.86] against 0.95" in text
    # gated and commformer score alike with 67% fewer messages: gated's IQM interval [0.817, 0.883] lies above
    # 0.95 x 0.85 = 0.808 (the previous rule said holds), but resampling both leaves the ratio's lower end under 0.95
    assert previous_rule(finals["commformer_gated"], finals["commformer"]) == "holds"
    assert ("**C3 undecided**: commformer_gated sends 1 messages per step against 3 (67% fewer; needs >= 50%); "
            "IQM(commformer_gated) / IQM(commformer) = 1.000 [0.943, 1.04] against 0.95") in text


def _c4(root, split, alternate):
    sweep = root / "c4_split_pcp" / "2026-01-01_00-00-00"
    for bilevel, values in (("split", split), ("alternate", alternate)):
        for seed, v in enumerate(values, start=1):
            write_run(sweep / f"algo.bilevel={bilevel},seed={seed}", "commformer", seed,
                      [(100, 0.0, 3.0), (200, v, 3.0)], bilevel=bilevel)
    return sweep


@pytest.mark.parametrize("split, alternate, expected, previous, ratio", [
    (TIGHT_HIGH, [1.0, 1.0, 1.0, 1.0, 0.9], "holds", "holds", "0.990 [0.977, 1.06]"),
    ([0.2, 0.3, 0.25, 0.3, 0.2], TIGHT_HIGH, "does not hold", "does not hold", "0.253 [0.201, 0.304]"),
    ([0.7, 0.75, 0.75, 0.8, 0.75], SPREAD, "undecided", "does not hold", "0.900 [0.733, 1.64]"),
])
def test_c4_on_the_ratio_interval(tmp_path, split, alternate, expected, previous, ratio):
    _c4(tmp_path, split, alternate)
    text = claims_main(["--studies", str(tmp_path)])
    assert previous_rule(split, alternate) == previous
    assert (f"**C4 {expected}**: IQM(commformer algo.bilevel=split) / IQM(commformer algo.bilevel=alternate) = "
            f"{ratio} against 0.95") in text
    assert "This page makes 1 comparisons" in text


def test_separation_note_for_p_zero_and_the_count_over_studies(tmp_path):
    """P(split > alternate) = 0 with every alternate run above every split run: the [0, 0] note; C1-C3 and C4 together
    make 5 + 1 comparisons."""
    _c4(tmp_path, [0.2, 0.3, 0.25, 0.3, 0.2], TIGHT_HIGH)
    finals = {"full": [1.0] * 5, "commformer": [1.0] * 5, "random": [0.6] * 5, "nocomm": [0.0] * 5,
              "commformer_gated": [1.0] * 5}
    _c1c3(tmp_path, finals, {"full": 6.0, "commformer": 3.0, "random": 3.0, "nocomm": 0.0, "commformer_gated": 1.0})
    text = claims_main(["--studies", str(tmp_path)])
    assert ("P(commformer algo.bilevel=split > commformer algo.bilevel=alternate) = 0.00 [0, 0] (complete "
            "separation, every run of commformer algo.bilevel=alternate above every run of commformer "
            "algo.bilevel=split: [0, 0] whatever the number of runs) (shown, not decided)") in text
    assert "This page makes 6 comparisons" in text


def test_missing_presets_make_no_comparisons(tmp_path):
    _c1c3(tmp_path, {"full": [1.0] * 5, "nocomm": [0.0] * 5}, {"full": 6.0, "nocomm": 0.0})
    text = claims_main(["--studies", str(tmp_path)])
    assert "Missing presets: random, commformer, commformer_gated; no verdicts." in text
    assert "This page makes 0 comparisons" in text


def test_no_study_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        claims_main(["--studies", str(tmp_path / "none")])
    assert e.value.code != 0
    assert "no study has run under" in capsys.readouterr().err
