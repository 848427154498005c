"""The `long-video-reasoning` pipeline: videos -> LongVideo-Reason data -> CoT-SFT (optional) ->
GRPO (optional) -> evaluation of new vs base vs champion -> registry and promotion gate.

`build_pipeline(cluster)` returns the pipeline with the Kubernetes settings of `cluster` applied
(GPUs, nodes, shared volume, secrets); kfp.local ignores those settings. Which training stages
run is chosen per run: `run_sft` and `run_grpo` (both, SFT only, or GRPO only from the base).
"""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.
import json
from dataclasses import asdict
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from components.images import GPU_IMAGE
from components.ops_data import (
    build_data,
    build_data_shard,
    data_shard_indices,
    prepare_benchmark,
    prepare_model,
    prepare_videos,
    video_fingerprint,
)
from components.ops_eval import evaluate_models, resolve_champion
from components.ops_registry import register_and_promote, run_outcome
from components.ops_tracking import finish_tracking, start_tracking
from components.ops_train import grpo, sft, train_step_gpus
from pipelines.cluster import ClusterConfig, apply_common, apply_gpu
from pipelines.param_aliases import canonical_params

PIPELINE_NAME = "long-video-reasoning"

# Shown in the KFP UI beside each run parameter (KFP reads the pipeline docstring's Args).
PARAM_DOCS: dict[str, str] = {
    "base_model": "Hugging Face model folder on the shared volume, or tiny[:seed[:arch]] for a random tiny model (arch: qwen2_5_vl, the default, qwen2_vl, qwen3_vl, qwen3_vl_moe).",
    "registered_model": "MLflow registered model that receives the new version.",
    "video_source": "A folder of videos on the shared volume, or 'synth' for procedural videos.",
    "synth_videos": "Number of synthetic videos (video_source=synth).",
    "synth_minutes": "Length of each synthetic video in minutes.",
    "synth_fps": "Frame rate of the synthetic videos.",
    "synth_seed": "Seed of the synthetic videos.",
    "synth_overrides": "`longrl synth` config overrides, key=value strings (a rung of the task ladder: task_types, max_objects, object_scale, ...); the held-out benchmark uses them too.",
    "data_annotator": "llm (captioner + reasoner endpoints) or groundtruth (synthetic videos only).",
    "captioner_url": "OpenAI-compatible endpoint of the clip captioner.",
    "captioner_model": "Served model name of the captioner.",
    "reasoner_url": "OpenAI-compatible endpoint of the reasoning-QA writer.",
    "reasoner_model": "Served model name of the reasoner.",
    "data_overrides": "Data-generation config overrides, key=value strings.",
    "data_shards": "Build the dataset in this many parallel shards (a ParallelFor), merged by one step; 1: one build step.",
    "frames": "Frames per video for training and evaluation.",
    "run_sft": "Run CoT-SFT on the base model.",
    "sft_max_steps": "SFT optimizer steps (0: the stage's epochs).",
    "sft_lr": "SFT learning rate.",
    "sft_overrides": "SFT config overrides, key=value strings.",
    "run_grpo": "Run GRPO (after SFT when run_sft, else from the base model).",
    "grpo_max_steps": "GRPO steps (was grpo_steps, still accepted with a deprecation note).",
    "grpo_lr": "GRPO learning rate (bf16: 1e-6 is the reference).",
    "grpo_group_size": "Rollouts per prompt (G).",
    "grpo_kl_coef": "KL loss coefficient.",
    "grpo_overrides": "GRPO config overrides, key=value strings.",
    "ray_workers": "0: train in the step's pod; >0: a KubeRay RayJob on this many GPU nodes (the step pod then requests no GPU).",
    "gpus_per_worker": "GPUs per Ray worker node.",
    "eval_benchmarks": "Comma-separated benchmarks to evaluate.",
    "eval_synth_videos": "0: evaluate on the dataset (its eval split). >0: render this many held-out synthetic videos (the synth_* settings, seed eval_synth_seed; videos equal to a training video left out) as the evaluation data, for the `synth` benchmark.",
    "eval_synth_seed": "Seed of the held-out synthetic benchmark (must differ from synth_seed).",
    "eval_limit": "Samples per benchmark (0: all).",
    "eval_overrides": "Evaluation config overrides, key=value strings.",
    "eval_max_error_rate": "Largest fraction of failed samples for an evaluation to count as succeeded.",
    "gate_metric": "Metric the promotion gate compares (benchmark/metric).",
    "gate_min_margin": "The candidate must beat the base model and the champion by more than this to be promoted.",
    "gate_max_p": "Below 1: the candidate's gain over the base model must also be significant, paired test (McNemar) p below this.",
    "auto_promote": "Move @champion when the gate passes (else register as @challenger only).",
    "mlflow_tracking_uri": "MLflow tracking server ('' runs without tracking).",
    "mlflow_experiment": "MLflow experiment of the pipeline's runs.",
    "runs_root": "Folder on the shared volume for heavy outputs ('': inside KFP artifacts).",
}


