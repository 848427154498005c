"""SFT's video prefetch (training/sft/prefetch.py) against the plain path it replaces, on real
video files: the same batches (token ids, pixels), losses and final weights; the same report of
a video that breaks during the run; every file probed once; no decode thread left after the
end, an error or Ctrl-C."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from common.config import load_config
from data_gen.video_io import VideoError
from tests.fixtures.sft import TINY_SFT_OVERRIDES, write_split
from training.distributed import DistContext
from training.sft.config import SFTConfig
from training.sft.prefetch import THREAD_PREFIX, Prefetcher
from training.video_inputs import probe_once, probe_stats

from .fixtures.model_kit import write_video


def _cfg(*overrides: str) -> SFTConfig:
    return load_config(SFTConfig, None, [*TINY_SFT_OVERRIDES, *overrides])


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def _copy_records(records, folder):
    """The records with their videos copied under `folder` (fresh files: probed anew)."""
    folder.mkdir(parents=True)
    out, copies = [], {}
    for r in records:
        if r.video_path not in copies:
            copies[r.video_path] = folder / f"v{len(copies)}.mp4"
            shutil.copy(r.video_path, copies[r.video_path])
        out.append(type(r)(**{**r.to_dict(), "video_path": str(copies[r.video_path])}))
    return out, list(copies.values())


def _trainer(cfg, model_dir, records, root):
    from training.sft.trainer import SFTTrainer

    data = write_split(records, root / "data")
    return SFTTrainer(cfg, model_dir, data, root / "out", DistContext())


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_prefetched_training_equals_the_plain_path(
    tiny_model_dir, sft_records, tmp_path, monkeypatch
):
    import training.sft.trainer as T

    batches: list = []
    plain_make_batch = T.make_batch

    def recording_make_batch(rows, pad_id, device):  # a spy: the batch is the trainer's own
        batch = plain_make_batch(rows, pad_id, device)
        batches.append(
            (
                batch.input_ids.clone(),
                batch.pixel_values_videos.clone(),
                batch.video_grid_thw.clone(),
            )
        )
        return batch

    monkeypatch.setattr(T, "make_batch", recording_make_batch)
    # 6 examples, global batch 2 as 2 accumulated micro-batches: 3 steps per epoch, 2 epochs
    # (the look-ahead crosses into the reshuffled second epoch).
    common = (
        "lr=0.003",
        "micro_batch_size=1",
        "grad_accum=2",
        "epochs=2",
        "warmup_steps=1",
        "save_every=0",
    )
    runs = {}
    for workers in (0, 2):
        root = tmp_path / f"w{workers}"
        records, files = _copy_records(sft_records[9:15], root / "videos")  # both videos
        batches.clear()
        before = probe_stats["probes"]
        trainer = _trainer(
            _cfg(*common, f"video.prefetch_workers={workers}"), tiny_model_dir, records, root
        )
        summary = trainer.run()
        runs[workers] = {
            "batches": list(batches),
            "metrics": _metrics(root / "out"),
            "summary": summary,
            "weights": load_file(root / "out" / "model" / "model.safetensors"),
            "probes": probe_stats["probes"] - before,
            "files": len(files),
        }
        assert not _threads()
    plain, ahead = runs[0], runs[2]
    assert len(plain["batches"]) == len(ahead["batches"]) == 12
    for (ids_a, px_a, grid_a), (ids_b, px_b, grid_b) in zip(
        plain["batches"], ahead["batches"], strict=True
    ):
        assert torch.equal(ids_a, ids_b) and torch.equal(px_a, px_b) and torch.equal(grid_a, grid_b)
    assert [m["loss"] for m in plain["metrics"]] == [m["loss"] for m in ahead["metrics"]]
    assert [m["grad_norm"] for m in plain["metrics"]] == [m["grad_norm"] for m in ahead["metrics"]]
    a, b = plain["weights"], ahead["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Steps 2-6 found their 2 videos each decoded ahead; the plain run decoded all in the step.
    assert (
        ahead["summary"]["video_prefetch"]["asked"]
        == ahead["summary"]["video_prefetch"]["taken"]
        == 10
    )
    assert plain["summary"]["video_prefetch"]["asked"] == 0
    # Each file probed once (by the scan); no load during training probes again.
    assert plain["probes"] == ahead["probes"] == plain["files"] == 2, (
        plain["probes"],
        ahead["probes"],
    )


def _break_a_later_video(trainer) -> int:
    """Overwrite the video of an example the first step does not use (so its decode runs in a
    prefetch thread); returns that example's index."""
    first = set(trainer.keys_at(0, 0))
    later = next(k for k in trainer.keys_at(0, 1) if k not in first)
    path = trainer.records[later].video_path
    assert all(trainer.records[k].video_path != path for k in first)
    with open(path, "wb") as f:
        f.write(b"not a video any more")
    return later


