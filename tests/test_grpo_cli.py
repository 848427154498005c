"""`longrl embed-cache build` then `longrl train grpo` with the offline cache, end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pipelines.cli import app

from .fixtures.grpo import grpo_overrides


def test_embed_cache_then_train_grpo_from_the_cli(tiny_model_dir, colour_task, tmp_path):
    runner = CliRunner()
    cache, out = tmp_path / "cache", tmp_path / "out"
    res = runner.invoke(app, ["embed-cache", "build", "--model", str(tiny_model_dir), "--data", str(colour_task),
                              "--out", str(cache), "video.sampling.num_frames=4", "progress=false"])
    assert res.exit_code == 0, res.output
    assert "8 videos: 8 encoded" in res.output
    args = grpo_overrides(steps=1, plots=True, **{"video.embeddings": "offline", "video.embed_cache": str(cache)})
    res = runner.invoke(app, ["train", "grpo", "--model", str(tiny_model_dir), "--data", str(colour_task),
                              "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    (m,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert m["vision_calls_per_video"] == 0.0 and m["rows"] == 6
    for key in ("reward/total", "reward/accuracy", "reward/format", "actor/kl", "actor/clip_fraction",
                "actor/entropy", "response/length_mean", "time/encode", "time/rollout", "time/reward",
                "time/logprob", "time/update", "throughput/tokens_per_s", "rollout/logprob_diff_max"):
        assert key in m, key
    assert m["rollout/logprob_diff_max"] <= 1e-5
    assert (out / "plots" / "reward.png").stat().st_size > 1000
    assert (out / "model" / "config.json").is_file() and (out / "config.yaml").is_file()
    from training.model_io import load_model

    assert type(load_model(out / "model")).__name__ == "Qwen2_5_VLForConditionalGeneration"
    # a bad key is a clear config error, not a traceback
    res = runner.invoke(app, ["train", "grpo", "--model", str(tiny_model_dir), "--data", str(colour_task),
                              "--out", str(out), "algorithm.clip_hihg=0.28"])
    assert res.exit_code == 2 and "clip_hihg" in res.output


def test_metrics_plots_and_model_reach_mlflow(tiny_model_dir, colour_task, tmp_path, mlflow_env):
    import os

    from mlflow import MlflowClient

    from training.grpo.trainer import GRPOTrainer

    from .fixtures.grpo import grpo_config

    GRPOTrainer(grpo_config(steps=2, plots=True), tiny_model_dir, colour_task, tmp_path / "out").train()
    client = MlflowClient()
    exp = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["longrl.stage"] == "grpo"
    history = client.get_metric_history(run.info.run_id, "reward/total")
    assert [m.step for m in history] == [1, 2]
    assert run.data.metrics["vision_calls_per_video"] == 1.0
    assert "accuracy/Spatial" in run.data.metrics or "accuracy/Temporal" in run.data.metrics
    assert run.data.params["rollout.group_size"] == "3"
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/reward.png" in arts and "plots/step_time.png" in arts
    assert "checkpoint.logged_as" in run.data.tags  # the final HF folder
    # lineage from the CLI too: the records trained on (content digest) and the input model
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "grpo-rl" and run.data.tags["dataset.training.grpo-rl.digest"] == inp.dataset.digest
    assert run.data.tags["input.model"] == str(tiny_model_dir.resolve())
