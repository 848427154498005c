"""metrics.json keeps numeric breakdown values in numeric order (Video-MME/LongVideoBench
duration groups 15, 60, 600, 3600), as the charts and `eval compare` already show them."""

from __future__ import annotations

from eval.metrics import compute_metrics


def _pred(qid: str, duration: str, correct: bool) -> dict:
    return {"qid": qid, "status": "answered", "correct": correct, "cluster": qid,
            "breakdown": {"duration": duration, "task": f"t{duration}"}}


def test_metrics_json_breakdown_values_in_numeric_order() -> None:
    preds = [_pred(f"q{i}", d, i % 2 == 0) for i, d in enumerate(["3600", "15", "600", "60"] * 2)]
    m = compute_metrics(preds, ("duration", "task"), n_boot=20)
    assert list(m["breakdown"]["duration"]) == ["15", "60", "600", "3600"]
    assert list(m["breakdown"]["task"]) == ["t15", "t3600", "t60", "t600"]  # text stays text
    assert all(v["n"] == 2 for v in m["breakdown"]["duration"].values())
