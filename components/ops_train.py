"""Training components: CoT-SFT and GRPO. Caching is off (training is not deterministic across
hardware, and a re-run is asked for on purpose). Both run in the GPU image; with
`ray_workers > 0` the step's pod only launches and watches a RayJob (see components.kuberay)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CPU, GPU


@dsl.component(**GPU)
def sft(model: Input[Model], data: Input[Dataset], frames: int, max_steps: int, lr: float, overrides: list,
        ray_workers: int, gpus_per_worker: int, rayjob_config_json: str, runs_root: str, kfp_run_id: str,
        mlflow_tracking_uri: str, mlflow_parent_run_id: str, trained: Output[Model], metrics: Output[Metrics],
        pod_gpus: int = -1):
    """CoT-SFT (`longrl train sft`) of `model` on the `sft` split of `data`. `pod_gpus`: the GPUs
    this pod was given (train_step_gpus; also what carries that value into the step's DAG)."""
    print(f"sft step: {pod_gpus} GPU(s) in this pod, ray_workers={ray_workers}")
    from components.launch import overrides_list, resolve
    from components.train_launch import train_stage

    train_stage("sft", resolve(model.path), resolve(data.path), trained, metrics,
                {"frames": frames, "max_steps": max_steps, "lr": lr}, overrides_list(overrides),
                runs_root, kfp_run_id, mlflow_tracking_uri, mlflow_parent_run_id,
                ray_workers, gpus_per_worker, rayjob_config_json, model_meta=dict(model.metadata))


@dsl.component(**GPU)
def grpo(model: Input[Model], data: Input[Dataset], frames: int, max_steps: int, lr: float, group_size: int,
         kl_coef: float, overrides: list, ray_workers: int, gpus_per_worker: int, rayjob_config_json: str,
         runs_root: str, kfp_run_id: str, mlflow_tracking_uri: str, mlflow_parent_run_id: str,
         trained: Output[Model], metrics: Output[Metrics], pod_gpus: int = -1):
    """GRPO with cached video embeddings (`longrl train grpo`) on the `rl` split of `data`."""
    print(f"grpo step: {pod_gpus} GPU(s) in this pod, ray_workers={ray_workers}")
    from components.launch import overrides_list, resolve
    from components.train_launch import train_stage

    train_stage("grpo", resolve(model.path), resolve(data.path), trained, metrics,
                {"frames": frames, "max_steps": max_steps, "lr": lr, "group_size": group_size, "kl_coef": kl_coef},
                overrides_list(overrides), runs_root, kfp_run_id, mlflow_tracking_uri, mlflow_parent_run_id,
                ray_workers, gpus_per_worker, rayjob_config_json, model_meta=dict(model.metadata))



@dsl.component(**CPU)
def train_step_gpus(ray_workers: int, gpus: int) -> int:
    """GPUs of the training step's own pod: `gpus` when it trains itself; none with
    `ray_workers > 0`, when it only watches a RayJob (a GPU held by the watcher is one a Ray
    worker cannot get)."""
    return 0 if ray_workers > 0 else gpus
