"""Registry versions, aliases and the promotion gate on a real MLflow server, and the CLI."""

from __future__ import annotations

import json
import math
import os

import pytest
from typer.testing import CliRunner

from common import registry, tracking
from common.registry import GateConfig, decide


def test_gate_decisions_pure():
    g = GateConfig(metric="accuracy", min_margin=0.02)
    assert decide(g, 0.5, True).promote and decide(g, 0.5, True).reason == "no champion yet"
    assert not decide(g, 0.9, False, 0.1, "1").promote  # failed eval never promotes
    assert decide(g, 0.53, True, 0.5, "1").promote  # gain 0.03 > 0.02
    assert not decide(g, 0.52, True, 0.5, "1").promote  # gain 0.02 is not above the margin
    assert not decide(g, math.nan, True, 0.5, "1").promote
    assert not decide(g, None, True).promote
    assert not decide(g, 0.9, True, None, "1").promote  # champion without the metric: no blind swap
    low = GateConfig(metric="wer", min_margin=0.0, higher_is_better=False)
    assert decide(low, 0.2, True, 0.3, "1").promote and not decide(low, 0.3, True, 0.2, "1").promote
    lenient = GateConfig(require_eval_success=False)
    assert decide(lenient, 0.5, False).promote


def _register(name: str, tmp_path, tag: str) -> str:
    folder = tmp_path / f"m{tag}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with tracking.stage_run("train") as run:
        source = run.log_checkpoint(folder, location_uri=f"pvc://longrl-data/{tag}", inline_max_bytes=0)
    mv = registry.register_version(
        name, source, run_id=run.run_id, alias=registry.CHALLENGER,
        tags={"data.digest": f"d{tag}", "base_model": "tiny", "pipeline.kfp_run_id": f"kfp-{tag}"},
    )  # fmt: skip
    return mv.version


def _tags(name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return MlflowClient().get_model_version(name, version).tags


def test_promotion_flow_records_every_decision(mlflow_env, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient()
    name = f"lvr-{os.environ['MLFLOW_EXPERIMENT_NAME']}"
    gate = GateConfig(metric="accuracy", min_margin=0.02)

    v1 = _register(name, tmp_path, "1")
    assert client.get_model_version_by_alias(name, "challenger").version == v1
    assert _tags(name, v1)["data.digest"] == "d1"
    registry.record_eval(name, v1, {"accuracy": 0.40, "temporal.accuracy": 0.3}, succeeded=True)
    d = registry.gate_and_promote(name, v1, gate)
    assert d.promote and d.reason == "no champion yet"
    assert registry.version_by_alias(name, "champion").version == v1

    v2 = _register(name, tmp_path, "2")
    registry.record_eval(name, v2, {"accuracy": 0.41}, succeeded=True)
    d = registry.gate_and_promote(name, v2, gate)
    assert not d.promote and "not above margin" in d.reason
    assert registry.version_by_alias(name, "champion").version == v1

    v3 = _register(name, tmp_path, "3")
    registry.record_eval(name, v3, {"accuracy": 0.99}, succeeded=False)
    assert not registry.gate_and_promote(name, v3, gate).promote

    # Side-by-side numbers from the pipeline's eval override the stored tags.
    v4 = _register(name, tmp_path, "4")
    registry.record_eval(name, v4, {"accuracy": 0.45}, succeeded=True)
    d = registry.gate_and_promote(name, v4, gate, candidate_metrics={"accuracy": 0.45},
                                  champion_metrics={"accuracy": 0.44})  # fmt: skip
    assert not d.promote and d.champion_value == 0.44
    d = registry.gate_and_promote(name, v4, gate)  # stored: 0.45 vs 0.40
    assert d.promote and d.champion_version == v1
    assert registry.version_by_alias(name, "champion").version == v4
    assert _tags(name, v1)["promotion.replaced_by"] == v4

    t2, t4 = _tags(name, v2), _tags(name, v4)
    assert t2["promotion.decision"] == "rejected" and t2["promotion.champion_version"] == v1
    assert t4["promotion.decision"] == "promoted" and float(t4["promotion.candidate_value"]) == 0.45
    history = [k for k in client.get_registered_model(name).tags if k.startswith("decision.")]
    assert len(history) == 6  # v1, v2, v3, v4 twice, v1 demoted: no decision lost to a later one
    assert sum(k.startswith(f"decision.v{v4}.") for k in history) == 2
    # No deprecated stage was touched.
    assert {mv.current_stage for mv in client.search_model_versions(f"name = '{name}'")} == {"None"}

    # The CLI: show, a refused manual promotion of a failed-eval version, then a forced one.
    from pipelines.cli_registry import app

    runner = CliRunner()
    res = runner.invoke(app, ["show", "--name", name, "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["version"]: r for r in json.loads(res.stdout)}
    assert rows[v4]["aliases"] == ["challenger", "champion"] and rows[v2]["aliases"] == []
    assert rows[v2]["decision"] == "rejected" and rows[v2]["data_digest"] == "d2"
    assert rows[v1]["metrics"] == {"accuracy": 0.4, "temporal.accuracy": 0.3}
    assert runner.invoke(app, ["show"]).exit_code == 0
    res = runner.invoke(app, ["promote", "--name", name, "--version", v3, "--alias", "champion"])
    assert res.exit_code == 1 and "evaluation failed" in res.output
    assert registry.version_by_alias(name, "champion").version == v4
    res = runner.invoke(app, ["promote", "--name", name, "--version", v3, "--alias", "champion",
                              "--force", "--reason", "rollback test"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert registry.version_by_alias(name, "champion").version == v3
    assert _tags(name, v3)["promotion.reason"] == "rollback test (forced)"
    assert _tags(name, v4)["promotion.replaced_by"] == v3 and _tags(name, v4)["promotion.decision"] == "demoted"


def test_cli_without_server_is_a_clear_error(monkeypatch):
    from pipelines.cli_registry import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = CliRunner().invoke(app, ["show"])
    assert res.exit_code == 2 and "MLFLOW_TRACKING_URI" in res.output


@pytest.mark.parametrize("args", [["show", "--help"], ["promote", "--help"], ["gate", "--help"]])
def test_cli_help(args):
    from pipelines.cli_registry import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and len(res.output) > 100


def test_reference_versions_materialize_on_the_shared_volume(mlflow_env, tmp_path):
    from common.registry import RegistryError, location_uri, materialize

    mount = tmp_path / "mnt"
    model = mount / "runs" / "r1" / "grpo" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    loc = location_uri(model, f"longrl-data:{mount}")
    assert loc == "pvc://longrl-data/runs/r1/grpo/model"
    assert location_uri(model, "") == str(model.resolve())  # not on the volume: a plain path
    name = f"ref-{os.environ['MLFLOW_EXPERIMENT_NAME']}"
    with tracking.stage_run("train") as run:
        source = run.log_checkpoint(model, location_uri=loc, inline_max_bytes=0)
    mv = registry.register_version(name, source, run_id=run.run_id)
    uri = f"models:/{name}/{mv.version}"
    assert materialize(uri, tmp_path / "d1", f"longrl-data:{mount}") == model
    with pytest.raises(RegistryError, match="not mounted here"):
        materialize(uri, tmp_path / "d2", "other-claim:/mnt/data")
    (model / "config.json").unlink()
    with pytest.raises(RegistryError, match="holds no model"):
        materialize(uri, tmp_path / "d3", f"longrl-data:{mount}")
