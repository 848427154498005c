"""OUT/summary.json and summary.png cover every benchmark evaluated into OUT, not only the last
command's (issue 14.4), and breakdown values that are numbers are shown in numeric order
(issue 14.10)."""

from __future__ import annotations

import json
from pathlib import Path

from eval import report
from eval.metrics import compute_metrics, sorted_values


def _pred(qid: str, correct: bool, **breakdown: str) -> dict:
    return {
        "qid": qid,
        "status": "answered",
        "correct": correct,
        "cluster": qid,
        "group": "",
        "breakdown": breakdown,
    }


def _benchmark(out: Path, name: str, n_right: int, n: int = 10) -> dict:
    """OUT/<name>/metrics.json as the runner writes it, and the summary entry it makes of it."""
    m = compute_metrics([_pred(f"q{i}", i < n_right) for i in range(n)], n_boot=100)
    m["benchmark"] = name
    (out / name).mkdir(parents=True, exist_ok=True)
    report.write_json(out / name / "metrics.json", m)
    return {
        "score": m["score"],
        "score_ci95": m["score_ci95"],
        "headline": m["headline"],
        "overall": m["overall"],
    }


def _read(out: Path) -> dict:
    return json.loads((out / report.SUMMARY).read_text())


def test_a_rerun_of_one_benchmark_keeps_the_others(tmp_path) -> None:
    out = tmp_path / "out"
    first = {
        "model": "m1",
        "benchmarks": {
            "mlvu": _benchmark(out, "mlvu", 3),
            "vnbench": _benchmark(out, "vnbench", 5),
            "videomme": _benchmark(out, "videomme", 7),
        },
    }
    returned = report.write_summary(out, first)
    assert returned == _read(out) and list(_read(out)["benchmarks"]) == [
        "mlvu",
        "vnbench",
        "videomme",
    ]
    png = (out / report.SUMMARY_PLOT).read_bytes()

    # the same --out, only VNBench again (now 9 of 10 right), then a new benchmark
    report.write_summary(
        out, {"model": "m1", "benchmarks": {"vnbench": _benchmark(out, "vnbench", 9)}}
    )
    report.write_summary(
        out, {"model": "m1", "benchmarks": {"nextqa": _benchmark(out, "nextqa", 1)}}
    )
    s = _read(out)
    assert list(s["benchmarks"]) == ["mlvu", "vnbench", "videomme", "nextqa"]  # replaced in place
    assert {k: v["score"] for k, v in s["benchmarks"].items()} == {
        "mlvu": 0.3,
        "vnbench": 0.9,
        "videomme": 0.7,
        "nextqa": 0.1,
    }
    assert s["model"] == "m1" and all(v["model"] == "m1" for v in s["benchmarks"].values())
    assert (out / report.SUMMARY_PLOT).read_bytes() != png  # the chart shows all four


def test_each_benchmark_names_its_model(tmp_path) -> None:
    out = tmp_path / "out"
    report.write_summary(out, {"model": "m1", "benchmarks": {"mlvu": _benchmark(out, "mlvu", 3)}})
    s = report.write_summary(
        out, {"model": "m2", "benchmarks": {"nextqa": _benchmark(out, "nextqa", 4)}}
    )
    assert s["benchmarks"]["mlvu"]["model"] == "m1" and s["benchmarks"]["nextqa"]["model"] == "m2"
    assert s["model"] == "m1, m2"
    s = report.write_summary(
        out, {"model": "m2", "benchmarks": {"mlvu": _benchmark(out, "mlvu", 6)}}
    )
    assert s["model"] == "m2" and s["benchmarks"]["mlvu"]["score"] == 0.6


def test_a_removed_benchmark_folder_leaves_the_summary(tmp_path) -> None:
    out = tmp_path / "out"
    report.write_summary(
        out,
        {"model": "m", "benchmarks": {"a": _benchmark(out, "a", 2), "b": _benchmark(out, "b", 3)}},
    )
    (out / "a" / "metrics.json").unlink()
    s = report.write_summary(out, {"model": "m", "benchmarks": {"c": _benchmark(out, "c", 4)}})
    assert list(s["benchmarks"]) == ["b", "c"]


def test_an_unreadable_summary_is_replaced(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / report.SUMMARY).write_text('{"model": "m", "benchm')  # torn by a kill
    s = report.write_summary(out, {"model": "m", "benchmarks": {"a": _benchmark(out, "a", 2)}})
    assert list(_read(out)["benchmarks"]) == ["a"] == list(s["benchmarks"])


def test_numeric_breakdown_values_sort_as_numbers(tmp_path) -> None:
    assert sorted_values(["15", "3600", "60", "600"]) == ["15", "60", "600", "3600"]
    assert sorted_values(["2.5", "10", "-1"]) == ["-1", "2.5", "10"]
    assert sorted_values(["long", "short", "medium"]) == ["long", "medium", "short"]
    assert sorted_values(["15", "600", "n/a"]) == ["15", "600", "n/a"]  # not all numbers: text
    preds = [
        _pred(f"q{i}", i % 2 == 0, duration_group=d, topic=t)
        for i, (d, t) in enumerate(
            [("3600", "b"), ("15", "a"), ("600", "c"), ("60", "a"), ("15", "b"), ("3600", "c")]
        )
    ]
    m = compute_metrics(preds, ("duration_group", "topic"), n_boot=50)
    m["benchmark"] = "longvideobench"
    # metrics.json keeps them in numeric order as well (eval.metrics uses sorted_values)
    assert list(m["breakdown"]["duration_group"]) == ["15", "60", "600", "3600"]
    panels = dict(report.breakdown_panels(m))
    assert list(panels["duration_group"]) == ["15", "60", "600", "3600"]
    assert list(panels["topic"]) == ["a", "b", "c"]
    assert panels["duration_group"]["3600"] == m["breakdown"]["duration_group"]["3600"]
    assert report.plot_benchmark(m, tmp_path / "acc.png").stat().st_size > 1000
    m["breakdown"] = {}
    assert list(dict(report.breakdown_panels(m))) == ["overall"]
