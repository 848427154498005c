"""The RayJob launcher through the real kubernetes client against a scripted API server."""

from __future__ import annotations

import copy

import pytest

from components.kuberay import RayJobConfig, RayJobFailed, build_rayjob, job_name, run_rayjob
from tests.fixtures.k8s_schemas import validate_k8s

BASE = "/apis/ray.io/v1/namespaces/longrl/rayjobs"


def _api_client(url: str):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = url
    return client.ApiClient(cfg)


def _body(workers: int = 2) -> dict:
    cfg = RayJobConfig(namespace="longrl", workers=workers, gpus_per_worker=8, secret_env={"OPENAI_API_KEY": "longrl-llm-api:api-key"})
    return build_rayjob(cfg, job_name("kfp-run-ABC_123", "grpo"), ["longrl", "train", "grpo", "--out", "/mnt/data/o x"],
                        env={"MLFLOW_RUN_ID": "r1"})  # fmt: skip


def test_rayjob_object_is_valid_and_requests_gpus():
    body = _body()
    validate_k8s(body)  # KubeRay schema, pod templates against Kubernetes' PodTemplateSpec
    assert body["metadata"]["name"] == "kfp-run-abc-123-grpo"
    spec = body["spec"]
    assert spec["entrypoint"] == "longrl train grpo --out '/mnt/data/o x'"
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert worker["replicas"] == worker["minReplicas"] == worker["maxReplicas"] == 2
    pod = worker["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert c["securityContext"]["runAsNonRoot"] is True
    assert {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "longrl-llm-api", "key": "api-key"}}} in c["env"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {v["name"] for v in pod["volumes"]} == {"data", "dshm", "tmp"}
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"] and "nodeSelector" not in head
    bad = copy.deepcopy(body)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(Exception, match="not of type"):
        validate_k8s(bad)
    assert len(job_name("x" * 80)) <= 47


def _script(statuses: list[dict | int], exists: bool = False):
    state = {"created": None, "polls": 0, "deleted": False}

    def handler(req):
        if req.method == "POST" and req.path == BASE:
            if exists:
                return 409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}
            state["created"] = req.json()
            return 201, req.json()
        name = req.path.rsplit("/", 1)[-1]
        if req.method == "GET" and req.path == f"{BASE}/{name}":
            i = min(state["polls"], len(statuses) - 1)
            state["polls"] += 1
            st = statuses[i]
            if isinstance(st, int):
                return st, {"kind": "Status", "code": st}
            return 200, {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name}, "status": st}
        if req.method == "DELETE":
            state["deleted"] = True
            return 200, {"kind": "Status", "status": "Success"}
        return 404, {"kind": "Status", "code": 404}

    return handler, state


def test_rayjob_runs_to_success_streaming_each_change(scripted_server):
    handler, state = _script([
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Initializing"},  # unchanged: not printed again
        503,  # API server hiccup: retried
        {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "message": "done"},
    ])  # fmt: skip
    server = scripted_server(handler)
    lines: list[str] = []
    status = run_rayjob(_api_client(server.url), _body(), poll_s=0, log=lines.append, sleep=lambda s: None)
    assert status["jobStatus"] == "SUCCEEDED"
    assert state["created"]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
    name = "kfp-run-abc-123-grpo"
    assert lines == [
        f"rayjob longrl/{name}: created (2 workers)",
        f"rayjob longrl/{name}: deployment=Initializing job=-",
        f"rayjob longrl/{name}: API error 503, retrying",
        f"rayjob longrl/{name}: deployment=Running job=PENDING",
        f"rayjob longrl/{name}: deployment=Running job=RUNNING",
        f"rayjob longrl/{name}: deployment=Complete job=SUCCEEDED message=done",
    ]
    posts = [r for r in server.requests if r.method == "POST"]
    assert len(posts) == 1 and posts[0].headers["content-type"].startswith("application/json")


def test_rayjob_failure_raises_with_message(scripted_server):
    handler, _ = _script([{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
                          {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "OOM in worker 3"}])  # fmt: skip
    server = scripted_server(handler)
    with pytest.raises(RayJobFailed, match="ended FAILED: OOM in worker 3"):
        run_rayjob(_api_client(server.url), _body(), poll_s=0, log=lambda s: None, sleep=lambda s: None)


def test_retried_step_adopts_existing_job(scripted_server):
    handler, state = _script([{"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}], exists=True)
    server = scripted_server(handler)
    lines: list[str] = []
    run_rayjob(_api_client(server.url), _body(), poll_s=0, log=lines.append, sleep=lambda s: None)
    assert "exists (retried step, job SUCCEEDED)" in lines[0] and state["created"] is None


def test_timeout_deletes_the_job(scripted_server):
    handler, state = _script([{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}])
    server = scripted_server(handler)
    with pytest.raises(RayJobFailed, match="not finished after"):
        run_rayjob(_api_client(server.url), _body(), poll_s=0.01, timeout_s=0.05, log=lambda s: None)
    assert state["deleted"]
    assert [r.method for r in server.requests][-1] == "DELETE"
