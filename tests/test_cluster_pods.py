"""Every pod the pipeline creates on a cluster, rendered as KFP 2.17 and KubeRay would render it,
checked against the Kubernetes schema and Pod Security `restricted` (issue 15, findings 2, 3,
6, 7, 10, 11, 17): executor pods of all 20 executors, the RayJob's head, workers and submitter."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from tests.fixtures.k8s_schemas import validate_k8s
from tests.fixtures.pod_security import (
    kfp_executor_pod,
    kuberay_default_submitter,
    restricted_violations,
)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    from pipelines.submit import compile_pipeline

    path = compile_pipeline(tmp_path_factory.mktemp("pods") / "lvr.yaml")
    return list(yaml.safe_load_all(path.read_text()))


def _all_tasks(spec: dict) -> dict[str, dict]:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def test_every_executor_pod_is_admitted_by_restricted(docs):
    executors = docs[0]["deploymentSpec"]["executors"]
    assert len(executors) == 21  # one per task (the three eval/register branches have their own)
    for name in executors:
        pod = kfp_executor_pod(docs[0], docs[1], name)
        validate_k8s(pod)
        # The kfp-launcher init container is the KFP install's (docs/pipeline.md); ours is `main`.
        assert [v for v in restricted_violations(pod["spec"]) if "kfp-launcher" not in v] == [], name
        main = pod["spec"]["containers"][0]["securityContext"]
        assert main["runAsNonRoot"] is True and main["runAsUser"] == 10001, name


def test_without_kfp_kubernetes_security_context_the_pods_are_rejected(docs):
    """What KFP 2.17 alone renders (seccomp, drop ALL, no escalation) is not enough: the checker
    sees the missing runAsNonRoot, i.e. it would have caught finding 2."""
    platform = copy.deepcopy(docs[1])
    for ex in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        ex.pop("securityContext")
    pod = kfp_executor_pod(docs[0], platform, "exec-sft")
    assert "container main: runAsNonRoot != true" in restricted_violations(pod["spec"])


def test_every_task_has_a_timeout_and_a_retry_policy(docs):
    k8s = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    deadlines = {name: int(ex["activeDeadlineSeconds"]) for name, ex in k8s.items()}
    assert set(deadlines) == set(docs[0]["deploymentSpec"]["executors"])
    assert deadlines["exec-sft"] == deadlines["exec-grpo"] == 7 * 24 * 3600
    assert deadlines["exec-evaluate-models"] == 2 * 24 * 3600 and deadlines["exec-start-tracking"] == 7200
    tasks = _all_tasks(docs[0])
    assert len(tasks) >= 15
    for name, task in tasks.items():
        ref = task.get("componentRef", {}).get("name", "")
        if not ref or "condition" in ref or "for-loop" in ref or "exit-handler" in name:
            continue  # a DAG group, not a pod
        if name == "finish-tracking":  # KFP runs exit handlers once; no retry field allowed there
            continue
        assert task["retryPolicy"]["maxRetryCount"] >= 1, name
        assert task["retryPolicy"]["backoffDuration"] == "60s", name


def test_watcher_of_a_rayjob_requests_no_gpu(docs):
    """Finding 6: the training step's GPU count is the output of train_step_gpus, 0 with Ray."""
    from components.ops_train import train_step_gpus

    assert train_step_gpus.python_func(ray_workers=2, gpus=8) == 0
    assert train_step_gpus.python_func(ray_workers=0, gpus=8) == 8
    for name in ("exec-sft", "exec-grpo"):
        acc = docs[0]["deploymentSpec"]["executors"][name]["container"]["resources"]["accelerator"]
        assert acc["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--train-step-gpus-Output']}}"
    tasks = _all_tasks(docs[0])
    for name in ("sft", "grpo", "grpo-2"):
        param = tasks[name]["inputs"]["parameters"]["pipelinechannel--train-step-gpus-Output"]
        assert param == {"componentInputParameter": "pipelinechannel--train-step-gpus-Output"}, name


def test_secrets_reach_only_the_steps_that_use_them(docs):
    """Finding 17: no step pod holds the object store's keys (the MLflow server proxies
    artifacts); the LLM API key only where an endpoint is called."""
    k8s = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, ex in k8s.items():
        envs = {e["envVar"] for s in ex.get("secretAsEnv", []) for e in s["keyToEnv"]}
        assert not envs & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, name
        assert ("OPENAI_API_KEY" in envs) == (name in ("exec-build-data", "exec-build-data-shard", "exec-evaluate-models", "exec-evaluate-models-2",
                                                      "exec-evaluate-models-3", "exec-sft", "exec-grpo", "exec-grpo-2")), name
        if name not in ("exec-prepare-videos", "exec-prepare-model", "exec-train-step-gpus", "exec-video-fingerprint",
                        "exec-data-shard-indices", "exec-prepare-benchmark"):  # no MLflow call in these
            assert "MLFLOW_TRACKING_PASSWORD" in envs, name


def _rayjob_from_pipeline(cluster=None):
    from components.kuberay import RayJobConfig, build_rayjob
    from pipelines.cluster import ClusterConfig
    from pipelines.long_video_reasoning import build_pipeline  # noqa: F401 - same path as compile

    cfg = cluster or ClusterConfig()
    rj = RayJobConfig(**json.loads(json.dumps(cfg.rayjob_config("registry.example/longrl-gpu@sha256:" + "a" * 64))))
    rj.namespace, rj.workers = "team-a", 2
    return build_rayjob(rj, "kfp-run-1-grpo", ["longrl", "train", "grpo"], owner={"name": "p", "uid": "u-1"})


def test_rayjob_pods_head_workers_submitter_are_admitted_by_restricted():
    body = _rayjob_from_pipeline()
    validate_k8s(body)
    spec = body["spec"]
    templates = {"head": spec["rayClusterSpec"]["headGroupSpec"]["template"],
                 "worker": spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"],
                 "submitter": spec["submitterPodTemplate"]}  # fmt: skip
    for role, tpl in templates.items():
        validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": role}, "spec": tpl["spec"]})
        assert restricted_violations(tpl["spec"]) == [], role
    assert spec["submitterConfig"] == {"backoffLimit": 2} and spec["backoffLimit"] == 0
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u-1",
                                                    "blockOwnerDeletion": False}]  # fmt: skip
    # Finding 3: KubeRay's default submitter (what we had: no submitterPodTemplate) is rejected.
    default = kuberay_default_submitter(templates["head"]["spec"]["containers"][0]["image"])
    assert "container ray-job-submitter: runAsNonRoot != true" in restricted_violations(default["spec"])


