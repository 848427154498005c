"""The GRPO trainer on a dp x sp job: every rank runs GRPOTrainer's step, sharded and split.

Launched by Ray Train or torchrun (run.py), or `local_group` in tests, on top of an
initialised torch.distributed group (gloo on CPU, NCCL on GPU). Every family trains here: the
vision-language ones and the text-only LMs (qwen2/qwen3: no vision tower to freeze, encode or
shard, no video cache - their records carry no video). The loop, the step and the
checkpoint writing are GRPOTrainer's, unchanged; what differs is the parts it is built from
(the `build_*` overrides of training.grpo.setup.TrainerSetup below):
- `self.model` is a LogProbModel sharded with FSDP2 over the mesh, scoring every old-policy,
  reference and update pass with Ulysses sequence parallelism (`logprob_fn` below);
- the reference is a frozen LogProbModel, optionally with its shards offloaded to CPU;
- the vision tower (split by frames over the SP group) and the `hf` rollout engine run through
  the sharded policy itself, every rank in lockstep (lockstep.py): no rank holds a full copy.
  With `parallel.rollout_replica=true` an unsharded frozen replica does both instead,
  refreshed from the shards every update; with the `vllm` engine each GPU's colocated engine
  samples and gets the weights (vllm_colocate.py);
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
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from training.distributed import DistContext
from training.grpo import algorithms as algo
from training.grpo.config import GRPOConfig
from training.grpo.rollout import HFRolloutEngine, SamplingSettings
from training.grpo.trainer import GRPOTrainer
from training.mm_batch import VIDEO_TOKEN_TYPE, base_model, rope_positions
from training.model_io import load_model
from training.model_loading import meta_model
from training.sequence_parallel.lockstep import LockstepRolloutEngine, all_max, reshard
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

SUMMED = ("vision/calls", "vision/videos", "throughput/response_tokens", "throughput/tokens_per_s")


def lpm_logprobs(
    lpm,
    batch,
    video_embeds,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
    input_bias: torch.Tensor | None = None,
):
    """GRPOTrainer's `logprob_fn` for a LogProbModel (positions on the full sequence)."""
    out = lpm(
        batch.input_ids,
        batch.attention_mask,
        rope_positions(lpm.model, batch),
        batch.loss_mask,
        video_embeds=video_embeds,
        temperature=temperature,
        with_entropy=with_entropy,
        video_mask=batch.mm_token_type_ids == VIDEO_TOKEN_TYPE,
        input_bias=input_bias,
    )
    if not torch.is_grad_enabled():  # old-policy / reference pass: no backward will reshard
        reshard(lpm)
    return out


