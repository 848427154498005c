"""RBAC and namespaces as a real cluster sees them (issue 15 findings 4, 5, 10).

- Every Kubernetes API call the pipeline's code makes (RayJob launcher: create, 409 -> read,
  delete a FAILED leftover, create, poll, delete on timeout; the exit handler's list + delete),
  recorded by a scripted API server, is allowed by the Role that run-namespace/ binds.
- That Role is bound to the run's own ServiceAccount (standalone: KFP's pipeline-runner in
  kubeflow; multi-user: the Profile's default-editor), so the pods keep what KFP gave them
  (launcher secrets and ConfigMap, Argo workflowtaskresults) - the old longrl-pipeline-runner
  ServiceAccount had none of that and the pods failed at the launcher.
- The volume, Ray ServiceAccount and RayJobs live in the namespace the pods run in, with the
  names the compiled pipeline uses.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = shutil.which("kubectl")
# What KFP 2.17's executor pods do with the run's ServiceAccount (KFP's pipeline-runner role
# grants it; a replacement ServiceAccount would need all of it): the launcher reads the object
# store Secret and the kfp-launcher ConfigMap, Argo's executor reports task results.
KFP_POD_CALLS = [("get", "", "secrets"), ("get", "", "configmaps"),
                 ("create", "argoproj.io", "workflowtaskresults"), ("patch", "argoproj.io", "workflowtaskresults")]  # fmt: skip


def render(overlay: str) -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed")  # tests/test_manifests.py fails CI without it
    out = subprocess.run([KUBECTL, "kustomize", str(ROOT / "manifests" / overlay)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def allowed(rules: list[dict], verb: str, group: str, resource: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


def api_call(method: str, path: str) -> tuple[str, str, str]:
    """(verb, group, resource) of a REST call, as the API server's authorizer sees it."""
    m = re.match(r"^/apis/(?P<g>[^/]+)/[^/]+/namespaces/[^/]+/(?P<r>[^/]+)(?P<name>/[^/]+)?(?P<sub>/[^/]+)?$", path)
    assert m, path
    resource = m["r"] + (m["sub"] or "")
    verb = {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}.get(method)
    if method == "GET":
        verb = "get" if m["name"] else "list"
    return verb, m["g"], resource


def _rayjob_calls(scripted_server) -> list[tuple[str, str, str]]:
    """Drive the launcher and the exit handler's cleanup through the real kubernetes client."""
    from kubernetes import client

    from components.kuberay import RayJobConfig, build_rayjob, delete_run_rayjobs, run_rayjob

    state = {"posts": 0, "gets": 0}

    def handler(req):
        if req.method == "POST":
            state["posts"] += 1
            return (409, {"reason": "AlreadyExists"}) if state["posts"] == 1 else (201, req.json())
        if req.method == "GET" and req.path.endswith("/rayjobs"):
            return 200, {"items": [{"metadata": {"name": "kfp-run-1-grpo"}}]}
        if req.method == "GET":
            state["gets"] += 1
            status = "FAILED" if state["gets"] == 1 else "RUNNING"
            return 200, {"metadata": {"name": "kfp-run-1-grpo"}, "status": {"jobStatus": status}}
        return 200, {}

    server = scripted_server(handler)
    cfg = client.Configuration()
    cfg.host = server.url
    api = client.ApiClient(cfg)
    body = build_rayjob(RayJobConfig(namespace="team-a"), "kfp-run-1-grpo", ["longrl", "train", "grpo"])
    with pytest.raises(Exception, match="not finished"):
        run_rayjob(api, body, poll_s=0, timeout_s=0.2, log=lambda _: None, sleep=lambda _: None)
    assert delete_run_rayjobs(api, "team-a", "kfp-run-1", log=lambda _: None) == ["kfp-run-1-grpo"]
    return [api_call(r.method, r.path.split("?")[0]) for r in server.requests]


@pytest.mark.parametrize("overlay,namespace,subject", [
    ("overlays/kfp-standalone", "kubeflow", "pipeline-runner"),
    ("overlays/kfp-multi-user", "team-a", "default-editor"),
])  # fmt: skip
def test_run_namespace_grants_the_launcher_to_the_runs_own_serviceaccount(scripted_server, overlay, namespace,
                                                                          subject):  # fmt: skip
    from pipelines.cluster import ClusterConfig

    docs = render(overlay)
    assert {d["metadata"]["namespace"] for d in docs} == {namespace}
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    cfg = ClusterConfig()
    assert ("PersistentVolumeClaim", cfg.pvc_name) in by_kind  # the volume the compiled steps mount
    assert ("ServiceAccount", cfg.ray_service_account) in by_kind  # the Ray pods' identity
    assert by_kind[("ServiceAccount", cfg.ray_service_account)]["automountServiceAccountToken"] is False
    binding = by_kind[("RoleBinding", "longrl-rayjobs")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": subject, "namespace": namespace}]
    rules = by_kind[("Role", binding["roleRef"]["name"])]["rules"]
    calls = _rayjob_calls(scripted_server)
    assert {c[0] for c in calls} == {"create", "get", "delete", "list"}
    for call in calls:
        assert allowed(rules, *call), f"{call} denied to {subject}"
    # Least privilege: nothing the code does not do; KFP's own needs stay with KFP's role.
    assert not [c for c in KFP_POD_CALLS if allowed(rules, *c)]
    assert not any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "longrl-pipeline-runner" for d in docs)


def test_no_step_replaces_the_runs_serviceaccount(tmp_path):
    """The compiled pipeline sets no ServiceAccount, so KFP's (with KFP_POD_CALLS) is used."""
    from pipelines.submit import compile_pipeline

    text = compile_pipeline(tmp_path / "p.yaml").read_text()
    assert "serviceAccount" not in text
    docs = (ROOT / "docs" / "pipeline.md").read_text() + (ROOT / "docs" / "cluster.md").read_text()
    assert "longrl-pipeline-runner" not in docs


def test_services_accept_the_labelled_run_namespace():
    """MLflow and vLLM stay in namespace longrl; their NetworkPolicies admit pods of the run
    namespace once it carries the documented label (they admitted only longrl's own pods)."""
    base = render("overlays/gpu-cluster")
    policies = {d["metadata"]["name"]: d for d in base if d["kind"] == "NetworkPolicy"}
    for name in ("mlflow", "vllm"):
        peers = policies[name]["spec"]["ingress"][0]["from"]
        assert {"namespaceSelector": {"matchLabels": {"longrl.io/mlflow-client": "true"}}} in peers, name
    text = (ROOT / "docs" / "pipeline.md").read_text()
    assert "longrl.io/mlflow-client=true" in text
