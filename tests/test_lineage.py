"""Lineage a reader can follow in MLflow (issue 15 findings 15, 16): the registered version is the
training run's own logged model (weights stored once), the training run names its dataset and
input model, dataset digests do not depend on where the videos live, and a video folder that
grows changes the cache key of the steps after it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from common.mlflow_io import content_digest


def _records(video_dir: Path) -> list[dict]:
    return [{"qid": f"q{i}", "video": str(video_dir / f"v{i}.mp4"), "question": "What colour?", "answer": "red"}
            for i in range(3)]  # fmt: skip


def _videos(folder: Path, salt: bytes = b"") -> Path:
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"v{i}.mp4").write_bytes(bytes([i]) * 5000 + salt)
    return folder


def test_dataset_digest_is_the_same_wherever_the_videos_are(tmp_path):
    import datasets

    a, b = _videos(tmp_path / "run-a" / "videos"), _videos(tmp_path / "elsewhere" / "videos")
    da = content_digest(datasets.Dataset.from_list(_records(a)))
    assert da == content_digest(datasets.Dataset.from_list(_records(b)))  # MLflow's own differed
    c = _videos(tmp_path / "changed" / "videos", salt=b"x")  # same names, other bytes
    assert da != content_digest(datasets.Dataset.from_list(_records(c)))
    other = _records(a)
    other[0]["answer"] = "blue"
    assert da != content_digest(datasets.Dataset.from_list(other))


def test_a_grown_video_folder_changes_the_fingerprint(tmp_path):
    from components.ops_data import video_fingerprint

    folder = _videos(tmp_path / "videos")
    fp = video_fingerprint.python_func(source=str(folder))
    assert fp.startswith("3-") and fp == video_fingerprint.python_func(source=str(folder))
    (folder / "v3.mp4").write_bytes(b"new video")
    assert video_fingerprint.python_func(source=str(folder)).startswith("4-")
    assert video_fingerprint.python_func(source="synth") == "synth"


def test_version_is_the_training_runs_model_with_its_inputs(mlflow_env, tmp_path, tiny_model_dir, monkeypatch):
    import datasets
    from mlflow import MlflowClient

    from common import registry, tracking
    from components import eval_launch
    from components.registry_launch import register_candidate
    from components.train_launch import link_lineage

    client = MlflowClient()
    data = tmp_path / "data"
    datasets.Dataset.from_list(_records(_videos(tmp_path / "v"))).save_to_disk(str(data / "rl"))
    model_dir = tmp_path / "out" / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    parent = tracking.pipeline_run("kfp-lin", experiment=os.environ["MLFLOW_EXPERIMENT_NAME"])
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)
    info = tmp_path / "out" / "mlflow_run.json"
    monkeypatch.setenv(tracking.RUN_INFO_ENV, str(info))
    with tracking.stage_run("grpo") as run:  # what `longrl train grpo` does, as far as MLflow sees
        run.log_checkpoint(model_dir)
    monkeypatch.delenv(tracking.RUN_INFO_ENV)
    got = json.loads(info.read_text())
    assert got["run_id"] == run.run_id and got["checkpoint_source"].startswith("models:/")
    link_lineage(run.run_id, "grpo", data, Path("/mnt/data/runs/x/sft/model"), {"mlflow_run_id": "sft-run-1"})
    trained = client.get_run(run.run_id)
    assert [d.dataset.name for d in trained.inputs.dataset_inputs] == ["longvideo-reason-rl"]
    assert trained.data.tags["input.model_run_id"] == "sft-run-1"

    work = tmp_path / "cmp"
    work.mkdir()
    cmp = {"benchmarks": ["lvr"], "paired": {}, "champion_uri": "", "settings_digest": eval_launch.settings_digest(["lvr"], 4, 0, []),
           "roles": {"candidate": {"succeeded": True, "reason": "ok", "metrics": {"lvr/score": 0.5}}}}  # fmt: skip
    (work / "comparison.json").write_text(json.dumps(cmp))
    meta = {"stage": "grpo", "mlflow_run_id": got["run_id"], "mlflow_model_source": got["checkpoint_source"],
            "mlflow_model_dir": got["checkpoint_dir"]}  # fmt: skip
    name = f"lin-{os.environ['MLFLOW_EXPERIMENT_NAME']}"
    version, promoted, _ = register_candidate(model_dir, work, data, name, "tiny", "lvr/score", 0.0, True, "",
                                              "kfp-lin", mlflow_env, parent, candidate_meta=meta)  # fmt: skip
    assert promoted
    outcome = client.get_run(parent).data.tags  # the pipeline's run names the result
    assert outcome["registry.version"] == version and outcome["promotion.decision"] == "promoted"
    mv = client.get_model_version(name, version)
    assert mv.run_id == run.run_id and mv.tags["training.run_id"] == run.run_id  # version -> training run
    assert mv.tags["data.digest"].startswith("rl:")
    register_run = mv.tags["register.run_id"]
    assert not [a for a in client.list_artifacts(register_run) if a.path == "model"]  # no second copy
    models = client.search_logged_models(experiment_ids=[trained.info.experiment_id])
    assert len(models) == 1  # the weights were logged once, by the training run
    assert registry.materialize(f"models:/{name}/{version}", tmp_path / "dl").joinpath("config.json").is_file()
