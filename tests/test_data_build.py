"""`longrl data build` end to end: synthetic videos with the groundtruth annotator, and the LLM
annotator against the scripted OpenAI-compatible server (real HTTP, real openai client)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import load_from_disk

from data_gen.build import BuildError, run_build
from data_gen.build_config import BuildConfig
from data_gen.schema import SPLITS, QARecord, features
from tests.fixtures.data_gen import FakeLVRModel

SECRET = "sk-longrl-test-DO-NOT-LEAK-0123456789"


def _splits(out: Path) -> dict[str, list[QARecord]]:
    out_splits = {}
    for split in SPLITS:
        ds = load_from_disk(str(out / split))
        assert ds.features == features()
        out_splits[split] = [QARecord.from_dict(r).validate() for r in ds]
    return out_splits


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def test_groundtruth_build_with_corrupt_files(tmp_path, synth_dir, corrupt_videos):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("synth_0000", "synth_0001", "synth_0002"):
        shutil.copy(synth_dir / f"{name}.mp4", videos)
        shutil.copy(synth_dir / f"{name}.events.json", videos)
    shutil.copy(synth_dir / "synth_0002.mp4", videos / "zz_copy_of_2.mp4")  # same bytes, other name
    (videos / "no_log.mp4").write_bytes((synth_dir / "synth_0000.mp4").read_bytes() + b"\0")  # no events
    bad = {"zero_bytes", "truncated_mp4", "truncated_faststart_h264", "text", "still_image", "absurd_size"}
    for kind in bad:
        path, _ = corrupt_videos[kind]
        shutil.copy(path, videos / f"bad_{kind}{path.suffix}")
    cfg = BuildConfig(videos=str(videos), out=str(tmp_path / "out"), annotator="groundtruth", progress=False)
    cfg.filter.answerer = "noisy-oracle"
    result = run_build(cfg)

    splits = _splits(tmp_path / "out")
    owners: dict[str, set[str]] = {}
    for split, recs in splits.items():
        for r in recs:
            owners.setdefault(r.video_id, set()).add(split)
            assert r.source == "synth-groundtruth" and 0.0 < r.pass_rate < 1.0
            assert json.loads(r.generator)["filter"] == "noisy-oracle:seed=0"
            assert Path(r.video_path).is_absolute() and Path(r.video_path).is_file()
    assert set(owners) == {"synth_0000", "synth_0001", "synth_0002"}
    assert all(len(s) == 1 for s in owners.values())  # never one video in two splits
    assert sum(result.counts.values()) == sum(len(v) for v in splits.values()) > 0
    assert (tmp_path / "out" / "sft.parquet").is_file() and (tmp_path / "out" / "summary.png").is_file()

    rejects = _rejects(tmp_path / "out")
    by_item = {Path(r["item"]).name: r for r in rejects if r["kind"] == "video"}
    for kind in bad:
        assert f"bad_{kind}" in " ".join(by_item), kind
    assert "same bytes as video synth_0002" in by_item["zz_copy_of_2.mp4"]["reason"]
    assert "no event log" in by_item["no_log.mp4"]["reason"]
    filtered = [r for r in rejects if r["stage"] == "filter"]
    assert filtered and all(r["reason"].startswith(("always right", "always wrong")) for r in filtered)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["videos"] == {"found": 11, "usable": 4, "rejected": 8, "with_questions": 3}
    assert summary["questions"]["kept"] == sum(result.counts.values())
    assert summary["questions"]["generated"] == 36 == len(filtered) + summary["questions"]["kept"]


def test_everything_rejected_fails_clearly(tmp_path, corrupt_videos):
    videos = tmp_path / "videos"
    videos.mkdir()
    for kind in ("zero_bytes", "text", "truncated_mp4"):
        shutil.copy(corrupt_videos[kind][0], videos / f"{kind}.mp4")
    cfg = BuildConfig(videos=str(videos), out=str(tmp_path / "out"), annotator="groundtruth", progress=False)
    with pytest.raises(BuildError, match="all 3 videos were rejected"):
        run_build(cfg)
    assert len(_rejects(tmp_path / "out")) == 3


def llm_config(videos: Path, out: Path, url: str, **kw) -> BuildConfig:
    cfg = BuildConfig(videos=str(videos), out=str(out), annotator="llm", clip_s=10.0, frames_per_clip=3,
                      frame_max_pixels=64 * 48, questions_per_category=1, progress=False, **kw)
    for ep in (cfg.captioner, cfg.reasoner, cfg.filter.endpoint, cfg.rewriter):
        ep.url, ep.model, ep.api_key_env = url, "scripted", "LONGRL_TEST_KEY"
    cfg.client.backoff_s, cfg.client.backoff_max_s, cfg.client.timeout_s = 0.01, 0.02, 5.0
    cfg.filter.answerer, cfg.filter.k, cfg.filter.num_frames = "endpoint", 4, 2
    return cfg


def test_llm_build_against_scripted_server(tmp_path, synth_dir, openai_server, monkeypatch, capsys):
    monkeypatch.setenv("LONGRL_TEST_KEY", SECRET)
    openai_server.expected_key = SECRET
    model = FakeLVRModel(bad_first_qa=True)
    openai_server.responder = model
    openai_server.inject("429", "500", "malformed", "drop")
    out = tmp_path / "out"
    cfg = llm_config(synth_dir, out, openai_server.url, rewrite=True, caption_fps=0.2)
    result = run_build(cfg)

    log = openai_server.log
    assert all(e["key_ok"] for e in log)  # the key went to the server, from the environment
    answered = [e for e in log if e["status"] == 200 and e["fault"] is None]
    kinds = [e["body"]["messages"][0]["content"].split()[2] for e in answered]
    assert kinds.count("short") == 9  # 3 videos x 3 clips of 10 s, each captioned once
    captions = [e["body"] for e in answered if "short video" in e["body"]["messages"][0]["content"]]
    images = [[p for p in c["messages"][1]["content"] if p["type"] == "image_url"] for c in captions]
    assert [len(i) for i in images] == [2] * 9  # caption_fps=0.2 x 10 s clips
    assert images[0][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    qa_requests = [e["body"] for e in answered if "question-answer pairs" in e["body"]["messages"][0]["content"]]
    assert len(qa_requests) == 6  # every first reply was invalid; the retry carried the error
    retries = [r for r in qa_requests if len(r["messages"]) == 4]
    assert len(retries) == 3 and all("answer 'E' is not one of" in r["messages"][-1]["content"] for r in retries)

    summary = result.summary
    assert summary["requests"]["captioner"]["retries"] >= 1
    assert sum(st["retries"] for st in summary["requests"].values()) == 4
    assert summary["questions"]["generated"] == 24 and summary["questions"]["invalid"] == 0
    recs = [r for rs in _splits(out).values() for r in rs]
    assert recs and all(0.0 < r.pass_rate < 1.0 and r.source == "llm" for r in recs)
    assert all(r.reasoning.startswith("Watching the video:") for r in recs)
    gen = json.loads(recs[0].generator)
    assert gen["reasoner"] == "scripted" and gen["rewritten"] and gen["qa_prompt"].startswith("qa.v1@")
    rejects = _rejects(out)
    assert {r["stage"] for r in rejects} <= {"filter"}
    assert any("always right" in r["reason"] for r in rejects) and any("always wrong" in r["reason"] for r in rejects)

    # The key never reaches files, caches or the console.
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_bad_qa_items_and_a_dead_endpoint_are_rejected_not_fatal(tmp_path, synth_dir, openai_server):
    openai_server.responder = FakeLVRModel(always_bad=True)
    doomed: dict[str, str] = {}

    def fail_one_video(body: dict, n: int) -> str | None:
        """Every QA request about one video (recognised by its captions) fails with 500."""
        if "question-answer" not in body["messages"][0]["content"]:
            return None
        sig = body["messages"][1]["content"].split("Captions:")[1][:300]
        return "500" if doomed.setdefault("sig", sig) == sig else None

    openai_server.fault_fn = fail_one_video
    cfg = llm_config(synth_dir, tmp_path / "out", openai_server.url)
    cfg.filter.answerer, cfg.max_qa_attempts, cfg.client.max_retries = "none", 2, 1
    result = run_build(cfg)

    rejects = _rejects(tmp_path / "out")
    dead = [r for r in rejects if r["kind"] == "video"]
    assert len(dead) == 1 and dead[0]["stage"] == "qa" and "gave up after 2 attempts" in dead[0]["reason"]
    bad_items = [r for r in rejects if r["stage"] == "qa" and r["kind"] == "question"]
    assert len(bad_items) == 2 and all("after 2 attempt(s)" in r["reason"] and "'E'" in r["reason"] for r in bad_items)
    recs = [r for rs in _splits(tmp_path / "out").values() for r in rs]
    assert len(recs) == result.summary["questions"]["kept"] == 2 * 7  # 8 per video, one broken
    assert all(r.pass_rate == -1.0 for r in recs) and result.summary["filter"] == "off"
    assert {r.video_id for r in recs} | {dead[0]["video_id"]} == {"synth_0000", "synth_0001", "synth_0002"}


def test_filter_with_a_local_model_folder(tmp_path, synth_dir, tiny_model_dir):
    """`--filter-model DIR`: the CLI plugs training's generation code in as the answerer."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    videos = tmp_path / "videos"
    videos.mkdir()
    for suffix in (".mp4", ".events.json"):
        shutil.copy(synth_dir / f"synth_0000{suffix}", videos)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [
        "data", "build", "--videos", str(videos), "--out", str(out), "--annotator", "groundtruth",
        "--filter-model", str(tiny_model_dir), "--k", "2", "--no-progress", "groundtruth_questions=3",
        "filter.endpoint.max_tokens=8", "filter.num_frames=4", "filter.drop_always_wrong=false",
        "filter.drop_always_right=false"])
    assert res.exit_code == 0, res.output
    recs = [r for rs in _splits(out).values() for r in rs]
    assert len(recs) == 3 and all(r.pass_rate in (0.0, 0.5, 1.0) for r in recs)
    # the filter model is named by its content (the same weights under another path keep the cache)
    from training.model_folder import folder_fingerprint

    assert json.loads(recs[0].generator)["filter"].startswith(f"local:{folder_fingerprint(tiny_model_dir)}:")
    verdicts = list((out / "cache" / "verdict").glob("*/*.json"))
    assert len(verdicts) == 3 and all(len(json.loads(v.read_text())["value"]["replies"]) == 2 for v in verdicts)


def test_cli_build_logs_to_mlflow(tmp_path, synth_dir, mlflow_env):
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["data", "build", "--videos", str(synth_dir), "--out", str(out),
                                   "--annotator", "groundtruth", "--filter-answerer", "noisy-oracle",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    client = MlflowClient()
    exp = client.get_experiment_by_name(__import__("os").environ["MLFLOW_EXPERIMENT_NAME"])
    (run,) = client.search_runs([exp.experiment_id])
    summary = json.loads((out / "summary.json").read_text())
    assert run.data.metrics["questions_kept"] == summary["questions"]["kept"] > 0
    assert run.data.params["annotator"] == "groundtruth"
    contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert contexts == {"sft", "rl", "eval"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} >= {"data/summary.png", "data/rejects.jsonl"}
