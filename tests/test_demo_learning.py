"""The demo as the learning run of issue 11.4: its parameters are the recipe bench_learning
measures and a held-out configuration (benchmark seed disjoint from the training videos', videos
equal to a training video left out); the evaluation's SFT role and the base -> SFT -> GRPO table
with its paired tests (real eval.compare on eval folders as `longrl eval` writes them); the
promotion gate against the base model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from components import eval_launch
from components.benchmark_launch import check_held_out, drop_seen_videos, synth_digests
from components.launch import StepError, tiny_model_preset, tiny_model_spec
from components.registry_launch import base_gate
from eval.compare import mcnemar_exact
from pipelines.run_local import DEMO_PARAMS

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "bench" / "bench_learning.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _synth_config(overrides: list[str], **values):
    from common.config import load_config
    from data_gen.synth import SynthConfig

    return load_config(SynthConfig, None, overrides, values=values)


def test_demo_params_are_the_measured_recipe_on_a_held_out_benchmark():
    from training.tiny_model import TinyModelSpec, preset_spec

    p, bench = DEMO_PARAMS, _bench()
    # Held out: the benchmark's seed is not the training videos', on the synth benchmark, all of it.
    assert p["video_source"] == "synth" and p["eval_benchmarks"] == "synth" and p["eval_limit"] == 0
    assert p["eval_synth_seed"] != p["synth_seed"] and p["gate_metric"] == "synth/score"
    check_held_out(p["video_source"], p["synth_seed"], p["eval_synth_seed"])  # does not raise
    with pytest.raises(StepError, match="eval_synth_seed 0 equals synth_seed"):
        check_held_out("synth", 0, 0)
    # The benchmark videos and the training videos are one rung of the ladder: bench_learning's.
    train = _synth_config(p["synth_overrides"], videos=p["synth_videos"], minutes=p["synth_minutes"],
                          fps=p["synth_fps"], seed=p["synth_seed"])  # fmt: skip
    held = _synth_config(p["synth_overrides"], videos=p["eval_synth_videos"], minutes=p["synth_minutes"],
                         fps=p["synth_fps"], seed=p["eval_synth_seed"])  # fmt: skip
    for key, value in bench.LADDER.items():
        assert getattr(train, key) == value == getattr(held, key), key
    assert held.videos * held.questions_per_video >= 200  # graded held-out questions
    assert "splits.eval=0" in p["data_overrides"]  # no eval split cut from the training videos
    # The model: the learn preset, bench_learning's MODEL; tiny:SEED:ARCH keeps working.
    assert tiny_model_preset(p["base_model"]) == "learn" and tiny_model_spec(p["base_model"]) == (1, "qwen2_5_vl")
    assert preset_spec("learn", 1) == TinyModelSpec(seed=1, **bench.MODEL)
    assert tiny_model_preset("tiny:0:qwen3_vl") == "" and tiny_model_spec("tiny:0:qwen3_vl") == (0, "qwen3_vl")
    assert tiny_model_preset("/models/tiny-learn") == "" and tiny_model_spec("/models/tiny-learn") is None
    with pytest.raises(StepError, match="unknown tiny preset 'huge'; known: tiny-test, tiny-learn"):
        tiny_model_spec("tiny-huge:0")
    # Training and evaluation: the recipe bench_learning runs.
    assert (p["frames"], p["sft_max_steps"], p["sft_lr"]) == (bench.FRAMES, 180, 1e-3)
    assert {"freeze_vision_tower=true", f"video.max_pixels={bench.MAX_PIXELS}"} <= set(p["sft_overrides"])
    grpo = {"optim.lr": p["grpo_lr"], "algorithm.kl_coef": p["grpo_kl_coef"]}
    grpo |= dict(o.split("=") for o in p["grpo_overrides"] if o.startswith("rollout.temperature"))
    assert {k: float(v) for k, v in grpo.items()} == {k: float(v) for k, v in
                                                      (o.split("=") for o in bench.GRPO_RECIPE)}  # fmt: skip
    assert (p["grpo_max_steps"], p["grpo_group_size"]) == (60, 6) and "rollout.prompts_per_step=8" in p["grpo_overrides"]


def test_seen_videos_leave_the_benchmark(tmp_path):
    from data_gen.synth import generate

    train = _synth_config(DEMO_PARAMS["synth_overrides"], videos=3, minutes=0.1, seed=5)
    generate(train, tmp_path / "train", progress=False)
    same = tmp_path / "bench"
    generate(train, same, progress=False)  # the same seed: every video is a training video
    digests = synth_digests(tmp_path / "train")
    assert len(digests) == 3 and synth_digests(tmp_path) == set()  # a folder of other videos: none
    assert drop_seen_videos(same, digests) == ["synth_0000", "synth_0001", "synth_0002"]
    assert json.loads((same / "manifest.json").read_text())["videos"] == []
    assert (same / "questions.jsonl").read_text() == ""
    other = tmp_path / "other"
    generate(_synth_config(DEMO_PARAMS["synth_overrides"], videos=3, minutes=0.1, seed=6), other, progress=False)
    kept = (other / "questions.jsonl").read_text()
    gone = drop_seen_videos(other, digests)
    assert len(json.loads((other / "manifest.json").read_text())["videos"]) == 3 - len(gone)
    if not gone:
        assert (other / "questions.jsonl").read_text() == kept


def _eval_folder(out: Path, correct: list[bool], kinds: list[str]) -> Path:
    """One benchmark's output as `longrl eval` writes it: predictions (with answer type and
    options) and metrics computed by eval.metrics."""
    from eval.metrics import compute_metrics

    options = ["red", "green", "blue", "yellow", "magenta", "cyan", "white"]
    preds = [{"qid": f"q{i}", "status": "answered", "correct": c, "cluster": f"v{i // 4}", "answer_type": k,
              "options": options if k == "multiple_choice" else []}
             for i, (c, k) in enumerate(zip(correct, kinds, strict=True))]  # fmt: skip
    d = out / "synth"
    d.mkdir(parents=True)
    (d / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (d / "metrics.json").write_text(json.dumps(compute_metrics(preds, n_boot=50)))
    return out


KINDS = ["multiple_choice", "open_ended"] * 8  # 16 questions, 4 videos
BASE = [False] * 16
SFT = [True, False, True, True, False, False, True, True, True, False, False, False, True, True, False, True]  # 9
GRPO = [True, True, True, True, False, True, True, True, True, True, True, False, True, True, True, True]  # 14


def _compare(tmp_path: Path, **roles: list[bool]) -> dict:
    outs = {role: _eval_folder(tmp_path / role, c, KINDS) for role, c in roles.items()}
    return eval_launch.compare(outs, ["synth"], max_error_rate=0.05)


def test_sft_role_gives_the_learning_table(tmp_path):
    res = _compare(tmp_path, candidate=GRPO, sft=SFT, base=BASE)
    # GRPO vs SFT: 5 wins, 0 losses; SFT vs base: 9 wins, 0 losses (exact McNemar).
    grpo_sft = res["paired"]["sft"]["synth"]
    assert (grpo_sft["wins"], grpo_sft["losses"]) == (5, 0) and grpo_sft["p_value"] == pytest.approx(mcnemar_exact(5, 0))
    info = res["learning"]["synth"]
    assert (info["sft_vs_base"]["wins"], info["sft_vs_base"]["losses"]) == (9, 0)
    assert info["sft_vs_base"]["p_value"] == pytest.approx(2 / 2**9)
    assert info["counts"]["sft"] == {"all": [9, 16], "multiple_choice": [5, 8], "open_ended": [4, 8],
                                     "mc_chance": pytest.approx(1 / 7)}  # fmt: skip
    assert info["counts"]["candidate"]["all"] == [14, 16] and info["counts"]["base"]["all"] == [0, 16]
    line = "learning: base 0.000 sft 0.562 grpo 0.875; sft-vs-base p=0.00391; grpo-vs-sft p=0.0625"
    assert info["line"] == line == eval_launch.learning_line(res)
    md = eval_launch.markdown(res)
    assert "| benchmark | candidate | sft | base | vs base | vs champion | vs sft |" in md
    assert "| synth | 87.5 | 56.2 | 0.0 | +87.5 (n=16, p=0.000122) | n/a | +31.2 (n=16, p=0.0625) |" in md
    assert "| model | overall | multiple choice (chance 14 %) | open-ended |" in md
    assert "| sft | 56.2 % (9/16) | 62.5 % (5/8) | 50.0 % (4/8) |" in md
    assert "- grpo vs sft: +31.2 pp" in md and "wins 5 losses 0 (n=16)" in md
    assert md.rstrip().endswith(line)
    # Without an SFT model (sft-only or grpo-only runs): the table as before, no learning line.
    plain = _compare(tmp_path / "plain", candidate=GRPO, base=BASE)
    assert "learning" not in plain and eval_launch.learning_line(plain) == ""
    assert "| benchmark | candidate | base | vs base | vs champion |" in eval_launch.markdown(plain)


def test_gate_holds_the_candidate_against_the_base_model(tmp_path):
    res = _compare(tmp_path, candidate=GRPO, base=BASE)
    assert base_gate(res, "synth/score", 0.0, max_p=0.05) == ""  # +87.5 pp, p = 1.2e-4
    assert "does not beat the base model's 0.875 by more than 0" in base_gate(
        _compare(tmp_path / "same", candidate=GRPO, base=GRPO), "synth/score", 0.0)
    # A gain too small to tell from noise: 1 win, 0 losses, p = 1.
    one = [True] + [False] * 15
    small = _compare(tmp_path / "small", candidate=one, base=BASE)
    assert base_gate(small, "synth/score", 0.0) == ""  # no significance asked (the cluster default)
    assert base_gate(small, "synth/score", 0.0, max_p=0.05) == (
        "synth/score gain over the base model (0.0625 vs 0) is not significant: p = 1 >= 0.05")
    assert base_gate(small, "other/score", 0.0, max_p=0.05) == ""  # nothing to hold it against


def test_only_the_sft_then_grpo_branch_evaluates_the_sft_model():
    from google.protobuf.json_format import MessageToDict

    from pipelines.long_video_reasoning import build_pipeline

    spec = MessageToDict(build_pipeline().pipeline_spec)
    evals = {task: sorted(t.get("inputs", {}).get("artifacts", {})) for c in spec["components"].values()
             for task, t in c.get("dag", {}).get("tasks", {}).items() if task.startswith("evaluate-models")}  # fmt: skip
    assert sorted(evals.values()) == [["base", "candidate", "data"]] * 2 + [["base", "candidate", "data", "sft"]]
    # Every evaluation reads prepare-benchmark's output, not the training dataset.
    # (inside the condition branches, as the channel of prepare-benchmark's output)
    data_from = {t["inputs"]["artifacts"]["data"].get("componentInputArtifact")
                 for c in spec["components"].values() for task, t in c.get("dag", {}).get("tasks", {}).items()
                 if task.startswith("evaluate-models")}  # fmt: skip
    assert data_from == {"pipelinechannel--prepare-benchmark-benchmark"}


class _Artifact:
    def __init__(self, path: Path) -> None:
        self.path, self.metadata = str(path), {}


def test_prepare_benchmark_renders_held_out_videos(tmp_path):
    """The component's own function: `longrl synth` with the benchmark seed, training videos'
    digests left out, metadata naming both seeds; seed 0 = 0 refused before anything is written."""
    from components.launch import write_ref
    from components.ops_data import prepare_benchmark
    from data_gen.synth import generate

    sets = DEMO_PARAMS["synth_overrides"]
    train = tmp_path / "train"
    generate(_synth_config(sets, videos=2, minutes=0.1, fps=4.0, seed=3), train, progress=False)
    videos, dataset = _Artifact(tmp_path / "videos"), _Artifact(tmp_path / "dataset")
    write_ref(videos.path, train)
    write_ref(dataset.path, tmp_path)
    args = dict(source="synth", videos=videos, dataset=dataset, synth_minutes=0.1, synth_fps=4.0,
                synth_overrides=sets, runs_root="")  # fmt: skip
    bench = _Artifact(tmp_path / "bench")
    prepare_benchmark.python_func(eval_synth_videos=2, eval_synth_seed=4, synth_seed=3, benchmark=bench, **args)
    assert bench.metadata["seed"] == 4 and bench.metadata["training_seed"] == 3
    assert bench.metadata["videos"] == 2 - len(bench.metadata["dropped_videos"])
    assert bench.metadata["questions"] == 4 * bench.metadata["videos"]
    assert json.loads((Path(bench.path) / "manifest.json").read_text())["config"]["seed"] == 4
    # The training seed itself: every video would be a training video.
    same = _Artifact(tmp_path / "same")
    with pytest.raises(StepError, match="eval_synth_seed 3 equals synth_seed"):
        prepare_benchmark.python_func(eval_synth_videos=2, eval_synth_seed=3, synth_seed=3, benchmark=same, **args)
    # eval_synth_videos=0: the evaluation reads the dataset, as before.
    plain = _Artifact(tmp_path / "plain")
    prepare_benchmark.python_func(eval_synth_videos=0, eval_synth_seed=4, synth_seed=3, benchmark=plain, **args)
    from components.launch import resolve

    assert resolve(plain.path) == tmp_path.resolve() and plain.metadata == {"benchmark": "dataset"}
