"""Rollouts and vision encoding through the FSDP2-sharded policy, in lockstep (issue 12.1).

No rank holds an unsharded copy of the policy: the `hf` rollout and the vision tower run on the
sharded LogProbModel itself. Under FSDP2 every decoder layer / vision block all-gathers its
parameters when it is called, a collective over the FSDP mesh, so every rank must make the same
sequence of calls even when ranks have different work:
- generation (`LockstepRolloutEngine`): the ranks run the same number of generate calls (a rank
  with fewer prompt chunks prefills a one-token dummy row) and each call decodes until every
  rank's rows are done - an all-reduce of "some row of mine is still running" per step; a rank
  whose rows have all ended keeps calling the decoder on pad tokens and samples nothing (its
  generator advances exactly as in the one-process decode, so a seed draws the same samples as
  the unsharded engine);
- vision (`lockstep_encode`): a collective encode per call site - if any rank has videos, every
  rank calls the tower, one with nothing to encode on a dummy frame group whose output it drops
  (with gradients it is tied into the loss with weight 0 so the blocks' backward, and FSDP's
  gradient reduce-scatter, run on every rank too).
The root's own parameters (embeddings, lm_head, final norm, patch embedding, merger) are
unsharded for the duration of `LogProbModel.run_unsharded`, a registered FSDP forward method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from training.generation import decode, prefill, to_lists
from training.grpo.rollout import Response, RolloutPrompt, SamplingSettings
from training.mm_batch import base_model, collate
from training.prompts import EncodedExample
from training.video_inputs import no_video


def all_max(value: int, device: torch.device, group=None) -> int:
    """The largest `value` over the group (every rank of the FSDP mesh)."""
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


def reshard(lpm) -> None:
    """Put the FSDP root's parameters back into shards after a pass without gradients. FSDP2
    keeps the root unsharded after a forward (expecting the backward to follow): after a
    no-grad call the module's parameters would stay the unsharded tensors, and a parameter
    list taken then (the update's gradient-norm clipping) would miss the root's gradients."""
    if hasattr(lpm, "reshard"):
        lpm.reshard()


def _generate_chunk(
    model,
    batch,
    video_embeds,
    n: int,
    dummy: bool,
    sampling: SamplingSettings,
    generator,
    stop_ids,
    pad_id: int,
    device,
    stats: dict[str, int],
):
    state = prefill(model, batch, video_embeds).expand(n)
    done = torch.full((state.hidden.shape[0],), dummy, dtype=torch.bool, device=device)

    def keep_going(alive: bool) -> bool:
        going = all_max(int(alive), device) > 0
        stats["idle_steps"] += int(going and not alive)  # a decode step only to stay in step
        return going

    return decode(
        model,
        state,
        stop_ids,
        pad_id,
        sampling.max_new_tokens,
        sampling.temperature,
        sampling.top_p,
        generator=generator,
        done=done,
        keep_going=keep_going,
    )


class LockstepRolloutEngine:
    """The `hf` engine on the sharded policy (a LogProbModel under FSDP2): the same chunks, seeds
    and samples as training.grpo.rollout.HFRolloutEngine on an unsharded copy, with every rank in
    step. `collective`: every rank must call `generate` once per round, with or without prompts."""

    name = "hf"
    collective = True

    def __init__(
        self,
        lpm,
        tokenizer,
        stop_ids: Sequence[int],
        rows_per_call: int = 64,
        share_prefix: bool = True,
    ) -> None:
        self.lpm, self.tokenizer = lpm, tokenizer
        self.stop_ids = list(stop_ids)
        self.rows_per_call = max(1, rows_per_call)
        self.share_prefix = share_prefix
        # calls on a dummy row / decode steps after this rank's rows ended (cumulative)
        self.stats = {"dummy_calls": 0, "idle_steps": 0}

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[RolloutPrompt], sampling: SamplingSettings
    ) -> list[list[Response]]:
        n = sampling.n
        if self.share_prefix:
            rows, per_row, step = list(prompts), n, max(1, self.rows_per_call // n)
        else:
            rows, per_row, step = [p for p in prompts for _ in range(n)], 1, self.rows_per_call
        device = next(self.lpm.parameters()).device
        gen = torch.Generator(device=device).manual_seed(sampling.seed)
        pad = self.tokenizer.pad_token_id
        chunks = [rows[s : s + step] for s in range(0, len(rows), step)]
        calls = all_max(len(chunks), device)
        was_training = self.lpm.training
        self.lpm.eval()
        flat: list[Response] = []
        try:
            for c in range(calls):
                if c < len(chunks):
                    chunk = chunks[c]
                    batch = collate(
                        [r.prompt for r in chunk], [r.video for r in chunk], pad, with_pixels=False
                    )
                    embeds, k, dummy = [r.video_embeds for r in chunk], per_row, False
                else:  # keep this rank in the layers' all-gathers; the output is dropped
                    batch = collate(
                        [EncodedExample([pad], [0], 1)], [no_video()], pad, with_pixels=False
                    )
                    embeds, k, dummy = [], 1, True
                    self.stats["dummy_calls"] += 1
                out = self.lpm.run_unsharded(
                    _generate_chunk,
                    batch.to(device),
                    embeds,
                    k,
                    dummy,
                    sampling,
                    gen,
                    self.stop_ids,
                    pad,
                    device,
                    self.stats,
                )
                if not dummy:
                    got = to_lists(*out)
                    flat += [
                        Response(t, lp, f)
                        for t, lp, f in zip(got.token_ids, got.logprobs, got.finished, strict=True)
                    ]
        finally:
            self.lpm.train(was_training)
            reshard(self.lpm)
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def sync_weights(self, model) -> None:
        """Nothing to copy: the engine samples with the policy's own shards."""


def dummy_video(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest frame group the vision tower takes (1 x merge x merge patches) as
    (pixel_values, grid_thw): what a rank with no video encodes to stay in step."""
    vc = base_model(model).config.vision_config
    merge = int(vc.spatial_merge_size)
    dim = int(vc.in_channels) * int(vc.temporal_patch_size) * int(vc.patch_size) ** 2
    return torch.zeros((merge * merge, dim)), torch.tensor([[1, merge, merge]])
