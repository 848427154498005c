"""The pipeline with another model family (issue 13): `base_model=tiny:SEED:ARCH` builds a tiny
random model of that family (`longrl model tiny --arch`); a bad seed or arch is one line."""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.

import json

import pytest

from components.launch import StepError, tiny_model_spec


def test_tiny_model_spec_takes_an_arch_and_names_a_bad_one():
    assert tiny_model_spec("tiny") == (0, "qwen2_5_vl")  # the demo's, as before
    assert tiny_model_spec("tiny:3") == (3, "qwen2_5_vl")
    assert tiny_model_spec("tiny:0:qwen3_vl") == (0, "qwen3_vl")
    assert tiny_model_spec("tiny::qwen2_vl") == (0, "qwen2_vl")
    assert tiny_model_spec("/mnt/data/models/Qwen2.5-VL-7B-Instruct") is None
    video = "qwen2_5_vl, qwen2_vl, qwen3_vl, qwen3_vl_moe"
    for bad, msg in (("tiny:0:llama", f"unknown arch 'llama'; the video model families are {video}"),
                     ("tiny:0:qwen3", f"qwen3 is a text-only family and the pipeline trains on videos; use one of {video}"),
                     ("tiny:x", "seed 'x' is not an integer (tiny:SEED or tiny:SEED:ARCH)"),
                     ("tiny:0:qwen3_vl:more", "give tiny, tiny:SEED or tiny:SEED:ARCH")):  # fmt: skip
        with pytest.raises(StepError) as err:
            tiny_model_spec(bad)
        assert str(err.value) == f"base model {bad!r}: {msg}"


def test_prepare_model_refuses_an_unknown_arch_before_writing(tmp_path):
    from components.ops_data import prepare_model

    with pytest.raises(StepError, match="unknown arch 'qwen9'"):
        prepare_model.python_func(model="tiny:0:qwen9", base_model=None)  # fails before any output


def test_first_stages_with_a_qwen3_vl_base_model(tmp_path, monkeypatch):
    """prepare-model writes a Qwen3-VL folder, and the data and SFT steps after it run on it."""
    from kfp import dsl, local

    from components.ops_data import prepare_model, prepare_videos
    from components.ops_train import sft
    from pipelines.long_video_reasoning import data_steps

    @dsl.pipeline(name="first-stages")
    def first_stages(base_model: str):
        base = prepare_model(model=base_model)
        videos = prepare_videos(source="synth", synth_videos=2, synth_minutes=0.25, synth_fps=4.0, synth_seed=0,
                                runs_root="")  # fmt: skip
        args = {"annotator": "groundtruth", "captioner_url": "", "captioner_model": "", "reasoner_url": "",
                "reasoner_model": "", "overrides": ["groundtruth_questions=4"], "runs_root": "",
                "mlflow_tracking_uri": "", "mlflow_experiment": "none"}  # fmt: skip
        data = data_steps(lambda task, cache, kind: task, videos.outputs["videos"], 1, args)
        sft(model=base.outputs["base_model"], data=data.outputs["dataset"], frames=4, max_steps=2, lr=1e-3,
            overrides=["video.max_pixels=12544", "micro_batch_size=2", "eval_generate=0"], ray_workers=0,
            gpus_per_worker=1, rayjob_config_json="", runs_root="", kfp_run_id="t", mlflow_tracking_uri="",
            mlflow_parent_run_id="")  # fmt: skip

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    first_stages(base_model="tiny:0:qwen3_vl")
    base = next(root.rglob("prepare-model/base_model"))
    assert json.loads((base / "config.json").read_text())["model_type"] == "qwen3_vl"
    meta = json.loads(next(root.rglob("prepare-model/executor_output.json")).read_text())
    assert meta["artifacts"]["base_model"]["artifacts"][0]["metadata"]["model_type"] == "qwen3_vl"
    trained = next(root.rglob("sft/trained"))
    model_dir = trained / "model" if (trained / "model").is_dir() else trained
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "qwen3_vl"
    steps = [
        json.loads(line)
        for line in (trained / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert max(s.get("step", 0) for s in steps) == 2


def test_run_local_arch_flag_picks_the_demo_model_in_that_family(tmp_path, monkeypatch):
    """`longrl pipeline run-local --arch qwen3_vl` is the demo with its tiny model (preset and
    seed) in that family; a bad or text-only arch, or --arch beside --param base_model, is one
    line before anything starts (nothing is written to --out)."""
    from typer.testing import CliRunner

    import pipelines.run_local
    from pipelines.cli import app

    seen = {}

    def record(out, params, **kwargs):  # the run itself is tested in test_first_stages_... above
        seen["params"] = params
        return 0

    monkeypatch.setattr(pipelines.run_local, "run_local", record)
    cli = CliRunner()
    demo = pipelines.run_local.DEMO_PARAMS["base_model"]
    preset_and_seed = ":".join(demo.split(":")[:2])
    res = cli.invoke(app, ["pipeline", "run-local", "--out", str(tmp_path / "o"), "--arch", "qwen3_vl",
                           "--param", "eval_limit=4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen["params"] == [f"base_model={preset_and_seed}:qwen3_vl", "eval_limit=4"]
    assert tiny_model_spec(seen["params"][0].split("=", 1)[1]) == (int(demo.split(":")[1]), "qwen3_vl")
    seen.clear()
    for argv, msg in ((["--arch", "qwen9"], "unknown arch 'qwen9'"),
                      (["--arch", "qwen3"], "text-only family"),
                      (["--arch", "qwen3_vl", "--param", "base_model=/m"], "give --arch or --param base_model")):  # fmt: skip
        res = cli.invoke(app, ["pipeline", "run-local", "--out", str(tmp_path / "o"), *argv])
        assert res.exit_code == 2 and msg in res.output and not seen, (argv, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "o").exists()
