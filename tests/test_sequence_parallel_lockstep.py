"""GRPO without a full policy copy per rank (issue 12.1): the hf rollout and the vision tower run
through the FSDP2-sharded policy in lockstep (training/sequence_parallel/lockstep.py). A GRPO step
on that path equals the step with the unsharded replica (same seeds: the same rollout tokens,
log-probs <= 1e-5, the same update) and the single process, at 2 ranks whose prompts and
responses differ in length and count; and each rank holds 1/world of the parameters, not a
full copy more.

The regime: a Qwen2.5-VL with 3 query heads and 1 KV head (SP=2 divides neither), several
videos of two frame sizes at 16 s per temporal patch beside text-only records (so one rank can
have no video to encode while another has), and a tiny model whose end-of-turn token is likely
enough (~10 % per step) that rows - and ranks - finish at different steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.config import load_config
from data_gen.schema import QARecord
from training.grpo.config import GRPOConfig
from training.sequence_parallel.local_group import run_local_group
from training.sequence_parallel.mesh import ParallelConfig

from .test_sequence_parallel_grpo_equiv import BASE, REWARD, compare, parallel_step, single_step

LONG = [
    *BASE,
    "rollout.max_new_tokens=12",
    "video.sampling.num_frames=4",
    "data.shuffle=true",
    "rollout.generate_rows=3",
]  # one prompt (G=3 rows) per generate call: ranks differ in calls


def stop_biased(path, k: float = 4.0) -> None:
    """Point the <|im_end|> row of the LM head along the mean final hidden state, so its logit is
    ~k on average (p ~ 0.1 per step at this vocabulary): responses end at varied lengths."""
    from training.model_io import load_model, load_tokenizer

    model, tok = load_model(path), load_tokenizer(path)
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    ids = torch.randint(0, stop, (8, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = model.model.language_model(
            inputs_embeds=model.get_input_embeddings()(ids)
        ).last_hidden_state
        mean = h.reshape(-1, h.shape[-1]).mean(0)
        model.get_output_embeddings().weight[stop] = k * mean / mean.dot(mean)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def long_task(tmp_path_factory):
    from tests.fixtures.model_kit import write_video
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    root = tmp_path_factory.mktemp("lockstep")
    model = write_tiny_model_folder(
        root / "m", TinyModelSpec(hidden_size=48, num_heads=3, num_kv_heads=1, seed=4)
    )
    stop_biased(model)
    data = root / "data"
    data.mkdir()
    rows = []
    for i in range(8):
        if i % 2:  # text-only records beside the video ones
            rows.append(
                QARecord(
                    id=f"t{i}",
                    video_id="",
                    video_path="",
                    question=f"What is {i} + 2?",
                    answer=str(i + 2),
                    answer_type="numeric",
                    category="Math",
                    modality="text",
                )
            )
            continue
        w = 56 if i % 4 else 84
        f = np.random.default_rng(i).integers(0, 255, (8, 56, w, 3), dtype=np.uint8)
        write_video(
            data / f"v{i}.mp4", f, fps=0.25
        )  # 32 s: 4 sampled frames, 16 s per temporal patch
        rows.append(
            QARecord(
                id=f"q{i}",
                video_id=f"v{i}",
                video_path=f"v{i}.mp4",
                question="Which colour?",
                options=["red", "blue"],
                answer="A",
                answer_type="multiple_choice",
                category="Spatial",
            )
        )
    (data / "rl.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    return model, data


def _merged(ranks: list[dict]) -> dict:
    """One run's result as `compare` takes a reference: every rank's rollouts and update
    log-probs; metrics (reduced over replicas), weights and gradients are the same on all."""
    out = {**ranks[0], "rollouts": {}, "update_logprobs": {}}
    for r in ranks:
        out["rollouts"].update(r["rollouts"])
        out["update_logprobs"].update(r["update_logprobs"])
    return out


def _total_parameters(model_dir) -> int:
    from training.model_io import load_model

    return sum(p.numel() for p in load_model(model_dir).parameters())


@pytest.mark.parametrize("sp, prompts", [(1, 4), (2, 3)])
def test_sharded_lockstep_step_equals_the_replica(long_task, tmp_path, sp, prompts):
    model, data = long_task
    cfg = load_config(
        GRPOConfig, None, [*LONG, f"rollout.prompts_per_step={prompts}"], values=REWARD
    )
    runs = {}
    for replica in (True, False):  # the rank-seeded streams of a real run: no per-prompt seeds
        par = ParallelConfig(sp_size=sp, rollout_replica=replica)
        runs[replica] = run_local_group(
            parallel_step, 2, cfg, par, model, data, tmp_path / f"r{replica}", False
        )
    worst = compare(_merged(runs[True]), runs[False])
    assert worst["rollout"] <= 1e-5 and worst["weights"] <= 1e-5
    # the regime: prompts and responses of different lengths, ranks with different work
    rollouts = runs[False][0]["rollouts"]
    assert (
        len({len(k[0]) for k in rollouts}) > 1 and len({len(t) for t, _ in rollouts.values()}) > 2
    )
    # ranks waited for each other: decode steps after a rank's rows ended, and at sp2 (3 prompts,
    # one per call: 2 and 1 per rank) a generate call on a dummy row
    stats = [r["lockstep"] for r in runs[False]]
    assert sum(st["idle_steps"] for st in stats) > 0
    if sp == 2:
        assert sorted(st["dummy_calls"] for st in stats) == [0, 1]
    if sp == 1:  # dp2: the replicas hold different prompts, and one may have no video to encode
        per_rank = [{len(t) for t, _ in r["rollouts"].values()} for r in runs[False]]
        assert per_rank[0] != per_rank[1]
    # no full copy: each rank holds half of policy + reference; the replica path a full copy more
    total = _total_parameters(model)
    sharded, with_replica = runs[False][0]["resident"], runs[True][0]["resident"]
    assert (
        abs(sharded - total) <= total // 100
    )  # 2 models x 1/2 each (FSDP pads shards by a few rows)
    assert with_replica - sharded == total
    # (the sharded step against one process: the trainable-tower and Qwen3-VL tests below run
    # it on this data, the text-model tests in test_sequence_parallel_grpo_equiv.py)


@pytest.mark.parametrize("sp, prompts", [(1, 4), (2, 2)])
def test_trainable_vision_tower_on_two_ranks_equals_one_process(long_task, tmp_path, sp, prompts):
    """Issue 12.7: video.freeze_vision=false on dp2 / sp2. The update passes re-encode with
    gradients through the sharded tower, every rank in step (a rank whose micro-batch has no
    video encodes a dummy frame group tied into its loss at weight 0); the reference encodes with
    its own frozen tower. Equal to one process: rollouts, loss, gradients and weights, the
    vision tower's included (non-zero)."""
    model, data = long_task
    # seed 11 draws (video, text) for replica 0 and (video, video) for replica 1 at dp2: the
    # last micro-batch of replica 0 holds no video while replica 1's does
    over = [*LONG, f"rollout.prompts_per_step={prompts}", "video.freeze_vision=false", "seed=11"]
    cfg = load_config(GRPOConfig, None, over, values=REWARD)
    ref = single_step(cfg, model, data, tmp_path / "one")
    ranks = run_local_group(
        parallel_step, 2, cfg, ParallelConfig(sp_size=sp), model, data, tmp_path / "two"
    )
    compare(ref, ranks)
    vision = [k for k in ref["grads"] if k.startswith("model.visual.")]
    assert vision and all(float(ref["grads"][k].abs().max()) > 0 for k in vision)
    from training.model_io import load_model

    init = load_model(model).state_dict()
    for r in ranks:
        assert all(float(r["grads"][k].abs().max()) > 0 for k in vision)
        assert max(float((r["weights"][k] - init[k]).abs().max()) for k in vision) > 1e-4  # trained
    if sp == 1:  # a micro-batch without video on one replica while the other encodes
        assert sum(r["dummy_grad_encodes"] for r in ranks) > 0


