"""What a user watching a training run sees (issue 16 points 5, 6, 11, 14): one plain line per
step off-terminal, warnings when nothing can be learned, "resuming from step N" and the one resume
rule, SFT checkpoints by default, labelled plots."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pipelines.cli import app
from tests.fixtures.grpo import grpo_overrides
from tests.fixtures.sft import TINY_SFT_OVERRIDES, write_split

runner = CliRunner()


def _grpo(model, data, out, *extra):
    return runner.invoke(app, ["train", "grpo", "--model", str(model), "--data", str(data), "--out", str(out),
                               *grpo_overrides(), *extra])


def test_grpo_logs_warns_resumes_and_refuses_changes(tiny_model_dir, colour_task, tmp_path):
    out = tmp_path / "grpo"
    # 4 new tokens cannot hold <think>...</think><answer>...</answer>: every reward is 0.
    first = _grpo(tiny_model_dir, colour_task, out, "max_steps=3", "save_every=1", "rollout.max_new_tokens=4")
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines() + first.stderr.splitlines()  # stdout: steps, stderr: warnings
    steps = [ln for ln in first.stdout.splitlines() if ln.startswith("grpo step ")]
    assert [s.split(" |")[0] for s in steps] == ["grpo step 1/3", "grpo step 2/3", "grpo step 3/3"]
    assert all(" | reward 0.000 " in s and " | kl " in s for s in steps)
    budget = [ln for ln in lines if ln.startswith("warning: rollout.max_new_tokens=4 ")]
    assert len(budget) == 1 and "answer tag" in budget[0]
    flat = [ln for ln in lines if "zero advantage" in ln]
    assert len(flat) == 1 and "3 steps in a row" in flat[0]
    output = first.output  # interleaved as printed
    assert output.index(flat[0]) > output.index(steps[2])  # after the third flat step, not before

    # A longer run on the same folder says where it resumes and does only the new steps.
    again = _grpo(tiny_model_dir, colour_task, out, "max_steps=4", "rollout.max_new_tokens=4")
    assert again.exit_code == 0, again.output
    assert f"resuming from step 3 ({out / 'checkpoints' / 'step-00000003'})" in again.output
    assert [ln.split(" |")[0] for ln in again.stdout.splitlines() if ln.startswith("grpo step")] == ["grpo step 4/4"]
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]

    # Changing what is computed (frames, KL) is refused before anything starts, naming each key.
    saved = (out / "config.yaml").read_text()
    refused = _grpo(tiny_model_dir, colour_task, out, "max_steps=5", "rollout.max_new_tokens=4",
                    "video.num_frames=2", "algorithm.kl_coef=0.5")
    assert refused.exit_code != 0
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, refused.output
    assert "algorithm.kl_coef 0.01 -> 0.5" in errors[0] and "video.num_frames 4 -> 2" in errors[0]
    assert "use a new --out, or resume=false" in errors[0]
    assert (out / "config.yaml").read_text() == saved  # the refused settings are not recorded

    # The plots: y-axis labels, whole-number step ticks, entropy on its own axis beside KL.
    from training.grpo.metrics import PLOTS, SECOND_AXIS, plot_figure

    hist = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    hist = [{**h, "actor/kl": 0.001 * h["step"], "actor/entropy": 3.0 + h["step"]} for h in hist]
    for name, (keys, ylabel) in PLOTS.items():
        keys = [k for k in keys if any(k in h for h in hist)] if isinstance(keys, list) else []
        if not keys:
            continue
        fig = plot_figure(hist, keys, ylabel, name)
        axes = fig.get_axes()
        assert all(ax.get_ylabel() for ax in axes), name
        ticks = [t for t in axes[0].get_xticks() if 1 <= t <= 4]
        assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
        if name == "kl_entropy":
            assert len(axes) == 2 and axes[1].get_ylabel() == SECOND_AXIS["actor/entropy"]
            assert [ln.get_label() for ln in axes[0].get_lines()] == ["actor/kl"]
            assert [ln.get_label() for ln in axes[1].get_lines()] == ["actor/entropy"]


def test_sft_logs_checkpoints_by_default_and_keeps_the_resume_rule(tiny_model_dir, sft_records, tmp_path):
    from training.sft.config import SFTConfig

    assert SFTConfig().save_every > 0  # Ctrl-C must not lose the whole run
    data = write_split(sft_records[:4], tmp_path / "data")
    out = tmp_path / "sft"
    base = ["train", "sft", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
            *TINY_SFT_OVERRIDES, "eval_generate=0", "save_every=2"]
    first = runner.invoke(app, [*base, "max_steps=2"])
    assert first.exit_code == 0, first.output
    steps = [ln for ln in first.stdout.splitlines() if ln.startswith("sft step ")]
    assert [s.split(" |")[0] for s in steps] == ["sft step 1/2", "sft step 2/2"]
    assert all(" | loss " in s and " | lr " in s for s in steps)
    longer = runner.invoke(app, [*base, "max_steps=3"])
    assert longer.exit_code == 0, longer.output
    assert f"resuming from step 2 ({out / 'checkpoints' / 'step-00000002'})" in longer.output
    refused = runner.invoke(app, [*base, "max_steps=4", "lr=0.5", "video.num_frames=2"])
    assert refused.exit_code != 0
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "lr 1e-05 -> 0.5" in errors[0] and "video.num_frames 4 -> 2" in errors[0]
    assert "resume=never" in errors[0]
    fresh = runner.invoke(app, [*base, "max_steps=1", "lr=0.5", "resume=never"])
    assert fresh.exit_code == 0, fresh.output
    assert "resuming" not in fresh.output
