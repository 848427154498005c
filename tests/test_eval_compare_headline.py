"""`longrl eval compare` tests each benchmark's own headline (issue 14.2): MLVU's M-Avg (mean over
its tasks) and VNBench's macro over needle types of 4-try groups, on constructed pairs of runs
where the micro accuracy over questions is the same in both runs but the headline is not.

The runs are written as the runner writes them: predictions.jsonl records built by
eval.runner.base_record from the registered task's EvalItems, metrics.json by
eval.metrics.compute_metrics with the task's own scoring fields."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from eval.compare import compare_runs, mcnemar_exact, sign_flip_p, stratified_bootstrap_ci
from eval.metrics import compute_metrics
from eval.runner import base_record
from eval.task import EvalItem, get_task
from pipelines.cli import app


def _record(task, item: EvalItem, correct: bool | None, status: str = "answered") -> dict:
    letter = item.answer if correct else next(x for x in item.letters() if x != item.answer)
    return {
        **base_record(task, item),
        "status": status,
        "correct": correct,
        "error": "video: unreadable" if status == "error" else None,
        "prompt": "p",
        "raw_output": None if status == "error" else letter,
        "extracted": None if status == "error" else letter,
    }


def _write_run(out: Path, task, records: list[dict]) -> dict:
    bench = out / task.name
    bench.mkdir(parents=True)
    (bench / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = compute_metrics(
        records, task.breakdown_keys, task.group_all, task.headline, n_boot=200, seed=0
    )
    metrics.update(benchmark=task.name, task=task.name)
    (bench / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def _micro(records: list[dict]) -> float:
    scored = [r for r in records if r["status"] in ("answered", "unanswered")]
    return sum(bool(r["correct"]) for r in scored) / len(scored)


# MLVU: one big task and six small ones; A is good on the small tasks, B on the big one.
SMALL = ("needle", "ego", "count", "order", "anomaly_reco", "topic_reasoning")


def _mlvu_items() -> list[EvalItem]:
    items = []
    for qtype, n in (("plotQA", 100), *((t, 10) for t in SMALL)):
        for i in range(n):
            items.append(
                EvalItem(
                    qid=f"{qtype}_{i}",
                    video_path=f"video/{qtype}/{i // 2}.mp4",
                    question="q?",
                    answer="B",
                    options=["w", "x", "y", "z"],
                    breakdown={"question_type": qtype},
                    cluster=f"{qtype}/{i // 2}.mp4",  # two questions per video
                )
            )
    return items


def _index(qid: str) -> int:
    return int(qid.rsplit("_", 1)[1])


def test_mlvu_compares_the_mean_over_tasks(tmp_path) -> None:
    task = get_task("mlvu")
    items = _mlvu_items()
    right_a = {
        it.qid for it in items if it.breakdown["question_type"] != "plotQA" or _index(it.qid) < 40
    }
    right_b = {it.qid for it in items if it.breakdown["question_type"] == "plotQA"}
    rec_a = [_record(task, it, it.qid in right_a) for it in items]
    rec_b = [_record(task, it, it.qid in right_b) for it in items]
    m_a = _write_run(tmp_path / "A", task, rec_a)
    m_b = _write_run(tmp_path / "B", task, rec_b)
    assert _micro(rec_a) == pytest.approx(_micro(rec_b))  # 100 / 160 each: micro shows nothing

    # the headline, computed here from the definition: mean over tasks of each task's accuracy
    def m_avg(right: set[str]) -> float:
        types = sorted({it.breakdown["question_type"] for it in items})
        return float(
            np.mean(
                [
                    np.mean([it.qid in right for it in items if it.breakdown["question_type"] == t])
                    for t in types
                ]
            )
        )

    expected = m_avg(right_a) - m_avg(right_b)
    assert expected == pytest.approx((0.4 + 6) / 7 - 1 / 7)
    assert m_a["score"] - m_b["score"] == pytest.approx(expected)  # what each run reported

    res = compare_runs(tmp_path / "A", tmp_path / "B", n_boot=1000)["benchmarks"]["mlvu"]
    assert res["headline"] == "macro" and res["macro_key"] == "question_type"
    assert "macro" in res["metric"] and "question_type" in res["metric"]
    assert res["difference"] == pytest.approx(expected)
    assert res["accuracy_a"] == pytest.approx(m_avg(right_a))
    assert res["accuracy_b"] == pytest.approx(m_avg(right_b))
    lo, hi = res["difference_ci95"]
    assert 0.5 < lo < expected < hi < 1.0
    assert res["p_value"] < 0.01
    # the question-level counts are still there, and they alone would say "no difference"
    assert (res["wins"], res["losses"]) == (60, 60) and res["mcnemar_p"] == 1.0
    assert res["micro"]["difference"] == pytest.approx(0.0)
    by = res["by_question_type"]
    assert list(by) == sorted(by) and by["plotQA"]["difference"] == pytest.approx(-0.6)
    assert by["needle"]["wins"] == 10 and by["needle"]["mcnemar_p"] == mcnemar_exact(10, 0)

    # the same runs through the command line, which shows the headline numbers
    out = tmp_path / "cmp.json"
    r = CliRunner().invoke(
        app, ["eval", "compare", str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert f"{100 * expected:+.1f}" in r.output
    assert json.loads(out.read_text())["benchmarks"]["mlvu"]["difference"] == pytest.approx(
        expected
    )


def test_equal_runs_are_no_difference(tmp_path) -> None:
    task = get_task("mlvu")
    items = _mlvu_items()
    recs = [_record(task, it, _index(it.qid) % 3 == 0) for it in items]
    _write_run(tmp_path / "A", task, recs)
    _write_run(tmp_path / "B", task, recs)
    res = compare_runs(tmp_path / "A", tmp_path / "B", n_boot=200)["benchmarks"]["mlvu"]
    assert res["difference"] == 0.0 and res["p_value"] == 1.0
    assert res["difference_ci95"] == [0.0, 0.0]


def _vnbench_items() -> list[EvalItem]:
    """30 videos with a retrieval needle, the first 10 also with a counting needle; 4 tries
    each."""
    items = []
    for v in range(30):
        for needle in ("ret_insert1", *(("cnt_edit1",) if v < 10 else ())):
            for t in range(4):
                group = f"v{v}_{needle}"
                items.append(
                    EvalItem(
                        qid=f"{group}_try{t}",
                        video_path=f"VNBench_new/v{v}.mp4",
                        question="q?",
                        answer="A",
                        options=["w", "x", "y", "z"],
                        breakdown={"type": needle, "task": needle[:3]},
                        cluster=f"v{v}",
                        group=group,
                    )
                )
    return items


def test_vnbench_pairs_groups_and_compares_the_macro_over_needle_types(tmp_path) -> None:
    task = get_task("vnbench")
    assert task.group_all and task.headline == "macro"
    items = _vnbench_items()

    def try_of(it: EvalItem) -> int:
        return int(it.qid.rsplit("try", 1)[1])

    def video(it: EvalItem) -> int:
        return int(it.cluster[1:])

    # A: retrieval groups of videos 0-19 all right, videos 20-29 all wrong, counting all wrong;
    # B: every group half right (2 of 4 tries) - so no group of B counts
    def a_right(it: EvalItem) -> bool:
        return it.breakdown["type"] == "ret_insert1" and video(it) < 20

    rec_a = [_record(task, it, a_right(it)) for it in items]
    rec_b = [_record(task, it, try_of(it) < 2) for it in items]
    # one errored try in A takes its whole group (v29 retrieval) out of the pair
    errored = next(i for i, it in enumerate(items) if it.qid == "v29_ret_insert1_try3")
    rec_a[errored] = _record(task, items[errored], None, "error")
    _write_run(tmp_path / "A", task, rec_a)
    _write_run(tmp_path / "B", task, rec_b)
    assert _micro(rec_a) == pytest.approx(80 / 159) and _micro(rec_b) == pytest.approx(0.5)

    # the headline from the definition, on the 39 groups scored in both runs
    groups = sorted({it.group for it in items} - {"v29_ret_insert1"})

    def group_right(records: list[dict], g: str) -> bool:
        return all(r["correct"] for r in records if r["group"] == g)

    def macro(records: list[dict]) -> float:
        types = sorted({g.split("_", 1)[1] for g in groups})
        return float(
            np.mean(
                [np.mean([group_right(records, g) for g in groups if g.endswith(t)]) for t in types]
            )
        )

    expected = macro(rec_a) - macro(rec_b)
    assert expected == pytest.approx((20 / 29 + 0) / 2)

    res = compare_runs(tmp_path / "A", tmp_path / "B", n_boot=1000)["benchmarks"]["vnbench"]
    assert res["unit"] == "group" and res["headline"] == "macro" and res["macro_key"] == "type"
    assert "groups" in res["metric"] and "type" in res["metric"]
    assert (res["n"], res["excluded"]) == (39, 1)
    assert res["difference"] == pytest.approx(expected)
    assert res["p_value"] < 0.01
    assert res["difference_ci95"][0] > 0.15
    # McNemar over groups: 20 wins, no loss (over tries it would be 80 wins vs 79 losses)
    assert (res["wins"], res["losses"]) == (20, 0)
    assert res["mcnemar_p"] == pytest.approx(mcnemar_exact(20, 0))
    assert res["micro"]["difference"] == pytest.approx(20 / 39)
    assert res["by_type"]["cnt_edit1"]["difference"] == 0.0


def test_without_metrics_json_the_registered_task_decides(tmp_path) -> None:
    """A benchmark folder whose run died before metrics.json still compares on the headline:
    the predictions name their benchmark, the registry says how it is scored."""
    task = get_task("mlvu")
    items = _mlvu_items()
    right_a = {it.qid for it in items if it.breakdown["question_type"] != "plotQA"}
    for name, right in (("A", right_a), ("B", set())):
        d = tmp_path / name / "mlvu"
        d.mkdir(parents=True)
        recs = [_record(task, it, it.qid in right) for it in items]
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = compare_runs(tmp_path / "A", tmp_path / "B", n_boot=200)["benchmarks"]["mlvu"]
    assert res["headline"] == "macro" and res["difference"] == pytest.approx(6 / 7)


def test_sign_flip_and_stratified_interval_by_hand() -> None:
    # three videos, two categories; exact enumeration of the 8 sign patterns
    diff = np.array([1.0, 1.0, 0.0, -1.0])
    clusters = ["v1", "v2", "v3", "v3"]
    cats = ["x", "x", "y", "y"]
    # macro = mean(x: 1, y: -0.5) = 0.25; cluster weights: v1 0.25, v2 0.25, v3 -0.25
    # |s . w| >= 0.25 for every sign pattern -> p = 1
    assert sign_flip_p(diff, clusters, cats) == 1.0
    # micro over 6 videos all +1: only the all-plus and all-minus patterns reach 1 -> p = 2/64
    assert sign_flip_p(np.ones(6), [str(i) for i in range(6)]) == pytest.approx(2 / 64)
    lo, hi = stratified_bootstrap_ci(np.array([1.0, 1.0, 0.0, 0.0]), ["a", "b", "c", "d"],
                                     ["x", "x", "y", "y"], n_boot=200)  # fmt: skip
    assert lo == hi == pytest.approx(0.5)  # x always 1, y always 0: no spread
