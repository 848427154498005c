"""Qwen3-VL under sequence parallelism from pixels (issue 13): the vision tower split by frame
groups over the SP ranks carries each token's DeepStack features with it (the cached layout,
[tokens, (1 + levels) x hidden]), so log-probs, loss and every gradient - vision tower included -
equal one process within 1e-5; without DeepStack the log-probs differ by far more than that."""

from __future__ import annotations

import pytest
import torch

from training.grpo.logprobs import sequence_logprobs
from training.mm_batch import batch_video_embeds, rope_positions, video_positions

from .test_models_qwen3_vl import _sp_inputs, _sp_loss


def _pixel_rank(rank: int, world: int, tok):
    import torch.distributed as dist

    from training.sequence_parallel.mesh import ParallelConfig, build_log_prob_model, init_parallel

    model, batch, _ = _sp_inputs(tok)
    lpm = build_log_prob_model(
        model, init_parallel(sp_size=world), ParallelConfig(sp_size=world, fsdp=False)
    )
    lp, _ = lpm(
        batch.input_ids,
        batch.attention_mask,
        rope_positions(model, batch),
        batch.loss_mask,
        pixel_values_videos=batch.pixel_values_videos,
        video_grid_thw=batch.video_grid_thw,
        video_mask=video_positions(batch),
    )
    loss = _sp_loss(lp, batch.loss_mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for (
        g
    ) in grads.values():  # every SP rank holds the same loss: the mean is the one-process gradient
        dist.all_reduce(g)
        g /= world
    return lp.detach(), loss.detach(), grads


@pytest.mark.parametrize("world", [2, 4])
def test_pixel_path_with_deepstack_under_sp_equals_one_process(world):
    from training.sequence_parallel.local_group import run_local_group
    from training.tiny_model import train_tokenizer

    tok = train_tokenizer(1024)
    model, batch, embeds = _sp_inputs(tok)
    ref = sequence_logprobs(model, batch, batch_video_embeds(model, batch))[
        0
    ]  # one process, pixels, grads
    ref_loss = _sp_loss(ref, batch.loss_mask)
    ref_loss.backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("model.visual.") and g.abs().max() > 0 for n, g in ref_grads.items())
    sel = batch.loss_mask.bool()
    hidden = model.config.text_config.hidden_size
    with torch.no_grad():  # what the split path computed before: the merged embedding only
        plain = sequence_logprobs(model, batch, [e[:, :hidden] for e in embeds])[0]
    assert (plain[sel] - ref[sel]).abs().max() > 1e-4
    assert (
        int(batch.video_grid_thw[:, 0].sum()) >= world
    )  # every rank encodes frame groups of its own
    for lp, loss, grads in run_local_group(_pixel_rank, world, tok):
        assert (lp[sel] - ref[sel]).abs().max() <= 1e-5
        assert abs(float(loss - ref_loss.detach())) <= 1e-5
        assert grads.keys() == ref_grads.keys()
        assert max(float((grads[n] - g).abs().max()) for n, g in ref_grads.items()) <= 1e-5