class ParallelGRPOTrainer(GRPOTrainer):
    """GRPOTrainer's set-up with the parts that differ on a dp x sp job (setup.TrainerSetup's
    `build_*` overrides); the loop, the step and the checkpoint writing are GRPOTrainer's."""

    def __init__(
        self,
        cfg: GRPOConfig,
        model_dir: str | Path,
        data_dir: str | Path,
        out_dir: str | Path,
        parallel: ParallelConfig | None = None,
        on_step: Callable[[int, dict], None] | None = None,
        device: torch.device | None = None,
    ) -> None:
        if parallel is not None:  # the layout given wins, and is what OUT/config.yaml records
            cfg = dataclasses.replace(cfg, parallel=parallel)
        self.parallel = cfg.parallel
        self.launcher_device = (
            device  # the launcher's choice (training.distributed) wins over cfg.device
        )
        super().__init__(
            cfg, model_dir, data_dir, out_dir, logprob_fn=self._logprobs, on_step=on_step
        )

    def _logprobs(self, lpm, batch, video_embeds, **kwargs):
        """lpm_logprobs, with a dummy vision encode of this rank (a trainable tower, no video of
        its own in the micro-batch while another rank has one) added to the input embeddings at
        weight 0: the tower's backward - FSDP's gradient reduce-scatters - then runs here too,
        and in the same order as on a rank with a real video (after the decoder layers'; tied
        to the output instead, it ran first and the ranks' collectives deadlocked)."""
        dangling = self.embedder.take_dangling() if torch.is_grad_enabled() else None
        return lpm_logprobs(lpm, batch, video_embeds, input_bias=dangling, **kwargs)

    # -- set-up overrides, in TrainerSetup.__init__'s order ------------------------------------
    def build_context(self) -> DistContext:
        cfg, device = self.global_cfg, self.launcher_device
        if device is None:
            device = (
                torch.device(cfg.device) if cfg.device not in ("auto", "") else default_device()
            )
        self.par = st = init_parallel(self.parallel.sp_size, device)
        return DistContext(
            st.rank, st.world_size, int(os.environ.get("LOCAL_RANK", st.rank)), device
        )

    def process_config(self, cfg: GRPOConfig) -> GRPOConfig:
        return _per_replica(cfg, self.par.dp_size)

    def judge_cache_name(self) -> str:
        return f"judge_cache.rank{self.par.rank}.jsonl"

    def build_models(self, resume: Path | None) -> None:
        """The policy and reference as FSDP-sharded LogProbModels; with
        `parallel.rollout_replica` (or where the sharded lockstep path does not apply) also an
        unsharded frozen replica that encodes videos and samples with `hf`, refreshed after
        every update."""
        st, load = self.par, self.load_kwargs()
        # bf16 compute on fp32 shards (FSDP2 MixedPrecisionPolicy, fp32 gradient reduction).
        self.parallel.param_dtype = self.precision.fsdp_param_dtype
        self.replica = None
        if self.cfg.uses_rollout_replica(st.dp_size):
            # The replica is frozen and only samples (hf engine) and encodes the frozen tower:
            # under bf16 compute it is held in bf16 (7B: 16.6 GB per GPU, not 33 GB in fp32);
            # the fp32 shards are copied into it (rounded) after every update.
            replica_dtype = "bfloat16" if self.precision.bf16 else load["dtype"]
            self.replica = load_model(
                resume or self.model_dir, **{**load, "dtype": replica_dtype}
            ).requires_grad_(False)
        # Policy and reference: built on the meta device, each rank loading only its FSDP shards.
        meta = {k: v for k, v in load.items() if k != "device"}
        policy = meta_model(resume or self.model_dir, **meta)
        # text-only LMs (qwen2/qwen3) have no tower
        if self.cfg.video.freeze_vision and hasattr(base_model(policy), "visual"):
            base_model(policy).visual.requires_grad_(False)
        self.model = build_log_prob_model(
            policy, st, self.parallel, weights=resume or self.model_dir
        )
        self.ref = None
        if self.cfg.algorithm.kl_coef > 0:
            self.ref = build_log_prob_model(
                meta_model(self.model_dir, **meta),
                st,
                self.parallel,
                trainable=False,
                weights=self.model_dir,
            )

    @property
    def rollout_model(self) -> torch.nn.Module:
        """The replica, or the sharded policy itself (lockstep.py)."""
        return self.replica if self.replica is not None else self.model

    def build_sampler(self):
        return DataParallelSampler(super().build_sampler(), self.par)

    def build_embedders(self, spec) -> None:
        v = self.cfg.video
        offline = None
        if v.embeddings == "offline":
            from training.grpo.embed_cache import EmbeddingCache, vision_fingerprint

            # The cache's tower fingerprint, over the sharded policy's fp32 tower streamed one
            # full tensor at a time (every rank in step): `embed-cache build`'s value. Not over
            # the replica: under bf16 compute it is a bf16 copy, and refused every fp32 cache.
            fp = vision_fingerprint(self.model.model)
            hf = self.replica if self.replica is not None else self.model.model
            offline = EmbeddingCache(v.embed_cache, hf, v.sampling, spec, fingerprint=fp)
        self.embedder = self.make_embedder(self.rollout_model, spec, offline)
        self.ref_embedder = None
        if self.ref is not None and not v.freeze_vision:
            # a trained tower: the reference encodes with its own
            self.ref_embedder = SplitVideoEmbedder(
                self.ref,
                "online",
                v.sampling,
                spec,
                False,
                use_record_frames=v.use_record_frames,
                state=self.par,
                sharded=self.replica is None,
            )
            self.ref_embedder.store = self.embedder.store  # decode each video once for both

    def make_embedder(self, model, spec, offline) -> SplitVideoEmbedder:
        v = self.cfg.video
        return SplitVideoEmbedder(
            model,
            v.embeddings,
            v.sampling,
            spec,
            not v.freeze_vision,
            v.decoded_cache_mb,
            offline,
            v.use_record_frames,
            state=self.par,
            sharded=self.replica is None,
        )

    def build_engine(self, resume: Path | None) -> SplitRolloutEngine:
        r = self.cfg.rollout
        if r.engine == "hf" and self.replica is not None:
            engine = HFRolloutEngine(
                self.replica,
                self.tokenizer,
                self.stop_ids,
                r.generate_rows,
                share_prefix=r.share_prefix,
            )
        elif r.engine == "hf":
            engine = LockstepRolloutEngine(
                self.model,
                self.tokenizer,
                self.stop_ids,
                r.generate_rows,
                share_prefix=r.share_prefix,
            )
        else:
            from training.sequence_parallel.vllm_colocate import ColocatedVLLMEngine

            engine = ColocatedVLLMEngine(
                str(resume or self.model_dir),
                self.tokenizer,
                self.stop_ids,
                # text-only LMs (qwen2/qwen3) have no video token: nothing to collapse
                getattr(self.model.model.config, "video_token_id", -1),
                gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                dtype=r.vllm_dtype,
                seed=self.cfg.seed + self.par.rank,
            )
        return SplitRolloutEngine(engine, self.par, self.replica)

    def build_scorer(self) -> SplitRewardScorer:
        return SplitRewardScorer(super().build_scorer(), self.par)

    def build_runner(self) -> torch.nn.Module:
        # The LogProbModel is the FSDP root and holds the model as `.model`, like ModelRunner.
        return self.model

    # ---------------------------------------------------------------------------------------
    def layout_label(self) -> str:
        return f" dp{self.par.dp_size}xsp{self.par.sp_size}"

    def summary_extra(self) -> dict:
        return {"parallel": {"dp": self.par.dp_size, "sp": self.par.sp_size}}

    def train_step(self, step: int) -> dict[str, float]:
        return self._reduce_metrics(super().train_step(step))

    def _prompts_with_videos(self, want: int):
        """The round's records and videos; then the videos found are encoded, with every rank
        in step when the tower runs through the sharded policy (SplitVideoEmbedder.flush)."""
        records, videos = super()._prompts_with_videos(want)
        self.embedder.flush()
        if self.ref_embedder is not None:  # its embeddings were queued too: set them now
            self.ref_embedder.flush()
            for v in videos.values():
                if v.num_tokens:
                    v.ref_embeds = self.ref_embedder.step_videos[v.key].embeds
        return records, videos

    def collect_groups(self, step, timer):
        """The step's groups, cut to the smallest count of any replica (dynamic sampling can keep
        fewer): every rank must run the same number of sharded forward passes."""
        if self.cfg.algorithm.dynamic_sampling and self.replica is None:
            groups, extra = self._lockstep_rounds(step, timer)
        else:
            groups, extra = super().collect_groups(step, timer)
        n = torch.tensor([len(groups)])
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
        return groups[: int(n)], extra

    def _lockstep_rounds(self, step: int, timer) -> tuple[list, dict]:
        """GRPOTrainer's dynamic-sampling rounds with every rank in step (the sharded rollout
        and tower are collective): a replica that is full or at the round limit runs idle
        rounds - nothing drawn, its round's encode and generate called with nothing of its
        own - until an all-reduce says every replica is done. A replica's own rounds (prompts
        drawn, seeds, groups kept) are those it runs with the unsharded replica."""
        alg = self.cfg.algorithm
        ds = algo.DynamicSampler(self.cfg.rollout.prompts_per_step, alg.dynamic_sampling_max_rounds)
        self.idle_rounds = 0
        while all_max(int(not ds.done), self.par.device):
            if ds.done:
                self._idle_round(timer)
                continue
            groups = self._one_round(step, ds.rounds, self.cfg.rollout.prompts_per_step, timer)
            part = alg.dynamic_sampling_metric
            ds.add(groups, [[r.reward.total if part == "total" else r.reward.parts.get(part, 0.0)
                             for r in g] for g in groups])  # fmt: skip
        kept = ds.take()
        for gi, g in enumerate(kept):  # renumber groups within the step
            for r in g:
                r.group = gi
        return kept, {**ds.stats(), "dynamic_sampling/idle_rounds": float(self.idle_rounds)}

    def _idle_round(self, timer) -> None:
        """One round's collectives with nothing of this replica's (every SP rank of it idles
        together, so the SP-group gathers of the reward split are skipped alike)."""
        r = self.cfg.rollout
        with timer("encode"):
            self.embedder.flush()
            if self.ref_embedder is not None:
                self.ref_embedder.flush()
        with timer("rollout"):
            sampling = SamplingSettings(
                r.group_size, r.max_new_tokens, r.temperature, r.top_p, seed=0
            )
            self.engine.generate([], sampling)
        self.idle_rounds += 1

    def _reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        st = self.par
        if st.dp_size == 1:
            return metrics
        every: list = [None] * st.dp_size
        dist.all_gather_object(every, metrics, group=st.dp_group)
        out = {}
        for key in sorted({k for m in every for k in m}):
            vals = [m[key] for m in every if key in m]
            out[key] = (
                sum(vals)
                if key in SUMMED
                else max(vals)
                if key.startswith("time/")
                else sum(vals) / len(vals)
            )
        return out

    def _append_error(self, row: dict) -> None:
        if self.par.sp_rank == 0:  # SP ranks of a replica hold the same rows
            row = {**row, "dp_rank": self.par.dp_rank}
            super()._append_error(row)

    # -- checkpoints: every rank's sampler position, and the layout that wrote them ------------
    def checkpoint_extra(self) -> dict:
        st = self.par
        samplers: list = [None] * st.world_size
        dist.all_gather_object(samplers, self.sampler.state_dict())
        return {"samplers": samplers, "parallel": {"dp": st.dp_size, "sp": st.sp_size}}

    def restore_sampler(self, path: Path) -> None:
        st = self.par
        saved = self.state.extra.get("parallel", {})
        if (saved.get("dp"), saved.get("sp")) != (st.dp_size, st.sp_size):
            raise ValueError(
                f"{path} was written by a dp{saved.get('dp')} x sp{saved.get('sp')} run; this "
                f"run is dp{st.dp_size} x sp{st.sp_size} (its prompt slices would differ)"
            )
        self.sampler.load_state_dict(self.state.extra["samplers"][st.rank])

    def _record_samples(self, step: int, groups, per_step: int = 4) -> None:
        if self.par.is_main:  # a few completions of replica 0
            super()._record_samples(step, groups, per_step)


def _per_replica(cfg: GRPOConfig, dp: int) -> GRPOConfig:
    problems = cfg.multi_rank_problems(dp)
    if problems:
        raise ValueError("; ".join(problems))
    per = copy.deepcopy(cfg)
    per.rollout.prompts_per_step = cfg.rollout.prompts_per_step // dp
    return per
