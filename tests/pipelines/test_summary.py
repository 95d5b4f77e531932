"""The printed summary says each gate's verdict and detectable effect in plain words."""

from pipelines.summary import format_summary, gate_verdicts

BASE = {
    "auc_ad": 0.69, "gauc_ad": 0.72, "auc_content": 0.74, "gauc_content": 0.74,
    "auc_cold_start": 0.71, "blessed": True, "pushed": True, "pushed_path": "/s/lfm4ads/7",
    "pushed_version": 7, "ur_rows": 10, "ir_rows": 20, "cr_users": 5, "cr_items": 6,
    "cr_domains": "ad", "guard": "passed", "guard_reasons": [], "published": True,
    "live_representations_version": 7,
    "lee_verdict": "published", "lee_blessed": True, "lee_comparison": "inconclusive",
    "lee_delta": -0.013, "lee_delta_low": -0.0493, "lee_delta_high": 0.0233,
    "lee_detectable_effect": 0.0518, "lee_candidate_auc": 0.5396, "lee_reference_auc": 0.5526,
    "lee_reference": "none", "lee_test_rows": 2810, "lee_test_clicks": 108,
    "lee_test_users": 1500, "lee_min_test_clicks": 20,
    "lee_reasons": ["first publication: nothing live to protect; published unless shown worse "
                    "than no representations"],
}
DOWNSTREAM = {
    "downstream_auc": 0.56, "downstream_gauc": 0.6, "downstream_baseline_auc": 0.57,
    "downstream_baseline_gauc": 0.52, "downstream_last_blessed_auc": 0.55,
    "downstream_auc_cold_start": 0.47, "downstream_eval_examples": 2810,
    "downstream_eval_rows": 2810, "downstream_eval_clicks": 108, "downstream_min_clicks": 20,
    "downstream_vs_none_comparison": "better", "downstream_vs_none_delta": 0.06,
    "downstream_vs_none_delta_low": 0.01, "downstream_vs_none_delta_high": 0.11,
    "downstream_vs_none_detectable_effect": 0.0716,
    "downstream_vs_last_blessed_comparison": "inconclusive",
    "downstream_vs_last_blessed_delta": 0.01, "downstream_vs_last_blessed_delta_low": -0.02,
    "downstream_vs_last_blessed_delta_high": 0.04,
    "downstream_vs_last_blessed_detectable_effect": 0.0429, "downstream_blessed": False,
    "downstream_pushed": False, "downstream_pushed_path": None,
    "downstream_blessing_reasons": [
        "not shown better than the last blessed ranker: the live ranker stays"],
}


def _lines(text: str, label: str) -> list[str]:
    return [row[len(label):].strip() for row in text.splitlines()
            if row.startswith(label + " ")]


def _line(text: str, label: str) -> str:
    (line,) = _lines(text, label)
    return line


def test_each_gate_says_its_verdict_and_detectable_effect():
    text = format_summary({**BASE, **DOWNSTREAM})
    assert _lines(text, "  vs none")[0] == (  # the LEE's (the ranker's comes second)
        "inconclusive: 108 test clicks resolve only differences above 0.052 AUC (delta "
        "-0.0130, 95% interval [-0.0493, +0.0233])")
    rows = text.splitlines()
    ranker = rows[[r.startswith("downstream AUC") for r in rows].index(True) + 1:]
    assert ranker[0].split(None, 2)[2] == (
        "better: +0.0600 AUC, 95% interval [+0.0100, +0.1100] (108 test clicks resolve "
        "differences above 0.072)")
    assert ranker[1].startswith("  vs last blessed") and ranker[1].endswith(
        "inconclusive: 108 test clicks resolve only differences above 0.043 AUC (delta "
        "+0.0100, 95% interval [-0.0200, +0.0400])")
    assert "the live ranker stays" in ranker[3]


def test_a_first_ranker_and_an_unmeasured_evaluator():
    summary = {**BASE, "lee_comparison": "inconclusive", "lee_delta": None,
               "lee_detectable_effect": None, "lee_reference": None, "lee_test_clicks": 7,
               "lee_reasons": ["not evaluated: too few"],
               **DOWNSTREAM, "downstream_vs_last_blessed_comparison": None}
    assert gate_verdicts(summary)["lee"] == (
        "inconclusive: 7 test clicks, too few to compare AUCs (at least 20 needed)")
    text = format_summary(summary)
    assert _line(text, "embedding evaluator") == "published (not evaluated)"
    assert _line(text, "  verdict") == gate_verdicts(summary)["lee"]
    assert _line(text, "  vs last blessed") == (
        "no ranker blessed before: nothing live to compare")
    no_gates = {k: v for k, v in BASE.items() if not k.startswith("lee_")}
    assert gate_verdicts(no_gates) == {}
    assert "embedding evaluator" not in format_summary(no_gates)
