"""Video embeddings for a GRPO step: the vision tower once per unique video (MR-SP stage 1).

Modes (`video.embeddings`):
- online: each unique video of the step is decoded (kept in a bounded in-memory store across
  steps) and encoded once; the embeddings feed the rollout prefill and the old-policy, reference
  and update passes. With a trainable vision tower the update passes re-encode with gradients
  (once per video per micro-batch) - and are counted.
- offline: embeddings come from `longrl embed-cache build` (training.grpo.embed_cache); no
  decoding, no vision calls. Needs a frozen vision tower whose fingerprint matches the cache.
- pixels: every forward pass encodes every row's pixels again (the reference's behaviour).

Every vision-tower call is counted so `vision_calls_per_video` is measured, not assumed. An
embedding whose video or shape does not match its prompt is an error, never replaced.

Decoding is taken off the step: `prefetch(records)` (the next step's records, from the
sampler's `peek`) decodes them in background threads while this step computes, and `prepare`
takes the finished result (a decode error then surfaces as the record's failure, as before).
The decoded-video store keeps uint8 frames at the model's frame size (a quarter of the float32
patches, rebuilt bit for bit); it is switched off when it cannot hit (`plan_store`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace

import torch

from data_gen.schema import QARecord
from data_gen.video_io import VideoError
from training.mm_batch import encode_videos
from training.video_inputs import (
    DecodedVideo,
    VideoPatches,
    VideoSampling,
    VisionSpec,
    load_video_frames,
    load_video_patches,
)


@dataclass
class StepVideo:
    """One unique video of a step: its shape, its pixels (unless offline), its embedding."""

    key: str
    video_id: str
    grid_thw: tuple[int, int, int]
    second_per_grid_t: float
    merge_size: int
    patches: VideoPatches | None = None
    embeds: torch.Tensor | None = None  # [num_tokens, hidden], no grad
    ref_embeds: torch.Tensor | None = None  # the reference's, when its vision tower differs
    timestamps_s: list[float] = field(default_factory=list)  # sampled frames' (Qwen3-VL prompt text)
    frame_groups: bool = False  # laid out as timestamped frame groups (training.models.qwen3_vl)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w // (self.merge_size**2)

    @property
    def pixel_values(self) -> torch.Tensor:  # what mm_batch.collate reads
        if self.patches is None:
            raise ValueError(f"video {self.video_id}: no pixels (offline embeddings)")
        return self.patches.pixel_values


_digests: dict[str, str] = {}
MIN_STORE_HIT = 0.01  # below this expected hit rate the decoded-video store is not kept


def video_digest(record: QARecord) -> str:
    """The record's sha256, or the file's (memoised) when the record carries none."""
    if record.video_digest:
        return record.video_digest
    if record.video_path not in _digests:
        from data_gen.synth import file_digest

        try:
            _digests[record.video_path] = file_digest(record.video_path)
        except OSError as exc:
            raise VideoError(record.video_path, f"cannot read: {exc}") from exc
    return _digests[record.video_path]


def video_key(record: QARecord, sampling: VideoSampling, spec: VisionSpec) -> str:
    """Identity of a video input: file content, clip span, frame sampling, pixel layout."""
    end = record.clip_end_s if record.clip_end_s > record.clip_start_s else None
    payload = json.dumps([video_digest(record), record.clip_start_s, end, asdict(sampling),
                          asdict(spec)], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def sampling_for(record: QARecord, sampling: VideoSampling, use_record_frames: bool) -> VideoSampling:
    """The configured sampling, or the record's own num_frames / sample_fps when asked (as SFT)."""
    if use_record_frames and record.num_frames > 0:
        return replace(sampling, num_frames=record.num_frames, fps=0.0)
    if use_record_frames and record.sample_fps > 0:
        return replace(sampling, fps=record.sample_fps)
    return sampling


def load_patches(record: QARecord, sampling: VideoSampling, spec: VisionSpec) -> VideoPatches:
    end = record.clip_end_s if record.clip_end_s > record.clip_start_s else None
    return load_video_patches(record.video_path, sampling, spec, record.clip_start_s, end)


def load_decoded(record: QARecord, sampling: VideoSampling, spec: VisionSpec) -> DecodedVideo:
    end = record.clip_end_s if record.clip_end_s > record.clip_start_s else None
    return load_video_frames(record.video_path, sampling, spec, record.clip_start_s, end)


