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

    if not mlflow_tracking_uri:
        print("no MLflow tracking URI: running without tracking")
        return ""
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    if os.environ.get("MLFLOW_RUN_ID"):
        # The platform (Kubeflow's MLflow integration, or `longrl pipeline run-local`) made the
        # parent run: adopt it; its owner ends it.
        run_id = os.environ["MLFLOW_RUN_ID"]
        tracking.StageRun(run_id, "pipeline").set_tags({tracking.KFP_RUN_TAG: kfp_run_id, "kfp.run_name": kfp_run_name})
        from mlflow import MlflowClient

        logged = MlflowClient().get_run(run_id).data.params  # the owner may have logged some already
        params = {k: v for k, v in json.loads(params_json or "{}").items() if k not in logged}
        tracking.StageRun(run_id, "pipeline").log_params(params)
        print(f"MLflow parent run {run_id} (given by the environment)")
        return run_id
    run_id = tracking.pipeline_run(kfp_run_id, experiment=experiment, params=json.loads(params_json or "{}"),
                                   run_name=kfp_run_name, tags={"kfp.run_name": kfp_run_name})
    print(f"MLflow parent run {run_id} (kfp run {kfp_run_id})")
    return run_id or ""


@dsl.component(**CPU)
def finish_tracking(kfp_run_id: str, mlflow_tracking_uri: str, experiment: str,
                    status: dsl.PipelineTaskFinalStatus):
    """Exit handler: end the parent run FINISHED or FAILED with the pipeline's final state. It
    cannot take the run id from the first step (exit tasks depend on nothing), so it finds the
    run by its kfp.run_id tag."""
    import os

    from common import tracking

    if not mlflow_tracking_uri or os.environ.get("MLFLOW_RUN_ID"):
        return  # no MLflow, or the parent run belongs to whoever set MLFLOW_RUN_ID
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    run_id = tracking.find_pipeline_run(kfp_run_id, experiment)
    if run_id is None:
        print(f"no parent run for kfp run {kfp_run_id} (the first step never ran)")
        return
    state = "FINISHED" if status.state == "SUCCEEDED" else "FAILED"
    tracking.end_pipeline_run(run_id, state, tags={"kfp.final_state": status.state,
                                                   "kfp.error": str(status.error_message or "")})
    print(f"MLflow parent run {run_id}: {state}")