# What a run returns (the run's outputs in the KFP UI and API, `pipeline(...).outputs` in
# kfp.local): the version it registered, as a pinned URI too, and the promotion decision.
class PipelineOutputs(NamedTuple):
    registered_model: str
    registered_version: str  # "" when the run registered nothing
    model_uri: str  # models:/NAME/VERSION
    promoted: bool
    promotion: str  # promoted | rejected | not-registered
    promotion_reason: str
    champion_version: str  # who holds @champion after the run


def _cached(task: Any, on: bool) -> Any:
    task.set_caching_options(on)
    return task


def data_steps(cpu: Any, videos: Any, shards: Any, build_args: dict[str, Any], after: Any = None) -> Any:
    """The dataset (issue 12): a ParallelFor over `shards` shard tasks (`data build --shard I/N`),
    then build_data, which merges them (`--merge-shards N`) or, with shards=1, is the one build
    step it always was (the loop's single task then does nothing). The merge takes the parts
    through dsl.Collected, so it also works without a shared volume (kfp.local). Returns the
    build task. `cpu(task, cache, kind)` applies the cluster settings."""
    indices = cpu(data_shard_indices(shards=shards), cache=True, kind="inputs")
    with dsl.ParallelFor(indices.output, name="data-shards") as shard:
        part = cpu(build_data_shard(videos=videos, shard=shard, shards=shards, **build_args), cache=True, kind="data")
        if after is not None:
            part.after(after)
    data = cpu(build_data(videos=videos, shards=shards, parts=dsl.Collected(part.outputs["part"]), **build_args),
               cache=True, kind="data")  # fmt: skip
    if after is not None:
        data.after(after)
    return data


