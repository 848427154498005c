"""Multi-node training as a KubeRay RayJob: build the object, create it, wait, stream its status.

The pipeline's GRPO/SFT step runs this when `ray_workers > 0`: the step's own pod stays small
(no GPU) and the work runs on a Ray cluster that KubeRay starts for the job and deletes after it
(`shutdownAfterJobFinishes`). Inputs and outputs live on the shared PVC, mounted at the same path
in the step's pod and in every Ray pod, so the job's command line uses the same paths.

The job name is derived from the pipeline run and task, so a retried step finds the job it
started before and waits for it if it is still running (a FAILED/STOPPED one is deleted and
started again). The RayJob is owned by the step's pod (ownerReferences: deleting the run's pods
deletes it) and deleted when the step is terminated (SIGTERM: a cancelled run) or times out.

Every pod KubeRay creates for the job (head, workers and the K8sJobMode submitter, whose default
template has no security context) gets the Pod Security `restricted` context below.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
TERMINAL_JOB_STATUS = {"SUCCEEDED", "FAILED", "STOPPED"}
FAILED_DEPLOYMENT_STATUS = {"Failed", "ValidationFailed"}


class RayJobFailed(RuntimeError):
    pass


@dataclass
class RayJobConfig:
    """Shape of the Ray cluster a RayJob brings up (KubeRay v1 API)."""

    namespace: str = ""  # "": the step pod's own namespace ($POD_NAMESPACE), where PVC and secrets are
    image: str = "ghcr.io/longrl/longrl-gpu:0.1.0"  # the pipeline passes its GPU image (LONGRL_GPU_IMAGE)
    ray_version: str = "2.60.0"
    workers: int = 2  # GPU worker pods (one per node)
    gpus_per_worker: int = 8
    accelerator_resource: str = "nvidia.com/gpu"
    worker_cpu: str = "32"
    worker_memory: str = "512Gi"
    head_cpu: str = "4"
    head_memory: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=dict)  # GPU workers; the pipeline passes its own
    tolerations: list[dict[str, str]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    pvc_name: str = "longrl-data"  # shared volume: videos, caches, checkpoints
    mount_path: str = "/mnt/data"
    shm_size: str = "64Gi"  # /dev/shm for NCCL and dataloaders
    service_account: str = "longrl-ray"
    secret_env: dict[str, str] = field(default_factory=dict)  # ENV_NAME -> "secret-name:key"
    run_as_user: int = 10001  # the longrl images' user
    active_deadline_s: int = 7 * 24 * 3600
    ttl_after_finished_s: int = 3600
    submitter_backoff_limit: int = 2  # retries of the submitter Job (KubeRay >= 1.2 reads it)
    submitter_cpu: str = "500m"
    submitter_memory: str = "512Mi"
    # Fail when the job has not started (jobStatus still empty/PENDING) this long after creation:
    # an unschedulable worker or a rejected submitter pod must not hold the step for days.
    start_timeout_s: int = 3600


def job_name(*parts: str, max_len: int = 47) -> str:
    """A DNS-1123 name from the pipeline run id and task (RayJob names feed pod names: short)."""
    text = "-".join(p for p in parts if p).lower()
    text = re.sub(r"[^a-z0-9-]+", "-", text).strip("-")
    text = re.sub(r"-{2,}", "-", text)
    return (text[:max_len].rstrip("-")) or "longrl-job"


def _security_context(cfg: RayJobConfig) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": cfg.run_as_user,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,  # Ray writes to /tmp/ray: an emptyDir
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_template(cfg: RayJobConfig, name: str, cpu: str, memory: str, gpus: int,
                  env: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits[cfg.accelerator_resource] = gpus
    container = {
        "name": name,
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
        "env": env,
        "securityContext": _security_context(cfg),
        "volumeMounts": [
            {"name": "data", "mountPath": cfg.mount_path},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    spec: dict[str, Any] = {
        "serviceAccountName": cfg.service_account,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": cfg.run_as_user, "fsGroup": cfg.run_as_user,
                            "seccompProfile": {"type": "RuntimeDefault"}},  # fmt: skip
        "containers": [container],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": cfg.pvc_name}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if gpus and cfg.node_selector:
        spec["nodeSelector"] = dict(cfg.node_selector)
    if gpus and cfg.tolerations:
        spec["tolerations"] = [dict(t) for t in cfg.tolerations]
    return {"metadata": {"labels": {"app.kubernetes.io/part-of": "longrl"}}, "spec": spec}


def submitter_template(cfg: RayJobConfig) -> dict[str, Any]:
    """The K8sJobMode submitter pod (`ray job submit` against the head). KubeRay's default one
    has no security context, which a `restricted` namespace rejects: the job would never start.
    KubeRay >= 1.1 takes the container's command from the operator when it is left out."""
    container = {
        "name": "ray-job-submitter",
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": cfg.submitter_cpu, "memory": cfg.submitter_memory},
                      "limits": {"cpu": cfg.submitter_cpu, "memory": cfg.submitter_memory}},  # fmt: skip
        "securityContext": _security_context(cfg),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    spec = {
        "restartPolicy": "Never",
        "serviceAccountName": cfg.service_account,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": cfg.run_as_user,
                            "seccompProfile": {"type": "RuntimeDefault"}},  # fmt: skip
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    return {"metadata": {"labels": {"app.kubernetes.io/part-of": "longrl"}}, "spec": spec}


