"""Eval plots a user reads (issue 16.14): summary.png titled with a short model name, not the
absolute path; `eval compare --plot` draws candidate vs base per benchmark with A - B."""

from __future__ import annotations

from typer.testing import CliRunner

from eval.report import model_label, summary_figure
from pipelines.cli import app
from tests.test_cli_output import _runs


def test_model_label_is_short():
    assert model_label("/home/u/longrl/runs/grpo/model") == "grpo/model"
    assert model_label("/data/ckpt/run3/checkpoints/step-00000050") == "checkpoints/step-00000050"
    assert model_label("/models/Qwen2.5-VL-7B-Instruct") == "Qwen2.5-VL-7B-Instruct"
    assert model_label("/a/runs/sft/model, /models/Qwen2.5-VL-3B") == "sft/model, Qwen2.5-VL-3B"


def test_summary_title_names_the_model_not_its_path():
    summary = {"model": "/very/long/absolute/path/to/runs/grpo/model",
               "benchmarks": {"synth": {"score": 0.5, "score_ci95": [0.4, 0.6], "overall": {}}}}
    fig = summary_figure(summary)
    title = fig.axes[0].get_title()
    assert title == "grpo/model: score by benchmark (%)" and "/very" not in title


def test_compare_plot_shows_both_runs_and_the_difference(tmp_path):
    import matplotlib.pyplot as plt

    a, b = _runs(tmp_path)
    png = tmp_path / "cmp.png"
    result = CliRunner().invoke(app, ["eval", "compare", str(a), str(b), "--bootstrap", "50", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    from eval.compare import compare_runs
    from eval.report import comparison_figure

    fig = comparison_figure(compare_runs(a, b, n_boot=50), "A: cand", "B: base")
    scores, diff = fig.axes
    widths = sorted(round(p.get_width(), 1) for p in scores.patches)
    assert widths == [33.3, 83.3]  # 2/6 and 5/6 right
    assert [t.get_text() for t in scores.get_legend().get_texts()] == ["A: cand", "B: base"]
    assert "A: cand - B: base" in diff.get_xlabel() and scores.get_xlabel()
    assert any(t.get_text().startswith("+50.0, p=") for t in diff.texts)
    plt.close(fig)
