"""How a GRPO trainer is assembled, and its checkpoints: one `build_*` method per part.

`__init__` reads top to bottom: context and device -> the config this process runs -> policy and
frozen reference -> records and prompt sampler -> video embedders -> rollout engine -> reward
scorer -> optimizer and schedule -> resume from the newest checkpoint. `GRPOTrainer`
(trainer.py) adds the step and the loop; `ParallelGRPOTrainer`
(training.sequence_parallel.grpo_trainer) overrides the parts that differ on a dp x sp job, so
the shared set-up lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from common.config import save_config
from training.checkpoint import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint
from training.distributed import DistContext, ModelRunner
from training.grpo.config import GRPOConfig
from training.grpo.data import PromptSampler
from training.grpo.logprobs import LogprobFn, sequence_logprobs
from training.grpo.rewards import RewardScorer
from training.grpo.rollout import make_engine
from training.grpo.video_cache import VideoEmbedder
from training.mm_batch import base_model
from training.model_io import load_model, load_tokenizer
from training.optim import build_adamw, warmup_cosine
from training.precision import resolve_precision
from training.records import load_records
from training.video_inputs import VisionSpec

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


class TrainerSetup:
    """What a GRPO trainer is made of, built in order by `__init__`; one process here, the dp x sp
    trainer overrides the `build_*` methods that differ (sharded models, split engine, ...)."""

    def __init__(self, cfg: GRPOConfig, model_dir: str | Path, data_dir: str | Path,
                 out_dir: str | Path, logprob_fn: LogprobFn = sequence_logprobs,
                 on_step: Callable[[int, dict], None] | None = None) -> None:
        self.global_cfg = cfg.check()  # as given (saved, logged); self.cfg is what this process runs
        self.model_dir, self.out = Path(model_dir), Path(out_dir)
        self.logprob_fn, self.on_step = logprob_fn, on_step
        self.ctx = self.build_context()
        self.device = self.ctx.device
        # fp32 master weights always; bf16 compute where `precision` resolves to it (precision.py).
        self.precision = resolve_precision(cfg.precision, self.device)
        self.cfg = cfg = self.process_config(cfg)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        if not cfg.reward.judge.cache_path:  # judge verdicts survive restarts
            cfg.reward.judge.cache_path = str(self.out / self.judge_cache_name())

        # Policy (from the newest checkpoint when resuming), frozen reference, tokenizer.
        self.resume_dir = resume = latest_checkpoint(self.out) if cfg.resume else None
        self.tokenizer = load_tokenizer(self.model_dir)
        self.build_models(resume)
        # Data, videos, rollout engine, rewards.
        loaded = load_records(data_dir, cfg.data.split, cfg.data.video_root,
                              cfg.data.answer_types, cfg.data.max_records)
        self.records, self.rejected = loaded.records, loaded.rejected
        self.sampler = self.build_sampler()
        self.build_embedders(VisionSpec.from_model_dir(self.model_dir))
        self.stop_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
        self.engine = self.build_engine(resume)
        self.scorer = self.build_scorer()
        # Optimizer, schedule and checkpoints are the shared ones (training.optim/checkpoint).
        self.runner = self.build_runner()
        self.optimizer, self.scheduler = self.build_optimizer()
        self.state = TrainerState()
        if resume is not None:
            self.resume_from(resume)
        self.step = self.state.step
        if self.ctx.is_main:
            save_config(self.global_cfg, self.out)

    # -- set-up, in the order __init__ calls it ------------------------------------------------
    def build_context(self) -> DistContext:
        dev = self.global_cfg.device
        return DistContext(device=torch.device(dev if dev != "auto" else
                                               ("cuda" if torch.cuda.is_available() else "cpu")))

    def process_config(self, cfg: GRPOConfig) -> GRPOConfig:
        """The config this process runs (the dp x sp trainer: its replica's share of prompts)."""
        return cfg

    def judge_cache_name(self) -> str:
        return "judge_cache.jsonl"

    def load_kwargs(self) -> dict:
        c = self.cfg
        return dict(dtype="float32", device=self.device, attn_implementation=c.attn_implementation or None)

    def build_models(self, resume: Path | None) -> None:
        """`self.model` (trained) and `self.ref` (frozen reference, or None without a KL term)."""
        cfg, load = self.cfg, self.load_kwargs()
        self.model = load_model(resume or self.model_dir, **load)
        if cfg.video.freeze_vision and hasattr(base_model(self.model), "visual"):  # text LMs have none
            base_model(self.model).visual.requires_grad_(False)
        self.ref = None
        if cfg.algorithm.kl_coef > 0:
            # Offloaded, the reference waits in host memory and visits the GPU for its pass.
            ref_load = {**load, "device": "cpu"} if cfg.ref_offload else load
            self.ref = load_model(self.model_dir, **ref_load).requires_grad_(False)

    @property
    def rollout_model(self) -> torch.nn.Module:
        """The unsharded model that encodes videos and samples rollouts."""
        return self.model

    def build_sampler(self):
        return PromptSampler(self.records, self.cfg.seed, self.cfg.data.shuffle)

    def build_embedders(self, spec: VisionSpec) -> None:
        """`self.embedder` (the step's video embeddings) and `self.ref_embedder` (None unless the
        vision tower trains: then it drifts from the reference's, which encodes its own)."""
        v = self.cfg.video
        offline = None
        if v.embeddings == "offline":
            from training.grpo.embed_cache import EmbeddingCache

            offline = EmbeddingCache(v.embed_cache, self.rollout_model, v.sampling, spec)
        self.embedder = self.make_embedder(self.rollout_model, spec, offline)
        self.ref_embedder = None
        if self.ref is not None and not v.freeze_vision:
            self.ref_embedder = VideoEmbedder(self.ref, "online", v.sampling, spec, False,
                                              use_record_frames=v.use_record_frames)
            self.ref_embedder.store = self.embedder.store  # decode each video once for both

    def make_embedder(self, model: torch.nn.Module, spec: VisionSpec, offline) -> VideoEmbedder:
        v = self.cfg.video
        emb = VideoEmbedder(model, v.embeddings, v.sampling, spec, not v.freeze_vision,
                            v.decoded_cache_mb, offline, v.use_record_frames, prefetch_workers=v.prefetch_workers)
        emb.plan_store(self.records)
        return emb

    def build_engine(self, resume: Path | None):
        cfg = self.cfg
        return make_engine(cfg.rollout.engine, self.model, self.tokenizer, str(resume or self.model_dir),
                           self.stop_ids, cfg.rollout, cfg.seed)

    def build_scorer(self):
        return RewardScorer(self.cfg.reward)

    def build_runner(self) -> torch.nn.Module:
        """What optimizer and checkpoints see: a module holding the model as `.model`."""
        return ModelRunner(self.model)

    def build_optimizer(self):
        cfg, o = self.cfg, self.cfg.optim
        optimizer = build_adamw(self.runner, o.lr, o.weight_decay, tuple(o.betas), o.eps)
        # One optimizer step per mini-batch; the count only shapes a cosine (min_lr_ratio < 1).
        rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
        minis = -(-rows // cfg.algorithm.mini_batch_rows) if cfg.algorithm.mini_batch_rows > 0 else 1
        total = max(cfg.steps * cfg.algorithm.ppo_epochs * minis, o.warmup_steps, 1)
        return optimizer, warmup_cosine(optimizer, o.warmup_steps, total, o.min_lr_ratio)

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Collective when distributed: every rank calls it at the same step."""
        self.state.step = self.step
        self.state.extra = self.checkpoint_extra()
        return save_checkpoint(self.out, self.state, self.runner, self.optimizer, self.scheduler,
                               self.tokenizer, self.model_dir, self.ctx, self.cfg.keep_checkpoints)

    def checkpoint_extra(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def resume_from(self, path: Path) -> None:
        """Weights, optimizer, schedule and RNG from `path`; then the prompt sampler's position."""
        self.state = load_checkpoint(path, self.runner, self.optimizer, self.scheduler, self.ctx, self.cfg.seed)
        self.restore_sampler(path)

    def restore_sampler(self, path: Path) -> None:
        self.sampler.load_state_dict(self.state.extra["sampler"])
