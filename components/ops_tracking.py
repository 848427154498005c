"""The pipeline's MLflow parent run: opened by the first step, closed by the exit handler."""

from kfp import dsl

from components.images import CPU


@dsl.component(**CPU)
def start_tracking(kfp_run_id: str, kfp_run_name: str, mlflow_tracking_uri: str, experiment: str,
                   params_json: str) -> str:
    """Create (or find, on a retry) the parent run tagged kfp.run_id; returns its id, or "" when
    no tracking URI is given (every stage then runs without MLflow)."""
    import json
    import os

    from common import tracking
    from components.launch import tracking_uri

    task_run = tracking.kfp_plugin_run()
    mlflow_tracking_uri = tracking_uri(mlflow_tracking_uri)
    if not mlflow_tracking_uri:
        print("no MLflow tracking URI: running without tracking")
        return ""
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    given = tracking.parent_of(task_run) if task_run else os.environ.get("MLFLOW_RUN_ID")
    if given:
        # The platform made the parent run: KFP's MLflow integration (the parent of this task's
        # nested run), or `longrl pipeline run-local` (MLFLOW_RUN_ID). Adopt it; its owner ends it.
        run_id = given
        tracking.StageRun(run_id, "pipeline").set_tags({tracking.KFP_RUN_TAG: kfp_run_id, "kfp.run_name": kfp_run_name})
        from mlflow import MlflowClient

        logged = MlflowClient().get_run(run_id).data.params  # the owner may have logged some already
        params = {k: v for k, v in json.loads(params_json or "{}").items() if k not in logged}
        tracking.StageRun(run_id, "pipeline").log_params(params)
        print(f"MLflow parent run {run_id} (given by {'KFP' if task_run else 'the environment'})")
        return run_id
    run_id = tracking.pipeline_run(kfp_run_id, experiment=experiment, params=json.loads(params_json or "{}"),
                                   run_name=kfp_run_name, tags={"kfp.run_name": kfp_run_name})
    print(f"MLflow parent run {run_id} (kfp run {kfp_run_id})")
    return run_id or ""


@dsl.component(**CPU)
def finish_tracking(kfp_run_id: str, mlflow_tracking_uri: str, experiment: str,
                    status: dsl.PipelineTaskFinalStatus):
    """Exit handler: delete the RayJobs this run left behind (on a cluster), then end the parent
    run FINISHED or FAILED with the pipeline's final state. It cannot take the run id from the
    first step (exit tasks depend on nothing), so it finds the run by its kfp.run_id tag."""
    import os

    from common import tracking

    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get("POD_NAMESPACE"):
        from components.kuberay import delete_run_rayjobs, in_cluster_api_client

        try:  # the run's outcome is decided; a failed cleanup is said, not raised
            left = delete_run_rayjobs(in_cluster_api_client(), os.environ["POD_NAMESPACE"], kfp_run_id)
            print(f"rayjobs of run {kfp_run_id}: {len(left)} deleted")
        except Exception as exc:  # noqa: BLE001
            print(f"rayjobs of run {kfp_run_id} NOT cleaned up: {type(exc).__name__}: {exc}")
    if not mlflow_tracking_uri or tracking.kfp_plugin_run():
        return  # no MLflow, or KFP's MLflow integration owns (and ends) the parent run
    if os.environ.get("MLFLOW_RUN_ID"):
        return  # the parent run belongs to whoever set MLFLOW_RUN_ID (run-local)
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    run_id = tracking.find_pipeline_run(kfp_run_id, experiment)
    if run_id is None:
        print(f"no parent run for kfp run {kfp_run_id} (the first step never ran)")
        return
    state = "FINISHED" if status.state == "SUCCEEDED" else "FAILED"
    tracking.end_pipeline_run(run_id, state, tags={"kfp.final_state": status.state,
                                                   "kfp.error": str(status.error_message or "")})
    print(f"MLflow parent run {run_id}: {state}")
