"""A build cut into shards and merged by one step gives the single-process build's output
(records, rejects.jsonl, splits.json, summary counts), also with broken files and a same-bytes
copy whose original is in another shard; shards resume from the cache; the merge names missing
or stale shards; `workers=2` runs the shards as Ray tasks."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_gen.build import run_build
from data_gen.build_config import BuildConfig
from data_gen.schema import SPLITS
from data_gen.shards import ShardError, part_path
from data_gen.sources import discover


@pytest.fixture()
def videos(tmp_path, synth_dir, corrupt_videos) -> Path:
    d = tmp_path / "videos"
    d.mkdir()
    for name in ("synth_0000", "synth_0001", "synth_0002"):
        shutil.copy(synth_dir / f"{name}.mp4", d)
        shutil.copy(synth_dir / f"{name}.events.json", d)
    shutil.copy(synth_dir / "synth_0001.mp4", d / "zz_copy_of_1.mp4")  # same bytes, another shard
    for kind in ("truncated_mp4", "text"):
        shutil.copy(corrupt_videos[kind][0], d / f"bad_{kind}.mp4")
    return d


def _cfg(videos: Path, out: Path, **kw) -> BuildConfig:
    cfg = BuildConfig(videos=str(videos), out=str(out), annotator="groundtruth", progress=False,
                      **{"groundtruth_questions": 6, **kw})
    cfg.filter.answerer = "noisy-oracle"
    return cfg


def _output(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for key in ("requests", "cache", "seconds", "pipeline"):  # how it ran, not what it made
        summary.pop(key)
    return {"records": {s: pq.read_table(out / f"{s}.parquet").to_pylist() for s in SPLITS},
            "rejects": (out / "rejects.jsonl").read_text(), "splits": (out / "splits.json").read_text(),
            "summary": summary}


def test_sharded_build_equals_single_process(tmp_path, videos):
    single = _output(run_build(_cfg(videos, tmp_path / "one")).out)
    candidates, _ = discover(videos)
    ids = [v for v, _ in candidates]
    assert ids.index("zz_copy_of_1") % 3 != ids.index("synth_0001") % 3  # the copy is in another shard
    out = tmp_path / "sharded"
    for i in range(3):
        res = run_build(_cfg(videos, out, shard=f"{i}/3"))
        assert part_path(out, i, 3).is_file() and res.counts == {}
    assert not (out / "sft.parquet").exists()  # a shard writes no splits
    merged = run_build(_cfg(videos, out, merge_shards=3))
    assert _output(merged.out) == single
    assert single["summary"]["videos"] == {"found": 6, "usable": 3, "rejected": 3, "with_questions": 3}
    rejects = [json.loads(r) for r in single["rejects"].splitlines()]
    assert any(r["reason"] == "same bytes as video synth_0001" for r in rejects)
    # Counters add up over shards: 6 candidates probed once each, QA units for 4 videos
    # (the copy's shard did not know about the original and made its units: cache hits).
    assert merged.summary["cache"]["writes"] + merged.summary["cache"]["hits"] >= 3


def test_shards_resume_and_merge_checks(tmp_path, videos):
    out = tmp_path / "out"
    run_build(_cfg(videos, out, shard="0/2"))
    again = run_build(_cfg(videos, out, shard="0/2"))  # a rerun: every unit from the cache
    part = json.loads(part_path(out, 0, 2).read_text())
    assert part["cache"]["writes"] == 0 and part["cache"]["hits"] > 0
    assert again.summary["questions"]["kept"] == len(part["kept"])
    with pytest.raises(ShardError, match="missing 1-of-2.json"):
        run_build(_cfg(videos, out, merge_shards=2))
    run_build(_cfg(videos, out, shard="1/2", groundtruth_questions=5))  # other settings
    with pytest.raises(ShardError, match="other settings or videos: 1-of-2.json"):
        run_build(_cfg(videos, out, merge_shards=2))
    with pytest.raises(ValueError, match="need 0 <= I < N"):
        _cfg(videos, out, shard="2/2").check()


@pytest.mark.slow  # ~25 s: a local Ray and two worker processes importing the build
def test_ray_workers_equal_single_process(tmp_path, videos, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "")
    single = _output(run_build(_cfg(videos, tmp_path / "one")).out)
    out = tmp_path / "ray"
    cfg = _cfg(videos, out, workers=2)
    run_build(_cfg(videos, out, shard="0/2"))  # shard 0 already done: Ray runs shard 1 only
    before = part_path(out, 0, 2).stat().st_mtime_ns
    result = run_build(cfg)
    assert part_path(out, 0, 2).stat().st_mtime_ns == before and part_path(out, 1, 2).is_file()
    assert _output(result.out) == single
    assert replace(cfg, workers=0).workers == 0


def test_cli_shards_then_merge(tmp_path, videos):
    from typer.testing import CliRunner

    from pipelines.cli import app

    single = _output(run_build(_cfg(videos, tmp_path / "one")).out)
    out = tmp_path / "cli"
    base = ["data", "build", "--videos", str(videos), "--out", str(out), "--annotator", "groundtruth",
            "--filter-answerer", "noisy-oracle", "--no-progress", "groundtruth_questions=6"]
    runner = CliRunner()
    res = runner.invoke(app, [*base, "--merge-shards", "2"])
    assert res.exit_code == 1 and "missing 0-of-2.json, 1-of-2.json" in res.output
    for i in range(2):
        res = runner.invoke(app, [*base, "--shard", f"{i}/2"])
        assert res.exit_code == 0 and f"shard {i}/2" in res.output, res.output
    res = runner.invoke(app, [*base, "--merge-shards", "2"])
    assert res.exit_code == 0, res.output
    assert _output(out) == single
    res = runner.invoke(app, [*base, "--shard", "1/2", "--merge-shards", "2"])
    assert res.exit_code == 2 and "give one of shard, merge_shards and workers" in res.output
