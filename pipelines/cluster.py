"""Where the pipeline's pods run: GPUs, node selectors, tolerations, the shared volume, secrets
as environment variables, /dev/shm, security context, timeouts and retries. Compile-time
settings (`longrl pipeline compile --cluster-config FILE`); kfp.local ignores them. Defaults
match manifests/ (PVC `longrl-data`, secrets `longrl-mlflow-client`, `longrl-llm-api`), installed
in the namespace the runs use (docs/pipeline.md).

Mappings and lists in a config file replace the default (the defaults of `gpu_node_selector`
and `rayjob` are empty, so a file never has to clear them). Secrets reach only the steps that
use them (`SecretEnv.steps`): the S3 keys stay in the MLflow server (it proxies artifacts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Step kinds of the pipeline, for SecretEnv.steps (which pods see a secret).
STEP_KINDS = ("tracking", "inputs", "data", "train", "eval", "registry", "watch")


@dataclass
class SecretEnv:
    secret: str  # Kubernetes Secret name
    key: str  # key inside it
    env: str  # environment variable the pod sees
    steps: list[str] = field(default_factory=lambda: ["*"])  # step kinds that get it (STEP_KINDS; "*": all)


def _default_secrets() -> list[SecretEnv]:
    mlflow_steps = ["tracking", "data", "train", "eval", "registry"]
    return [
        # The MLflow server's basic auth (manifests/base/mlflow): every step that logs or reads
        # the registry. No S3 keys: the server proxies artifacts (--serve-artifacts).
        SecretEnv("longrl-mlflow-client", "username", "MLFLOW_TRACKING_USERNAME", mlflow_steps),
        SecretEnv("longrl-mlflow-client", "password", "MLFLOW_TRACKING_PASSWORD", mlflow_steps),
        # OpenAI-compatible endpoints (captioner, reasoner; the eval judge); a local vLLM needs none.
        # Training too: GRPO's LLM judge grades open-ended answers (in the RayJob's pods as well).
        SecretEnv("longrl-llm-api", "api-key", "OPENAI_API_KEY", ["data", "train", "eval"]),
    ]


@dataclass
class ClusterConfig:
    pvc_name: str = "longrl-data"  # shared ReadWriteMany volume: videos, caches, checkpoints
    mount_path: str = "/mnt/data"
    accelerator: str = "nvidia.com/gpu"  # resource name of the GPUs
    train_gpus: int = 8  # GPUs of a single-node training step
    eval_gpus: int = 1
    # Labels GPU pods must match. Empty by default: the GPU request already limits them to nodes
    # whose device plugin advertises the accelerator; add e.g. {"nvidia.com/gpu.present": "true"}.
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_tolerations: list[dict[str, str]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    shm_size: str = "32Gi"  # /dev/shm (NCCL, dataloader workers) for GPU steps
    cpu_request: str = "1"  # light steps
    memory_request: str = "2Gi"
    cpu_limit: str = "4"
    memory_limit: str = "16Gi"
    gpu_cpu_request: str = "16"  # GPU steps
    gpu_memory_request: str = "128Gi"
    gpu_cpu_limit: str = "64"
    gpu_memory_limit: str = "512Gi"
    secrets: list[SecretEnv] = field(default_factory=_default_secrets)
    # Pod Security `restricted`: KFP 2.17 adds seccomp, drop-ALL and no-escalation to the
    # containers but not runAsNonRoot; the images run as this user (docker/).
    run_as_user: int = 10001
    run_as_group: int = 10001
    # Per-task limits (activeDeadlineSeconds of the pod) and retries (KFP retry policy).
    light_timeout_s: int = 2 * 3600  # tracking, inputs, registry steps
    data_timeout_s: int = 24 * 3600  # data generation (LLM endpoints)
    train_timeout_s: int = 7 * 24 * 3600  # SFT / GRPO (and the RayJob watcher)
    eval_timeout_s: int = 2 * 24 * 3600
    light_retries: int = 3  # transient MLflow / API errors; these steps are idempotent
    data_retries: int = 2  # data generation resumes from its cache
    train_retries: int = 1  # training resumes from its last checkpoint (a failed RayJob is restarted)
    eval_retries: int = 1  # evaluation resumes from its per-sample results
    retry_backoff: str = "60s"
    # The RayJob of multi-node training: components.kuberay.RayJobConfig fields over what the
    # pipeline derives from this config (GPU image, node selector, tolerations, volume,
    # secrets of the train steps, security context). The namespace is the step pod's own.
    rayjob: dict[str, Any] = field(default_factory=dict)
    ray_service_account: str = "longrl-ray"  # Ray pods' ServiceAccount (no API token)

    @property
    def shared_volume(self) -> str:
        return f"{self.pvc_name}:{self.mount_path}"


    def secrets_for(self, kind: str) -> list[SecretEnv]:
        return [s for s in self.secrets if "*" in s.steps or kind in s.steps]

    def timeout_and_retries(self, kind: str) -> tuple[int, int]:
        group = {"data": "data", "train": "train", "watch": "train", "eval": "eval"}.get(kind, "light")
        return getattr(self, f"{group}_timeout_s"), getattr(self, f"{group}_retries")

    def rayjob_config(self, gpu_image: str) -> dict[str, Any]:
        """RayJobConfig fields for the train steps' RayJobs (then `rayjob` on top)."""
        return {
            "image": gpu_image, "accelerator_resource": self.accelerator,
            "node_selector": dict(self.gpu_node_selector), "tolerations": [dict(t) for t in self.gpu_tolerations],
            "pvc_name": self.pvc_name, "mount_path": self.mount_path, "service_account": self.ray_service_account,
            "secret_env": {s.env: f"{s.secret}:{s.key}" for s in self.secrets_for("train")},
            "run_as_user": self.run_as_user, "active_deadline_s": self.train_timeout_s,
            **self.rayjob,
        }  # fmt: skip


