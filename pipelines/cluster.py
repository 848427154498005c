"""Where the pipeline's pods run: GPUs, node selectors, tolerations, the shared volume, secrets
as environment variables, /dev/shm. Compile-time settings (`longrl pipeline compile
--cluster-config FILE`); kfp.local ignores them. Defaults match manifests/ (namespace `longrl`,
PVC `longrl-data`, secrets `longrl-mlflow-client`, `longrl-s3`, `longrl-llm-api`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SecretEnv:
    secret: str  # Kubernetes Secret name
    key: str  # key inside it
    env: str  # environment variable the pod sees


def _default_secrets() -> list[SecretEnv]:
    return [
        # MLflow server behind basic auth (optional) and its S3/MinIO artifact store.
        SecretEnv("longrl-mlflow-client", "username", "MLFLOW_TRACKING_USERNAME"),
        SecretEnv("longrl-mlflow-client", "password", "MLFLOW_TRACKING_PASSWORD"),
        SecretEnv("longrl-s3", "access-key-id", "AWS_ACCESS_KEY_ID"),
        SecretEnv("longrl-s3", "secret-access-key", "AWS_SECRET_ACCESS_KEY"),
        # OpenAI-compatible endpoints (captioner, reasoner, judge); a local vLLM needs none.
        SecretEnv("longrl-llm-api", "api-key", "OPENAI_API_KEY"),
    ]


@dataclass
class ClusterConfig:
    pvc_name: str = "longrl-data"  # shared ReadWriteMany volume: videos, caches, checkpoints
    mount_path: str = "/mnt/data"
    accelerator: str = "nvidia.com/gpu"  # resource name of the GPUs
    train_gpus: int = 8  # GPUs of a single-node training step
    eval_gpus: int = 1
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
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
    s3_endpoint_url: str = "http://minio.longrl.svc.cluster.local:9000"  # MLflow artifacts (MinIO)
    secrets: list[SecretEnv] = field(default_factory=_default_secrets)
    # The RayJob of multi-node training (components.kuberay.RayJobConfig fields, as a mapping).
    rayjob: dict[str, Any] = field(default_factory=lambda: {"namespace": "longrl", "service_account": "longrl-ray"})

    @property
    def shared_volume(self) -> str:
        return f"{self.pvc_name}:{self.mount_path}"


def apply_common(task: Any, cfg: ClusterConfig) -> Any:
    """Every step: shared volume, secrets as env (optional: a cluster without MLflow auth or an
    API key still runs), the S3 endpoint, CPU/memory requests and limits."""
    from kfp import kubernetes

    kubernetes.mount_pvc(task, pvc_name=cfg.pvc_name, mount_path=cfg.mount_path)
    by_secret: dict[str, dict[str, str]] = {}
    for s in cfg.secrets:
        by_secret.setdefault(s.secret, {})[s.key] = s.env
    for secret, mapping in by_secret.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=mapping, optional=True)
    task.set_env_variable("MLFLOW_S3_ENDPOINT_URL", cfg.s3_endpoint_url)
    task.set_cpu_request(cfg.cpu_request).set_memory_request(cfg.memory_request)
    task.set_cpu_limit(cfg.cpu_limit).set_memory_limit(cfg.memory_limit)
    return task


def apply_gpu(task: Any, cfg: ClusterConfig, gpus: int) -> Any:
    """A GPU step: accelerator type and count, GPU nodes, /dev/shm in memory, bigger limits."""
    from kfp import kubernetes

    apply_common(task, cfg)
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
