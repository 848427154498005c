"""How one GRPO step's non-training work is spread over a dp x sp job (every rank runs the loop).

- `DataParallelSampler`: each DP replica draws its own slice of every step's prompts from one
  shared seeded order (so replicas never train on the same prompt in a step); its state is saved
  per rank, so a resumed run draws exactly what the uninterrupted run would have.
- `SplitRolloutEngine`: the ranks of an SP group hold the same prompts; each generates a strided
  1/sp share with its own seed and the group all-gathers the responses (token ids and
  log-probs: small Python objects over torch.distributed), so generation is split over all
  dp x sp ranks. It syncs the engine's weights from the FSDP shards each step.
- `SplitRewardScorer`: rewards (and LLM-judge calls) likewise split over the SP group, never
  computed twice.
- `SplitVideoEmbedder`: the vision tower encodes each step video split by frames over the SP
  group (vision.py): through the sharded policy with every rank in step (lockstep.py), or on an
  unsharded frozen replica (`parallel.rollout_replica=true`), where no FSDP collective depends
  on which videos a replica happens to have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from training.grpo.video_cache import StepVideo, VideoEmbedder
from training.sequence_parallel.lockstep import all_max, dummy_video, reshard
from training.sequence_parallel.mesh import ParallelState, iter_full_tensors
from training.sequence_parallel.vision import encode_videos_split


def _strided(n: int, rank: int, size: int) -> list[int]:
    return list(range(rank, n, size))


def _gather_in_order(local: list, n: int, state: ParallelState) -> list:
    """Inverse of the strided split: every SP rank gets all n items in their original order."""
    if state.sp_size == 1:
        return local
    parts: list[Any] = [None] * state.sp_size
    dist.all_gather_object(parts, local, group=state.sp_group)
    out: list[Any] = [None] * n
    for r, part in enumerate(parts):
        for i, item in zip(_strided(n, r, state.sp_size), part, strict=True):
            out[i] = item
    return out


class DataParallelSampler:
    """A PromptSampler seen by one DP replica: draws n * dp prompts, keeps slice dp_rank."""

    def __init__(self, sampler, state: ParallelState) -> None:
        self.sampler, self.state = sampler, state

    def next(self, n: int):
        drawn = self.sampler.next(n * self.state.dp_size)
        return drawn[self.state.dp_rank * n : (self.state.dp_rank + 1) * n]

    def __getattr__(self, name: str):  # mark_bad, state_dict, load_state_dict, records
        return getattr(self.sampler, name)


class SplitRolloutEngine:
    """A rollout engine whose prompts are split over the SP group and whose weights come from
    the FSDP-sharded policy. `replica` is the unsharded model the `hf` engine samples with."""

    def __init__(
        self, engine, state: ParallelState, replica: torch.nn.Module | None = None
    ) -> None:
        self.engine, self.state, self.replica = engine, state, replica
        self.name = engine.name

    def generate(self, prompts: Sequence, sampling) -> list[list]:
        s = self.state
        mine = _strided(len(prompts), s.sp_rank, s.sp_size)
        # distinct streams per replica and per SP rank; the same on a resumed run
        seed = (sampling.seed * 1_000_003 + s.dp_rank * 7_919 + s.sp_rank * 104_729) % 2**62
        # a collective engine (the sharded lockstep one) is called by every rank, prompts or not
        run = bool(mine) or getattr(self.engine, "collective", False)
        local = (
            self.engine.generate([prompts[i] for i in mine], replace(sampling, seed=seed))
            if run
            else []
        )
        return _gather_in_order(local, len(prompts), s)

    @torch.no_grad()
    def sync_weights(self, lpm) -> None:
        """Collective over the FSDP mesh (all ranks, every step)."""
        if (
            self.engine.name != "hf" or self.replica is None
        ):  # vLLM, or the sharded engine (a no-op)
            self.engine.sync_weights(lpm)
            return
        params = dict(self.replica.state_dict())
        for name, full in iter_full_tensors(lpm):
            params[name].copy_(full)


class SplitRewardScorer:
    """RewardScorer.score with the completions split over the SP group (judge calls once)."""

    def __init__(self, scorer, state: ParallelState) -> None:
        self.scorer, self.state = scorer, state

    def score(self, completions: Sequence[str], examples: Sequence) -> list:
        s = self.state
        mine = _strided(len(completions), s.sp_rank, s.sp_size)
        local = (
            self.scorer.score([completions[i] for i in mine], [examples[i] for i in mine])
            if mine
            else []
        )
        return _gather_in_order(local, len(completions), s)

    def __getattr__(self, name: str):  # ctx (judge statistics), cfg
        return getattr(self.scorer, name)


class SplitVideoEmbedder(VideoEmbedder):
    """VideoEmbedder whose vision tower runs split by frames over the SP group.

    On an unsharded replica (`sharded=False`) the tower must be frozen; each SP group encodes
    its own replica's videos. Through the sharded policy (`sharded=True`, `model` the
    LogProbModel) every encode is collective over all ranks (lockstep.py): the videos a step's
    `prepare` calls find are queued and encoded by one `flush` per round, and the update
    passes' encodes (a trainable tower) are in step because every replica runs the same
    micro-batches."""

    def __init__(self, *args, state: ParallelState, sharded: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.trainable_vision and not sharded:
            raise ValueError(
                "multi-rank GRPO with an unsharded rollout replica needs video.freeze_vision=true "
                "(set parallel.rollout_replica=false to train the tower)"
            )
        self.state, self.sharded = state, sharded
        self._queued: list[StepVideo] = []
        self.dangling: torch.Tensor | None = None  # a dummy encode's output, to tie into the loss
        self.dummy_grad_encodes = 0  # update passes where this rank encoded only to stay in step

    def _encode_once(self, videos: list[StepVideo]) -> None:
        if not self.sharded:
            super()._encode_once(videos)
        else:
            self._queued += videos

    def flush(self) -> None:
        """Encode the queued videos: once per round on every rank (a collective)."""
        if not self.sharded:
            return
        videos, self._queued = self._queued, []
        for v, e in zip(videos, self._encode(videos, grad=False), strict=True):
            v.embeds = e.detach()

    def _encode(self, videos: Sequence[StepVideo], grad: bool) -> list[torch.Tensor]:
        if self.sharded:
            return self._encode_lockstep(videos, grad)
        if self.state.sp_size == 1 or not videos:
            return super()._encode(videos, grad)
        device = next(self.model.parameters()).device
        pixels = torch.cat([v.pixel_values for v in videos]).to(device)
        grid = torch.tensor([v.grid_thw for v in videos], dtype=torch.long, device=device)
        self.calls += len(videos)
        with torch.no_grad():
            embeds = encode_videos_split(
                self.model,
                pixels,
                grid,
                self.state.sp_group,
                self.state.sp_rank,
                self.state.sp_size,
            )
        return self._checked(videos, embeds)

    def _encode_lockstep(self, videos: Sequence[StepVideo], grad: bool) -> list[torch.Tensor]:
        real = [v for v in videos if v.num_tokens]  # text-only rows keep their empty embedding
        device = next(self.model.parameters()).device
        if not all_max(int(bool(real)), device):
            return [v.embeds for v in videos]  # type: ignore[misc]
        if real:
            pixels = torch.cat([v.pixel_values for v in real]).to(device)
            grid = torch.tensor([v.grid_thw for v in real], dtype=torch.long, device=device)
        else:  # another rank encodes: call the tower on a dummy frame group, drop the result
            pixels, grid = (t.to(device) for t in dummy_video(self.model))
        self.calls += len(real)
        with torch.set_grad_enabled(grad):
            embeds = self.model.encode_videos(pixels, grid)  # split by frames over the SP group
        if not grad:
            reshard(self.model)
        if not real:
            if grad:  # the blocks' backward must run here too (FSDP reduce-scatters their grads)
                self.dangling = 0.0 * sum(e.sum() for e in embeds)
                self.dummy_grad_encodes += 1
            return [v.embeds for v in videos]  # type: ignore[misc]
        it = iter(self._checked(real, embeds))
        return [next(it) if v.num_tokens else v.embeds for v in videos]  # type: ignore[misc]

    def take_dangling(self) -> torch.Tensor | None:
        out, self.dangling = self.dangling, None
        return out

    @staticmethod
    def _checked(videos: Sequence[StepVideo], embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        for v, e in zip(videos, embeds, strict=True):
            if e.shape[0] != v.num_tokens:
                raise ValueError(
                    f"video {v.video_id}: vision tower gave {e.shape[0]} tokens, "
                    f"grid {v.grid_thw} implies {v.num_tokens}"
                )
        return embeds