def apply_common(task: Any, cfg: ClusterConfig, kind: str = "light") -> Any:
    """Every step: shared volume, the secrets its kind uses as env (optional: a cluster without
    MLflow auth or an API key still runs), non-root security context, downward-API identity
    (run id, pod name/uid/namespace), timeout, retries, CPU/memory requests and limits."""
    from kfp import kubernetes

    kubernetes.mount_pvc(task, pvc_name=cfg.pvc_name, mount_path=cfg.mount_path)
    by_secret: dict[str, dict[str, str]] = {}
    for s in cfg.secrets_for(kind):
        by_secret.setdefault(s.secret, {})[s.key] = s.env
    for secret, mapping in by_secret.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=mapping, optional=True)
    kubernetes.set_security_context(task, run_as_user=cfg.run_as_user, run_as_group=cfg.run_as_group,
                                    run_as_non_root=True)  # fmt: skip
    for env, path in (("KFP_RUN_ID", "metadata.labels['pipeline/runid']"), ("POD_NAME", "metadata.name"),
                      ("POD_UID", "metadata.uid"), ("POD_NAMESPACE", "metadata.namespace")):  # fmt: skip
        kubernetes.use_field_path_as_env(task, env_name=env, field_path=path)
    timeout, retries = cfg.timeout_and_retries(kind)
    kubernetes.set_timeout(task, timeout)
    if retries:
        task.set_retry(retries, backoff_duration=cfg.retry_backoff, backoff_factor=2.0,
                       backoff_max_duration=f"{timeout}s")  # fmt: skip
    task.set_cpu_request(cfg.cpu_request).set_memory_request(cfg.memory_request)
    task.set_cpu_limit(cfg.cpu_limit).set_memory_limit(cfg.memory_limit)
    return task


def apply_gpu(task: Any, cfg: ClusterConfig, gpus: Any, kind: str = "train", shape: Any = None) -> Any:
    """A GPU step: accelerator type and count, GPU nodes, /dev/shm in memory, bigger limits.
    `shape` (the task components.ops_train.train_step_gpus) sets the count at run time: a
    training step that only watches a RayJob requests no GPU."""
    from kfp import kubernetes

    apply_common(task, cfg, kind)
    if shape is not None:
        task.set_accelerator_type(cfg.accelerator).set_accelerator_limit(shape.output)
    else:
        task.set_accelerator_type(cfg.accelerator).set_accelerator_limit(gpus)
    task.set_cpu_request(cfg.gpu_cpu_request).set_memory_request(cfg.gpu_memory_request)
    task.set_cpu_limit(cfg.gpu_cpu_limit).set_memory_limit(cfg.gpu_memory_limit)
    for key, value in cfg.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in cfg.gpu_tolerations:
        kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator"),
                                  value=tol.get("value"), effect=tol.get("effect"))  # fmt: skip
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=cfg.shm_size)  # fmt: skip
    return task