def test_qwen3_vl_grpo_step_on_sp2_equals_one_process(long_task, tmp_path_factory, tmp_path):
    """Issues 13 + 12.1: Qwen3-VL on sp2 - the step's videos encoded through the sharded tower,
    split by frame groups with their DeepStack features (vision.py), timestamped frame groups in
    the prompts - equals the one-process step."""
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    _, data = long_task
    spec = TinyModelSpec(arch="qwen3_vl", hidden_size=48, num_heads=3, num_kv_heads=1, seed=5)
    model = write_tiny_model_folder(tmp_path_factory.mktemp("q3vl"), spec)
    stop_biased(model)
    cfg = load_config(
        GRPOConfig, None, [*LONG, "rollout.prompts_per_step=2", "seed=11"], values=REWARD
    )
    ref = single_step(cfg, model, data, tmp_path / "one")
    ranks = run_local_group(
        parallel_step, 2, cfg, ParallelConfig(sp_size=2), model, data, tmp_path / "two"
    )
    compare(ref, ranks)
    assert all(r["vision_calls"] > 0 for r in ranks)


def _build_error(rank: int, world: int, cfg: GRPOConfig, parallel, model_dir, data_dir, out) -> str:
    """Build the dp x sp trainer; the EmbedCacheError it raises (every rank), or ""."""
    from training.grpo.embed_cache import EmbedCacheError
    from training.sequence_parallel.grpo_trainer import ParallelGRPOTrainer

    try:
        trainer = ParallelGRPOTrainer(cfg, model_dir, data_dir, out, parallel)
    except EmbedCacheError as exc:
        return str(exc)
    return "" if trainer.embedder.offline is not None else "no offline cache"


