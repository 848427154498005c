"""SFT configuration: one flat dataclass (plus the video section), every field documented.

Loaded with common.config.load_config (defaults -> YAML -> key=value overrides) and saved as
OUT/config.yaml. Defaults suit a real run on GPUs; tests override the sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from training.prompts import SYSTEM_PROMPT
from training.video_inputs import VideoSampling

PRECISIONS = ("auto", "bf16", "fp32")
LAUNCHERS = ("auto", "local", "ray")
RESUME_MODES = ("auto", "never")


def video_sampling_problems(v: VideoSampling, prefix: str = "video.") -> list[str]:
    """Frame-sampling values that cannot work, each naming its key and the fix (a bad value
    must fail here, not as 'could not load videos' or a math error deep in the resize)."""
    problems = []
    if v.fps < 0:
        problems.append(f"{prefix}fps must be >= 0 (0: use {prefix}num_frames), got {v.fps}")
    if v.fps == 0 and v.num_frames < 1:
        problems.append(f"{prefix}num_frames must be >= 1 (frames per video), got {v.num_frames}; "
                        f"or sample by rate with {prefix}fps=1")
    if v.min_frames < 1 or v.max_frames < v.min_frames:
        problems.append(f"{prefix}min_frames must be >= 1 and <= {prefix}max_frames, "
                        f"got {v.min_frames} and {v.max_frames}")
    for name in ("min_pixels", "max_pixels", "total_pixels"):
        if getattr(v, name) < 0:
            problems.append(f"{prefix}{name} must be >= 0 (pixels per frame; 0: the model folder's "
                            f"default), got {getattr(v, name)}")
    if v.min_pixels > 0 and v.max_pixels > 0 and v.max_pixels < v.min_pixels:
        problems.append(f"{prefix}max_pixels ({v.max_pixels}) is below {prefix}min_pixels ({v.min_pixels})")
    return problems


@dataclass
class SFTVideo(VideoSampling):
    """Frames and pixel budget (the VideoSampling fields: video.num_frames, video.fps,
    video.max_pixels, ... - the same keys as GRPO's `video`), then how videos reach the step."""

    prefetch_workers: int = 2  # threads decoding the next step's videos during this step (0: off; as GRPO's)

    @property
    def sampling(self) -> VideoSampling:
        """The frame sampling alone (what the loaders and the scan's cache key take)."""
        return VideoSampling(**{f.name: getattr(self, f.name) for f in fields(VideoSampling)})


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def resume_problems(cfg: Any, saved: dict[str, Any], resumable: tuple[str, ...]) -> list[str]:
    """The one resume rule (SFT, GRPO, and eval's settings): a resume may change the keys in
    `resumable` (run length, checkpointing, logging, service endpoints); any other key that
    differs from the interrupted run's saved config is listed as `key old -> new`."""
    from common.config import to_dict

    now, before = _flat(to_dict(cfg)), _flat(saved)
    changed = []
    for key in sorted(set(now) | set(before)):
        if any(key == r or key.startswith(r + ".") for r in resumable):
            continue
        if now.get(key) != before.get(key):
            changed.append(f"{key} {before.get(key)!r} -> {now.get(key)!r}")
    return changed


@dataclass
class SFTConfig:
    """Settings of `longrl train sft`."""

    # Spellings renamed for one convention across commands (old ones still load, with a note).
    ALIASES: ClassVar[dict[str, str]] = {"steps": "max_steps", "video.sampling": "video"}
    # What a resume may change (docs/sft.md "Resuming"): run length, checkpoints, logging and
    # evaluation; anything else would silently continue a different experiment.
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "max_steps", "epochs", "save_every", "keep_last", "save_dtype", "resume", "eval_every",
        "eval_max_examples", "eval_generate", "max_new_tokens", "log_every", "progress",
        "mlflow_log_model", "scan_threads", "video.prefetch_workers")

    # -- data -------------------------------------------------------------------------------
    split: str = "sft"  # split read from --data (datasets folder, .parquet, .jsonl or a synth folder)
    video_root: str = ""  # relative video paths resolve here; empty: the --data folder
    max_examples: int = 0  # use at most this many records (0: all)
    video: SFTVideo = field(default_factory=SFTVideo)  # frames / fps / pixel budget per video, prefetch
    use_record_frames: bool = False  # a record's own num_frames / sample_fps override `video`
    system_prompt: str = SYSTEM_PROMPT  # asks for <think>...</think> then <answer>...</answer>
    max_seq_len: int = 8192  # prompt (video tokens included) + response; longer examples are skipped
    require_reasoning: bool = True  # an empty `reasoning` is bad data (the CoT target would be empty)
    scan_decode: bool = True  # the pre-training scan decodes every video (False: probe only, faster)
    scan_threads: int = 4  # decoding threads per worker during the scan
    max_bad_fraction: float = 0.05  # more bad examples than this share fails the run

    # -- optimisation -----------------------------------------------------------------------
    lr: float = 1e-5  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    warmup_ratio: float = 0.03  # warm-up share of all optimizer steps (when warmup_steps is 0)
    warmup_steps: int = 0  # explicit warm-up steps (overrides warmup_ratio when > 0)
    weight_decay: float = 0.0  # AdamW decoupled weight decay on matrices (not biases/norms)
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    adam_eps: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # clip the global gradient norm (<= 0: no clipping)
    epochs: int = 1  # passes over the data
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs)
    micro_batch_size: int = 1  # examples per forward pass on each worker
    grad_accum: int = 1  # micro-batches per optimizer step on each worker
    # global batch = micro_batch_size * grad_accum * num_workers; the loss is the mean over
    # every response token of the global batch, so the step is the same for any split of it.
    length_grouping: bool = True  # batch examples of similar length (little padding)
    length_group_batches: int = 16  # global batches sorted together per group (more: less padding, less randomness)
    logprob_chunk: int = 1024  # LM-head positions per chunk (the full logits never exist at once)

    # -- model ------------------------------------------------------------------------------
    freeze_vision_tower: bool = True  # the reference trains the LLM only; the ViT blocks stay frozen
    freeze_projector: bool = False  # also freeze the merger/projector (vision -> LLM)
    precision: str = "auto"  # "auto": bf16 autocast on GPU, fp32 on CPU; "bf16"; "fp32"
    gradient_checkpointing: bool | str = "auto"  # "auto": on with a GPU; true; false
    attn_implementation: str = ""  # e.g. "flash_attention_2" on GPUs; empty: transformers' default (sdpa)

    # -- workers ----------------------------------------------------------------------------
    num_workers: int = 1  # training processes (one per GPU); >1 shards the model with FSDP2
    launcher: str = "auto"  # "auto": local for 1 worker, Ray Train for more; "local"; "ray"
    use_gpu: bool | str = "auto"  # "auto": GPUs when CUDA is available; true; false
    cpus_per_worker: int = 1  # CPUs per worker: Ray resources, and torch threads when training on CPU

    # -- checkpoints and evaluation ---------------------------------------------------------
    save_every: int = 50  # checkpoint every N optimizer steps, and at the end (0: only at the end: Ctrl-C loses the run)
    keep_last: int = 2  # checkpoints kept (0: all)
    save_dtype: str = ""  # weights of saved folders: "" as trained, or "bfloat16"/"float16"
    resume: str = "auto"  # "auto": continue from OUT's newest checkpoint; "never"; or a checkpoint path
    eval_every: int = 0  # evaluate every N steps (0: only at the end, if an eval set exists)
    eval_split: str = ""  # split of --data for evaluation (e.g. "eval"); empty: hold out eval_holdout
    eval_holdout: int = 0  # records of the training split held out for evaluation
    eval_max_examples: int = 64  # evaluation examples used (loss)
    eval_generate: int = 8  # of those, greedily decoded to measure format and accuracy (1 worker)
    max_new_tokens: int = 256  # greedy decoding budget in evaluation

    # -- logging ----------------------------------------------------------------------------
    log_every: int = 1  # console/jsonl/MLflow metrics every N steps
    progress: bool = True  # rich progress bar on the console
    mlflow_log_model: bool = True  # log the final folder to MLflow (when a tracking URI is set)
    seed: int = 0  # batch order, RNG states

    def check(self) -> SFTConfig:
        """Raise ValueError naming the first inconsistent field."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} not in {PRECISIONS}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher {self.launcher!r} not in {LAUNCHERS}")
        if self.gradient_checkpointing not in ("auto", True, False):
            raise ValueError(f"gradient_checkpointing {self.gradient_checkpointing!r} not in auto/true/false")
        if self.use_gpu not in ("auto", True, False):
            raise ValueError(f"use_gpu {self.use_gpu!r} not in auto/true/false")
        if self.save_dtype not in ("", "bfloat16", "float16", "float32"):
            raise ValueError(f"save_dtype {self.save_dtype!r} not in '', bfloat16, float16, float32")
        for name in ("micro_batch_size", "grad_accum", "num_workers", "epochs", "length_group_batches",
                     "log_every", "logprob_chunk", "max_seq_len", "scan_threads", "cpus_per_worker"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction {self.max_bad_fraction} must be within [0, 1]")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("max_steps", "save_every", "keep_last", "warmup_steps", "eval_every", "max_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: {'no limit' if name.startswith('max') else 'off'}), "
                                 f"got {getattr(self, name)}")
        problems = video_sampling_problems(self.video, "video.")
        if self.video.prefetch_workers < 0:
            problems.append(f"video.prefetch_workers must be >= 0 (0: off), got {self.video.prefetch_workers}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def resume_problems(self, saved: dict) -> list[str]:
        """Keys that differ from the interrupted run's OUT/config.yaml and may not change."""
        return resume_problems(self, saved, self.RESUMABLE)

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.num_workers

    def wants_gpu(self) -> bool:
        import torch

        return self.use_gpu is True or (self.use_gpu == "auto" and torch.cuda.is_available())
