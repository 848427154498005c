"""Tracking with KFP 2.17's built-in MLflow integration on and off (issue 15 finding 9).

On: KFP creates the pipeline's parent run and one nested run per task, and sets MLFLOW_RUN_ID
to the task's run (KEP-12862). start-tracking must adopt the parent (not the task run) and use
the plugin's server even when the pipeline parameter names another one (it crashed); stage runs
nest under their task's run; the exit handler leaves the parent to KFP. Off: MLFLOW_RUN_ID (if
any) is the pipeline's parent run, as `longrl pipeline run-local` sets it."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from common import tracking
from components import launch


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


@pytest.fixture
def plugin_on(mlflow_env, monkeypatch):
    """What KFP's driver sets in a task's container: a parent run and this task's nested run."""
    client = _client()
    exp = client.create_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    parent = client.create_run(exp, tags={"kfp.pipeline_run_id": "kfp-9"}).info.run_id
    task = client.create_run(exp, tags={"mlflow.parentRunId": parent}, run_name="start-tracking").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", task)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)
    monkeypatch.setenv("KFP_POD_NAME", "lvr-abc-start-tracking")
    monkeypatch.setenv("KFP_MLFLOW_CONFIG", json.dumps({"trackingUri": mlflow_env}))
    # kfp_plugin_run() writes this variable itself: setenv first so that teardown removes it.
    monkeypatch.setenv(tracking.PLUGIN_TASK_RUN_ENV, "")
    return SimpleNamespace(parent=parent, task=task, uri=mlflow_env)


def test_plugin_on_parent_adopted_and_stages_nest_under_their_task_run(plugin_on, monkeypatch):
    from components.ops_tracking import finish_tracking, start_tracking

    # The pipeline parameter names another (unreachable) server: the plugin's wins.
    got = start_tracking.python_func(kfp_run_id="kfp-9", kfp_run_name="lvr", experiment="longrl",
                                     mlflow_tracking_uri="http://mlflow.elsewhere.invalid:5000",
                                     params_json='{"frames": "64"}')  # fmt: skip
    assert got == plugin_on.parent
    parent = _client().get_run(plugin_on.parent)
    assert parent.data.tags[tracking.KFP_RUN_TAG] == "kfp-9" and parent.data.params["frames"] == "64"
    # A stage launched by a component: env from launch.mlflow_env -> nested under the task run.
    env = launch.mlflow_env(launch.tracking_uri("http://mlflow.elsewhere.invalid:5000"), got)
    assert env == {"MLFLOW_TRACKING_URI": plugin_on.uri, "MLFLOW_RUN_ID": plugin_on.task}
    monkeypatch.setenv("MLFLOW_RUN_ID", got)  # code that later repoints it (register step did)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    assert tracking.kfp_plugin_run() == plugin_on.task  # remembered
    monkeypatch.setenv("MLFLOW_RUN_ID", env["MLFLOW_RUN_ID"])
    with tracking.stage_run("sft") as run:
        pass
    stage = _client().get_run(run.run_id)
    assert stage.data.tags["mlflow.parentRunId"] == plugin_on.task
    assert tracking.parent_of(plugin_on.task) == plugin_on.parent
    # The exit handler leaves both runs to KFP (it ends them): the parent stays RUNNING.
    finish_tracking.python_func(kfp_run_id="kfp-9", mlflow_tracking_uri=plugin_on.uri, experiment="longrl",
                                status=SimpleNamespace(state="SUCCEEDED", error_message=""))  # fmt: skip
    assert _client().get_run(plugin_on.parent).info.status == "RUNNING"


def test_plugin_off_mlflow_run_id_is_the_pipeline_parent(mlflow_env, monkeypatch):
    monkeypatch.setenv(tracking.PLUGIN_TASK_RUN_ENV, "")
    for var in ("KFP_MLFLOW_CONFIG", "MLFLOW_EXPERIMENT_ID", "KFP_POD_NAME"):
        monkeypatch.delenv(var, raising=False)
    parent = tracking.pipeline_run("kfp-10", experiment=os.environ["MLFLOW_EXPERIMENT_NAME"])
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)
    assert tracking.kfp_plugin_run() is None
    assert launch.tracking_uri(mlflow_env) == mlflow_env
    assert launch.mlflow_env(mlflow_env, parent) == {"MLFLOW_TRACKING_URI": mlflow_env, "MLFLOW_RUN_ID": parent}
    from components.ops_tracking import start_tracking

    got = start_tracking.python_func(kfp_run_id="kfp-10", kfp_run_name="lvr", experiment="x",
                                     mlflow_tracking_uri=mlflow_env, params_json="{}")  # fmt: skip
    assert got == parent
    with tracking.stage_run("sft") as run:
        pass
    assert _client().get_run(run.run_id).data.tags["mlflow.parentRunId"] == parent
