"""Offline video-embedding cache (`longrl embed-cache build`): zero vision calls during RL.

Layout of the cache folder:

    index.json                {"format": "longrl-embed-cache", "version", "vision_fingerprint",
                               "hidden_size", "sampling", "spec", "model_dir"}
    emb/<key>.safetensors     one video: tensor "embeds" [num_tokens, hidden] (Qwen3-VL:
                              [num_tokens, (1 + DeepStack levels) * hidden]) and metadata
                              (video_id, video_digest, grid_thw, second_per_grid_t, merge_size,
                              timestamps_s and frame_groups for Qwen3-VL's timestamped prompt)

`<key>` is `video_cache.video_key` (file digest + clip span + sampling + pixel layout), so a
changed file, span or sampling finds no entry - an error, never another video's embedding.
Building is resumable: entries already written are kept; each file is written to a temporary
name and renamed, so an interrupted build leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import torch

from data_gen.schema import QARecord
from data_gen.video_io import VideoError
from training.grpo.video_cache import (
    StepVideo,
    load_patches,
    sampling_for,
    video_digest,
    video_key,
)
from training.models.qwen3_vl import embedding_width
from training.video_inputs import VideoSampling, VisionSpec

FORMAT = "longrl-embed-cache"
VERSION = 1


class EmbedCacheError(ValueError):
    pass


def vision_fingerprint(model) -> str:
    """sha256 over the vision tower's full parameters (sorted names, shapes, dtypes, bytes).

    The same value for the unsharded model (`embed-cache build`, one process, the rollout
    replica) and for the FSDP2-sharded policy of a dp x sp job: a sharded entry (DTensor) is
    all-gathered one tensor at a time, so no rank ever holds the whole tower - and every rank
    of the job must call this in step (it is collective there)."""
    from torch.distributed.tensor import DTensor

    from training.mm_batch import base_model

    h = hashlib.sha256()
    for name, p in sorted(base_model(model).visual.state_dict().items()):
        full = p.full_tensor() if isinstance(p, DTensor) else p
        t = full.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        del full, t  # one full tensor at a time
    return h.hexdigest()


class EmbeddingCache:
    """Reads a cache built for this exact vision tower, sampling and pixel layout. `model` is
    the Hugging Face model, unsharded or FSDP2-sharded (then built on every rank in step);
    `fingerprint`, when given, is the tower's taken elsewhere (a dp x sp job: from the fp32
    shards, also when `model` is a bf16 rollout replica, whose own bytes would not match)."""

    def __init__(
        self,
        folder: str | Path,
        model,
        sampling: VideoSampling,
        spec: VisionSpec,
        fingerprint: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        index_path = self.folder / "index.json"
        if not index_path.is_file():
            raise EmbedCacheError(
                f"{self.folder} is not an embedding cache (no index.json); "
                "build one with `longrl embed-cache build`"
            )
        self.index = json.loads(index_path.read_text())
        if self.index.get("format") != FORMAT:
            raise EmbedCacheError(
                f"{index_path}: format {self.index.get('format')!r} is not {FORMAT}"
            )
        fp = fingerprint or vision_fingerprint(model)
        if self.index["vision_fingerprint"] != fp:
            raise EmbedCacheError(
                f"{self.folder} was built with another vision tower "
                f"({self.index['vision_fingerprint'][:12]} != {fp[:12]}); rebuild it"
            )
        self.hidden = embedding_width(model)  # Qwen3-VL: with its DeepStack levels
        if int(self.index["hidden_size"]) != self.hidden:
            raise EmbedCacheError(
                f"{self.folder}: hidden size {self.index['hidden_size']} != model's {self.hidden}"
            )
        self.sampling, self.spec = sampling, spec
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    def get(self, key: str, record: QARecord) -> StepVideo:
        from safetensors import safe_open

        path = self.folder / "emb" / f"{key}.safetensors"
        if not path.is_file():
            raise EmbedCacheError(
                f"video {record.video_id} ({record.video_path}, clip {record.clip_start_s}-"
                f"{record.clip_end_s} s): no cached embedding for its content and sampling "
                f"(key {key}); rebuild the cache with the training config"
            )
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            embeds = f.get_tensor("embeds")
        grid = tuple(json.loads(meta["grid_thw"]))
        merge = int(meta["merge_size"])
        expect = grid[0] * grid[1] * grid[2] // merge**2
        problems = []
        if meta["video_digest"] != video_digest(record):
            problems.append(
                f"digest {meta['video_digest'][:12]} != record's {video_digest(record)[:12]}"
            )
        if tuple(embeds.shape) != (expect, self.hidden):
            problems.append(
                f"shape {tuple(embeds.shape)} != ({expect}, {self.hidden}) from grid {grid}"
            )
        if problems:
            raise EmbedCacheError(
                f"video {record.video_id}: cached embedding {path.name} does not "
                f"match: {'; '.join(problems)}"
            )
        return StepVideo(
            key,
            record.video_id,
            grid,
            float(meta["second_per_grid_t"]),
            merge,
            embeds=embeds.to(self.device, self.dtype),
            timestamps_s=json.loads(meta.get("timestamps_s", "[]")),
            frame_groups=meta.get("frame_groups") == "1",
        )


def build_cache(
    model,
    records: Iterable[QARecord],
    out: str | Path,
    sampling: VideoSampling,
    spec: VisionSpec,
    model_dir: str = "",
    progress: bool = True,
    use_record_frames: bool = False,
) -> dict:
    """Encode every unique video of `records` once and write the cache. Returns a summary with
    the failures (unreadable videos are recorded and skipped, never substituted)."""
    from safetensors.torch import save_file

    from training.mm_batch import encode_videos

    out = Path(out)
    (out / "emb").mkdir(parents=True, exist_ok=True)
    fp = vision_fingerprint(model)
    hidden = embedding_width(model)
    index_path = out / "index.json"
    if index_path.is_file():
        old = json.loads(index_path.read_text())
        if old.get("vision_fingerprint") != fp:
            raise EmbedCacheError(f"{out} holds a cache of another vision tower; use a new folder")
    index = {
        "format": FORMAT,
        "version": VERSION,
        "vision_fingerprint": fp,
        "hidden_size": hidden,
        "sampling": asdict(sampling),
        "spec": asdict(spec),
        "model_dir": str(model_dir),
    }
    index_path.write_text(json.dumps(index, indent=1))
    todo: dict[str, QARecord] = {}
    failures: dict[str, str] = {}
    text_records = 0
    for rec in records:
        if not rec.has_video:  # a text-only record has nothing to cache: not a failure
            text_records += 1
            continue
        try:
            todo.setdefault(
                video_key(rec, sampling_for(rec, sampling, use_record_frames), spec), rec
            )
        except VideoError as exc:
            failures[rec.video_id] = str(exc)
    written = kept = 0
    device = next(model.parameters()).device
    from tqdm import tqdm

    for key, rec in tqdm(todo.items(), desc="embed-cache", disable=not progress):
        path = out / "emb" / f"{key}.safetensors"
        if path.is_file():
            kept += 1
            continue
        try:
            patches = load_patches(rec, sampling_for(rec, sampling, use_record_frames), spec)
        except (VideoError, OSError, ValueError) as exc:
            failures[rec.video_id] = str(exc)
            continue
        grid = torch.tensor([patches.grid_thw], dtype=torch.long, device=device)
        with torch.no_grad():
            (emb,) = encode_videos(model, patches.pixel_values.to(device), grid)
        meta = {
            "video_id": rec.video_id,
            "video_digest": video_digest(rec),
            "grid_thw": json.dumps(list(patches.grid_thw)),
            "second_per_grid_t": repr(patches.second_per_grid_t),
            "merge_size": str(patches.merge_size),
            # Qwen3-VL prompts hold each frame group's timestamp (training.models.qwen3_vl)
            "timestamps_s": json.dumps(patches.timestamps_s),
            "frame_groups": str(int(patches.frame_groups)),
        }
        tmp = path.with_suffix(".tmp")
        save_file({"embeds": emb.detach().to("cpu").contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        written += 1
    return {
        "videos": len(todo),
        "written": written,
        "kept": kept,
        "failed": failures,
        "text_records": text_records,
        "folder": str(out),
    }