def build_rayjob(cfg: RayJobConfig, name: str, entrypoint: list[str],
                 env: dict[str, str] | None = None, labels: dict[str, str] | None = None,
                 owner: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The RayJob object: a head (no GPU) and one worker group of `cfg.workers` GPU pods; the
    entrypoint runs on the head through the Ray job submission API (KubeRay's K8sJobMode).
    `owner` ({"name", "uid"} of the step's pod) makes the pod its owner for garbage collection."""
    env_list = _env_list(cfg, env)
    meta: dict[str, Any] = {"name": name, "namespace": cfg.namespace,
                            "labels": {"app.kubernetes.io/part-of": "longrl", **(labels or {})}}  # fmt: skip
    if owner and owner.get("name") and owner.get("uid"):
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": owner["name"], "uid": owner["uid"],
                                    "blockOwnerDeletion": False}]  # fmt: skip
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayJob",
        "metadata": meta,
        "spec": {
            "entrypoint": shlex.join(entrypoint),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": cfg.ttl_after_finished_s,
            "activeDeadlineSeconds": cfg.active_deadline_s,
            "backoffLimit": 0,  # a failed job fails the step; KFP's retry policy decides (KubeRay >= 1.2)
            "submitterPodTemplate": submitter_template(cfg),
            "submitterConfig": {"backoffLimit": cfg.submitter_backoff_limit},
            "rayClusterSpec": ray_cluster_spec(cfg, env_list),
        },
    }


def _env_list(cfg: RayJobConfig, env: dict[str, str] | None) -> list[dict[str, Any]]:
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted((env or {}).items())]
    for var, ref in sorted(cfg.secret_env.items()):
        secret, _, key = ref.partition(":")
        env_list.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key or var}}})
    return env_list


def ray_cluster_spec(cfg: RayJobConfig, env_list: list[dict[str, Any]], min_workers: int | None = None) -> dict[str, Any]:
    """Head (no GPU) + one group of `cfg.workers` GPU workers (fixed size unless `min_workers`)."""
    head = _pod_template(cfg, "ray-head", cfg.head_cpu, cfg.head_memory, 0, env_list)
    worker = _pod_template(cfg, "ray-worker", cfg.worker_cpu, cfg.worker_memory, cfg.gpus_per_worker, env_list)
    return {
        "rayVersion": cfg.ray_version,
        "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"}, "template": head},
        "workerGroupSpecs": [{
            "groupName": "gpu-workers",
            "replicas": cfg.workers,
            "minReplicas": cfg.workers if min_workers is None else min_workers,
            "maxReplicas": cfg.workers,
            "rayStartParams": {},
            "template": worker,
        }],
    }


def build_raycluster(cfg: RayJobConfig, name: str) -> dict[str, Any]:
    """A long-lived RayCluster of the same shape (interactive GRPO: `ray job submit`), created
    with no workers (no idle GPUs); scale `replicas` up to `cfg.workers` to use it."""
    spec = ray_cluster_spec(cfg, _env_list(cfg, None), min_workers=0)
    spec["workerGroupSpecs"][0]["replicas"] = 0
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayCluster",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": {"app.kubernetes.io/part-of": "longrl"}},
        "spec": spec,
    }


