"""A slice of the real pipeline through kfp.local (subprocess runner): the tracking start step,
synthetic videos, the champion lookup, a registration, the exit handler closing the MLflow parent
run with the pipeline's final state, and the pipeline's outputs (the registered version and the
promotion decision) from the run-outcome step after the handler, as the real pipeline has them
(issue 15). (`make demo` runs the whole pipeline.)"""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.

import json
import os

import pytest
from kfp import dsl

from components.images import CPU


@dsl.component(**CPU)
def register_like_the_pipeline(model_name: str, kfp_run_id: str, tracking_uri: str, source: str) -> str:
    """Stands in for register-and-promote (which needs a trained model and an evaluation): a
    version with the tags it sets (pipeline.kfp_run_id, promotion.*) and @champion moved.
    tests/test_components.py reads run_outcome back after the real register_candidate."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from common import registry

    mv = registry.register_version(model_name, source, tags={"pipeline.kfp_run_id": kfp_run_id}, alias="challenger")
    registry.record_decision(model_name, mv.version, {"decision": "promoted", "reason": "no champion yet",
                                                      "alias": "champion", "actor": "pipeline"})  # fmt: skip
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(model_name, "champion", mv.version)
    return str(mv.version)


def _slice_pipeline():
    from components.ops_data import prepare_videos
    from components.ops_eval import resolve_champion
    from components.ops_registry import run_outcome
    from components.ops_tracking import finish_tracking, start_tracking
    from pipelines.long_video_reasoning import PipelineOutputs

    @dsl.pipeline(name="lvr-slice")
    def lvr_slice(video_source: str, tracking_uri: str, experiment: str, model_name: str, source: str) -> PipelineOutputs:
        job = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        tracked = dsl.ExitHandler(finish_tracking(kfp_run_id=job, mlflow_tracking_uri=tracking_uri, experiment=experiment))
        with tracked:
            start = start_tracking(kfp_run_id=job, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                   mlflow_tracking_uri=tracking_uri, experiment=experiment, params_json='{"frames": "4"}')  # fmt: skip
            videos = prepare_videos(source=video_source, synth_videos=2, synth_minutes=0.5, synth_fps=4.0,
                                    synth_seed=3, runs_root="")  # fmt: skip
            videos.after(start)
            champion = resolve_champion(model_name=model_name, mlflow_tracking_uri=tracking_uri).after(start)
            register_like_the_pipeline(model_name=model_name, kfp_run_id=job, tracking_uri=tracking_uri,
                                       source=source).after(champion, videos)  # fmt: skip
        outcome = run_outcome(model_name=model_name, kfp_run_id=job, mlflow_tracking_uri=tracking_uri).after(tracked)
        return PipelineOutputs(*(outcome.outputs[name] for name in PipelineOutputs._fields))

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
    model_name = f"slice-{experiment}"
    args = {"tracking_uri": mlflow_env, "experiment": experiment, "model_name": model_name, "source": "s3://longrl-test/slice-model"}  # a remote URI: no file needed
    task = pipeline(video_source="synth", **args)
    # The pipeline's outputs: the version this run registered and the promotion decision.
    assert task.outputs == {"registered_model": model_name, "registered_version": "1",
                            "model_uri": f"models:/{model_name}/1", "promoted": True, "promotion": "promoted",
                            "promotion_reason": "no champion yet", "champion_version": "1"}  # fmt: skip
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
    pipeline(video_source=str(tmp_path / "no-such-folder"), **args)
    runs = sorted(_runs(experiment), key=lambda r: r.info.start_time)
    assert len(runs) == 2
    failed = runs[-1]
    assert failed.info.status == "FAILED" and failed.data.tags["kfp.final_state"] == "FAILED"
    # ... and run-outcome, which waits for the handler's group to succeed, did not run again.
    assert len(list((tmp_path / "root").rglob("run-outcome/executor_output.json"))) == 1


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
