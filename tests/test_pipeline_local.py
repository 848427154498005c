"""A slice of the real pipeline through kfp.local (subprocess runner): the tracking start step,
synthetic videos, the champion lookup, and the exit handler closing the MLflow parent run with
the pipeline's final state. (`make demo` runs the whole pipeline.)"""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.

import json
import os

import pytest


def _slice_pipeline():
    from kfp import dsl

    from components.ops_data import prepare_videos
    from components.ops_eval import resolve_champion
    from components.ops_tracking import finish_tracking, start_tracking

    @dsl.pipeline(name="lvr-slice")
    def lvr_slice(video_source: str, tracking_uri: str, experiment: str):
        job = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        with dsl.ExitHandler(finish_tracking(kfp_run_id=job, mlflow_tracking_uri=tracking_uri, experiment=experiment)):
            start = start_tracking(kfp_run_id=job, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                   mlflow_tracking_uri=tracking_uri, experiment=experiment, params_json='{"frames": "4"}')  # fmt: skip
            videos = prepare_videos(source=video_source, synth_videos=2, synth_minutes=0.5, synth_fps=4.0,
                                    synth_seed=3, runs_root="")  # fmt: skip
            videos.after(start)
            resolve_champion(model_name="nobody", mlflow_tracking_uri=tracking_uri).after(start)

    return lvr_slice


def _runs(experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_slice_runs_and_exit_handler_closes_parent(mlflow_env, tmp_path, monkeypatch):
    from kfp import local

    monkeypatch.chdir(tmp_path)  # kfp.local writes its local_outputs beside the root
    experiment = os.environ["MLFLOW_EXPERIMENT_NAME"]
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=False)  # fmt: skip
    pipeline = _slice_pipeline()
    pipeline(video_source="synth", tracking_uri=mlflow_env, experiment=experiment)
    runs = _runs(experiment)
    assert len(runs) == 1
    parent = runs[0]
    assert parent.data.tags["longrl.stage"] == "pipeline" and parent.data.tags["kfp.run_id"]
    assert parent.data.params["frames"] == "4"
    assert parent.info.status == "FINISHED"  # closed by the exit handler with the final state
    manifest = next((tmp_path / "root").rglob("videos/manifest.json"))
    videos = json.loads(manifest.read_text())["videos"]
    assert len(videos) == 2 and all((manifest.parent / v["path"]).is_file() for v in videos)
    outputs = json.loads(next((tmp_path / "root").rglob("resolve-champion/executor_output.json")).read_text())
    assert outputs["parameterValues"] == {"found": False, "model_uri": ""}

    # A failing step: the pipeline fails and the exit handler marks the parent run FAILED.
    pipeline(video_source=str(tmp_path / "no-such-folder"), tracking_uri=mlflow_env, experiment=experiment)
    runs = sorted(_runs(experiment), key=lambda r: r.info.start_time)
    assert len(runs) == 2
    failed = runs[-1]
    assert failed.info.status == "FAILED" and failed.data.tags["kfp.final_state"] == "FAILED"


def test_prepare_model_rejects_a_folder_without_config(tmp_path, monkeypatch, capfd):
    from kfp import local

    from components.ops_data import prepare_model

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)  # fmt: skip
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(RuntimeError):
        prepare_model(model=str(tmp_path / "notamodel"))
    out = capfd.readouterr()
    assert "is not a Hugging Face model folder (no config.json)" in out.out + out.err
