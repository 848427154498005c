"""recipes/: every YAML config loads into its stage's config with no unknown key, passes the
stage's checks, and describes a layout that can run on 8 GPUs with the real model's shapes
(issue 16 point 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.config import load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# Real Qwen2.5-VL text shapes (config.json of the released models): query / KV heads.
HEADS = {"qwen2.5-vl-3b": (16, 2), "qwen2.5-vl-7b": (28, 4)}
TOKENS_PER_FRAME_AT_100352 = 64  # 128x28x28 pixels -> 16x16 patches -> 2x2 merge, 2 frames/temporal patch


def _recipes(kind: str) -> list[Path]:
    return sorted(RECIPES.glob(f"*/{kind}*.yaml"))


def test_every_size_has_every_stage():
    for size in HEADS:
        names = sorted(p.name for p in (RECIPES / size).glob("*.yaml"))
        assert names == ["eval.yaml", "grpo-256f.yaml", "grpo-512f.yaml", "grpo-64f.yaml", "sft.yaml"], names


@pytest.mark.parametrize("path", _recipes("grpo"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_grpo_recipe_loads_and_its_layout_is_possible(path):
    from training.grpo.config import GRPOConfig
    from training.grpo.run import check_launch
    from training.sequence_parallel.layout import plan_heads

    assert "steps" not in yaml.safe_load(path.read_text())  # the current spellings only
    cfg = check_launch(load_config(GRPOConfig, path), environ={})
    frames = int(path.stem.split("-")[1].rstrip("f"))
    assert cfg.video.num_frames == frames and cfg.multi_process and cfg.wants_gpu()
    heads, kv = HEADS[path.parent.name]
    plan = plan_heads(heads, kv, cfg.parallel.sp_size)  # Ulysses can split this model's heads
    assert sum(len(plan.runs(r)) > 0 for r in range(cfg.parallel.sp_size)) == cfg.parallel.sp_size
    dp = cfg.num_workers // cfg.parallel.sp_size
    assert cfg.rollout.prompts_per_step % dp == 0
    # Longer videos get more sequence parallelism: video tokens per SP rank stay bounded.
    per_rank = frames * TOKENS_PER_FRAME_AT_100352 / cfg.parallel.sp_size
    assert cfg.video.max_pixels == 100352 and per_rank <= 8192, per_rank


@pytest.mark.parametrize("path", _recipes("sft"), ids=lambda p: p.parent.name)
def test_sft_recipe_loads_and_checks(path):
    from training.sft.config import SFTConfig

    cfg = load_config(SFTConfig, path).check()
    assert cfg.num_workers == 8 and cfg.use_gpu is True and cfg.save_every > 0
    assert cfg.video.num_frames * TOKENS_PER_FRAME_AT_100352 + 1024 <= cfg.max_seq_len


@pytest.mark.parametrize("path", _recipes("eval"), ids=lambda p: p.parent.name)
def test_eval_recipe_loads_and_names_registered_benchmarks(path):
    from eval.config import EvalConfig
    from eval.task import list_tasks

    cfg = load_config(EvalConfig, path, values={"model": "M", "data": "D", "out": "O"})
    assert set(cfg.benchmarks) <= {t.name for t in list_tasks()}
    assert cfg.frames * TOKENS_PER_FRAME_AT_100352 + 4096 <= cfg.vllm_max_model_len


def test_cluster_example_compiles(tmp_path):
    from pipelines.cluster import ClusterConfig
    from pipelines.submit import compile_pipeline

    cfg = load_config(ClusterConfig, RECIPES / "cluster-example.yaml")
    path = compile_pipeline(tmp_path / "p.yaml", cfg)
    text = path.read_text()
    assert "longrl-data" in text and "NVIDIA-H100-80GB-HBM3" in text


def test_runbook_names_existing_recipes_and_docs():
    import re

    root = RECIPES.parent
    text = (root / "docs" / "cluster.md").read_text()
    named = set(re.findall(r"recipes/[\w.{},/-]+\.yaml", text))
    assert len(named) >= 5
    for name in named:
        for expanded in ([name.replace("{3b,7b}", s) for s in ("3b", "7b")] if "{" in name else [name]):
            assert (root / expanded).is_file(), expanded
    for link in re.findall(r"\]\(([\w.]+\.md)(?:#[\w-]+)?\)", text):
        assert (root / "docs" / link).is_file(), link
    assert "ESTIMATES, not measured" in text  # memory figures are labelled as estimates
