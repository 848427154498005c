"""Multi-process GRPO (MR-SP stage 2) on CPU with gloo: the dp x sp trainer completes, writes
checkpoints, and resumes - through Ray Train (SP=2) and through torch.multiprocessing (DP=2,
where the resumed run is compared number for number with the uninterrupted one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from common.config import load_config
from training.checkpoint import list_checkpoints
from training.grpo.config import GRPOConfig
from training.sequence_parallel.local_group import run_local_group
from training.sequence_parallel.mesh import ParallelConfig, full_state_dict

OVERRIDES = ["save_every=1", "keep_checkpoints=3", "rollout.prompts_per_step=2", "rollout.group_size=2",
             "rollout.max_new_tokens=6", "progress=false", "plots=false", "video.sampling.num_frames=4",
             "algorithm.micro_batch_rows=2", "algorithm.logprob_rows=4", "optim.lr=0.001"]
REWARD = {"reward": {"weights": {"tests.fixtures.sequence_parallel:vowel_share": 1.0}}}


def _cfg(steps: int, kl: bool = True) -> GRPOConfig:
    extra = [] if kl else ["algorithm.kl_coef=0"]  # no reference model: a lighter Ray run
    return load_config(GRPOConfig, None, [*OVERRIDES, f"steps={steps}", *extra], values=REWARD)


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _run_dp2(rank: int, world: int, out, steps: int, model_dir, data_dir):
    from training.sequence_parallel.grpo_trainer import ParallelGRPOTrainer

    trainer = ParallelGRPOTrainer(_cfg(steps), model_dir, data_dir, out, ParallelConfig(sp_size=1))
    summary = trainer.train()
    return summary, full_state_dict(trainer.model)


@pytest.mark.slow
def test_dp2_grpo_checkpoints_and_resumes_exactly(tmp_path, tiny_model_dir, synth_dir):
    full, part = tmp_path / "full", tmp_path / "part"
    summary, weights = run_local_group(_run_dp2, 2, full, 3, tiny_model_dir, synth_dir)[0]
    assert summary["steps"] == 3 and summary["parallel"] == {"dp": 2, "sp": 1}
    assert [p.name for p in list_checkpoints(full)] == ["step-00000001", "step-00000002", "step-00000003"]
    # a run stopped after step 2: its output folder as it was then
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-00000002", part / "checkpoints" / "step-00000002")
    (part / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in _metrics(full)[:2]))
    resumed, resumed_weights = run_local_group(_run_dp2, 2, part, 3, tiny_model_dir, synth_dir)[0]
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 3
    got, expected = _metrics(part), _metrics(full)
    assert [m["step"] for m in got] == [1, 2, 3]
    timing = ("time/", "throughput/tokens_per_s")
    same = {k: v for k, v in got[2].items() if not k.startswith(timing)}
    assert same == {k: v for k, v in expected[2].items() if not k.startswith(timing)}  # every other number
    assert all(torch.equal(resumed_weights[k], weights[k]) for k in weights)
    # the run learned something: real updates, and the trainer scored what the rollout sampled
    initial = full_state_dict_of(tiny_model_dir)
    assert any(not torch.equal(weights[k], initial[k]) for k in initial)
    assert all(m["actor/grad_norm"] > 0 for m in expected)
    assert all(m["rollout/logprob_diff_max"] <= 1e-5 for m in expected)


def full_state_dict_of(model_dir):
    from training.model_io import load_model

    return {k: v.detach() for k, v in load_model(model_dir).state_dict().items()}


def _ray_run_then_resume(payload: dict) -> None:
    """Each Ray Train worker: a 1-step run, then a new trainer on the same folder to 2 steps
    (resuming from the step-1 checkpoint: weights, optimizer shards, RNG, sampler from disk).
    Two trainer lifetimes in one Ray run: a second Ray run would only add Ray's start-up."""
    from common.config import to_dict
    from training.sequence_parallel.run import grpo_worker

    grpo_worker({**payload, "cfg": to_dict(_cfg(1, kl=False))})
    first = json.loads((Path(payload["out_dir"]) / "summary.json").read_text())
    assert first["steps"] == 1 and first["resumed_from"] == 0
    grpo_worker({**payload, "cfg": to_dict(_cfg(2, kl=False))})


@pytest.mark.slow
def test_sp2_grpo_through_ray_train_checkpoints_and_resumes(tmp_path, tiny_model_dir, synth_dir):
    from training.distributed import launch
    from training.sequence_parallel.run import worker_payload

    out = tmp_path / "ray_sp2"
    payload = worker_payload(_cfg(2, kl=False), ParallelConfig(sp_size=2), tiny_model_dir, synth_dir, out)
    launch(_ray_run_then_resume, payload, num_workers=2, launcher="ray", storage_dir=tmp_path / "ray", name="grpo")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == 1 and summary["steps"] == 2 and summary["parallel"] == {"dp": 1, "sp": 2}
    assert [p.name for p in list_checkpoints(out)] == ["step-00000001", "step-00000002"]
    metrics = _metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    # the SP=2 trainer scores exactly what the (unsplit) rollout sampled, and really updates
    assert all(m["rollout/logprob_diff_max"] <= 1e-5 for m in metrics)
    assert all(m["actor/grad_norm"] > 0 for m in metrics)
    from training.model_io import load_model

    final = load_model(out / "model")  # a plain Hugging Face folder
    assert final.config.text_config.num_hidden_layers == 2
