"""Metrics (accuracy, clustered bootstrap intervals, breakdowns, macro, VNBench groups) and the
paired comparison of two runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eval.compare import compare_runs, mcnemar_exact, paired_bootstrap_ci
from eval.metrics import bootstrap_ci, compute_metrics


def _pred(qid, correct, status="answered", cluster=None, group="", **breakdown):
    return {
        "qid": qid,
        "correct": correct,
        "status": status,
        "cluster": cluster or qid,
        "group": group,
        "breakdown": breakdown,
    }


def test_counts_unanswered_as_wrong_and_excludes_errors() -> None:
    preds = [
        _pred("a", True),
        _pred("b", False),
        _pred("c", False, "unanswered"),
        _pred("d", None, "error"),
        _pred("e", None, "judge_error"),
        _pred("f", True),
    ]
    m = compute_metrics(preds, n_boot=200)["overall"]
    assert (m["n"], m["scored"], m["correct"], m["unanswered"], m["errors"], m["judge_errors"]) == (
        6,
        4,
        2,
        1,
        1,
        1,
    )
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["accuracy_answered"] == pytest.approx(2 / 3)


def test_iid_bootstrap_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(1)
    correct = rng.random(400) < 0.5
    lo, hi = bootstrap_ci(correct, [str(i) for i in range(400)], n_boot=4000, seed=0)
    p = correct.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / 400)
    assert lo < p < hi
    assert (hi - lo) / 2 == pytest.approx(half, abs=0.006)


def test_cluster_bootstrap_widens_when_questions_share_a_video() -> None:
    # 20 videos x 10 questions, right or wrong together: effectively 20 observations, not 200.
    per_video = np.array([1, 0] * 10, dtype=bool)
    correct = np.repeat(per_video, 10)
    videos = np.repeat([f"v{i}" for i in range(20)], 10)
    lo_c, hi_c = bootstrap_ci(correct, list(videos), n_boot=3000)
    lo_i, hi_i = bootstrap_ci(correct, [str(i) for i in range(200)], n_boot=3000)
    assert (hi_c - lo_c) > 2.5 * (hi_i - lo_i)
    assert (hi_c - lo_c) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / 20), abs=0.03)


def test_breakdowns_and_macro_headline() -> None:
    preds = [_pred(f"x{i}", i < 9, task="count") for i in range(10)]  # 0.9
    preds += [_pred(f"y{i}", i < 1, task="order") for i in range(2)]  # 0.5
    m = compute_metrics(preds, breakdown_keys=("task",), headline="macro", n_boot=500)
    assert m["breakdown"]["task"]["count"]["accuracy"] == pytest.approx(0.9)
    assert m["breakdown"]["task"]["order"]["accuracy"] == pytest.approx(0.5)
    assert m["overall"]["accuracy"] == pytest.approx(10 / 12)
    assert m["score"] == pytest.approx(0.7) and m["macro"]["key"] == "task"
    lo, hi = m["score_ci95"]
    assert lo <= 0.7 <= hi


def test_groups_count_only_when_every_try_is_right() -> None:
    preds = [_pred(f"g1_{t}", True, group="g1", type="ret") for t in range(4)]
    preds += [_pred(f"g2_{t}", t != 2, group="g2", type="ret") for t in range(4)]
    preds += [
        _pred(f"g3_{t}", True, "unanswered" if t == 0 else "answered", group="g3", type="cnt")
        for t in range(4)
    ]
    preds += [
        _pred(f"g4_{t}", True, "error" if t == 3 else "answered", group="g4", type="cnt")
        for t in range(4)
    ]
    m = compute_metrics(
        preds, breakdown_keys=("type",), group_all=True, headline="macro", n_boot=200
    )
    assert m["unit"] == "group"
    o = m["overall"]
    assert (o["n"], o["scored"], o["correct"], o["unanswered"], o["errors"]) == (4, 3, 1, 1, 1)
    assert m["breakdown"]["type"]["ret"]["accuracy"] == pytest.approx(0.5)
    assert m["score"] == pytest.approx(0.25)  # mean of ret 0.5 and cnt 0.0


def test_mcnemar_exact_known_values() -> None:
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(7, 7) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_bootstrap_interval() -> None:
    diff = np.array([1.0] * 30 + [0.0] * 70)
    lo, hi = paired_bootstrap_ci(diff, [str(i) for i in range(100)], n_boot=2000)
    assert lo > 0.1 and hi < 0.5


def _write_run(root, name, preds):
    d = root / name
    d.mkdir(parents=True)
    (d / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (d / "metrics.json").write_text(json.dumps({"unit": "question"}))


def test_compare_runs_counts_wins_losses_and_exclusions(tmp_path) -> None:
    a = [_pred(f"q{i}", i < 15) for i in range(20)] + [_pred("qe", None, "error")]
    b = [_pred(f"q{i}", i < 5 or i >= 18) for i in range(20)] + [_pred("qe", True)]
    _write_run(tmp_path / "A", "synth", a)
    _write_run(tmp_path / "B", "synth", b)
    res = compare_runs(tmp_path / "A", tmp_path / "B", n_boot=500)["benchmarks"]["synth"]
    assert (
        res["n"],
        res["wins"],
        res["losses"],
        res["ties_right"],
        res["ties_wrong"],
        res["excluded"],
    ) == (20, 10, 2, 5, 3, 1)
    assert res["accuracy_a"] == pytest.approx(0.75) and res["accuracy_b"] == pytest.approx(0.35)
    assert res["mcnemar_p"] == pytest.approx(mcnemar_exact(10, 2))
    assert res["difference_ci95"][0] > 0
    assert sorted(res["loss_ids"]) == ["q18", "q19"]


def test_compare_rejects_unrelated_runs(tmp_path) -> None:
    _write_run(tmp_path / "A", "mlvu", [_pred("a", True)])
    _write_run(tmp_path / "A", "nextqa", [_pred("a", True)])
    _write_run(tmp_path / "B", "synth", [_pred("a", True)])
    with pytest.raises(ValueError, match="share no benchmark"):
        compare_runs(tmp_path / "A", tmp_path / "B")
    with pytest.raises(FileNotFoundError, match="not an eval output"):
        compare_runs(tmp_path / "A", tmp_path / "nothing")