def test_rayjob_follows_the_cluster_config():
    """Finding 7: image, node selector, tolerations and secrets come from the cluster config."""
    from pipelines.cluster import ClusterConfig

    cfg = ClusterConfig(gpu_node_selector={"pool": "h100"}, gpu_tolerations=[{"key": "gpu", "operator": "Exists",
                                                                              "effect": "NoSchedule"}])  # fmt: skip
    body = _rayjob_from_pipeline(cfg)
    worker = body["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    head = body["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert worker["containers"][0]["image"] == "registry.example/longrl-gpu@sha256:" + "a" * 64
    assert body["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] == worker["containers"][0]["image"]
    assert worker["nodeSelector"] == {"pool": "h100"} and worker["tolerations"][0]["key"] == "gpu"
    assert "nodeSelector" not in head
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in worker["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"] == {"name": "longrl-mlflow-client", "key": "password"}
    assert env["OPENAI_API_KEY"] == {"name": "longrl-llm-api", "key": "api-key"}  # GRPO's judge endpoint
    assert body["metadata"]["namespace"] == "team-a"


def test_gpu_node_selector_is_empty_by_default_and_a_file_sets_it_whole(docs, tmp_path):
    """Finding 11: the default no longer pins `nvidia.com/gpu.present` (GPU pods stayed Pending
    on clusters without that label), and a config file's selector is the whole selector."""
    from common.config import load_config
    from pipelines.cluster import ClusterConfig

    k8s = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all("nodeSelector" not in ex for ex in k8s.values())
    f = tmp_path / "c.yaml"
    f.write_text("gpu_node_selector: {pool: a100}\n")
    assert load_config(ClusterConfig, f).gpu_node_selector == {"pool": "a100"}
    f.write_text("gpu_node_selector: {}\n")
    assert load_config(ClusterConfig, f).gpu_node_selector == {}


def test_images_can_be_pinned_by_digest(tmp_path):
    """LONGRL_IMAGE / LONGRL_GPU_IMAGE take digests: every executor and the RayJob use them."""
    import os
    import subprocess
    import sys

    cpu, gpu = "registry.example/longrl@sha256:" + "1" * 64, "registry.example/longrl-gpu@sha256:" + "2" * 64
    out = tmp_path / "p.yaml"
    code = ("from pipelines.submit import compile_pipeline; import sys; compile_pipeline(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=120,
                   env=dict(os.environ, LONGRL_IMAGE=cpu, LONGRL_GPU_IMAGE=gpu))  # fmt: skip
    spec = next(yaml.safe_load_all(out.read_text()))
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {cpu, gpu}
    configs = [t["inputs"]["parameters"]["rayjob_config_json"]["runtimeValue"]["constant"]
               for t in _all_tasks(spec).values() if "rayjob_config_json" in t.get("inputs", {}).get("parameters", {})]  # fmt: skip
    assert len(configs) == 3 and {json.loads(c)["image"] for c in configs} == {gpu}  # sft, grpo, grpo-2


def test_every_parameter_has_a_description_in_the_ui(docs):
    """The KFP UI shows inputDefinitions descriptions beside each run parameter."""
    from pipelines.long_video_reasoning import PARAM_DOCS

    params = docs[0]["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(PARAM_DOCS)
    assert {n: p.get("description") for n, p in params.items()} == PARAM_DOCS
