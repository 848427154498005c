"""The GRPO loop on the tiny model: cached embeddings, rollout/trainer agreement, learning,
exact resume, vision-call counts, offline cache checks, bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from training.grpo.embed_cache import EmbedCacheError, EmbeddingCache, build_cache
from training.grpo.logprobs import Rollout, rows_logprobs
from training.grpo.rollout import HFRolloutEngine, Response, RolloutPrompt, SamplingSettings
from training.grpo.trainer import GRPOTrainer
from training.grpo.video_cache import VideoEmbedder, video_key
from training.prompts import encode_example
from training.records import load_records
from training.video_inputs import VideoSampling, VisionSpec

from .fixtures.grpo import SYSTEM, grpo_config

REWARD = "tests.fixtures.grpo:bare_choice_reward"


def _embedders(model, model_dir, *modes):
    spec = VisionSpec.from_model_dir(model_dir)
    return [VideoEmbedder(model, m, VideoSampling(num_frames=4), spec, trainable_vision=False)
            for m in modes]


def _history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_cached_embedding_forward_equals_pixel_forward(tiny_model, tiny_model_dir, colour_task):
    model, tok = tiny_model
    recs = load_records(colour_task).records[:4]  # two frame sizes: prompts of two lengths
    online, pixels = _embedders(model, tiny_model_dir, "online", "pixels")
    lps = []
    for emb in (online, pixels):
        videos, failures = emb.prepare(recs)
        assert not failures
        # a response may hold the <|video_pad|> id as an ordinary sampled token
        pad = model.config.video_token_id
        rows = [Rollout(r, videos[r.id], encode_example(tok, r, videos[r.id].num_tokens, system_prompt=SYSTEM),
                        Response([*range(40, 40 + n), pad][-n:], [], True), i)
                for i, r in enumerate(recs) for n in (2, 5)]
        lp, _ = rows_logprobs(model, emb.row_embeds, rows, tok.pad_token_id, 3, with_pixels=False,
                              temperature=1.0, chunk_size=4)
        lps.append(lp)
    assert all(torch.equal(a, b) for a, b in zip(*lps, strict=True))  # bitwise, fp32
    assert online.calls == 4 and online.calls_per_video == 1.0  # once per video
    assert pixels.calls == 8  # every row re-encoded: the reference's cost


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_equal_trainer_logprobs(tiny_model, tiny_model_dir, colour_task, temperature):
    model, tok = tiny_model
    recs = load_records(colour_task).records[:3]
    (emb,) = _embedders(model, tiny_model_dir, "online")
    videos, _ = emb.prepare(recs)
    prompts = [encode_example(tok, r, videos[r.id].num_tokens, system_prompt=SYSTEM) for r in recs]
    stop = [tok.convert_tokens_to_ids("<|im_end|>")]
    engine = HFRolloutEngine(model, tok, stop, rows_per_call=4)  # 9 rows in 3 left-padded calls
    out = engine.generate([RolloutPrompt(p, videos[r.id], videos[r.id].embeds) for p, r in zip(prompts, recs, strict=True)],
                          SamplingSettings(n=3, max_new_tokens=6, temperature=temperature, seed=1))
    rows = [Rollout(r, videos[r.id], p, resp, i) for i, (r, p, g) in enumerate(zip(recs, prompts, out, strict=True))
            for resp in g]
    assert len({len(p.input_ids) for p in prompts}) == 2  # padding in every batch
    trainer, _ = rows_logprobs(model, emb.row_embeds, rows, tok.pad_token_id, 4, with_pixels=False,
                               temperature=temperature, chunk_size=5)
    diff = max(float((torch.tensor(r.response.logprobs) - t).abs().max()) for r, t in zip(rows, trainer, strict=True))
    assert diff <= 1e-5
    assert len({tuple(r.response.token_ids) for r in rows}) > 1  # sampling, not one repeated answer


@pytest.mark.slow
def test_learning_signal_on_the_colour_task(answer_ab_model_dir, colour_task, tmp_path):
    """Seeded: the policy starts at chance (A or B regardless of colour) and must learn to read
    the colour from the cached video embeddings."""
    cfg = grpo_config(steps=20, **{"rollout.prompts_per_step": 4, "rollout.group_size": 4,
                                   "rollout.max_new_tokens": 1, "optim.lr": 0.0004,
                                   "reward.weights": {REWARD: 1.0}})
    summary = GRPOTrainer(cfg, answer_ab_model_dir, colour_task, tmp_path).train()
    rewards = [h["reward/total"] for h in _history(tmp_path)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.7 and last >= first + 0.2, rewards
    assert summary["reward_last"] == pytest.approx(last)


def test_resume_is_exact_and_never_duplicates_lines(tiny_model_dir, colour_task, tmp_path):
    over = {"save_every": 1, "keep_checkpoints": 0, "optim.lr": 0.001}
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    GRPOTrainer(grpo_config(steps=3, **over), tiny_model_dir, colour_task, straight).train()
    # A run that wrote step 2's metrics and died before its checkpoint was complete:
    GRPOTrainer(grpo_config(steps=2, **over), tiny_model_dir, colour_task, broken).train()
    (broken / "checkpoints" / "step-00000002" / "COMPLETE").unlink()
    resumed = GRPOTrainer(grpo_config(steps=3, **over), tiny_model_dir, colour_task, broken)
    assert resumed.step == 1
    resumed.train()
    a, b = (load_file(p / "model" / "model.safetensors") for p in (straight, broken))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    init = load_file(tiny_model_dir / "model.safetensors")  # frozen vision stays as it was
    assert all(torch.equal(init[k], a[k]) for k in a if "visual" in k)
    assert any(not torch.equal(init[k], a[k]) for k in a if "visual" not in k)
    ha, hb = _history(straight), _history(broken)
    assert [h["step"] for h in hb] == [1, 2, 3]
    for key in ("reward/total", "actor/kl", "actor/pg_loss", "actor/grad_norm", "response/length_mean"):
        assert [h[key] for h in ha] == [h[key] for h in hb], key
    samples = [json.loads(s)["step"] for s in (broken / "samples.jsonl").read_text().splitlines()]
    assert samples == sorted(samples) and samples.count(2) == 2  # 2 prompts, step 2 once
    assert ha[0]["actor/kl"] == 0.0 and ha[-1]["actor/kl"] > 0  # the policy moved off the reference


def test_vision_calls_per_mode_and_offline_cache_equivalence(tiny_model_dir, colour_task, tmp_path):
    from training.model_io import load_model

    cache = tmp_path / "cache"
    recs = load_records(colour_task).records
    summary = build_cache(load_model(tiny_model_dir), recs, cache, VideoSampling(num_frames=4),
                          VisionSpec.from_model_dir(tiny_model_dir), progress=False)
    assert (summary["written"], summary["failed"], summary["text_records"]) == (8, {}, 0)
    # text-only records (a mixed video + text RL set) are skipped, not counted as failures
    from dataclasses import replace

    text = [replace(r, id=f"t{i}", modality="text", video_id="", video_path="") for i, r in enumerate(recs[:3])]
    mixed = build_cache(load_model(tiny_model_dir), recs + text, tmp_path / "mixed", VideoSampling(num_frames=4),
                        VisionSpec.from_model_dir(tiny_model_dir), progress=False)  # fmt: skip
    assert (mixed["written"], mixed["failed"], mixed["text_records"]) == (8, {}, 3)
    assert build_cache(load_model(tiny_model_dir), recs, cache, VideoSampling(num_frames=4),
                       VisionSpec.from_model_dir(tiny_model_dir), progress=False)["kept"] == 8
    results = {}
    for mode in ("online", "offline", "pixels"):
        out = tmp_path / mode
        cfg = grpo_config(steps=1, **{"video.embeddings": mode, "video.embed_cache": str(cache),
                                      "optim.lr": 0.001, "ref_offload": mode == "offline"})
        GRPOTrainer(cfg, tiny_model_dir, colour_task, out).train()
        results[mode] = (_history(out)[0], load_file(out / "model" / "model.safetensors"))
    g = 3  # rollout.group_size; each prompt has its own video
    assert results["online"][0]["vision_calls_per_video"] == 1.0
    assert results["offline"][0]["vision_calls_per_video"] == 0.0
    # pixels: rollout once per prompt, then reference and update passes per row (the on-policy
    # default skips the old-policy pass: test_grpo_fast_paths)
    assert results["pixels"][0]["vision_calls_per_video"] == 1 + 2 * g
    (m_on, w_on), (m_off, w_off) = results["online"], results["offline"]
    assert m_on["reward/total"] == m_off["reward/total"]
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)  # same embeddings, same update


def test_trainable_vision_gets_gradients_and_is_counted(answer_ab_model_dir, colour_task, tmp_path):
    out = tmp_path / "tv"
    cfg = grpo_config(steps=1, **{"video.freeze_vision": False, "optim.lr": 0.01, "optim.weight_decay": 0.0,
                                  "reward.weights": {REWARD: 1.0}, "rollout.max_new_tokens": 1,
                                  "rollout.group_size": 4})
    GRPOTrainer(cfg, answer_ab_model_dir, colour_task, out).train()
    (m,) = _history(out)
    # once for the rollout, once by the reference's own tower, once more with gradients for the
    # update (one micro-batch holds all rows)
    assert m["vision_calls_per_video"] == 3.0 and m["advantage/abs_mean"] > 0
    before, after = (load_file(p / "model.safetensors") for p in (answer_ab_model_dir, out / "model"))
    vision = [k for k in before if ".visual." in k or k.startswith("visual.")]
    assert vision and any(not torch.equal(before[k], after[k]) for k in vision)


def test_offline_cache_refuses_mismatches(tiny_model_dir, colour_task, tmp_path):
    from training.model_io import load_model
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    model = load_model(tiny_model_dir)
    sampling, spec = VideoSampling(num_frames=4), VisionSpec.from_model_dir(tiny_model_dir)
    recs = load_records(colour_task).records[:2]
    build_cache(model, recs, tmp_path / "c", sampling, spec, progress=False)
    other = load_model(write_tiny_model_folder(tmp_path / "other", TinyModelSpec(seed=1)))
    with pytest.raises(EmbedCacheError, match="another vision tower"):
        EmbeddingCache(tmp_path / "c", other, sampling, spec)
    cache = EmbeddingCache(tmp_path / "c", model, sampling, spec)
    # another video's embedding under this video's key: its shape and digest give it away
    key0, key1 = (video_key(r, sampling, spec) for r in recs)
    shutil.copy(tmp_path / "c" / "emb" / f"{key0}.safetensors", tmp_path / "c" / "emb" / f"{key1}.safetensors")
    with pytest.raises(EmbedCacheError, match="video v1: cached embedding .* does not match: digest"):
        cache.get(key1, recs[1])
    # a changed sampling (or file, or clip) has no entry at all
    with pytest.raises(EmbedCacheError, match="no cached embedding"):
        cache.get(video_key(recs[0], VideoSampling(num_frames=6), spec), recs[0])


def test_bad_video_and_failing_judge_are_recorded_not_fatal(tiny_model_dir, colour_task, tmp_path, openai_server):
    data = tmp_path / "data"
    shutil.copytree(colour_task, data)
    (data / "broken.mp4").write_bytes(b"not a video")
    rows = [json.loads(line) for line in (data / "rl.jsonl").read_text().splitlines()][:2]
    rows.append({**rows[0], "id": "bad", "video_id": "broken", "video_path": "broken.mp4"})
    rows.append({**rows[1], "id": "open", "answer_type": "open_ended", "options": [], "answer": "blue"})
    (data / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    openai_server.fault_fn = lambda body, n: "500"
    cfg = grpo_config(steps=1, **{"rollout.prompts_per_step": 3, "data.shuffle": False,
                                  "reward.judge.base_url": openai_server.url,
                                  "reward.judge.model": "judge", "reward.judge.max_attempts": 2,
                                  "reward.judge.backoff_s": 0.01,
                                  "reward.weights": {"tests.fixtures.grpo:tagged_accuracy": 1.0}})
    GRPOTrainer(cfg, tiny_model_dir, data, tmp_path / "out").train()
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert any(e["record"] == "bad" and "broken" in e["error"] for e in errors)
    judged = [e for e in errors if e["record"] == "open"]
    assert judged and "judge failed after 2 attempt" in judged[0]["error"][0]
    (m,) = _history(tmp_path / "out")
    assert m["rows"] == 9 and m["reward/errors"] == 3  # the open-ended question's 3 rollouts
    assert m["judge/errors"] == 3 and m["judge/requests"] == 3 and m["judge/calls"] == 2 * m["judge/unique"]


def test_dynamic_sampling_keeps_groups_with_a_signal(answer_ab_model_dir, colour_task, tmp_path):
    cfg = grpo_config(steps=1, **{"algorithm.dynamic_sampling": True, "rollout.group_size": 4,
                                  "rollout.max_new_tokens": 1, "algorithm.dynamic_sampling_metric": "total",
                                  "reward.weights": {REWARD: 1.0}})
    GRPOTrainer(cfg, answer_ab_model_dir, colour_task, tmp_path / "ds").train()
    (m,) = _history(tmp_path / "ds")
    assert m["dynamic_sampling/kept_groups"] == 2 and m["rows"] == 8
    assert m["reward/std"] > 0 and m["advantage/abs_mean"] > 0
    # a task nothing can be learnt from: every group flat, the step is skipped, not looped forever
    flat = grpo_config(steps=1, **{"algorithm.dynamic_sampling": True,
                                   "algorithm.dynamic_sampling_max_rounds": 2})
    GRPOTrainer(flat, answer_ab_model_dir, colour_task, tmp_path / "flat").train()
    (m,) = _history(tmp_path / "flat")
    assert m["skipped"] == 1.0 and m["dynamic_sampling/rounds"] == 2


def test_config_checks():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo_config(**{"rollout.group_size": 1}).check()
    with pytest.raises(ValueError, match="needs video.embed_cache"):
        grpo_config(**{"video.embeddings": "offline"}).check()
    with pytest.raises(ValueError, match="loss_agg"):
        grpo_config(**{"algorithm.loss_agg": "mean"}).check()


def test_save_every_zero_checkpoints_only_at_the_end(tiny_model_dir, colour_task, tmp_path):
    from training.checkpoint import list_checkpoints
    from training.grpo.trainer import checkpoint_due

    assert [s for s in range(1, 6) if checkpoint_due(s, 0, 5)] == [5]
    assert [s for s in range(1, 6) if checkpoint_due(s, 2, 5)] == [2, 4, 5]
    GRPOTrainer(grpo_config(steps=2, save_every=0, keep_checkpoints=0), tiny_model_dir, colour_task, tmp_path).train()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]
    assert [h["step"] for h in _history(tmp_path)] == [1, 2]
    with pytest.raises(ValueError, match="save_every must be >= 0"):
        grpo_config(save_every=-1).check()
