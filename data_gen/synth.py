"""`longrl synth`: procedural long videos, their ground-truth event logs, verifiable questions.

On-disk layout of DIR (stable: eval reads it as the hidden-answer benchmark):

    DIR/manifest.json           {"format": "longrl-synth", "version", "config", "videos": [...]}
                                one entry per video: video_id, path, events, digest, fps,
                                width, height, frame_count, duration_s, min_frames, questions
    DIR/synth_0000.mp4          the video (mp4v via opencv, or H.264 via PyAV)
    DIR/synth_0000.events.json  the ground-truth event log (data_gen.synth_world) + video info
    DIR/questions.jsonl         QARecord dicts (source "synth-groundtruth"); video_path is
                                relative to DIR (see load_synth_questions)
    DIR/config.yaml             the resolved SynthConfig

Everything is a function of the config (seed included): the same config writes the same logs,
questions and, for mp4v, the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_gen import synth_questions, synth_render, synth_world
from data_gen.qa_format import VideoRef, generator_json, parse_qa_reply
from data_gen.schema import QARecord

SYNTH_VERSION = "1"
MANIFEST = "manifest.json"
QUESTIONS = "questions.jsonl"
SOURCE = "synth-groundtruth"


@dataclass
class SynthConfig:
    """Settings of `longrl synth`."""

    videos: int = 4  # number of videos
    minutes: float = 2.0  # length of each video
    fps: float = 8.0  # frames per second of the files
    width: int = 320  # frame size (even numbers)
    height: int = 180
    seed: int = 0  # everything follows from it
    codec: str = "mp4v"  # "mp4v" (opencv, fastest to write) or "h264" (PyAV libx264, 1 s GOP)
    num_slots: int = 20  # scripted events per video (one per slot); sets min_frames
    min_objects: int = 3  # objects per video are drawn from [min_objects, max_objects]
    max_objects: int = 4
    move_frac: float = 0.3  # share of each slot spent gliding between regions
    questions_per_video: int = 12
    # The task ladder's rungs (docs/grpo.md "Learning"): generator tasks asked (empty: all of
    # temporal_order, counting, spatial_when, cause, state_change) and the reasoning targets -
    # "full" (the step-by-step account) or "brief" (the one decisive fact, for small models).
    task_types: list[str] = field(default_factory=list)
    reasoning: str = "full"
    # Drawn size of every object, times the default radius: the perception rungs (at tiny pixel
    # budgets a default-size object is a few pixels of one merged video token). Above 1 only
    # one-object worlds take it, above 2.5 only colour questions (synth_render's bounds).
    object_scale: float = 1.0
    # Colour changes per video (-1: no cap; 0: every object keeps the colour it appears in) - the
    # time rungs: reading "the colour at the end" needs no temporal search when nothing changes.
    max_recolours: int = -1
    # Colour multiple-choice questions list every colour in palette order (chance 1/7): the
    # option letter is then a fixed function of the colour - the rung between naming a colour
    # and looking up its letter among shuffled options, which the tiny LLM does not learn.
    canonical_options: bool = False

    def check(self) -> None:
        if self.videos < 1:
            raise ValueError("videos must be >= 1")
        if self.minutes <= 0 or self.fps <= 0:
            raise ValueError("minutes and fps must be > 0")
        if self.width < 64 or self.height < 48 or self.width % 2 or self.height % 2:
            raise ValueError(f"size {self.width}x{self.height}: need even sides, at least 64x48")
        if self.codec not in synth_render.CODECS:
            raise ValueError(f"codec {self.codec!r} not in {synth_render.CODECS}")
        unknown = sorted(set(self.task_types) - set(synth_questions.SUBCATEGORIES))
        if unknown:
            raise ValueError(f"task_types {unknown} unknown; known: {sorted(synth_questions.SUBCATEGORIES)}")
        if self.reasoning not in synth_questions.REASONING_STYLES:
            raise ValueError(f"reasoning {self.reasoning!r} not in {synth_questions.REASONING_STYLES}")
        if self.max_recolours < -1:
            raise ValueError(f"max_recolours must be -1 (no cap) or >= 0, got {self.max_recolours}")
        if not 0.5 <= self.object_scale <= synth_render.MAX_OBJECT_SCALE:
            raise ValueError(f"object_scale {self.object_scale} outside [0.5, {synth_render.MAX_OBJECT_SCALE}]")
        if self.object_scale > synth_render.MAX_OBJECT_SCALE_IN_REGION and self.max_objects > 1:
            raise ValueError(f"object_scale {self.object_scale} > {synth_render.MAX_OBJECT_SCALE_IN_REGION} "
                             "lets objects overlap: use it with max_objects=1")
        if self.object_scale > synth_render.MAX_OBJECT_SCALE_REGION_KEPT and self.task_types != ["state_change"]:
            raise ValueError(f"object_scale {self.object_scale} > {synth_render.MAX_OBJECT_SCALE_REGION_KEPT} "
                             "spreads the object over other regions: use it with task_types=[state_change]")
        if not 1 <= self.min_objects <= self.max_objects <= synth_world.MAX_OBJECTS:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {synth_world.MAX_OBJECTS}")


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def events_path(video_path: str | Path) -> Path:
    """Where a synthetic video's event log lives: `<stem>.events.json` next to it."""
    p = Path(video_path)
    return p.with_name(p.stem + ".events.json")


