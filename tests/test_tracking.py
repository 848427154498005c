"""common.tracking against a real MLflow server: nested stage runs under the pipeline's parent,
params/metrics/artifacts/figures/datasets/checkpoints, failures, secrets, and the no-op mode."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common import tracking
from common.secrets import register_secret


@dataclass
class _Opt:
    lr: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class _Cfg:
    model: str = "tiny"
    steps: int = 3
    api_base: str = "http://x"
    optim: _Opt = field(default_factory=_Opt)


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_noop_without_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert not tracking.enabled()
    assert tracking.pipeline_run("kfp-1") is None
    with tracking.stage_run("sft", config=_Cfg()) as run:
        assert not run.active
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_params({"a": 1})
        run.log_text("x", "x.txt")
        assert run.log_dataset(object(), name="d") is None  # not even looked at
        assert run.log_checkpoint(tmp_path / "missing") is None
    assert list(tmp_path.iterdir()) == []  # no ./mlruns written behind our back


def test_nested_stage_run_logs_everything(mlflow_env, tmp_path):
    import datasets
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    parent = tracking.pipeline_run("kfp-run-123", experiment=os.environ["MLFLOW_EXPERIMENT_NAME"],
                                   params={"frames": 8})
    assert parent is not None
    # A retried first step finds the same parent instead of creating a second one.
    assert tracking.pipeline_run("kfp-run-123", experiment=os.environ["MLFLOW_EXPERIMENT_NAME"]) == parent
    os.environ["MLFLOW_RUN_ID"] = parent

    ds = datasets.Dataset.from_dict({"question": ["q1", "q2"], "answer": ["A", "B"]})
    df = pd.DataFrame({"category": ["Temporal", "Spatial"], "accuracy": [0.5, 1.0]})
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [0.1, 0.4, 0.3])
    with tracking.stage_run("sft", config=_Cfg()) as run:
        assert run.active
        for step, loss in enumerate([2.0, 1.5, 1.25]):
            run.log_metrics({"loss": loss, "lr": {"group0": 1e-6}}, step=step)
        digest = run.log_dataset(ds, name="sft-train", context="training")
        df_digest = run.log_dataset(df, name="eval-table", context="evaluation")
        run.log_figure(fig, "plots/curve.png")
        run.log_dict({"acc": 0.75}, "eval/summary.json")
    plt.close(fig)
    assert os.environ["MLFLOW_RUN_ID"] == parent  # mlflow must not consume the parent's env var

    c = _client()
    child = c.get_run(run.run_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags[tracking.PARENT_TAG] == parent
    assert child.data.tags[tracking.KFP_RUN_TAG] == "kfp-run-123"
    assert child.info.experiment_id == c.get_run(parent).info.experiment_id
    assert child.data.params["optim.lr"] == "1e-06"
    assert json.loads(child.data.params["optim.betas"]) == [0.9, 0.99]
    hist = c.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in hist] == [(0, 2.0), (1, 1.5), (2, 1.25)]
    assert c.get_metric_history(run.run_id, "lr.group0")[0].value == pytest.approx(1e-6)
    files = {a.path for a in c.list_artifacts(run.run_id, "plots")} | {
        a.path for a in c.list_artifacts(run.run_id, "config")
    }
    assert files == {"plots/curve.png", "config/config.yaml"}
    png = Path(c.download_artifacts(run.run_id, "plots/curve.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # HF dataset inputs carry the path-independent content digest (tests/test_lineage.py); a
    # changed dataset gets a different one.
    from common.mlflow_io import content_digest

    assert digest == content_digest(ds)
    changed = ds.map(lambda r: {"answer": "C"})
    assert content_digest(changed) != digest
    inputs = {(d.dataset.name, d.dataset.digest) for d in child.inputs.dataset_inputs}
    assert inputs == {("sft-train", digest), ("eval-table", df_digest)}
    contexts = {
        d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"]
        for d in child.inputs.dataset_inputs
    }
    assert contexts == {"sft-train": "training", "eval-table": "evaluation"}
    # The parent is the pipeline's: still running until the pipeline ends it.
    assert c.get_run(parent).info.status == "RUNNING"
    tracking.end_pipeline_run(parent)
    assert c.get_run(parent).info.status == "FINISHED"
    del os.environ["MLFLOW_RUN_ID"]


def test_failed_stage_is_marked_and_secret_redacted(mlflow_env):
    secret = "sk-test-abcdefgh12345678"
    register_secret(secret)
    with pytest.raises(ValueError, match="boom"), tracking.stage_run(
        "grpo", config={"judge": {"api_key_hint": secret}}
    ) as run:
        raise ValueError(f"boom with {secret}")
    r = _client().get_run(run.run_id)
    assert r.info.status == "FAILED"
    assert r.data.tags["error"] == "ValueError: boom with ***"
    assert r.data.params["judge.api_key_hint"] == "***"
    assert tracking.PARENT_TAG not in r.data.tags  # no parent: a top-level run


def test_checkpoint_as_transformers_model_and_as_reference(mlflow_env, tmp_path, tiny_model_dir):
    import mlflow

    from common.registry import register_version

    model_dir = tiny_model_dir
    name = f"ckpt-{os.environ['MLFLOW_EXPERIMENT_NAME']}"
    with tracking.stage_run("sft") as run:
        inline_uri = run.log_checkpoint(model_dir, name="model")
        ref_uri = run.log_checkpoint(
            model_dir, name="model_ref", location_uri="pvc://longrl-data/runs/1/model", inline_max_bytes=0
        )
    assert inline_uri.startswith("models:/")
    v1 = register_version(name, inline_uri, run_id=run.run_id)
    v2 = register_version(name, ref_uri, run_id=run.run_id)
    # The registered inline version is the real folder: identical weights after download.
    got = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{v1.version}", dst_path=str(tmp_path / "d1")))
    weights = next(got.rglob("model.safetensors"))
    assert weights.read_bytes() == (model_dir / "model.safetensors").read_bytes()
    reqs = next(got.rglob("requirements.txt")).read_text()
    assert "torchvision" not in reqs and "torch==2.13.0" in reqs
    # The reference version holds where the checkpoint lives, not the weights.
    got2 = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{v2.version}", dst_path=str(tmp_path / "d2")))
    ref = json.loads((got2 / "checkpoint_ref.json").read_text())
    assert ref["location_uri"] == "pvc://longrl-data/runs/1/model"
    assert "model.safetensors" in ref["files"] and not list(got2.rglob("*.safetensors"))
    with pytest.raises(FileNotFoundError, match="no config.json"), tracking.stage_run("x") as run2:
        run2.log_checkpoint(tmp_path)