def test_offline_cache_without_a_replica_equals_the_replica(long_task, tmp_path):
    """Issue 12.1 (a): video.embeddings=offline on dp2 with no rollout replica (the default now).
    The cache's tower fingerprint is computed from the FSDP shards, one all-gathered tensor at a
    time: it accepts the cache `embed-cache build` wrote for this model and refuses one built
    for another model with the replica path's error; the step from the cache equals the
    replica path's (same tokens, update <= 1e-5), with no vision call and no replica."""
    from typer.testing import CliRunner

    from pipelines.cli import app
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    model, data = long_task
    other = write_tiny_model_folder(
        tmp_path / "other", TinyModelSpec(hidden_size=48, num_heads=3, num_kv_heads=1, seed=9)
    )
    for name, folder in (("cache", model), ("other_cache", other)):
        res = CliRunner().invoke(
            app,
            ["embed-cache", "build", "--model", str(folder), "--data", str(data), "--out",
             str(tmp_path / name), "video.sampling.num_frames=4", "progress=false"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
    over = [*LONG, "rollout.prompts_per_step=4", "video.embeddings=offline"]
    errors = {}
    for replica in (True, None):
        cfg = load_config(
            GRPOConfig,
            None,
            [*over, f"video.embed_cache={tmp_path / 'other_cache'}"],
            values=REWARD,
        )
        par = ParallelConfig(rollout_replica=replica)
        errors[replica] = run_local_group(
            _build_error, 2, cfg, par, model, data, tmp_path / f"e{replica}"
        )
    assert "was built with another vision tower" in errors[True][0]
    assert errors[None] == errors[True]  # the same fingerprints, the same message on every rank
    good = [*over, f"video.embed_cache={tmp_path / 'cache'}"]
    # bf16 compute: the replica is a bf16 copy; the fingerprint is the fp32 shards' on both
    # paths, so the cache is accepted (the replica's own bytes refused it before)
    for replica in (True, None):
        cfg = load_config(GRPOConfig, None, [*good, "precision=bf16"], values=REWARD)
        par = ParallelConfig(rollout_replica=replica)
        assert run_local_group(
            _build_error, 2, cfg, par, model, data, tmp_path / f"b{replica}"
        ) == ["", ""]
    cfg = load_config(GRPOConfig, None, good, values=REWARD)
    runs = {}
    for replica in (True, None):
        par = ParallelConfig(rollout_replica=replica)
        runs[replica] = run_local_group(
            parallel_step, 2, cfg, par, model, data, tmp_path / f"r{replica}", False
        )
    worst = compare(_merged(runs[True]), runs[None])
    assert worst["rollout"] <= 1e-5 and worst["weights"] <= 1e-5
    assert all(r["vision_calls"] == 0 for run in runs.values() for r in run)
    total = _total_parameters(model)
    assert runs[True][0]["resident"] - runs[None][0]["resident"] == total  # no replica by default
    from training.model_io import load_model, load_tokenizer

    # every replica's prompts hold videos (their embeddings read from the cache)
    pad = load_tokenizer(model).convert_tokens_to_ids("<|video_pad|>")
    assert all(any(pad in k[0] for k in r["rollouts"]) for r in runs[None])

    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["vision_fingerprint"] == _fingerprint_of_caches_built_before(load_model(model))


def _fingerprint_of_caches_built_before(model) -> str:
    """The tower fingerprint as caches written before the sharded computation were checked
    against (sha256 over the unsharded tower's sorted state dict), kept here as the reference:
    a cache already on disk must still load."""
    import hashlib

    from training.mm_batch import base_model

    h = hashlib.sha256()
    for name, p in sorted(base_model(model).visual.state_dict().items()):
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def video_only_vowels(completion: str, example) -> float:
    """vowel_share on video records, 0 on text-only ones: a text-only prompt's group is flat, so
    dynamic sampling drops it and that replica draws another round."""
    from tests.fixtures.sequence_parallel import vowel_share

    return vowel_share(completion, example) if example.has_video else 0.0


def _dynamic_step(rank: int, world: int, *args) -> dict:
    """parallel_step, also returning the groups this replica kept and its (idle) rounds."""
    from training.sequence_parallel.grpo_trainer import ParallelGRPOTrainer

    seen: dict = {}
    collect = ParallelGRPOTrainer.collect_groups

    def recording(self, step, timer):
        groups, extra = collect(self, step, timer)
        seen.update(kept=[g[0].record.id for g in groups], extra=extra)
        seen["idle_rounds"] = getattr(self, "idle_rounds", None)
        return groups, extra

    ParallelGRPOTrainer.collect_groups = recording  # this rank's process only (forked)
    return {**parallel_step(rank, world, *args), **seen}


@pytest.mark.parametrize("sp", [1, 2])
def test_dynamic_sampling_over_replicas_without_a_replica_equals_the_replica(
    long_task, tmp_path, sp
):
    """Issue 12.1 (b): dynamic sampling on dp2 with no rollout replica (the default now). The
    replicas need different numbers of rounds (text-only prompts get flat rewards and are
    dropped); a full replica runs idle rounds in step with the other. Equal to the replica
    path: the same groups kept, the same rollouts, update <= 1e-5; idle rounds counted."""
    model, data = long_task
    reward = {
        "reward": {"weights": {"tests.test_sequence_parallel_lockstep:video_only_vowels": 1.0}}
    }
    over = [*LONG, "rollout.prompts_per_step=2", "algorithm.dynamic_sampling=true",
            "algorithm.dynamic_sampling_metric=total", "algorithm.dynamic_sampling_max_rounds=4",
            "seed=0"]  # fmt: skip
    cfg = load_config(GRPOConfig, None, over, values=reward)
    runs = {}
    for replica in (True, None):  # dp2, and dp2 x sp2 (the SP ranks of a replica idle together)
        par = ParallelConfig(sp_size=sp, rollout_replica=replica)
        runs[replica] = run_local_group(
            _dynamic_step, 2 * sp, cfg, par, model, data, tmp_path / f"r{replica}", False
        )
    worst = compare(_merged(runs[True]), runs[None])
    assert worst["rollout"] <= 1e-5 and worst["weights"] <= 1e-5
    assert [r["kept"] for r in runs[None]] == [r["kept"] for r in runs[True]]
    # seed 0: replica 0 draws three text-only prompts before a video one (4 rounds, 3 groups
    # dropped), replica 1 keeps its first group and idles through 3 rounds
    rounds = [r["extra"]["dynamic_sampling/rounds"] for r in runs[None]]
    assert rounds == [r["extra"]["dynamic_sampling/rounds"] for r in runs[True]]
    assert rounds == [4.0] * sp + [1.0] * sp
    assert [r["idle_rounds"] for r in runs[None]] == [0] * sp + [3] * sp
    assert [r["extra"]["dynamic_sampling/idle_rounds"] for r in runs[None]] == [0.0] * sp + [
        3.0
    ] * sp
    # each idle round was a real generate call on a dummy row (the busy replica had one prompt
    # per round; at sp2 its second SP rank has none of it: a dummy call in each of its rounds)
    dummies = [r["lockstep"]["dummy_calls"] for r in runs[None]]
    assert dummies == ([0, 3] if sp == 1 else [0, 4, 3, 4])
    total = _total_parameters(model)
    assert runs[True][0]["resident"] - runs[None][0]["resident"] == total  # no replica by default