def test_a_video_that_breaks_is_reported_the_same_with_prefetch(
    tiny_model_dir, sft_records, tmp_path
):
    from training.sft.data import SFTDataError

    # One record per video so the broken file is one example: 4 videos, each a copy.
    reports, errors = {}, {}
    for workers in (0, 2):
        root = tmp_path / f"w{workers}"
        root.mkdir()
        records = []
        for i, r in enumerate(sft_records[:4]):
            copy = root / f"v{i}.mp4"
            shutil.copy(r.video_path, copy)
            records.append(type(r)(**{**r.to_dict(), "video_path": str(copy)}))
        common = (
            "scan_decode=false",
            "micro_batch_size=2",
            "epochs=2",
            f"video.prefetch_workers={workers}",
        )
        trainer = _trainer(
            _cfg(*common, "max_bad_fraction=0.5"), tiny_model_dir, records, root / "a"
        )
        broken = _break_a_later_video(trainer)
        summary = trainer.run()
        assert not _threads()
        skipped = [
            json.loads(line)
            for line in (root / "a" / "out" / "skipped.jsonl").read_text().splitlines()
        ]
        assert [(s["id"], s["stage"], s["step"]) for s in skipped] == [
            (records[broken].id, "train", 1)
        ]
        # steps 2-4 took their videos from the prefetch, the broken one's error included (5:
        # the broken example is not used again in the second epoch)
        assert summary["steps"] == 4 and summary["video_prefetch"]["taken"] == (5 if workers else 0)
        reports[workers] = (
            json.dumps(skipped).replace(str(root), "ROOT"),
            [m["loss"] for m in _metrics(root / "a" / "out")],
        )
        # Over max_bad_fraction: the run stops with one line naming the example and its file,
        # and the decode threads are gone.
        for i, r in enumerate(sft_records[:4]):
            shutil.copy(r.video_path, root / f"v{i}.mp4")
        strict = _trainer(_cfg(*common, "max_bad_fraction=0"), tiny_model_dir, records, root / "b")
        _break_a_later_video(strict)
        with pytest.raises(SFTDataError) as info:
            strict.run()
        errors[workers] = str(info.value).replace(str(root), "ROOT")
        assert not _threads() and strict.prefetch.pending == 0
    assert reports[0] == reports[2]
    assert errors[0] == errors[2]
    assert (
        "1 of 4 examples are bad" in errors[2] and "ROOT/v" in errors[2] and "video:" in errors[2]
    ), errors[2]


def test_ctrl_c_leaves_no_decode_thread(tiny_model_dir, sft_records, tmp_path, monkeypatch):
    records, _ = _copy_records(sft_records[:6], tmp_path / "videos")
    trainer = _trainer(
        _cfg("micro_batch_size=2", "epochs=3", "save_every=0"), tiny_model_dir, records, tmp_path
    )
    plain_step = trainer.train_step
    calls = []

    def interrupted(keys, step, ahead=None):
        out = plain_step(keys, step, ahead)
        calls.append(step)
        if step == 1:  # the next step's decodes have just been submitted
            assert trainer.prefetch.pending == 2 and _threads()
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert calls == [0, 1] and trainer.prefetch.pending == 0 and not _threads()


def test_prefetcher_keeps_only_what_is_asked_and_raises_the_plain_error():
    started: list[int] = []
    gate = threading.Event()

    def load(k: int) -> int:
        started.append(k)
        gate.wait(5)
        if k == 7:
            raise VideoError(f"/videos/{k}.mp4", "no frames")
        return k * 10

    with Prefetcher(1, load) as p:
        assert p.take(1) is None  # never asked: the caller loads it itself
        p.ahead([1, 2, 3])
        p.ahead([3, 7])  # 1 is running (kept until it ends, then dropped), 2 is cancelled
        assert p.pending == 2
        gate.set()
        assert p.take(3) == 30
        with pytest.raises(VideoError, match=r"^/videos/7.mp4: no frames$"):
            p.take(7)
        assert 2 not in started and p.pending == 0 and p.stats["taken"] == 2
    assert not _threads()
    off = Prefetcher(0, load)
    off.ahead([1])
    assert off.pending == 0 and not _threads()
    with pytest.raises(ValueError, match="video.prefetch_workers must be >= 0"):
        _cfg("video.prefetch_workers=-1").check()


def test_threads_asking_for_one_file_at_once_share_one_probe(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = write_video(tmp_path / "a.mp4", np.full((30, 56, 56, 3), 90, np.uint8), fps=10.0)
    before = probe_stats["probes"]
    start = threading.Barrier(4)

    def probe(_: int):
        start.wait(5)  # all four ask before any probe has finished
        return probe_once(path)

    with ThreadPoolExecutor(4) as pool:
        infos = list(pool.map(probe, range(4)))
    assert probe_stats["probes"] == before + 1 and all(i == infos[0] for i in infos)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    for _ in range(2):  # a failure is not kept: every caller gets the file's own error
        with pytest.raises(VideoError, match="broken.mp4"):
            probe_once(broken)
