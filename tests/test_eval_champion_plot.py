"""The pipeline's evaluation plot (issue 16.14): with a champion evaluated, comparison.png draws
candidate, base and champion, and candidate - base / candidate - champion with their 95 %
intervals and p; it is logged to the pipeline's MLflow run. Real eval.compare on eval folders, a
real MLflow server."""

from __future__ import annotations

import pytest

from components import eval_launch
from eval.compare_plot import roles_figure, roles_series
from tests.test_components import _fake_eval

CAND = [True, True, True, False, True, False, True, True, True, True]  # 8/10
BASE = [False, True, False, False, True, False, False, True, False, True]  # 4/10
CHAMP = [True, True, False, False, True, False, True, True, False, True]  # 6/10


def _result(tmp_path, champion=True):
    outs = {"candidate": tmp_path / "candidate", "base": tmp_path / "base"}
    _fake_eval(outs["candidate"], "lvr", CAND)
    _fake_eval(outs["base"], "lvr", BASE)
    if champion:
        outs["champion"] = tmp_path / "champion"
        _fake_eval(outs["champion"], "lvr", CHAMP)
    return eval_launch.compare(outs, ["lvr"], max_error_rate=0.05)


def test_the_plot_draws_candidate_base_and_champion(tmp_path):
    import matplotlib.pyplot as plt

    res = _result(tmp_path)
    data = roles_series(res["paired"])
    assert data["roles"] == ["candidate", "base", "champion"]
    (row,) = data["rows"]
    assert row["scores"] == pytest.approx({"candidate": 80.0, "base": 40.0, "champion": 60.0})
    d_base, ci_base, p_base = row["differences"]["base"]
    d_champ, ci_champ, p_champ = row["differences"]["champion"]
    assert d_base == pytest.approx(40.0) and d_champ == pytest.approx(20.0)
    pair = res["paired"]["champion"]["lvr"]
    assert (
        ci_champ == pytest.approx([100 * c for c in pair["difference_ci95"]])
        and p_champ == pair["p_value"]
    )
    assert ci_champ[0] <= 20.0 <= ci_champ[1] and 0 < p_base < 1

    fig = roles_figure(res["paired"])
    scores, diffs = fig.axes
    bars = {c.get_label(): [round(p.get_width(), 1) for p in c.patches] for c in scores.containers}
    assert bars == {"candidate": [80.0], "base": [40.0], "champion": [60.0]}
    assert [t.get_text() for t in diffs.get_legend().get_texts()] == [
        "candidate - base",
        "candidate - champion",
    ]
    points = {c.get_label(): round(float(c.lines[0].get_xdata()[0]), 1) for c in diffs.containers}
    assert points == {"candidate - base": 40.0, "candidate - champion": 20.0}
    # Neither difference is significant here (p = 0.12 and 0.5): hollow markers.
    assert all(c.lines[0].get_markerfacecolor() == "white" for c in diffs.containers)
    texts = sorted(t.get_text() for t in diffs.texts)
    assert texts[0].startswith("+20.0, p=") and texts[1].startswith("+40.0, p=")
    assert fig._suptitle.get_text() == "candidate vs base, champion"
    plt.close(fig)

    # Without a champion: the two-series plot of the same numbers.
    two = roles_series(_result(tmp_path / "nochamp", champion=False)["paired"])
    assert two["roles"] == ["candidate", "base"] and list(two["rows"][0]["scores"]) == [
        "candidate",
        "base",
    ]


def test_the_plot_is_written_and_logged_to_the_pipeline_run(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.create_experiment("champion-plot")
    parent = client.create_run(exp).info.run_id
    res = _result(tmp_path)
    work = tmp_path / "work"
    png = eval_launch.plot_comparison(res, work, mlflow_server, parent)
    assert (
        png == work / "comparison.png"
        and png.read_bytes()[:4] == b"\x89PNG"
        and png.stat().st_size > 5000
    )
    logged = [a.path for a in client.list_artifacts(parent, "eval")]
    assert logged == ["eval/comparison.png"]
    local = client.download_artifacts(parent, "eval/comparison.png", str(tmp_path / "dl"))
    assert open(local, "rb").read() == png.read_bytes()

    # The candidate's evaluation failed: nothing to compare, no plot, nothing logged.
    failed = eval_launch.compare(
        {"candidate": tmp_path / "missing", "base": tmp_path / "base"}, ["lvr"], 0.05
    )
    assert eval_launch.plot_comparison(failed, tmp_path / "w2", mlflow_server, parent) is None
    assert not (tmp_path / "w2" / "comparison.png").exists()