def _status_line(status: dict[str, Any]) -> str:
    parts = [f"deployment={status.get('jobDeploymentStatus', '-')}", f"job={status.get('jobStatus', '-')}"]
    if status.get("message"):
        parts.append(f"message={status['message']}")
    return " ".join(parts)


def _create_or_adopt(api: Any, body: dict[str, Any], log: Callable[[str], None],
                     sleep: Callable[[float], None], poll_s: float) -> None:
    """Create the job; on 409 (a retried step) adopt it if it is running or succeeded, or delete
    a FAILED/STOPPED one and create it afresh (adopting it would fail the retry at once)."""
    from kubernetes.client.exceptions import ApiException

    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    workers = body["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
    for _attempt in range(30):
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
            log(f"rayjob {ns}/{name}: created ({workers} workers)")
            return
        except ApiException as exc:
            if exc.status != 409:
                raise RayJobFailed(f"rayjob {ns}/{name}: create failed: HTTP {exc.status} {exc.reason}") from exc
        try:
            old = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:  # deleted meanwhile: create again
                continue
            raise
        status = (old.get("status") or {}).get("jobStatus", "")
        if status in ("FAILED", "STOPPED") or (old.get("status") or {}).get("jobDeploymentStatus") in FAILED_DEPLOYMENT_STATUS:
            if not (old.get("metadata") or {}).get("deletionTimestamp"):
                log(f"rayjob {ns}/{name}: a previous attempt ended {status or 'Failed'}; deleting it and starting again")
                api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            sleep(poll_s)
            continue
        log(f"rayjob {ns}/{name}: exists (retried step, job {status or 'starting'}); waiting for it")
        return
    raise RayJobFailed(f"rayjob {ns}/{name}: the failed previous job was not deleted in time")


def run_rayjob(api_client: Any, body: dict[str, Any], poll_s: float = 10.0, timeout_s: float = 7 * 24 * 3600,
               log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
               start_timeout_s: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Create `body` (or adopt the job of that name if a retried step already created it), poll
    its status until it ends and print every change. Returns the final status; raises
    RayJobFailed when the job fails, is stopped, has not started after `start_timeout_s`, or runs
    past `timeout_s` (then it is deleted so no GPU stays held)."""
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    api = CustomObjectsApi(api_client)
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    _create_or_adopt(api, body, log, sleep, poll_s)
    started_at = time.monotonic()
    deadline = started_at + timeout_s
    last = None
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                raise RayJobFailed(f"rayjob {ns}/{name}: deleted while running") from exc
            if exc.status >= 500:  # API server hiccup: try again at the next poll
                log(f"rayjob {ns}/{name}: API error {exc.status}, retrying")
                sleep(poll_s)
                continue
            raise
        status = obj.get("status") or {}
        line = _status_line(status)
        if line != last:
            log(f"rayjob {ns}/{name}: {line}")
            last = line
        job_status = status.get("jobStatus", "")
        if job_status == "SUCCEEDED":
            return status
        if job_status in TERMINAL_JOB_STATUS or status.get("jobDeploymentStatus") in FAILED_DEPLOYMENT_STATUS:
            raise RayJobFailed(f"rayjob {ns}/{name} ended {job_status or status.get('jobDeploymentStatus')}: "
                               f"{status.get('message', 'no message')}")  # fmt: skip
        if time.monotonic() > deadline:
            api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            raise RayJobFailed(f"rayjob {ns}/{name}: not finished after {timeout_s:.0f} s; deleted")
        if (start_timeout_s is not None and job_status in ("", "PENDING")
                and time.monotonic() - started_at > start_timeout_s):  # fmt: skip
            api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            raise RayJobFailed(f"rayjob {ns}/{name}: job not started after {start_timeout_s:.0f} s "
                               f"({line}; unschedulable workers or a rejected submitter pod?); deleted")  # fmt: skip
        sleep(poll_s)


def delete_rayjob(api_client: Any, namespace: str, name: str, log: Callable[[str], None] = print) -> None:
    """Delete the job (and, through KubeRay, its Ray cluster); a missing job is fine."""
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    try:
        CustomObjectsApi(api_client).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        log(f"rayjob {namespace}/{name}: deleted")
    except ApiException as exc:
        if exc.status != 404:
            raise


def run_label(kfp_run_id: str) -> str:
    """The `pipeline/runid` label value on every RayJob of one pipeline run."""
    return job_name(kfp_run_id)


def delete_run_rayjobs(api_client: Any, namespace: str, kfp_run_id: str,
                       log: Callable[[str], None] = print) -> list[str]:  # fmt: skip
    """The exit handler's cleanup: delete every RayJob this pipeline run left in `namespace`
    (a cancelled run whose step pod died before its SIGTERM handler ran, a step that lost its
    pod). Finished jobs go too (their clusters are already down). Returns the names deleted."""
    from kubernetes.client import CustomObjectsApi

    api = CustomObjectsApi(api_client)
    found = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                              label_selector=f"pipeline/runid={run_label(kfp_run_id)}")  # fmt: skip
    names = [item["metadata"]["name"] for item in found.get("items", [])]
    for name in names:
        delete_rayjob(api_client, namespace, name, log=log)
    return names


def in_cluster_api_client() -> Any:
    """API client from the pod's service account (the pipeline runner's, see manifests/rbac)."""
    from kubernetes import client, config

    config.load_incluster_config()
    return client.ApiClient()


# The checked-in manifests (manifests/gpu/kuberay, manifests/templates) are rendered from the
# same builders, so a hand-applied RayCluster/RayJob has exactly the pipeline's pod shape;
# tests/test_manifests.py fails when they drift. Regenerate: `python -m components.kuberay`.
TEMPLATE_ENTRYPOINT = [
    "longrl", "train", "grpo", "--model", "/mnt/data/models/Qwen2.5-VL-7B-Instruct",
    "--data", "/mnt/data/datasets/longvideo-reason", "--out", "/mnt/data/runs/manual/grpo",
    "launcher=ray", "num_workers=16", "use_gpu=true",
]  # fmt: skip
_HEADER = ("# Generated by `python -m components.kuberay` from components/kuberay.py: edit the builder, not\n"
           "# this file. {what}\n")  # fmt: skip
# Skip reasons for policy scanners that read CRD pod templates (checkov 3.3 does not).
_CHECKOV_SKIPS = {
    "checkov.io/skip1": "CKV_K8S_43=Images are pinned by version tag; set digests per registry with kustomize images.",
    "checkov.io/skip2": "CKV_K8S_35=Training reads its API keys and store credentials from environment variables; the values come from Secrets.",
    "checkov.io/skip3": "CKV_K8S_8=The KubeRay operator injects liveness probes into Ray head and worker pods.",
    "checkov.io/skip4": "CKV_K8S_9=The KubeRay operator injects readiness probes into Ray head and worker pods.",
}


def template_manifests() -> dict[str, str]:
    import yaml

    cfg = RayJobConfig(namespace="longrl", secret_env={"OPENAI_API_KEY": "longrl-llm-api:api-key",
                                   "MLFLOW_TRACKING_PASSWORD": "longrl-mlflow-client:password"})  # fmt: skip
    cluster = build_raycluster(cfg, "longrl-grpo")
    cluster["metadata"]["annotations"] = dict(_CHECKOV_SKIPS)
    job = build_rayjob(cfg, "longrl-grpo-manual", TEMPLATE_ENTRYPOINT,
                       env={"MLFLOW_TRACKING_URI": "http://mlflow.longrl.svc.cluster.local:5000"})  # fmt: skip
    job["metadata"]["annotations"] = dict(_CHECKOV_SKIPS)
    return {
        "gpu/kuberay/raycluster-grpo.yaml": _HEADER.format(
            what="A RayCluster for interactive GRPO (workers start at 0:\n# `kubectl scale` or edit replicas).")
        + yaml.safe_dump(cluster, sort_keys=False),
        "templates/rayjob-grpo.yaml": _HEADER.format(
            what="A GRPO RayJob to start by hand (`kubectl create -f`);\n# the pipeline builds the same object itself.")
        + yaml.safe_dump(job, sort_keys=False),
    }


if __name__ == "__main__":  # pragma: no cover - regenerates the checked-in manifests
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "manifests"
    for rel, text in template_manifests().items():
        (root / rel).write_text(text)
        print(f"wrote manifests/{rel}")
