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


def test_pipeline_outputs_name_the_version_and_the_decision(compiled):
    """Issue 15: the run's outputs. KFP 2.17 takes them from top-level tasks only, so run-outcome
    runs after the ExitHandler's group (which keeps register-and-promote and the cleanup)."""
    _, docs = compiled
    root = docs[0]["root"]
    outs = root["outputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in outs.items()} == {
        "registered_model": "STRING", "registered_version": "STRING", "model_uri": "STRING", "promoted": "BOOLEAN",
        "promotion": "STRING", "promotion_reason": "STRING", "champion_version": "STRING"}  # fmt: skip
    dag_outs = root["dag"]["outputs"]["parameters"]
    assert {k: v["valueFromParameter"] for k, v in dag_outs.items()} == {
        k: {"outputParameterKey": k, "producerSubtask": "run-outcome"} for k in outs}  # fmt: skip
    tasks = root["dag"]["tasks"]
    assert set(tasks) == {"exit-handler-1", "finish-tracking", "run-outcome"}
    assert tasks["run-outcome"]["dependentTasks"] == ["exit-handler-1"]
    assert tasks["run-outcome"]["inputs"]["parameters"]["kfp_run_id"] == {
        "runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}  # the id register-and-promote tags
    # The exit handler is as before: it runs whatever happened, and register-and-promote is inside it.
    assert tasks["finish-tracking"]["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert tasks["finish-tracking"]["dependentTasks"] == ["exit-handler-1"]
    inner = [n for c in docs[0]["components"].values() for n in c.get("dag", {}).get("tasks", {})]
    assert sum(n.startswith("register-and-promote") for n in inner) == 3  # one per training branch


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
    """The v2beta1 API as the 2.17 backend answers it. Multi-user (`state["multi_user"]`): a
    pipeline belongs to the namespace it was uploaded to ("" = shared), listing without a
    namespace returns only shared pipelines, a name is unique per namespace (409 on a second
    upload), experiments need a namespace. Single-user: namespaces are ignored."""
    multi = state.get("multi_user", False)
    state.setdefault("pipelines", [])

    def handler(req):
        p = req.path
        ns = (req.query.get("namespace") or [""])[0]
        if p == f"{API}/healthz":
            return 200, {"multi_user": multi}
        if req.method == "GET" and p == f"{API}/pipelines":
            flt = json.loads(req.query["filter"][0]) if "filter" in req.query else {"predicates": []}
            names = [pr["stringValue"] for pr in flt["predicates"] if pr["key"] == "display_name"]
            found = [pl for pl in state["pipelines"] if (not multi or pl["namespace"] == ns)
                     and (not names or pl["display_name"] in names)]  # fmt: skip
            return 200, ({"pipelines": [{k: v for k, v in pl.items()} for pl in found]} if found else {})
        if req.method == "POST" and p == f"{API}/pipelines/upload":
            name = req.query["name"][0]
            if any(pl["display_name"] == name and (not multi or pl["namespace"] == ns) for pl in state["pipelines"]):
                return 409, {"error": f"pipeline {name} already exists", "code": 6}
            pid = f"p-{len(state['pipelines']) + 1}"
            state["pipelines"].append({"pipeline_id": pid, "display_name": name, "namespace": ns if multi else ""})
            return 200, state["pipelines"][-1]
        if req.method == "POST" and p == f"{API}/pipelines/upload_version":
            return 200, {"pipeline_id": req.query["pipelineid"][0], "pipeline_version_id": "v-2",
                         "display_name": req.query["name"][0]}  # fmt: skip
        if req.method == "GET" and p.startswith(f"{API}/pipelines/") and p.endswith("/versions"):
            return 200, {"pipeline_versions": [{"pipeline_id": p.split("/")[-2], "pipeline_version_id": "v-1"}]}
        if req.method == "GET" and p == f"{API}/experiments":
            if multi and not ns:
                return 400, {"error": "Invalid input error: In multi-user mode, the namespace is required", "code": 3}
            return 200, ({"experiments": [{"experiment_id": "e-1", "display_name": "exp1"}]}
                         if state["experiment"] else {})  # fmt: skip
        if req.method == "POST" and p == f"{API}/experiments":
            state["experiment"] = True
            return 200, {"experiment_id": "e-1", **req.json()}
        if req.method == "POST" and p == f"{API}/runs":
            state["runs"].append(req.json())
            return 200, {"run_id": f"r-{len(state['runs'])}", **req.json()}
        if req.method == "GET" and p.startswith(f"{API}/runs/"):
            return 200, {"run_id": p.rsplit("/", 1)[-1], "state": state.get("final_state", "SUCCEEDED")}
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
            "--param", "video_source=synth", "--param", "grpo_steps=7",  # the old spelling (16.9)
            "--service-account", "team-runner"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "run r-1 started" in res.output and TOKEN not in res.output

    calls = [(r.method, r.path) for r in server.requests]
    assert calls == [
        ("GET", f"{API}/healthz"),  # single- or multi-user: which namespace rules apply
        ("GET", f"{API}/pipelines"),  # look the pipeline up by name
        ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/p-1/versions"),
        ("GET", f"{API}/experiments"),  # get or create
        ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs"),
    ]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in server.requests)
    upload = server.requests[2]
    # A standalone server has no namespaces: runs execute where KFP is installed; none is sent.
    assert upload.query["name"] == ["long-video-reasoning"] and "namespace" not in upload.query
    assert b"pipelineInfo" in upload.body and TOKEN.encode() not in upload.body
    assert json.loads(server.requests[5].body)["display_name"] == "exp1"
    run = state["runs"][0]
    assert run["experiment_id"] == "e-1" and run["service_account"] == "team-runner"
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-1", "pipeline_version_id": "v-1"}
    assert run["runtime_config"]["parameters"] == {
        "frames": 32, "run_sft": False, "sft_overrides": ["lr=2e-5", "epochs=2"],
        "gate_min_margin": 0.0, "video_source": "synth", "grpo_max_steps": 7}  # fmt: skip

    # Second submission: the pipeline exists -> a new version; the experiment is reused.
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    calls = [(r.method, r.path) for r in server.requests[7:]]
    assert calls == [("GET", f"{API}/healthz"), ("GET", f"{API}/pipelines"), ("POST", f"{API}/pipelines/upload_version"),
                     ("GET", f"{API}/experiments"), ("POST", f"{API}/runs")]  # fmt: skip
    assert state["runs"][1]["pipeline_version_reference"]["pipeline_version_id"] == "v-2"


def test_submit_rejects_bad_params_before_any_call(scripted_server, compiled):
    server = scripted_server(lambda req: (500, {}))
    path, _ = compiled
    for bad, msg in ((["--param", "nope=1"], "unknown pipeline parameter 'nope'"),
                     (["--param", "frames=many"], "frames='many' is not a integer"),
                     (["--param", "run_sft=maybe"], "is not a boolean"),
                     (["--param", "grpo_steps=2", "--param", "grpo_max_steps=3"], "are the same parameter")):  # fmt: skip
        res = CliRunner().invoke(app, ["submit", "--host", server.url, "--package", str(path), *bad])
        assert res.exit_code == 2 and msg in res.output, res.output
    assert server.requests == []


def test_multi_user_submit_uses_the_profile_namespace_and_resubmits(scripted_server, compiled, monkeypatch):
    """Finding 8: on a multi-user server the pipeline is looked up in the profile namespace; the
    old lookup without one found nothing on the second submission and the upload got 409."""
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    state = {"multi_user": True, "experiment": False, "runs": []}
    server = scripted_server(_kfp_script(state))
    path, _ = compiled
    base = ["submit", "--host", server.url, "--experiment", "exp1", "--package", str(path)]
    res = CliRunner().invoke(app, base)  # no namespace on a multi-user server: refused up front
    assert res.exit_code == 2 and "multi-user" in res.output and "--namespace" in res.output, res.output
    assert {r.path for r in server.requests} == {f"{API}/healthz"}  # nothing uploaded
    for _ in range(2):
        res = CliRunner().invoke(app, [*base, "--namespace", "team-a"])
        assert res.exit_code == 0, res.output
    assert state["pipelines"] == [{"pipeline_id": "p-1", "display_name": "long-video-reasoning", "namespace": "team-a"}]
    lookups = [r for r in server.requests if r.method == "GET" and r.path == f"{API}/pipelines"]
    assert all(r.query["namespace"] == ["team-a"] for r in lookups)
    assert [r.path for r in server.requests if r.method == "POST"][-2:] == [f"{API}/pipelines/upload_version", f"{API}/runs"]
    assert "namespace team-a" in res.output


def test_submit_wait_and_no_cache(scripted_server, compiled, monkeypatch):
    """`--wait`: the exit code follows the run; `--no-cache`: the uploaded version caches nothing."""
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    state = {"experiment": True, "runs": [], "final_state": "FAILED"}
    server = scripted_server(_kfp_script(state))
    path, _ = compiled
    args = ["submit", "--host", server.url, "--package", str(path), "--wait", "--no-cache"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "ended FAILED" in res.output, res.output
    upload = next(r for r in server.requests if r.path == f"{API}/pipelines/upload")
    text = upload.body.decode()
    assert "enableCache: true" not in text and text.count("enableCache: false") >= 15
    state["final_state"] = "SUCCEEDED"
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "ended SUCCEEDED" in res.output, res.output
