"""Training steps (SFT, GRPO): in the step's own pod (one node), or as a KubeRay RayJob that
runs the same `longrl train ...` command on a Ray cluster (multi-node), waiting and streaming
its status. Outputs: the trained model folder and the final metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.tracking import RUN_INFO_ENV
from components.launch import (
    StepError,
    longrl_argv,
    mlflow_env,
    model_folder,
    numeric_items,
    output_dir,
    read_jsonl_last,
    run_step,
    tracking_uri,
    write_ref,
)

# Config keys of each stage for the pipeline's common knobs (the stage configs name them).
KNOB_KEYS: dict[str, dict[str, str]] = {
    "sft": {"frames": "video.num_frames", "max_steps": "max_steps", "lr": "lr"},
    "grpo": {"frames": "video.num_frames", "max_steps": "max_steps", "lr": "optim.lr",
             "group_size": "rollout.group_size", "kl_coef": "algorithm.kl_coef"},  # fmt: skip
}


def ray_entrypoint(stage: str, args: list[str], workers: int) -> list[str]:
    """The RayJob's command: the stage's own `longrl train <stage> ...` spread over `workers` GPU
    processes of the job's Ray cluster (RAY_ADDRESS is set there, so Ray Train joins it). Both
    stages take their worker keys on the CLI; the keys come last, so they win over the overrides."""
    gpu = "use_gpu=true" if stage == "sft" else "device=cuda"
    return ["longrl", *args, "launcher=ray", f"num_workers={workers}", gpu]


def knob_overrides(stage: str, knobs: dict[str, Any]) -> list[str]:
    """`key=value` for the knobs that are set (0 / empty means: keep the stage config's value)."""
    keys = KNOB_KEYS[stage]
    unknown = sorted(set(knobs) - set(keys))
    if unknown:
        raise StepError(f"{stage}: no config key for pipeline knob(s) {unknown}")
    return [f"{keys[k]}={yaml_scalar(v)}" for k, v in knobs.items() if v not in (0, 0.0, "", None)]


def yaml_scalar(value: Any) -> str:
    """A value as the stage's `key=value` parser (YAML 1.1) reads it back with its type: a float
    in exponent form needs a dot in the mantissa ("2e-05" would be read as a string)."""
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exp = text.partition("e")
        if e and "." not in mantissa:
            text = f"{mantissa}.0e{exp}"
        return text
    return str(value)


def train_stage(stage: str, model_in: Path, data_in: Path, out_artifact: Any, metrics_artifact: Any,
                knobs: dict[str, Any], overrides: list[str], runs_root: str, kfp_run_id: str,
                mlflow_tracking_uri: str, mlflow_parent_run_id: str, ray_workers: int = 0,
                gpus_per_worker: int = 1, rayjob_config_json: str = "", api_client: Any = None,
                model_meta: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Run `longrl train <stage>` and fill the KFP output artifacts; returns the model folder.
    `model_meta`: the input model artifact's metadata (an SFT model carries its MLflow run)."""
    out = output_dir(out_artifact.path, runs_root, kfp_run_id, stage)
    args = ["train", stage, "--model", str(model_in), "--data", str(data_in), "--out", str(out),
            *knob_overrides(stage, knobs), *overrides]  # fmt: skip
    env = mlflow_env(tracking_uri(mlflow_tracking_uri), mlflow_parent_run_id)
    run_info = out / RUN_INFO_FILE
    run_info.unlink(missing_ok=True)  # a retried step must not read the previous attempt's run
    if env:
        env[RUN_INFO_ENV] = str(run_info)
    if ray_workers > 0:
        if not runs_root:
            raise StepError("multi-node training (ray_workers > 0) needs runs_root on the shared volume")
        _run_on_ray(stage, ray_entrypoint(stage, args, ray_workers * gpus_per_worker),
                    env, kfp_run_id, ray_workers, gpus_per_worker, rayjob_config_json,
                    [model_in, data_in, out], api_client)  # fmt: skip
    else:
        run_step(longrl_argv(*args), env=env)
    folder = model_folder(out)
    final = read_jsonl_last(out / "metrics.jsonl")
    for name, value in numeric_items(final).items():
        metrics_artifact.log_metric(f"{stage}/{name}", value)
    out_artifact.metadata.update({"stage": stage, "model_dir": str(folder), "base_model": str(model_in)})
    if run_info.is_file():
        info = json.loads(run_info.read_text())
        out_artifact.metadata.update({"mlflow_run_id": info.get("run_id", ""),
                                      "mlflow_model_source": info.get("checkpoint_source", ""),
                                      "mlflow_model_dir": info.get("checkpoint_dir", "")})  # fmt: skip
        if info.get("run_id"):
            link_lineage(info["run_id"], stage, data_in, model_in, model_meta or {})
    if folder != out:  # the stage wrote OUT/model beside its checkpoints: point the artifact at it
        write_ref(out_artifact.path, folder)
    return folder


RUN_INFO_FILE = "mlflow_run.json"
SPLIT_OF_STAGE = {"sft": "sft", "grpo": "rl"}


def link_lineage(run_id: str, stage: str, data_in: Path, model_in: Path, model_meta: dict[str, Any]) -> None:
    """What the training run was made from, on the run itself: its dataset split as a run input
    (GRPO logged none) and its input model (a path, and the MLflow run that produced it when it
    came from an earlier stage: GRPO after SFT), so version -> training run -> data and parent
    model can be followed in MLflow. Logging to a finished run is allowed."""
    from mlflow import MlflowClient

    from common import tracking

    run = tracking.StageRun(run_id, stage)
    split = data_in / SPLIT_OF_STAGE[stage]
    if not MlflowClient().get_run(run_id).inputs.dataset_inputs and (split / "dataset_info.json").is_file():
        run.log_dataset(split, name=f"longvideo-reason-{split.name}", context="training")
    tags = {"input.model": str(model_in)}
    if model_meta.get("mlflow_run_id"):
        tags["input.model_run_id"] = model_meta["mlflow_run_id"]
    if model_meta.get("model"):  # prepare_model: the base model as given
        tags["input.base_model"] = model_meta["model"]
    run.set_tags(tags)


def _run_on_ray(stage: str, entrypoint: list[str], env: dict[str, str], kfp_run_id: str, workers: int,
                gpus_per_worker: int, rayjob_config_json: str, paths: list[Path], api_client: Any) -> None:  # fmt: skip
    import os
    import signal

    from components.kuberay import (
        RayJobConfig,
        build_rayjob,
        delete_rayjob,
        in_cluster_api_client,
        job_name,
        run_label,
        run_rayjob,
    )

    cfg = RayJobConfig(**json.loads(rayjob_config_json or "{}"))
    cfg.workers, cfg.gpus_per_worker = workers, gpus_per_worker
    # The job lives where the step pod runs (its PVC and secrets are there): the downward API's
    # namespace wins over the compiled default.
    cfg.namespace = os.environ.get("POD_NAMESPACE") or cfg.namespace or "default"
    off_volume = [str(p) for p in paths if not Path(p).resolve().is_relative_to(cfg.mount_path)]
    if off_volume:  # the Ray pods mount only the shared volume
        raise StepError(f"{stage} on Ray: {off_volume} are not on the shared volume {cfg.mount_path}; "
                        "set runs_root under it and keep the base model and videos there")  # fmt: skip
    owner = {"name": os.environ.get("POD_NAME", ""), "uid": os.environ.get("POD_UID", "")}
    body = build_rayjob(cfg, job_name(kfp_run_id, stage), entrypoint, env=env, owner=owner,
                        labels={"longrl/stage": stage, "pipeline/runid": run_label(kfp_run_id)})  # fmt: skip
    client = api_client or in_cluster_api_client()
    name = body["metadata"]["name"]

    def on_term(signum: int, _frame: Any) -> None:  # a cancelled run / pod timeout: free the GPUs
        delete_rayjob(client, cfg.namespace, name, log=lambda line: print(line, flush=True))
        raise SystemExit(128 + signum)

    import threading

    main = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        run_rayjob(client, body, log=lambda line: print(line, flush=True), start_timeout_s=cfg.start_timeout_s)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
