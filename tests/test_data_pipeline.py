"""The caption phase is one bounded pipeline (issue 18.7): against a slow server, decoding never
runs more than `client.concurrency + caption_prefetch` clips ahead of the answered requests (the
unbounded old behaviour, prefetch without limit, is shown to break that bound), and decoding each
video once gives exactly the requests and the dataset of the per-clip plain path."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from data_gen.build import Build, run_build
from data_gen.schema import SPLITS
from tests.fixtures.data_gen import FakeLVRModel
from tests.test_data_build import llm_config


def _caption_bodies(server) -> list[str]:
    return sorted(json.dumps(e["body"]["messages"], sort_keys=True) for e in server.log
                  if e["status"] == 200 and e["body"]["messages"][0]["content"].startswith("You describe"))


def _records(out: Path) -> dict[str, list[dict]]:
    return {s: sorted(pq.read_table(out / f"{s}.parquet").to_pylist(), key=lambda r: r["id"]) for s in SPLITS}


def test_stream_decode_equals_per_clip_decode(tmp_path, synth_dir, openai_server):
    openai_server.responder = FakeLVRModel()
    outs, bodies = {}, {}
    for mode in ("per-clip", "stream"):
        start = len(openai_server.log)
        cfg = llm_config(synth_dir, tmp_path / mode, openai_server.url, caption_decode=mode)
        cfg.clip_s = 4.0
        cfg.filter.answerer = "none"
        result = run_build(cfg)
        bodies[mode] = _caption_bodies(type("S", (), {"log": openai_server.log[start:]}))
        outs[mode] = _records(tmp_path / mode)
        reader = result.summary["pipeline"]["reader"]
        if mode == "stream":  # one container per video, nothing handed to the plain path
            assert reader["opens"] == 3 and reader["fallbacks"] == 0
        else:
            assert reader["opens"] == 0
    assert len(bodies["stream"]) == 3 * 8  # 30 s videos, 4 s clips, the 2 s tail merged
    assert bodies["stream"] == bodies["per-clip"]  # same frames, same JPEG bytes, same prompts
    assert outs["stream"] == outs["per-clip"] and sum(len(v) for v in outs["stream"].values()) > 0


def _max_ahead(trace: list[tuple[float, str]]) -> int:
    """The most clips decoded but not yet answered at any moment of the run."""
    ahead = worst = 0
    for _, event in sorted(trace):
        ahead += 1 if event == "decoded" else -1
        worst = max(worst, ahead)
    return worst


def _caption_run(tmp_path, synth_dir, server, name: str, prefetch: int) -> Build:
    cfg = llm_config(synth_dir, tmp_path / name, server.url, caption_prefetch=prefetch)
    cfg.clip_s = 2.0
    cfg.filter.answerer, cfg.client.concurrency, cfg.decode_workers = "none", 2, 2
    build = Build(cfg)
    build.pipeline.trace = []
    import asyncio

    async def captions_only():
        try:
            items = await build.videos()
            return await build.captions(items)
        finally:
            for ep in build.endpoints.values():
                await ep.aclose()

    caps = asyncio.run(captions_only())
    assert sum(len(v) for v in caps.values()) == 3 * 15
    return build


def test_decoding_waits_for_a_slow_server(tmp_path, synth_dir, openai_server):
    openai_server.responder = FakeLVRModel()
    openai_server.latency_s = 0.05  # 2 in flight: 40 req/s, far slower than decoding these clips
    bounded = _caption_run(tmp_path, synth_dir, openai_server, "bounded", prefetch=1)
    assert bounded.pipeline.bound == 3 and bounded.pipeline.max_alive <= 3
    assert _max_ahead(bounded.pipeline.trace) <= 3
    assert openai_server.max_in_flight <= 2
    # The old behaviour (every clip decoded as soon as a thread is free) breaks the bound: the
    # check above can fail.
    unbounded = _caption_run(tmp_path, synth_dir, openai_server, "unbounded", prefetch=10**6)
    assert _max_ahead(unbounded.pipeline.trace) > 3 * 3
    assert unbounded.pipeline.clips_decoded == bounded.pipeline.clips_decoded == 45
