"""GRPO configuration: one dataclass per part, every field documented, YAML + key=value overrides.

Defaults follow the reference recipe (shared/CONTEXT.md): AdamW lr 1e-6, KL as a loss (k3
"low_var_kl", coef 1e-2), ratio clip 0.2, group size 8, temperature 1.0, responses up to 2048
tokens, reward 0.9 accuracy + 0.1 format. `algorithm.clip_high=0.28 algorithm.dynamic_sampling=true`
switches to DAPO.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from training.grpo.algorithms import LOSS_AGG_MODES
from training.grpo.rewards import RewardConfig
from training.precision import PRECISIONS, PrecisionError, check_trainable_weights_dtype
from training.sequence_parallel.mesh import ParallelConfig
from training.sft.config import resume_problems, video_sampling_problems
from training.video_inputs import VideoSampling

EMBEDDING_MODES = ("online", "offline", "pixels")
ENGINES = ("hf", "vllm")
LAUNCHERS = ("auto", "local", "ray")


@dataclass
class DataConfig:
    """Which records of --data are trained on."""

    split: str = "rl"  # split read from --data (a datasets folder, .parquet or .jsonl of QARecords)
    video_root: str = ""  # relative video paths resolve here; empty: the --data folder
    answer_types: list[str] = field(default_factory=list)  # keep only these; empty: all
    max_records: int = 0  # use at most this many records (0: all)
    shuffle: bool = True  # reshuffle the records every epoch (seeded)


@dataclass
class RolloutConfig:
    """How rollouts are generated: engine, group size, budget, sampling."""

    engine: str = "hf"  # "hf" (transformers, CPU/GPU) or "vllm" (GPU, imported lazily)
    prompts_per_step: int = 8  # prompts sampled per step; each gets group_size rollouts
    group_size: int = 8  # G rollouts per prompt (GRPO group)
    max_new_tokens: int = 2048  # response budget (the reference's 2048)
    temperature: float = 1.0  # sampling temperature of the rollouts (also applied to the scored log-probs)
    top_p: float = 1.0  # nucleus sampling (1: off)
    generate_rows: int = 64  # rows per hf generate call (bounds rollout memory)
    share_prefix: bool = True  # hf: prefill each prompt once, decode its G samples from one KV cache
    vllm_gpu_memory_utilization: float = 0.5  # vllm: share of GPU memory for weights + KV cache
    vllm_dtype: str = "bfloat16"  # vllm: weights dtype of the rollout engine
    vllm_max_model_len: int = 0  # vllm: longest prompt + response the KV cache is sized for (0: the model's)


@dataclass
class VideoConfig(VideoSampling):
    """Frames and pixel budget (the VideoSampling fields: video.num_frames, video.fps,
    video.max_pixels, ... - the same keys as SFT's `video`), then how videos are embedded."""

    use_record_frames: bool = False  # a record's own num_frames / sample_fps override `sampling`
    # online: vision tower once per unique video per step; offline: read `embed_cache` (built by
    # `longrl embed-cache build`, needs freeze_vision); pixels: re-encode on every forward pass
    # (the reference's behaviour; kept for the benchmark and equivalence tests)
    embeddings: str = "online"
    embed_cache: str = ""  # folder of an offline embedding cache
    freeze_vision: bool = True  # train the LLM only (vision tower + merger frozen)
    decoded_cache_mb: int = 2048  # decoded videos (uint8 frames) kept in host memory across steps (0: off)
    prefetch_workers: int = 2  # threads decoding the next step's videos during this step (0: off)

    @property
    def sampling(self) -> VideoSampling:
        """The frame sampling alone (what the video loaders and cache keys take)."""
        return VideoSampling(**{f.name: getattr(self, f.name) for f in fields(VideoSampling)})


@dataclass
class AlgorithmConfig:
    """The GRPO/DAPO objective: advantages, clipping, KL, batching of the update."""

    scale_adv_by_std: bool = True  # GRPO (r - mean) / std; False: Dr.GRPO r - mean
    adv_eps: float = 1e-6  # added to the group std (a flat group gives advantage 0, not NaN)
    clip_low: float = 0.2  # ratio clip 1 - clip_low
    clip_high: float = 0.2  # ratio clip 1 + clip_high (DAPO clip-higher: 0.28)
    dual_clip: float | None = 3.0  # cap of the loss for negative advantages (null: off)
    loss_agg: str = "token-mean"  # one of algorithms.LOSS_AGG_MODES
    kl_coef: float = 1e-2  # 0 disables the reference model entirely
    kl_kind: str = "low_var_kl"  # k1/kl, abs, k2/mse, k3/low_var_kl
    kl_in_reward: bool = False  # False: KL as a loss term (reference default); True: r - coef*KL
    entropy_coef: float = 0.0  # bonus for entropy (loss -= coef * entropy)
    ppo_epochs: int = 1  # passes over the step's rollouts
    mini_batch_rows: int = 0  # rollouts per optimizer step (0: the whole step, one update)
    micro_batch_rows: int = 8  # rollouts per forward/backward (gradient accumulation)
    logprob_rows: int = 16  # rollouts per forward for old/reference log-probs
    logprob_chunk: int = 1024  # tokens per vocabulary-projection chunk
    old_logprobs: str = "trainer"  # "trainer": recompute with the rollout weights; "rollout": engine's
    dynamic_sampling: bool = False  # DAPO: drop groups with equal rewards, generate more
    dynamic_sampling_metric: str = "accuracy"  # reward part compared ("total" for the sum)
    dynamic_sampling_max_rounds: int = 4  # generation rounds per step before training on less
    overlong_buffer: int = 0  # DAPO soft overlong punishment length (0: off)
    overlong_penalty: float = 1.0  # penalty at max_new_tokens
    mask_truncated: bool = False  # drop responses that hit max_new_tokens from the loss


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = 1e-6  # AdamW learning rate (the reference's 1e-6)
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # 0: no clipping
    warmup_steps: int = 0  # linear warm-up (optimizer steps)
    min_lr_ratio: float = 1.0  # 1: constant after warm-up (the reference); < 1: cosine down to it


@dataclass
class GRPOConfig:
    """Everything `longrl train grpo` reads. See docs/grpo.md."""

    # Spellings renamed for one convention across commands (old ones still load, with a note).
    ALIASES: ClassVar[dict[str, str]] = {"steps": "max_steps", "video.sampling": "video"}
    # What a resume may change (run length, checkpoints, logging, workers): anything else would
    # silently continue a different experiment (docs/grpo.md "Resuming").
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "max_steps", "save_every", "keep_checkpoints", "resume", "plots", "progress", "num_workers",
        "launcher", "cpus_per_worker", "device", "attn_implementation", "ref_offload",
        "rollout.engine", "rollout.generate_rows", "rollout.share_prefix", "rollout.vllm_gpu_memory_utilization",
        "rollout.vllm_max_model_len",
        "algorithm.logprob_rows", "algorithm.logprob_chunk", "algorithm.micro_batch_rows",
        "video.decoded_cache_mb", "video.prefetch_workers", "video.embeddings", "video.embed_cache", "parallel", "reward.judge")

    max_steps: int = 100  # training steps (each: prompts_per_step x group_size rollouts)
    seed: int = 0  # prompt order, rollout sampling
    # Trained weights stay float32 (bf16 weights swallow lr-1e-6 updates; training/precision.py);
    # bf16 is a compute setting: `precision`.
    dtype: str = "float32"
    precision: str = "auto"  # "auto": bf16 compute on GPU with fp32 master weights, fp32 on CPU; "bf16"; "fp32"
    device: str = "auto"  # auto: cuda when available, else cpu
    attn_implementation: str = ""  # e.g. flash_attention_2 on GPU; empty: transformers default
    ref_offload: bool = False  # keep the frozen reference in host memory between its passes (1 process, GPU)
    system_prompt: str = ""  # empty: training.prompts.SYSTEM_PROMPT
    save_every: int = 50  # checkpoint every N steps, and always at the end (0: only at the end)
    keep_checkpoints: int = 2  # older step checkpoints are deleted
    resume: bool = True  # continue from the newest complete checkpoint in --out
    plots: bool = True  # PNG curves at the end (and logged to MLflow when configured)
    progress: bool = True  # console progress bar
    # -- workers (as `longrl train sft`); the layout inside them is `parallel` -----------------
    num_workers: int = 1  # training processes (one per GPU); > 1: dp x sp job, FSDP2 (docs/sequence_parallel.md)
    launcher: str = "auto"  # "auto": this process for 1 worker, Ray Train for more; "local" (torchrun); "ray"
    cpus_per_worker: int = 1  # CPUs per worker: Ray resources, and torch threads when training on CPU
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # sp_size, sharding, ... (num_workers > 1)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def check(self) -> GRPOConfig:
        """Raise ValueError naming the key for settings that cannot work together. The worker keys
        are checked where a run is launched (training.grpo.run.check_launch: `launch_problems`);
        a worker checks its layout against the process group it is in."""
        a, r, v = self.algorithm, self.rollout, self.video
        problems = []
        if r.group_size < 2:
            problems.append("rollout.group_size must be >= 2 (GRPO compares rollouts of a prompt)")
        if r.engine not in ENGINES:
            problems.append(f"rollout.engine {r.engine!r} not in {ENGINES}")
        if v.embeddings not in EMBEDDING_MODES:
            problems.append(f"video.embeddings {v.embeddings!r} not in {EMBEDDING_MODES}")
        if v.embeddings == "offline" and not v.embed_cache:
            problems.append("video.embeddings=offline needs video.embed_cache (longrl embed-cache build)")
        if v.embeddings == "offline" and not v.freeze_vision:
            problems.append("video.embeddings=offline needs video.freeze_vision=true")
        if a.loss_agg not in LOSS_AGG_MODES:
            problems.append(f"algorithm.loss_agg {a.loss_agg!r} not in {LOSS_AGG_MODES}")
        if a.old_logprobs not in ("trainer", "rollout"):
            problems.append("algorithm.old_logprobs must be 'trainer' or 'rollout'")
        if a.overlong_buffer < 0 or a.overlong_buffer > r.max_new_tokens:
            problems.append("algorithm.overlong_buffer must be in [0, rollout.max_new_tokens]")
        for key, value in (("max_steps", self.max_steps), ("rollout.prompts_per_step", r.prompts_per_step),
                           ("algorithm.micro_batch_rows", a.micro_batch_rows), ("algorithm.ppo_epochs", a.ppo_epochs),
                           ("rollout.max_new_tokens", r.max_new_tokens)):
            if value < 1:
                problems.append(f"{key} must be >= 1, got {value}")
        problems += video_sampling_problems(v, "video.")
        if self.save_every < 0:
            problems.append(f"save_every must be >= 0 (0: only at the end), got {self.save_every}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} not in {PRECISIONS}")
        try:
            check_trainable_weights_dtype(self.dtype)
        except PrecisionError as err:
            problems.append(str(err))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def launch_problems(self) -> list[str]:
        """What keeps `num_workers` / `launcher` / `parallel` / the rest from working together."""
        p, n = self.parallel, self.num_workers
        if self.launcher not in LAUNCHERS:
            return [f"launcher {self.launcher!r} not in {LAUNCHERS}"]
        if n < 1 or self.cpus_per_worker < 1 or p.sp_size < 1:
            return ["num_workers, cpus_per_worker and parallel.sp_size must be >= 1"]
        if n % p.sp_size:
            return [f"parallel.sp_size={p.sp_size} does not divide num_workers={n} "
                    f"(data-parallel replicas = num_workers / sp_size)"]
        if n == 1 and self.launcher != "ray":
            return []
        return self.multi_rank_problems(n // p.sp_size)

    def multi_rank_problems(self, dp: int) -> list[str]:
        """Limits of the dp x sp trainer (training.sequence_parallel.grpo_trainer)."""
        problems = []
        if self.rollout.prompts_per_step % dp:
            problems.append(f"rollout.prompts_per_step={self.rollout.prompts_per_step} does not divide over "
                            f"{dp} data-parallel replicas")
        if not self.video.freeze_vision and self.uses_rollout_replica(dp):
            problems.append("multi-rank GRPO trains the vision tower only through the sharded policy: "
                            "video.freeze_vision=false needs video.embeddings=online and parallel.rollout_replica "
                            "unset or false (the replica encodes with a frozen copy)")
        if self.video.embeddings == "pixels":
            problems.append("video.embeddings=pixels re-encodes per pass; multi-rank GRPO caches (online/offline)")
        if self.ref_offload:
            problems.append("ref_offload is for one process; multi-rank GRPO offloads the reference with "
                            "parallel.reference_cpu_offload=true")
        return problems

    def uses_rollout_replica(self, dp: int) -> bool:
        """Whether the dp x sp trainer keeps an unsharded copy of the policy per rank for the hf
        rollout and the vision tower (`parallel.rollout_replica=true`; unset: never - the sharded
        lockstep path, training.sequence_parallel.lockstep, covers every case)."""
        return bool(self.parallel.rollout_replica)

    @property
    def steps(self) -> int:
        """Deprecated name of `max_steps` (read-only)."""
        return self.max_steps

    def resume_problems(self, saved: dict) -> list[str]:
        """Keys that differ from the interrupted run's OUT/config.yaml and may not change."""
        return resume_problems(self, saved, self.RESUMABLE)

    @property
    def multi_process(self) -> bool:
        """True when `train_grpo` runs the dp x sp trainer in worker processes."""
        return self.num_workers > 1 or self.launcher == "ray"

    def wants_gpu(self) -> bool:
        """Workers on GPUs (NCCL) or CPU (gloo): `device`, resolved where the job is launched -
        on a Ray cluster whose driver has no GPU, say device=cuda."""
        import torch

        return self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available())