def build_pipeline(cluster: ClusterConfig | None = None) -> Any:
    cfg = cluster or ClusterConfig()
    rayjob_json = json.dumps(cfg.rayjob_config(GPU_IMAGE))

    def cpu(task: Any, cache: bool, kind: str = "light") -> Any:
        return _cached(apply_common(task, cfg, kind), cache)

    def gpu(task: Any, gpus: int, cache: bool, kind: str, shape: Any = None) -> Any:
        return _cached(apply_gpu(task, cfg, gpus, kind, shape), cache)

    def long_video_reasoning(
        base_model: str = "/mnt/data/models/Qwen2.5-VL-7B-Instruct",  # HF folder on the volume, or tiny[:seed[:arch]]
        registered_model: str = "longrl-video-reasoner",
        video_source: str = "/mnt/data/videos",  # a folder of videos, or "synth"
        synth_videos: int = 8,
        synth_minutes: float = 2.0,
        synth_fps: float = 8.0,
        synth_seed: int = 0,
        synth_overrides: list = [],  # noqa: B006 - KFP parameter default
        data_annotator: str = "llm",  # llm (captioner + reasoner endpoints) or groundtruth (synth)
        captioner_url: str = "http://vllm.longrl.svc.cluster.local:8000/v1",
        captioner_model: str = "qwen2.5-vl-7b-instruct",  # served name (manifests/gpu/vllm)
        reasoner_url: str = "http://vllm.longrl.svc.cluster.local:8000/v1",
        reasoner_model: str = "qwen2.5-vl-7b-instruct",
        data_overrides: list = [],  # noqa: B006 - KFP parameter default
        data_shards: int = 1,  # >1: a ParallelFor of data-build shards, then one merge step
        frames: int = 64,  # frames per video for training and evaluation
        run_sft: bool = True,
        sft_max_steps: int = 0,  # 0: the stage's epochs
        sft_lr: float = 1e-5,
        sft_overrides: list = [],  # noqa: B006
        run_grpo: bool = True,
        grpo_max_steps: int = 100,
        grpo_lr: float = 1e-6,
        grpo_group_size: int = 8,
        grpo_kl_coef: float = 0.01,
        grpo_overrides: list = [],  # noqa: B006
        ray_workers: int = 0,  # >0: training runs as a KubeRay RayJob on this many GPU nodes
        gpus_per_worker: int = 8,
        eval_benchmarks: str = "longvideo_reason",
        eval_synth_videos: int = 0,  # >0: a held-out synth benchmark of this many videos
        eval_synth_seed: int = 1_000_001,
        eval_limit: int = 0,
        eval_overrides: list = [],  # noqa: B006
        eval_max_error_rate: float = 0.05,
        gate_metric: str = "longvideo_reason/score",
        gate_min_margin: float = 0.01,
        gate_max_p: float = 1.0,  # < 1: the gain over base must be significant too
        auto_promote: bool = True,
        mlflow_tracking_uri: str = "http://mlflow.longrl.svc.cluster.local:5000",
        mlflow_experiment: str = "longrl",
        runs_root: str = "/mnt/data/runs",  # heavy outputs on the shared volume ("" : in artifacts)
    ) -> PipelineOutputs:
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        exit_task = cpu(finish_tracking(kfp_run_id=run_id, mlflow_tracking_uri=mlflow_tracking_uri,
                                        experiment=mlflow_experiment), cache=False, kind="tracking")  # fmt: skip
        tracked = dsl.ExitHandler(exit_task, name="tracked-run")
        with tracked:
            params = {"base_model": base_model, "video_source": video_source, "frames": frames,
                      "run_sft": run_sft, "run_grpo": run_grpo, "ray_workers": ray_workers}  # fmt: skip
            start = cpu(start_tracking(kfp_run_id=run_id, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                       mlflow_tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment,
                                       params_json=json.dumps({k: str(v) for k, v in params.items()})), cache=False,
                        kind="tracking")  # fmt: skip
            parent = start.output
            fingerprint = cpu(video_fingerprint(source=video_source), cache=False, kind="inputs")
            videos = cpu(prepare_videos(source=video_source, synth_videos=synth_videos, synth_minutes=synth_minutes,
                                        synth_fps=synth_fps, synth_seed=synth_seed, runs_root=runs_root,
                                        fingerprint=fingerprint.output, synth_overrides=synth_overrides), cache=True,
                         kind="inputs")  # fmt: skip
            base = cpu(prepare_model(model=base_model), cache=True, kind="inputs")
            build_args = {"annotator": data_annotator, "captioner_url": captioner_url,
                          "captioner_model": captioner_model, "reasoner_url": reasoner_url,
                          "reasoner_model": reasoner_model, "overrides": data_overrides, "runs_root": runs_root,
                          "mlflow_tracking_uri": mlflow_tracking_uri, "mlflow_experiment": mlflow_experiment}  # fmt: skip
            # Its MLflow runs nest under the parent, which must exist first.
            data = data_steps(cpu, videos.outputs["videos"], data_shards, build_args, after=start)
            champion = cpu(resolve_champion(model_name=registered_model, mlflow_tracking_uri=mlflow_tracking_uri),
                           cache=False, kind="registry")  # fmt: skip
            champion.after(start)
            dataset = data.outputs["dataset"]
            bench = cpu(prepare_benchmark(source=video_source, videos=videos.outputs["videos"], dataset=dataset,
                                          eval_synth_videos=eval_synth_videos, eval_synth_seed=eval_synth_seed,
                                          synth_minutes=synth_minutes, synth_fps=synth_fps, synth_seed=synth_seed,
                                          synth_overrides=synth_overrides, runs_root=runs_root), cache=True,
                        kind="inputs")  # fmt: skip
            common = {"runs_root": runs_root, "kfp_run_id": run_id, "mlflow_tracking_uri": mlflow_tracking_uri,
                      "mlflow_parent_run_id": parent, "ray_workers": ray_workers,
                      "gpus_per_worker": gpus_per_worker, "rayjob_config_json": rayjob_json}  # fmt: skip

            shape = cpu(train_step_gpus(ray_workers=ray_workers, gpus=cfg.train_gpus), cache=True, kind="inputs")

            def train_sft(model: Any) -> Any:
                return gpu(sft(model=model, data=dataset, frames=frames, max_steps=sft_max_steps, lr=sft_lr,
                               overrides=sft_overrides, pod_gpus=shape.output, **common), cfg.train_gpus, cache=False, kind="train",
                           shape=shape)  # fmt: skip

            def train_grpo(model: Any) -> Any:
                return gpu(grpo(model=model, data=dataset, frames=frames, max_steps=grpo_max_steps, lr=grpo_lr,
                                group_size=grpo_group_size, kl_coef=grpo_kl_coef, overrides=grpo_overrides,
                                pod_gpus=shape.output, **common), cfg.train_gpus, cache=False, kind="train", shape=shape)  # fmt: skip

            def evaluate_and_promote(model: Any, sft_model: Any = None) -> None:
                extra = {"sft": sft_model} if sft_model is not None else {}
                ev = gpu(evaluate_models(candidate=model, base=base.outputs["base_model"], data=bench.outputs["benchmark"],
                                         champion_uri=champion.outputs["model_uri"], benchmarks=eval_benchmarks,
                                         frames=frames, limit=eval_limit, overrides=eval_overrides,
                                         max_error_rate=eval_max_error_rate, shared_volume=cfg.shared_volume,
                                         mlflow_tracking_uri=mlflow_tracking_uri, mlflow_experiment=mlflow_experiment,
                                         **extra), cfg.eval_gpus, cache=True, kind="eval")  # fmt: skip
                ev.after(start)
                cpu(register_and_promote(candidate=model, comparison=ev.outputs["comparison"], data=dataset,
                                         model_name=registered_model, base_model=base_model, gate_metric=gate_metric,
                                         gate_min_margin=gate_min_margin, gate_max_p=gate_max_p,
                                         auto_promote=auto_promote,
                                         shared_volume=cfg.shared_volume, kfp_run_id=run_id,
                                         mlflow_tracking_uri=mlflow_tracking_uri, mlflow_parent_run_id=parent),
                    cache=False, kind="registry")  # fmt: skip

            base_model_artifact = base.outputs["base_model"]
            with dsl.If(run_sft == True, name="sft"):  # noqa: E712 - a KFP condition, not Python
                sft_task = train_sft(base_model_artifact)
                with dsl.If(run_grpo == True, name="sft-then-grpo"):  # noqa: E712
                    evaluate_and_promote(train_grpo(sft_task.outputs["trained"]).outputs["trained"],
                                         sft_model=sft_task.outputs["trained"])
                with dsl.Else(name="sft-only"):
                    evaluate_and_promote(sft_task.outputs["trained"])
            # Else + If, not Elif: in kfp 2.17 a dsl.If/dsl.Elif chain without a dsl.Else leaves
            # its ConditionBranches group on the DSL's group stack (only Else pops it), so the
            # ExitHandler's exit popped that group instead of its own and every later task (the
            # run-outcome step below) landed inside the ExitHandler.
            with dsl.Else(name="no-sft"):
                with dsl.If(run_grpo == True, name="grpo-only"):  # noqa: E712
                    evaluate_and_promote(train_grpo(base_model_artifact).outputs["trained"])
        # The pipeline's outputs (issue 15): KFP 2.17 takes them only from top-level tasks, and
        # register-and-promote sits in the ExitHandler and a dsl.If branch ("Pipeline outputs may
        # only be returned from the top level of the pipeline function scope"). So a top-level
        # step after the handler's group reads back what register-and-promote recorded.
        outcome = cpu(run_outcome(model_name=registered_model, kfp_run_id=run_id,
                                  mlflow_tracking_uri=mlflow_tracking_uri), cache=False, kind="registry")  # fmt: skip
        outcome.after(tracked)
        return PipelineOutputs(*(outcome.outputs[name] for name in PipelineOutputs._fields))

    long_video_reasoning.__doc__ = pipeline_docstring()
    pipeline = dsl.pipeline(name=PIPELINE_NAME, description=__doc__.split("\n\n")[0])(long_video_reasoning)
    pipeline.__class__ = AliasedPipeline  # same object and IR; its call also takes old spellings
    return pipeline


class AliasedPipeline(GraphComponent):
    """The compiled pipeline, whose Python call (kfp.local) also takes a parameter's old spelling
    (pipelines/param_aliases.py), with a deprecation note; the IR declares the new names only.
    When both spellings are given the new one wins: run-local lays --param values over its demo
    table, which may still use an old name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **canonical_params(kwargs, self.component_spec.inputs, new_wins=True))


def pipeline_docstring() -> str:
    """Google-style Args (KFP turns them into the parameters' descriptions in the UI)."""
    lines = [__doc__.split("\n\n")[0], "", "Args:"]
    lines += [f"    {name}: {text}" for name, text in PARAM_DOCS.items()]
    return "\n".join(lines) + "\n"


def cluster_config_dict(cfg: ClusterConfig) -> dict[str, Any]:
    return asdict(cfg)
