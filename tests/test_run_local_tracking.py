"""`longrl pipeline run-local --tracking-uri URI`: the local run logs to an existing MLflow server
and starts none of its own (issue 15, expected features)."""

from __future__ import annotations

from typer.testing import CliRunner


def test_run_local_uses_the_given_server(mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from pipelines.cli_pipeline import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "demo"
    # A video folder that does not exist: the pipeline fails at prepare-videos, within seconds,
    # after start-tracking has used the server.
    res = CliRunner().invoke(app, ["run-local", "--out", str(out), "--tracking-uri", mlflow_server,
                                   "--param", f"video_source={tmp_path / 'no-videos'}",
                                   "--param", "mlflow_experiment=run-local-external"])  # fmt: skip
    assert res.exit_code == 1, res.output
    assert f"using the MLflow server at {mlflow_server}" in res.output
    assert not (out / "mlflow").exists()  # no local server was started
    exp = MlflowClient().get_experiment_by_name("run-local-external")
    runs = MlflowClient().search_runs([exp.experiment_id], filter_string="tags.`longrl.stage` = 'pipeline'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
