"""The GRPO trainer on a dp x sp job: every rank runs GRPOTrainer's step, sharded and split.

Launched by Ray Train (ray_launch.py), torchrun, or `local_group` in tests, on top of an
initialised torch.distributed group (gloo on CPU, NCCL on GPU). The step itself is
`GRPOTrainer.train_step`, unchanged; what differs is what it is handed:
- `self.model` is a LogProbModel sharded with FSDP2 over the mesh, scoring every old-policy,
  reference and update pass with Ulysses sequence parallelism (`logprob_fn` below);
- the reference is a frozen LogProbModel, optionally with its shards offloaded to CPU;
- an unsharded replica of the policy encodes the (frozen) vision tower split by frames over the
  SP group, samples rollouts with the `hf` engine, and is what checkpoints are written from;
  with the `vllm` engine each GPU's colocated engine gets the weights instead (vllm_colocate.py);
- prompts are split over DP replicas, rollouts and rewards over all ranks (step_split.py).
`rollout.prompts_per_step` counts prompts of the whole job per step (must divide by dp).
Metrics are averaged over replicas (counts summed, times maxed); rank 0 writes the files.

Checkpoints are training.checkpoint's: a loadable HF folder, the optimizer's shards written with
torch.distributed.checkpoint, the scheduler, every rank's RNG, and (in the trainer state) every
rank's prompt-sampler position, written to a temporary folder and renamed when complete, so a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from common import tracking
from common.config import save_config
from training.checkpoint import (
    TrainerState,
    export_model_folder,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from training.distributed import DistContext
from training.grpo.config import GRPOConfig
from training.grpo.data import PromptSampler, load_records
from training.grpo.metrics import MetricsLogger
from training.grpo.rewards import RewardScorer
from training.grpo.rollout import HFRolloutEngine
from training.grpo.trainer import STOP_TOKENS, GRPOTrainer, _progress, _summary
from training.mm_batch import VIDEO_TOKEN_TYPE, base_model, rope_positions
from training.model_io import load_model, load_tokenizer
from training.optim import build_adamw, warmup_cosine
from training.sequence_parallel.mesh import (
    ParallelConfig,
    build_log_prob_model,
    default_device,
    init_parallel,
)
from training.sequence_parallel.step_split import (
    DataParallelSampler,
    SplitRewardScorer,
    SplitRolloutEngine,
    SplitVideoEmbedder,
)
from training.video_inputs import VisionSpec

SUMMED = ("vision/calls", "vision/videos", "throughput/response_tokens", "throughput/tokens_per_s")


def lpm_logprobs(lpm, batch, video_embeds, *, temperature: float = 1.0, chunk_size: int = 1024,
                 with_entropy: bool = False):
    """GRPOTrainer's `logprob_fn` for a LogProbModel (positions on the full sequence)."""
    return lpm(batch.input_ids, batch.attention_mask, rope_positions(lpm.model, batch), batch.loss_mask,
               video_embeds=video_embeds, temperature=temperature, with_entropy=with_entropy,
               video_mask=batch.mm_token_type_ids == VIDEO_TOKEN_TYPE)


