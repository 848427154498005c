"""`longrl train grpo` with workers: a 2-process dp x sp run from the command line (torchrun, gloo,
CPU), and combinations that cannot run refused before any process or model is started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app

from .fixtures.grpo import grpo_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_cli_trains_on_two_workers_with_sequence_parallelism(tiny_model_dir, colour_task, tmp_path):
    """torchrun starts two `longrl train grpo` processes (launcher=local, the path Ray Train workers
    take too): SP=2 splits every sequence over both; the output folder is the one-process layout."""
    out = tmp_path / "out"
    args = grpo_overrides(
        steps=2,
        plots=True,
        save_every=0,
        **{"num_workers": 2, "launcher": "local", "device": "cpu", "parallel.sp_size": 2},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "pipelines.cli",
        "train",
        "grpo",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(colour_task),
        "--out",
        str(out),
        *args,
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 workers: dp 1 x sp 2" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["parallel"] == {"dp": 1, "sp": 2}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    # the SP=2 trainer scores exactly what the rollout sampled; 2 prompts x G=3 rows per step
    assert all(m["rollout/logprob_diff_max"] <= 1e-5 and m["rows"] == 6 for m in metrics)
    # save_every=0: one checkpoint, at the end
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["num_workers"], saved["parallel"]["sp_size"]) == (2, 2)
    assert (out / "plots" / "reward.png").stat().st_size > 1000
    from training.model_io import load_model

    model = load_model(out / "model")  # a plain Hugging Face folder
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"


@pytest.mark.parametrize(
    "keys, message",
    [
        (
            ["num_workers=3", "parallel.sp_size=2"],
            "parallel.sp_size=2 does not divide num_workers=3",
        ),
        (
            ["num_workers=1", "parallel.sp_size=2"],
            "parallel.sp_size=2 does not divide num_workers=1",
        ),
        # a trainable tower trains through the sharded policy (tests/test_sequence_parallel_lockstep.py),
        # not with the frozen replica
        (
            [
                "num_workers=2",
                "parallel.sp_size=2",
                "video.freeze_vision=false",
                "parallel.rollout_replica=true",
            ],
            "video.freeze_vision=false needs video.embeddings=online and parallel.rollout_replica unset or false",
        ),
        (["num_workers=2", "video.embeddings=pixels"], "video.embeddings=pixels"),
        (
            ["num_workers=4", "parallel.sp_size=2", "rollout.prompts_per_step=3"],
            "prompts_per_step=3 does not divide over 2 data-parallel replicas",
        ),
        (["num_workers=2", "ref_offload=true"], "parallel.reference_cpu_offload"),
        (["num_workers=2", "launcher=local"], "torchrun --nproc-per-node 2"),
        (["launcher=slurm"], "launcher 'slurm' not in"),
    ],
)
def test_impossible_worker_settings_are_refused_before_anything_starts(tmp_path, keys, message):
    # The model folder does not exist: a check that ran after loading would fail differently.
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "grpo",
            "--model",
            str(tmp_path / "no-model"),
            "--data",
            str(tmp_path / "no-data"),
            "--out",
            str(out),
            *keys,
        ],
    )
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert not out.exists()  # no output folder, no Ray run, no worker


def test_torchrun_world_must_match_num_workers(monkeypatch):
    from training.grpo.config import GRPOConfig
    from training.grpo.run import check_launch

    with pytest.raises(ValueError, match="WORLD_SIZE=2 \\(torchrun\\) but num_workers=1"):
        check_launch(GRPOConfig(), {"WORLD_SIZE": "2"})
    cfg = GRPOConfig(num_workers=2, launcher="local")
    assert check_launch(cfg, {"WORLD_SIZE": "2"}) is cfg
    assert check_launch(
        GRPOConfig(num_workers=2), {}
    ).multi_process  # auto: Ray Train for 2 workers
    with pytest.raises(ValueError, match="under torchrun use launcher=local"):
        check_launch(GRPOConfig(num_workers=2), {"WORLD_SIZE": "2"})


def test_rayjob_entrypoint_is_the_cli_config(tmp_path):
    """The KubeRay step runs `longrl train grpo` with the worker keys: the CLI's config, and the
    CLI refuses what cannot start before anything does."""
    from common.config import load_config
    from components.train_launch import ray_entrypoint
    from training.grpo.config import GRPOConfig

    entry = ray_entrypoint("grpo", ["train", "grpo", "--model", "m", "--data", "d", "--out", "o",
                                    "parallel.sp_size=4", "steps=3", "num_workers=2"], 8)  # fmt: skip
    assert entry[:3] == ["longrl", "train", "grpo"]
    cfg = load_config(GRPOConfig, None, entry[9:])  # the worker keys come last and win
    assert (cfg.num_workers, cfg.launcher, cfg.device, cfg.parallel.sp_size, cfg.steps) == (
        8,
        "ray",
        "cuda",
        4,
        3,
    )
    assert cfg.wants_gpu()
    out = tmp_path / "o"
    bad = ray_entrypoint("grpo", ["train", "grpo", "--model", "m", "--data", "d", "--out", str(out),
                                  "parallel.sp_size=4"], 6)  # fmt: skip
    res = CliRunner().invoke(app, bad[1:])
    assert res.exit_code == 2, res.output
    assert "parallel.sp_size=4 does not divide num_workers=6" in " ".join(res.output.split()), (
        res.output
    )
    assert not out.exists()
