"""`--limit` keeps scoring units whole and says what was evaluated (issue 14.7): a VNBench 4-try
group is never cut (a 2-try group scored as a full question), a mean-over-tasks headline (MLVU)
gets questions from every task (`--limit 1` was an M-Avg over one task), MLVU names which of its
7 task files are missing, and `--limit` takes a fraction. Loaders read the released schemas
(tests/fixtures/eval_benchmarks.py); the end-to-end runs use the tiny model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.limits import limit_items
from eval.task import get_task
from pipelines.cli import app

FAST = ["--set", "min_pixels=784", "--set", "max_pixels=3136", "--set", "max_new_tokens=4",
        "--set", "bootstrap=50", "--frames", "2"]  # fmt: skip


def _vnbench_two_videos(make_benchmark) -> Path:
    """The VNBench fixture with a second video: 2 videos x 2 needle types = 4 groups of 4 tries,
    in the release's order (video by video)."""
    root = make_benchmark("vnbench")
    rows = json.loads((root / "VNBench-main-4try.json").read_text())
    second = [dict(r, video="VNBench_new/9999_synth.mp4") for r in rows]
    (root / "VNBench-main-4try.json").write_text(json.dumps(rows + second))
    (root / "VNBench_new" / "9999_synth.mp4").write_bytes(
        (root / "VNBench_new" / "3261112327_synth.mp4").read_bytes()
    )
    return root


def test_vnbench_limit_takes_whole_groups_over_every_needle_type(make_benchmark) -> None:
    task = get_task("vnbench")
    items = task.load(_vnbench_two_videos(make_benchmark))
    assert len(items) == 16
    for limit, questions, groups, per_type in [
        (1, 8, 2, {"ret_insert1": 4, "cnt_edit1": 4}),  # one group of each needle type
        (5, 8, 2, {"ret_insert1": 4, "cnt_edit1": 4}),
        (9, 12, 3, {"ret_insert1": 8, "cnt_edit1": 4}),  # a whole third group, not 1 try of it
        (0.5, 8, 2, {"ret_insert1": 4, "cnt_edit1": 4}),  # half of 16
        (0, 16, 4, {"ret_insert1": 8, "cnt_edit1": 8}),
    ]:
        kept, info = limit_items(task, items, limit)
        tries = Counter(it.group for it in kept)
        assert set(tries.values()) == {4}, (limit, tries)  # no group is cut
        assert (len(kept), len(tries)) == (questions, groups), limit
        assert Counter(it.breakdown["type"] for it in kept) == per_type, limit
        assert (info["questions"], info["of_questions"], info["units"], info["of_units"]) == (
            questions, 16, groups, 4)  # fmt: skip
        assert info["unit"] == "group" and info["by"] == "type"
        assert {v: c["questions"] for v, c in info["per_value"].items()} == per_type
        assert [it.qid for it in kept] == [it.qid for it in items if it in kept]  # file order
    small = {it.qid for it in limit_items(task, items, 5)[0]}
    assert small <= {it.qid for it in limit_items(task, items, 9)[0]}  # resuming adds questions


def test_mlvu_limit_spreads_over_the_present_tasks(make_benchmark) -> None:
    task = get_task("mlvu")
    items = task.load(make_benchmark("mlvu"))  # 1_plotQA: 1 question, 4_count: 2
    kept, info = limit_items(task, items, 1)
    assert sorted(it.qid for it in kept) == ["1_plotQA_0", "4_count_0"]  # was 1_plotQA_0 only
    assert info["per_value"] == {
        "plotQA": {"questions": 1, "of": 1},
        "count": {"questions": 1, "of": 2},
    }
    assert info["unit"] == "question" and info["limit"] == 1


def test_a_micro_benchmark_is_limited_to_n_questions_or_a_fraction(make_benchmark) -> None:
    task = get_task("videomme")
    items = task.load(make_benchmark("videomme"))
    assert [it.qid for it in limit_items(task, items, 2)[0]] == ["001-1", "001-2"]
    kept, info = limit_items(task, items, 0.34)  # ceil(0.34 * 3) = 2
    assert len(kept) == 2 and "per_value" not in info
    assert limit_items(task, items, 50)[1]["questions"] == 3
    for bad in (2.5, -1):
        with pytest.raises(ValueError, match=f"limit {bad:g}: give a whole number"):
            limit_items(task, items, bad)


def _eval(*args: str):
    return CliRunner().invoke(app, ["eval", *args], catch_exceptions=False)


def test_eval_limit_end_to_end_names_what_was_evaluated(
    tiny_model_dir, make_benchmark, tmp_path
) -> None:
    vn = _vnbench_two_videos(make_benchmark)
    out = tmp_path / "out"
    r = _eval("--model", str(tiny_model_dir), "--benchmark", "vnbench", "--data", str(vn),
              "--out", str(out), "--limit", "6", *FAST)  # fmt: skip
    assert r.exit_code == 0, r.output
    preds = [
        json.loads(x) for x in (out / "vnbench" / "predictions.jsonl").read_text().split("\n") if x
    ]
    assert set(Counter(p["group"] for p in preds).values()) == {4} and len(preds) == 8
    m = json.loads((out / "vnbench" / "metrics.json").read_text())
    assert m["overall"]["n"] == 2 and m["unit"] == "group"  # two whole groups, one per type
    assert m["evaluated"]["questions"] == 8 and m["evaluated"]["of_questions"] == 16
    assert m["notes"] == [
        "--limit 6: 8 of 16 questions (2 of 4 whole 4-try groups); by type: "
        "ret_insert1 4/8, cnt_edit1 4/8"
    ]
    assert "vnbench: --limit 6: 8 of 16 questions" in r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"]["vnbench"]["notes"] == m["notes"]

    # MLVU with 2 of its 7 task files: the M-Avg is over both present tasks, the 5 missing are
    # named in metrics.json and on the console
    r = _eval("--model", str(tiny_model_dir), "--benchmark", "mlvu", "--data",
              str(make_benchmark("mlvu")), "--out", str(out), "--limit", "1", *FAST)  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((out / "mlvu" / "metrics.json").read_text())
    assert set(m["breakdown"]["question_type"]) == {"plotQA", "count"}
    assert m["macro"]["key"] == "question_type" and m["questions"] == 2
    assert m["coverage"] == {
        "parts": "task files",
        "present": ["1_plotQA.json", "4_count.json"],
        "missing": ["2_needle.json", "3_ego.json", "5_order.json", "6_anomaly_reco.json",
                    "7_topic_reasoning.json"],
    }  # fmt: skip
    missing_note = (
        "5 of 7 task files missing (2_needle.json, 3_ego.json, 5_order.json, 6_anomaly_reco.json,"
        " 7_topic_reasoning.json): the headline is over the 2 present (1_plotQA.json, "
        "4_count.json) only"
    )
    assert m["notes"][1] == missing_note
    assert "mlvu: 5 of 7 task files missing (2_needle.json" in r.output.replace("\n", " ")
    assert list(json.loads((out / "summary.json").read_text())["benchmarks"]) == ["vnbench", "mlvu"]


def test_bad_limit_is_a_clear_error(tiny_model_dir, make_benchmark, tmp_path) -> None:
    r = _eval("--model", str(tiny_model_dir), "--benchmark", "mlvu", "--data",
              str(make_benchmark("mlvu")), "--out", str(tmp_path), "--limit", "1.5", *FAST)  # fmt: skip
    assert r.exit_code == 2 and "limit 1.5: give a whole number of questions" in r.output
