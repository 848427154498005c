"""`longrl pipeline compile` gives valid KFP IR with GPU requests and no secrets; `submit` drives
the real kfp.Client through upload -> experiment -> run against a scripted KFP API server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli_pipeline import app

TOKEN = "kfp-token-abcdef0123456789"
API = "/apis/v2beta1"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[Path, list[dict]]:
    import os

    out = tmp_path_factory.mktemp("compile") / "lvr.yaml"
    env = {"OPENAI_API_KEY": "sk-secret-value-0123456789", "KFP_TOKEN": TOKEN}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        res = CliRunner().invoke(app, ["compile", "--out", str(out), "train_gpus=4"])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert res.exit_code == 0, res.output
    return out, list(yaml.safe_load_all(out.read_text()))


def test_compiled_yaml_is_valid_kfp_ir(compiled):
    from google.protobuf import json_format
    from kfp import components
    from kfp.pipeline_spec import pipeline_spec_pb2

    path, docs = compiled
    assert len(docs) == 2  # pipeline spec + Kubernetes platform spec
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
    json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    assert spec.pipeline_info.name == "long-video-reasoning"
    loaded = components.load_component_from_file(str(path))
    assert {"base_model", "frames", "run_sft", "run_grpo", "sft_lr", "grpo_group_size", "ray_workers",
            "gate_metric", "gate_min_margin", "video_source"} <= set(loaded.component_spec.inputs)  # fmt: skip
    text = path.read_text()
    assert "sk-secret-value" not in text and TOKEN not in text


def _executors(docs):
    return docs[0]["deploymentSpec"]["executors"], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_gpu_requests_nodes_volumes_secrets(compiled):
    _, docs = compiled
    executors, k8s = _executors(docs)
    train_gpus = "{{$.inputs.parameters['pipelinechannel--train-step-gpus-Output']}}"  # 4, or 0 with Ray
    for name, gpus in (("exec-sft", train_gpus), ("exec-grpo", train_gpus), ("exec-evaluate-models", "1")):
        res = executors[name]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == gpus
        assert executors[name]["container"]["image"].endswith("longrl-gpu:0.1.0")
        plat = k8s[name]
        assert "nodeSelector" not in plat  # none by default (issue 15 finding 11)
        assert plat["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert {"mountPath": "/dev/shm", "volumeName": "dshm", "medium": "Memory", "sizeLimit": "32Gi"} in plat["emptyDirMounts"]
    for name in ("exec-prepare-videos", "exec-build-data", "exec-register-and-promote"):
        assert "accelerator" not in executors[name]["container"].get("resources", {})
        assert "nodeSelector" not in k8s[name]
    for name, plat in k8s.items():
        assert plat["pvcMount"][0]["mountPath"] == "/mnt/data", name
        envs = {e["envVar"] for s in plat.get("secretAsEnv", []) for e in s["keyToEnv"]}
        assert "AWS_SECRET_ACCESS_KEY" not in envs, name  # least privilege (tests/test_cluster_pods.py)
        assert all(s["optional"] for s in plat.get("secretAsEnv", []))
        assert plat["fieldPathAsEnv"][0]["name"] == "KFP_RUN_ID"
        assert "resourceCpuLimit" in executors[name]["container"]["resources"], name


def _tasks(dag: dict, out: dict) -> dict:
    for name, task in dag["tasks"].items():
        out[name] = task
    return out


def test_caching_on_for_deterministic_steps_off_for_training(compiled):
    _, docs = compiled
    tasks: dict = {}
    for comp in docs[0]["components"].values():
        if "dag" in comp:
            _tasks(comp["dag"], tasks)
    _tasks(docs[0]["root"]["dag"], tasks)

    def cached(name: str) -> bool:
        return tasks[name].get("cachingOptions", {}).get("enableCache", False)

    for name in ("prepare-videos", "prepare-model", "build-data", "evaluate-models"):
        assert cached(name), name
    for name in ("sft", "grpo", "grpo-2", "start-tracking", "resolve-champion", "register-and-promote", "finish-tracking"):
        assert not cached(name), name


def test_compile_refuses_a_leaked_secret(compiled, tmp_path, monkeypatch):
    import typer

    from pipelines.cli_pipeline import check_no_secrets

    copy = tmp_path / "x.yaml"
    copy.write_text(compiled[0].read_text())
    check_no_secrets(copy)  # clean: kept
    monkeypatch.setenv("OPENAI_API_KEY", "long-video-reasoning")  # a value that is in the YAML
    with pytest.raises(typer.Exit):
        check_no_secrets(copy)
    assert not copy.exists()


def _kfp_script(state: dict):
    def handler(req):
        p = req.path
        if p == f"{API}/healthz":
            return 200, {"multi_user": False}
        if req.method == "GET" and p == f"{API}/pipelines":
            return 200, ({"pipelines": [{"pipeline_id": "p-1", "display_name": "long-video-reasoning"}]}
                         if state["uploaded"] else {})  # fmt: skip
        if req.method == "POST" and p == f"{API}/pipelines/upload":
            state["uploaded"] = True
            return 200, {"pipeline_id": "p-1", "display_name": req.query["name"][0]}
        if req.method == "POST" and p == f"{API}/pipelines/upload_version":
            return 200, {"pipeline_id": req.query["pipelineid"][0], "pipeline_version_id": "v-2",
                         "display_name": req.query["name"][0]}  # fmt: skip
        if req.method == "GET" and p == f"{API}/pipelines/p-1/versions":
            return 200, {"pipeline_versions": [{"pipeline_id": "p-1", "pipeline_version_id": "v-1"}]}
        if req.method == "GET" and p == f"{API}/experiments":
            return 200, ({"experiments": [{"experiment_id": "e-1", "display_name": "exp1"}]}
                         if state["experiment"] else {})  # fmt: skip
        if req.method == "POST" and p == f"{API}/experiments":
            state["experiment"] = True
            return 200, {"experiment_id": "e-1", **req.json()}
        if req.method == "POST" and p == f"{API}/runs":
            state["runs"].append(req.json())
            return 200, {"run_id": f"r-{len(state['runs'])}", **req.json()}
        return 404, {"error": f"unexpected {req.method} {p}"}

    return handler


def test_submit_end_to_end_through_kfp_client(scripted_server, compiled, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    state = {"uploaded": False, "experiment": False, "runs": []}
    server = scripted_server(_kfp_script(state))
    path, _ = compiled
    args = ["submit", "--host", server.url, "--namespace", "team-a", "--experiment", "exp1",
            "--package", str(path), "--param", "frames=32", "--param", "run_sft=false",
            "--param", "sft_overrides=[lr=2e-5, epochs=2]", "--param", "gate_min_margin=0",
            "--param", "video_source=synth", "--service-account", "longrl-pipeline-runner"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "run r-1 started" in res.output and TOKEN not in res.output

    calls = [(r.method, r.path) for r in server.requests]
    assert calls == [
        ("GET", f"{API}/pipelines"),  # look the pipeline up by name
        ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/p-1/versions"),
        ("GET", f"{API}/experiments"),  # get or create
        ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs"),
    ]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in server.requests)
    upload = server.requests[1]
    assert upload.query["name"] == ["long-video-reasoning"] and upload.query["namespace"] == ["team-a"]
    assert b"pipelineInfo" in upload.body and TOKEN.encode() not in upload.body
    assert json.loads(server.requests[4].body) == {"display_name": "exp1", "namespace": "team-a"}
    run = state["runs"][0]
    assert run["experiment_id"] == "e-1" and run["service_account"] == "longrl-pipeline-runner"
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-1", "pipeline_version_id": "v-1"}
    assert run["runtime_config"]["parameters"] == {
        "frames": 32, "run_sft": False, "sft_overrides": ["lr=2e-5", "epochs=2"],
        "gate_min_margin": 0.0, "video_source": "synth"}  # fmt: skip

    # Second submission: the pipeline exists -> a new version; the experiment is reused.
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    calls = [(r.method, r.path) for r in server.requests[6:]]
    assert calls == [("GET", f"{API}/pipelines"), ("POST", f"{API}/pipelines/upload_version"),
                     ("GET", f"{API}/experiments"), ("POST", f"{API}/runs")]  # fmt: skip
    assert state["runs"][1]["pipeline_version_reference"]["pipeline_version_id"] == "v-2"


def test_submit_rejects_bad_params_before_any_call(scripted_server, compiled):
    server = scripted_server(lambda req: (500, {}))
    path, _ = compiled
    for bad, msg in ((["--param", "nope=1"], "unknown pipeline parameter 'nope'"),
                     (["--param", "frames=many"], "frames='many' is not a integer"),
                     (["--param", "run_sft=maybe"], "is not a boolean")):  # fmt: skip
        res = CliRunner().invoke(app, ["submit", "--host", server.url, "--package", str(path), *bad])
        assert res.exit_code == 2 and msg in res.output, res.output
    assert server.requests == []