class ParallelGRPOTrainer(GRPOTrainer):
    def __init__(self, cfg: GRPOConfig, model_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                 parallel: ParallelConfig, on_step: Callable[[int, dict], None] | None = None,
                 device: torch.device | None = None) -> None:
        self.global_cfg = cfg.check()
        self.parallel, self.on_step = parallel, on_step
        if device is None:  # the launcher's choice (training.distributed) wins over cfg.device
            device = torch.device(cfg.device) if cfg.device not in ("auto", "") else default_device()
        self.par = st = init_parallel(parallel.sp_size, device)
        self.ctx = DistContext(st.rank, st.world_size, int(os.environ.get("LOCAL_RANK", st.rank)), device)
        self.cfg = cfg = _per_replica(cfg, st.dp_size)
        self.model_dir, self.out, self.device = Path(model_dir), Path(out_dir), device
        self.out.mkdir(parents=True, exist_ok=True)
        self.logprob_fn = lpm_logprobs
        torch.manual_seed(cfg.seed)
        if not cfg.reward.judge.cache_path:
            cfg.reward.judge.cache_path = str(self.out / f"judge_cache.rank{st.rank}.jsonl")

        resume = latest_checkpoint(self.out) if cfg.resume else None
        self.resume_dir = resume
        load = dict(dtype=cfg.dtype, device=device, attn_implementation=cfg.attn_implementation or None)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.replica = load_model(resume or self.model_dir, **load).requires_grad_(False)
        policy = load_model(resume or self.model_dir, **load)
        base_model(policy).visual.requires_grad_(False)  # SplitVideoEmbedder insists on it
        self.model = build_log_prob_model(policy, st, parallel)
        self.ref = None
        if cfg.algorithm.kl_coef > 0:
            self.ref = build_log_prob_model(load_model(self.model_dir, **load), st, parallel, trainable=False)

        loaded = load_records(data_dir, cfg.data.split, cfg.data.video_root, cfg.data.answer_types,
                              cfg.data.max_records)
        self.records, self.rejected = loaded.records, loaded.rejected
        self.sampler = DataParallelSampler(PromptSampler(self.records, cfg.seed, cfg.data.shuffle), st)
        spec = VisionSpec.from_model_dir(self.model_dir)
        offline = None
        if cfg.video.embeddings == "offline":
            from training.grpo.embed_cache import EmbeddingCache

            offline = EmbeddingCache(cfg.video.embed_cache, self.replica, cfg.video.sampling, spec)
        self.embedder = SplitVideoEmbedder(self.replica, cfg.video.embeddings, cfg.video.sampling, spec,
                                           not cfg.video.freeze_vision, cfg.video.decoded_cache_mb, offline,
                                           cfg.video.use_record_frames, state=st)
        self.ref_embedder = None
        self.stop_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
        self.engine = SplitRolloutEngine(self._make_engine(resume, st), st, self.replica)
        self.scorer = SplitRewardScorer(RewardScorer(cfg.reward), st)

        # Optimizer, schedule and checkpoints: the shared ones, as GRPOTrainer's (LogProbModel is
        # the FSDP root, like training.distributed.ModelRunner: both hold the model as `.model`).
        self.runner = self.model
        o = cfg.optim
        self.optimizer = build_adamw(self.model, o.lr, o.weight_decay, tuple(o.betas), o.eps)
        minis = -(-cfg.rollout.prompts_per_step * cfg.rollout.group_size // max(cfg.algorithm.mini_batch_rows, 1)) \
            if cfg.algorithm.mini_batch_rows > 0 else 1
        total = max(cfg.steps * cfg.algorithm.ppo_epochs * minis, o.warmup_steps, 1)
        self.scheduler = warmup_cosine(self.optimizer, o.warmup_steps, total, o.min_lr_ratio)
        self.state = TrainerState()
        if resume is not None:
            self._load_checkpoint(resume)
        self.step = self.state.step
        if st.is_main:
            save_config(self.global_cfg, self.out)

    def _make_engine(self, resume: Path | None, st):
        r = self.cfg.rollout
        if r.engine == "hf":
            return HFRolloutEngine(self.replica, self.tokenizer, self.stop_ids, r.generate_rows)
        from training.sequence_parallel.vllm_colocate import ColocatedVLLMEngine

        return ColocatedVLLMEngine(str(resume or self.model_dir), self.tokenizer, self.stop_ids,
                                   self.replica.config.video_token_id,
                                   gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                                   dtype=r.vllm_dtype, seed=self.cfg.seed + st.rank)

    # ---------------------------------------------------------------------------------------
    def train(self) -> dict:
        st, cfg = self.par, self.cfg
        main = st.is_main
        stage = tracking.stage_run("grpo", config=self.global_cfg) if main else _inactive_run()
        with stage as run:
            logger = MetricsLogger(self.out, run if run.active else None, resume_step=self.step) if main else None
            first = self.step + 1
            with _progress(cfg.progress and main) as bar:
                task = bar.add_task("grpo", total=cfg.steps, completed=self.step)
                while self.step < cfg.steps:
                    self.step += 1
                    metrics = self.train_step(self.step)
                    if logger is not None:
                        logger.log(self.step, metrics)
                    bar.update(task, advance=1, description=(
                        f"grpo dp{st.dp_size}xsp{st.sp_size} reward {metrics.get('reward/total', 0):.3f} "
                        f"{metrics['time/step']:.1f}s/step"))
                    if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                        self.save_checkpoint()
                    if self.on_step is not None:
                        self.on_step(self.step, metrics)
            final = export_model_folder(self.model.model, self.tokenizer, self.out / "model", self.model_dir,
                                        self.ctx)
            summary = None
            if main:
                plots = logger.plot() if cfg.plots else []
                run.log_artifact(self.out / "metrics.jsonl")
                run.log_checkpoint(final)
                summary = _summary(logger.history(), first, self.step, final, plots)
                summary["parallel"] = {"dp": st.dp_size, "sp": st.sp_size}
                (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        box = [summary]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def train_step(self, step: int) -> dict[str, float]:
        return self._reduce_metrics(super().train_step(step))

    def collect_groups(self, step, timer):
        """The step's groups, cut to the smallest count of any replica (dynamic sampling can keep
        fewer): every rank must run the same number of sharded forward passes."""
        groups, extra = super().collect_groups(step, timer)
        n = torch.tensor([len(groups)])
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
        return groups[: int(n)], extra

    def _reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        st = self.par
        if st.dp_size == 1:
            return metrics
        every: list = [None] * st.dp_size
        dist.all_gather_object(every, metrics, group=st.dp_group)
        out = {}
        for key in sorted({k for m in every for k in m}):
            vals = [m[key] for m in every if key in m]
            out[key] = sum(vals) if key in SUMMED else max(vals) if key.startswith("time/") else sum(vals) / len(vals)
        return out

    def _append_error(self, row: dict) -> None:
        if self.par.sp_rank == 0:  # SP ranks of a replica hold the same rows
            row = {**row, "dp_rank": self.par.dp_rank}
            super()._append_error(row)

    # ---------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Collective: every rank calls it at the same step."""
        st = self.par
        samplers: list = [None] * st.world_size
        dist.all_gather_object(samplers, self.sampler.state_dict())
        self.state.step = self.step
        self.state.extra = {"samplers": samplers, "parallel": {"dp": st.dp_size, "sp": st.sp_size}}
        return save_checkpoint(self.out, self.state, self.model, self.optimizer, self.scheduler,
                               self.tokenizer, self.model_dir, self.ctx, keep_last=self.cfg.keep_checkpoints)

    def _load_checkpoint(self, path: Path) -> None:
        st = self.par
        self.state = load_checkpoint(path, self.model, self.optimizer, self.scheduler, self.ctx, self.cfg.seed)
        saved = self.state.extra.get("parallel", {})
        if (saved.get("dp"), saved.get("sp")) != (st.dp_size, st.sp_size):
            raise ValueError(f"{path} was written by a dp{saved.get('dp')} x sp{saved.get('sp')} run; this "
                             f"run is dp{st.dp_size} x sp{st.sp_size} (its prompt slices would differ)")
        self.sampler.load_state_dict(self.state.extra["samplers"][st.rank])

    def _record_samples(self, step: int, groups, per_step: int = 4) -> None:
        if self.par.is_main:  # a few completions of replica 0
            super()._record_samples(step, groups, per_step)


def _per_replica(cfg: GRPOConfig, dp: int) -> GRPOConfig:
    per = copy.deepcopy(cfg)
    if cfg.rollout.prompts_per_step % dp:
        raise ValueError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} does not divide over "
                         f"{dp} data-parallel replicas")
    if not cfg.video.freeze_vision:
        raise ValueError("multi-rank GRPO needs video.freeze_vision=true")
    if cfg.video.embeddings == "pixels":
        raise ValueError("video.embeddings=pixels re-encodes per pass; multi-rank GRPO caches (online/offline)")
    per.rollout.prompts_per_step = cfg.rollout.prompts_per_step // dp
    return per


class _inactive_run:
    def __enter__(self):
        return tracking.StageRun(None, "grpo")

    def __exit__(self, *exc) -> None:
        return None