def synth_generator(log: dict) -> str:
    return generator_json(generator="longrl-synth", synth_version=SYNTH_VERSION,
                          log_version=log["log_version"], min_frames=log["video"]["min_frames"])


def questions_from_log(log: dict, count: int, seed: int) -> dict:
    """The qa_reply for one video's log (deterministic in `seed`), asking the task types and
    reasoning style the log's video was made with (`log["video"]["questions"]`; older logs: all
    tasks, full reasoning) - so `longrl data build` re-asks a ladder rung's questions."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    qcfg = log.get("video", {}).get("questions") or {}
    return synth_questions.make_questions(log, rng, count, tuple(qcfg.get("task_types") or ()),
                                          qcfg.get("reasoning", "full"),
                                          bool(qcfg.get("canonical_options", False)))


def generate_video(cfg: SynthConfig, index: int, out_dir: Path) -> tuple[dict, list[QARecord]]:
    ss = np.random.SeedSequence([cfg.seed, index])
    world_ss, q_ss, n_ss = ss.spawn(3)
    rng = np.random.default_rng(n_ss)
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    duration = round(cfg.minutes * 60.0, 6)
    log = synth_world.build_world(world_ss, duration, cfg.fps, cfg.num_slots, n_obj, cfg.move_frac,
                                  cfg.max_recolours)
    log["object_scale"] = cfg.object_scale
    video_id = f"synth_{index:04d}"
    path = out_dir / f"{video_id}.mp4"
    frames = synth_render.render_video(log, path, cfg.fps, cfg.width, cfg.height, cfg.codec)
    digest = file_digest(path)
    log["video"] = {"video_id": video_id, "path": path.name, "digest": digest, "fps": cfg.fps,
                    "width": cfg.width, "height": cfg.height, "frame_count": frames,
                    "codec": cfg.codec, "min_frames": synth_world.min_frames_to_see_all(log),
                    "seed": cfg.seed, "index": index,
                    "questions": {"task_types": list(cfg.task_types), "reasoning": cfg.reasoning,
                                  "canonical_options": cfg.canonical_options}}
    events_path(path).write_text(json.dumps(log, indent=1))
    ref = VideoRef(video_id, path.name, digest, duration)
    seed = int(q_ss.generate_state(1)[0])
    reply = questions_from_log(log, cfg.questions_per_video, seed)
    records, errors = parse_qa_reply(reply, ref, SOURCE, synth_generator(log))
    if errors:  # the generator must only write valid questions: a bug, not bad input
        raise RuntimeError(f"{video_id}: generated invalid questions: {errors}")
    entry = {**log["video"], "events": events_path(path).name, "duration_s": duration,
             "questions": len(records)}
    return entry, records


def generate(cfg: SynthConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Write all videos, logs, questions and the manifest into `out_dir`; returns the manifest."""
    from common.config import save_config, to_dict

    cfg.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries, records = [], []
    indices = range(cfg.videos)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="synth videos", unit="video")
    for i in indices:
        entry, recs = generate_video(cfg, i, out)
        entries.append(entry)
        records.extend(recs)
    tmp = out / (QUESTIONS + ".tmp")
    with tmp.open("w") as f:
        for rec in records:
            f.write(json.dumps(rec.to_dict()) + "\n")
    tmp.replace(out / QUESTIONS)
    manifest = {"format": "longrl-synth", "version": SYNTH_VERSION, "config": to_dict(cfg),
                "questions": QUESTIONS, "videos": entries}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    save_config(cfg, out)
    return manifest


def load_manifest(synth_dir: str | Path) -> dict:
    path = Path(synth_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a `longrl synth` output folder")
    return json.loads(path.read_text())


def load_synth_questions(synth_dir: str | Path) -> list[QARecord]:
    """The benchmark's records with video_path made absolute (resolved against synth_dir)."""
    root = Path(synth_dir).resolve()
    out = []
    for line in (root / QUESTIONS).read_text().splitlines():
        if line.strip():
            rec = QARecord.from_dict(json.loads(line))
            rec.video_path = str(root / rec.video_path)
            out.append(rec)
    return out
