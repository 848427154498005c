"""Data generation at scale in the pipeline (issue 12): `data_shards=N` fans the build out as a
KFP ParallelFor of `data build --shard I/N` tasks and merges them in build-data
(`--merge-shards N`, the parts through dsl.Collected); the merged dataset equals one build.
`data_shards=1` (the default, `make demo`) keeps the single build step."""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.

import shutil

import yaml

from tests.test_data_shards import _output

OVERRIDES = [
    "groundtruth_questions=6",
    "filter.answerer=noisy-oracle",
]  # tests/test_data_shards.py's config


def test_compiled_ir_fans_out_and_merges_after_the_loop(tmp_path):
    from kfp import compiler

    from pipelines.long_video_reasoning import build_pipeline

    path = tmp_path / "lvr.yaml"
    compiler.Compiler().compile(build_pipeline(), str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["data_shards"]["defaultValue"] == 1
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    loop = next(t for t in tasks.values() if t["taskInfo"]["name"] == "data-shards")
    it = loop["parameterIterator"]
    assert it["items"] == {"inputParameter": "pipelinechannel--data-shard-indices-Output"}
    assert "data-shard-indices" in loop["dependentTasks"]
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    shard = body["build-data-shard"]["inputs"]["parameters"]
    assert shard["shard"] == {"componentInputParameter": it["itemInput"]}
    assert shard["shards"] == {"componentInputParameter": "pipelinechannel--data_shards"}
    merge = tasks["build-data"]
    loop_name = next(k for k, t in tasks.items() if t is loop)
    assert loop_name in merge["dependentTasks"]  # the merge runs after every shard
    assert merge["inputs"]["artifacts"]["parts"]["taskOutputArtifact"]["producerTask"] == loop_name
    assert merge["inputs"]["parameters"]["shards"] == {
        "componentInputParameter": "pipelinechannel--data_shards"
    }
    # the rest of the pipeline consumes the merged dataset
    consumers = [t for c in spec["components"].values() for t in c.get("dag", {}).get("tasks", {}).values()
                 if t["inputs"].get("artifacts", {}).get("data", {}).get("componentInputArtifact", "")
                 .startswith("pipelinechannel--build-data-dataset")]  # fmt: skip
    assert len(consumers) >= 3  # sft, grpo, evaluate-models, register-and-promote in their branches


def _slice():
    from kfp import dsl

    from components.ops_data import prepare_videos, video_fingerprint
    from pipelines.long_video_reasoning import data_steps

    @dsl.pipeline(name="data-slice")
    def data_slice(video_source: str, shards: int, overrides: list, runs_root: str = ""):
        fp = video_fingerprint(source=video_source)
        videos = prepare_videos(source=video_source, synth_videos=0, synth_minutes=0.0, synth_fps=0.0,
                                synth_seed=0, runs_root="", fingerprint=fp.output)  # fmt: skip
        args = {"annotator": "groundtruth", "captioner_url": "", "captioner_model": "", "reasoner_url": "",
                "reasoner_model": "", "overrides": overrides, "runs_root": runs_root, "mlflow_tracking_uri": "",
                "mlflow_experiment": "none"}  # fmt: skip
        data_steps(lambda task, cache, kind: task, videos.outputs["videos"], shards, args)

    return data_slice


def test_kfp_local_two_shards_equal_one_build(tmp_path, synth_dir, monkeypatch):
    from kfp import local

    from data_gen.build import run_build
    from data_gen.build_config import BuildConfig

    videos = tmp_path / "videos"
    shutil.copytree(synth_dir, videos)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    _slice()(video_source=str(videos), shards=2, overrides=OVERRIDES)

    cfg = BuildConfig(videos=str(videos), out=str(tmp_path / "single"), annotator="groundtruth", progress=False,
                      groundtruth_questions=6)  # fmt: skip
    cfg.filter.answerer = "noisy-oracle"
    single = _output(run_build(cfg).out)
    merged_dir = next(root.rglob("build-data/dataset"))
    assert sorted(p.name for p in (merged_dir / "shards").iterdir()) == [
        "0-of-2.json",
        "1-of-2.json",
    ]
    merged = _output(merged_dir)
    assert merged == single  # records of every split, rejects, splits.json, summary counts
    assert (
        sum(len(r) for r in merged["records"].values()) > 0
        and single["summary"]["videos"]["usable"] == 3
    )
    parts = sorted(root.rglob("build-data-shard*/part"))
    assert len(parts) == 2 and all(len(list((p / "shards").glob("*.json"))) == 1 for p in parts)

    # data_shards=1 (make demo): the loop's one task does nothing, build-data builds everything.
    root1 = tmp_path / "root1"
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root1), raise_on_error=True
    )
    _slice()(video_source=str(videos), shards=1, overrides=OVERRIDES)
    (part,) = root1.rglob("build-data-shard*/part")
    assert list(part.iterdir()) == []
    one_dir = next(root1.rglob("build-data/dataset"))
    assert not (one_dir / "shards").exists() and _output(one_dir) == single

    # On a shared volume (runs_root): shards and merge share one folder (and its unit cache).
    runs = tmp_path / "runs"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root2"),
               raise_on_error=True)  # fmt: skip
    _slice()(video_source=str(videos), shards=2, overrides=OVERRIDES, runs_root=str(runs))
    (shared,) = (runs / "cache").iterdir()
    assert sorted(p.name for p in (shared / "shards").iterdir()) == ["0-of-2.json", "1-of-2.json"]
    assert _output(shared) == single


def test_gather_parts_names_a_bad_part(tmp_path):
    import pytest

    from components.data_launch import gather_parts, part_file
    from components.launch import StepError
    from components.ops_data import data_shard_indices

    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for folder in (a, b):
        part_file(folder, 0, 2).parent.mkdir(parents=True)
        part_file(folder, 0, 2).write_text("{}")
    with pytest.raises(StepError, match="shard 0/2 came twice"):
        gather_parts([a, b], out, 2)
    with pytest.raises(StepError, match="holds 0 part files of 2 shards"):
        gather_parts([tmp_path], out, 2)  # a folder with no part file
    with pytest.raises(StepError, match="data_shards must be >= 1, got 0"):
        data_shard_indices.python_func(shards=0)
    assert data_shard_indices.python_func(shards=3) == [0, 1, 2]