class VideoEmbedder:
    def __init__(self, model, mode: str, sampling: VideoSampling, spec: VisionSpec,
                 trainable_vision: bool, store_mb: int = 2048, offline=None,
                 use_record_frames: bool = False, prefetch_workers: int = 0) -> None:
        self.model, self.mode = model, mode
        self.sampling, self.spec = sampling, spec
        self.use_record_frames = use_record_frames
        self.trainable_vision = trainable_vision
        self.offline = offline  # embed_cache.EmbeddingCache in offline mode
        # Decoded videos survive across steps (LRU, bounded in bytes: one 512-frame video at
        # Qwen's default pixel budget is ~250 MB of uint8 frames, ~1 GB as float32 patches).
        self.store: OrderedDict[str, DecodedVideo] = OrderedDict()
        self.store_bytes = store_mb * 2**20
        self.store_on = store_mb > 0
        self.store_note = ""  # why the store was switched off (plan_store)
        self.stats = {"store_hits": 0, "store_misses": 0, "prefetched": 0}
        self._plan: tuple[int, int] | None = None  # (records, distinct video spans) of the split
        self._pool = (ThreadPoolExecutor(prefetch_workers, thread_name_prefix="video-prefetch")
                      if prefetch_workers > 0 and mode != "offline" else None)
        self._pending: dict[str, Future] = {}  # key -> decode in flight (prefetch)
        self.calls = 0  # vision-tower encodings of one video, this step
        self.step_videos: dict[str, StepVideo] = {}  # unique videos of this step

    def begin_step(self) -> None:
        self.calls = 0
        self.step_videos = {}

    @property
    def unique(self) -> int:
        return len(self.step_videos)

    def no_video(self) -> StepVideo:
        """The StepVideo of a text-only record: zero tokens, an empty embedding, never encoded
        and not counted among the step's videos."""
        from training.mm_batch import base_model

        width = base_model(self.model).get_input_embeddings().embedding_dim
        return StepVideo("no-video", "", (0, 0, 0), 0.0, 1, embeds=torch.zeros((0, width)),
                         ref_embeds=torch.zeros((0, width)))

    def prepare(self, records: Sequence[QARecord]) -> tuple[dict[str, StepVideo], dict[str, str]]:
        """StepVideo per record id (shared by records of the same video) and failures by id."""
        new: dict[str, StepVideo] = {}
        out: dict[str, StepVideo] = {}
        failures: dict[str, str] = {}
        for rec in records:
            if not rec.has_video:
                out[rec.id] = self.no_video()
                continue
            try:
                key = video_key(rec, self._sampling(rec), self.spec)
                if key not in self.step_videos and key not in new:
                    new[key] = self._load(rec, key)
                out[rec.id] = self.step_videos.get(key) or new[key]
            except (VideoError, OSError, ValueError) as exc:
                failures[rec.id] = f"video {rec.video_id} ({rec.video_path}): {exc}"
        if self.mode == "online":
            self._encode_once(list(new.values()))
        self.step_videos.update(new)
        return out, failures

    def plan_store(self, records: Sequence[QARecord]) -> None:
        """Note how many records and distinct video spans the split has, for `store_hit_estimate`
        (checked at the first decode, when a video's size is known)."""
        spans = Counter((r.video_path, r.clip_start_s, r.clip_end_s) for r in records
                        if getattr(r, "has_video", True))
        self._plan = (sum(spans.values()), len(spans)) if spans else None

    @staticmethod
    def store_hit_estimate(records: int, distinct: int, capacity: int) -> float:
        """Expected share of loads the store serves, the sampler drawing records in a shuffled
        order each epoch: 1 once every video fits (from the second epoch on); otherwise a load
        hits when it repeats a video of the epoch (1 - distinct/records of the draws) still held
        (about capacity/distinct of them in random order). bench/bench_video_store.py checks it
        against the sampler's real order."""
        if capacity >= distinct:
            return 1.0
        return (capacity / distinct) * (1.0 - distinct / records)

    def prefetch(self, records: Sequence[QARecord]) -> None:
        """Start decoding `records`' videos in the background (those not stored, in flight or
        in this step). Decodes asked earlier and not in `records` are dropped."""
        if self._pool is None:
            return
        want: dict[str, QARecord] = {}
        for rec in records:
            if not getattr(rec, "has_video", True):
                continue
            try:
                key = video_key(rec, self._sampling(rec), self.spec)
            except (VideoError, OSError, ValueError):
                continue  # prepare records the failure
            if key not in self.store and key not in self.step_videos:
                want.setdefault(key, rec)
        for key in [k for k in self._pending if k not in want]:
            self._pending.pop(key).cancel()
        for key, rec in want.items():
            if key not in self._pending:
                self._pending[key] = self._pool.submit(load_decoded, rec, self._sampling(rec), self.spec)

    def drop_prefetch(self) -> None:
        """Forget every prefetch: queued ones are cancelled, running ones waited for and dropped."""
        pending, self._pending = list(self._pending.values()), {}
        for f in pending:
            f.cancel()
        wait(pending)

    def close(self) -> None:
        if self._pool is not None:
            for f in self._pending.values():
                f.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)
            self._pool = None

    def _load(self, rec: QARecord, key: str) -> StepVideo:
        if self.mode == "offline":
            return self.offline.get(key, rec)
        decoded = self.store.get(key)
        if decoded is not None:
            self.stats["store_hits"] += 1
            self.store.move_to_end(key)
        else:
            self.stats["store_misses"] += 1
            pending = self._pending.pop(key, None)
            if pending is not None:
                self.stats["prefetched"] += 1
                decoded = pending.result()  # a decode error raises here: the record's failure
            else:
                decoded = load_decoded(rec, self._sampling(rec), self.spec)
            self._remember(key, decoded)
        patches = decoded.to_patches(self.spec)
        return StepVideo(key, rec.video_id, tuple(patches.grid_thw), patches.second_per_grid_t,
                         patches.merge_size, patches=patches, timestamps_s=list(patches.timestamps_s),
                         frame_groups=patches.frame_groups)

    def _remember(self, key: str, decoded: DecodedVideo) -> None:
        if not self.store_on:
            return
        if self._plan is not None and not self.store:
            records, distinct = self._plan
            capacity = self.store_bytes // max(decoded.nbytes, 1)
            est = self.store_hit_estimate(records, distinct, capacity)
            if est < MIN_STORE_HIT:
                self.store_on, self.store_note = False, (
                    f"decoded-video store off: it holds ~{capacity} of the {distinct} videos "
                    f"({records} records), an expected hit rate of {est:.2%} "
                    f"(< {MIN_STORE_HIT:.0%}); raise video.decoded_cache_mb to keep it")
                return
        self.store[key] = decoded
        total = sum(d.nbytes for d in self.store.values())
        while len(self.store) > 1 and total > self.store_bytes:
            total -= self.store.popitem(last=False)[1].nbytes

    def _sampling(self, rec: QARecord) -> VideoSampling:
        return sampling_for(rec, self.sampling, self.use_record_frames)

    def _encode(self, videos: Sequence[StepVideo], grad: bool) -> list[torch.Tensor]:
        if any(v.num_tokens == 0 for v in videos):  # text-only rows keep their empty embedding
            real = [v for v in videos if v.num_tokens]
            it = iter(self._encode(real, grad))
            return [next(it) if v.num_tokens else v.embeds for v in videos]  # type: ignore[misc]
        if not videos:
            return []
        device = next(self.model.parameters()).device
        pixels = torch.cat([v.pixel_values for v in videos]).to(device)
        grid = torch.tensor([v.grid_thw for v in videos], dtype=torch.long, device=device)
        self.calls += len(videos)
        with torch.set_grad_enabled(grad):
            embeds = encode_videos(self.model, pixels, grid)
        for v, e in zip(videos, embeds, strict=True):
            if e.shape[0] != v.num_tokens:
                raise ValueError(f"video {v.video_id}: vision tower gave {e.shape[0]} tokens, "
                                 f"grid {v.grid_thw} implies {v.num_tokens}")
        return embeds

    def _encode_once(self, videos: list[StepVideo]) -> None:
        for v, e in zip(videos, self._encode(videos, grad=False), strict=True):
            v.embeds = e.detach()

    def rollout_embeds(self, videos: Sequence[StepVideo]) -> list[torch.Tensor]:
        """Embeddings for rollout rows. Pixels mode encodes each prompt's video once (as a
        rollout engine sampling n=G per prompt does)."""
        if self.mode != "pixels":
            return [v.embeds for v in videos]  # type: ignore[misc]
        cache: dict[int, torch.Tensor] = {}
        out = []
        for v in videos:
            if id(v) not in cache:
                cache[id(v)] = self._encode([v], grad=False)[0]
            out.append(cache[id(v)])
        return out

    def row_embeds(self, videos: Sequence[StepVideo], grad: bool = False) -> list[torch.Tensor]:
        """Embeddings for the rows of one training forward pass.

        `grad=True` is the update pass: a trainable vision tower must see gradients, so its
        videos are encoded again (once per unique video of the micro-batch)."""
        if self.mode == "pixels":
            return self._encode(videos, grad=grad and self.trainable_vision)
        if grad and self.trainable_vision:
            uniq = list({id(v): v for v in videos}.values())
            fresh = dict(zip([id(v) for v in uniq], self._encode(uniq, grad=True), strict=True))
            return [fresh[id(v)] for v in videos]
        return [v.embeds for v in videos]  # type: ignore[misc]

    @property
    def calls_per_video(self) -> float:
        return self.calls / max(self.unique, 1)
