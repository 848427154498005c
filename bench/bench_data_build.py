"""Data build at LongVideo-Reason scale (issue 18.7, issue 12): peak memory of `longrl data build`
against a slow captioner, 10 -> 100 -> 1,000 videos, bounded pipeline vs the previous unbounded
behaviour, side by side; and the per-video CPU cost of probe / decode / encode with the
CPU-hours and workers it implies for 18K videos.

Memory: each build runs in its own process (peak RSS = ru_maxrss of that process); the scripted
OpenAI-compatible server runs in another, answering caption requests after --caption-latency
seconds with --concurrency requests in flight (far slower than decoding, as a real captioner
is) and QA requests at once. "bounded" is the default build (caption_decode=stream, at most
concurrency + 2 x decode_workers clips alive); "unbounded" is the previous behaviour
(caption_decode=per-clip and caption_prefetch without limit: every clip is decoded and encoded
as soon as a decode thread is free and waits for a request slot holding its JPEGs).

    .venv/bin/python bench/bench_data_build.py [--videos 10,100,1000] [--max-growth 1.15]
    .venv/bin/python bench/bench_data_build.py --costs-only [--cost-seconds 120]

--max-growth R: exit 1 when the bounded build's caption-phase peak RSS at the most videos exceeds
R x its peak at the fewest (the regression check). The whole build's peak is printed too: after
the captions, what grows is the records themselves (QA sets, kept questions, the datasets
written), which are the output.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = {"bounded": {"caption_decode": "stream", "caption_prefetch": -1},
         "unbounded": {"caption_decode": "per-clip", "caption_prefetch": 10**9}}


def make_videos(folder: Path, n: int, base: list[Path]) -> None:
    """n distinct files: copies of a few real videos with a unique tail (other bytes, so the
    build does not reject them as duplicates; the tail is ignored by the demuxer)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        data = base[i % len(base)].read_bytes()
        (folder / f"v{i:05d}.mp4").write_bytes(data + i.to_bytes(8, "little"))


def base_videos(folder: Path, count: int, seconds: float, fps: int, size: tuple[int, int]) -> list[Path]:
    """Textured H.264 videos (x264 default GOP), `count` different ones."""
    import av
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    out = []
    for k in range(count):
        path = folder / f"base{k}.mp4"
        rng = np.random.default_rng(k)
        tex = rng.integers(0, 255, (h, w, 3), np.uint8)
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=fps)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.options = {"preset": "veryfast", "crf": "23"}
            for i in range(int(seconds * fps)):
                frame = np.roll(tex, (3 * i, 5 * i), axis=(0, 1))
                for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        out.append(path)
    return out


# -- the server process ---------------------------------------------------------------------
def serve(caption_latency: float) -> None:
    from tests.fixtures.data_gen import FakeLVRModel
    from tests.fixtures.openai_server import ScriptedOpenAIServer

    model = FakeLVRModel()

    def responder(body: dict, i: int) -> str:
        if body["messages"][0]["content"].startswith("You describe short video clips"):
            time.sleep(caption_latency)  # a slow captioner; QA answers at once
        return model(body, i)

    server = ScriptedOpenAIServer()
    server.responder = responder
    print(server.url, flush=True)
    server._httpd.serve_forever()


# -- one build per process ------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    from data_gen.build import run_build
    from data_gen.build_config import BuildConfig

    cfg = BuildConfig(videos=args.child_videos, out=args.child_out, annotator="llm", progress=False,
                      frames_per_clip=8, frame_max_pixels=640 * 360, jpeg_quality=90, questions_per_category=1,
                      decode_workers=2, **MODES[args.mode])
    for ep in (cfg.captioner, cfg.reasoner):
        ep.url, ep.model, ep.api_key_env = args.url, "scripted", "BENCH_NO_KEY"
    cfg.client.concurrency = args.concurrency
    samples: list[tuple[float, float]] = []  # (time, RSS MB) every 20 ms
    stop = threading.Event()

    def sample() -> None:
        page = os.sysconf("SC_PAGE_SIZE") / 2**20
        with open("/proc/self/statm") as f:
            while not stop.is_set():
                f.seek(0)
                samples.append((time.perf_counter(), int(f.read().split()[1]) * page))
                stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    result = run_build(cfg)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sec = result.summary["seconds"]  # phases run one after the other: the caption phase's window
    start = t0 + sec["probe"]
    caption_peak = max(m for t, m in samples if start <= t <= start + sec["caption"])
    pipe = result.summary["pipeline"]
    print(json.dumps({"peak_mb": peak_mb, "caption_peak_mb": caption_peak, "wall_s": wall,
                      "clips": result.summary["clips"], "max_alive": pipe["max_alive"], "bound": pipe["bound"],
                      "decode_s": pipe["decode_s"]}))


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--caption-latency", str(latency)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"server did not start: {url!r}")
    return proc, url


def run_child(mode: str, videos: Path, out: Path, url: str, concurrency: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run([sys.executable, __file__, "--child", "--mode", mode, "--child-videos", str(videos),
                          "--child-out", str(out), "--url", url, "--concurrency", str(concurrency)],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    if res.returncode:
        raise RuntimeError(f"{mode} build failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- per-video costs --------------------------------------------------------------------------
def costs(tmp: Path, seconds: float) -> list[dict]:
    """CPU seconds per video minute of probe (+ sha256), decode (one pass, 10 s clips x 8
    frames) and JPEG encode (shrunk to 448x448 px), on 30 fps H.264 with x264's default GOP."""
    from data_gen.clip_reader import ReaderStats, iter_clips
    from data_gen.sources import clip_spans, jpeg_urls, probe
    from data_gen.video_io import sample_indices

    rows = []
    for size in ((640, 360), (1280, 720)):
        path = base_videos(tmp / f"cost{size[0]}", 1, seconds, 30, size)[0]
        t = time.process_time()
        item = probe("cost", path)
        probe_s = time.process_time() - t
        clips = [sample_indices(item.info, num_frames=8, start_s=a, end_s=b)
                 for a, b in clip_spans(item.duration_s, 10.0, 2.0)]
        decode_s = encode_s = 0.0
        stats = ReaderStats()
        gen = iter_clips(path, clips, stats)
        while True:
            t = time.process_time()
            got = next(gen, None)
            decode_s += time.process_time() - t
            if got is None:
                break
            t = time.process_time()
            jpeg_urls(str(path), got[1], 448 * 448, 85)
            encode_s += time.process_time() - t
        minutes = item.duration_s / 60
        rows.append({"size": f"{size[0]}x{size[1]}", "probe": probe_s / minutes, "decode": decode_s / minutes,
                     "encode": encode_s / minutes, "decoded_frames": stats.decoded, "frames": item.info.frame_count})
    return rows


def print_costs(rows: list[dict]) -> None:
    print("\nper-video CPU cost (process CPU seconds per video minute; 30 fps H.264, GOP 250, "
          "10 s clips x 8 frames, one decode pass per video)")
    print(f"{'size':>9s} {'probe+sha':>9s} {'decode':>7s} {'encode':>7s} {'total':>7s} {'decoded/frames':>15s}")
    for r in rows:
        total = r["probe"] + r["decode"] + r["encode"]
        print(f"{r['size']:>9s} {r['probe']:9.2f} {r['decode']:7.2f} {r['encode']:7.2f} {total:7.2f} "
              f"{r['decoded_frames']:>7d}/{r['frames']:<7d}")
    print("\n18K videos: CPU-hours of probe+decode+encode = 18,000 x minutes per video x total / 3600")
    print(f"{'size':>9s} " + " ".join(f"{f'{m} min avg':>12s}" for m in (1, 5, 15, 60)))
    for r in rows:
        total = r["probe"] + r["decode"] + r["encode"]
        print(f"{r['size']:>9s} " + " ".join(f"{18000 * m * total / 3600:12.0f}" for m in (1, 5, 15, 60)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", default="10,100,1000", help="numbers of videos, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each video (10 s clips)")
    ap.add_argument("--fps", type=int, default=1, help="frame rate of the memory-bench videos (low: cheap to decode)")
    ap.add_argument("--size", default="320x180", help="frame size of the memory-bench videos")
    ap.add_argument("--caption-latency", type=float, default=0.4)
    ap.add_argument("--concurrency", type=int, default=4, help="caption requests in flight")
    ap.add_argument("--modes", default="bounded,unbounded")
    ap.add_argument("--max-growth", type=float, default=0.0, help="fail if bounded peak grows more than this")
    ap.add_argument("--costs-only", action="store_true")
    ap.add_argument("--cost-seconds", type=float, default=120.0)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--mode", "--child-videos", "--child-out", "--url"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.caption_latency)
    if args.child:
        return child(args)
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_build_"))
    try:
        if not args.costs_only:
            failed = bench_memory(args, tmp)
        else:
            failed = False
        print_costs(costs(tmp, args.cost_seconds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        sys.exit(1)


def bench_memory(args: argparse.Namespace, tmp: Path) -> bool:
    counts = [int(v) for v in args.videos.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    size = tuple(int(v) for v in args.size.split("x"))
    base = base_videos(tmp / "base", 8, args.seconds, args.fps, size)
    rate = args.concurrency / args.caption_latency
    print(f"videos of {args.seconds:.0f} s, {args.size}, {args.fps} fps, H.264 (textured); 10 s clips x 8 frames as JPEG q90; "
          f"captioner: {args.concurrency} in flight x {args.caption_latency} s = {rate:.0f} clips/s; "
          f"2 decode threads; peak RSS of the build process")
    print("MB: peak RSS of the whole build / of its caption phase; alive: most clips decoded and not yet "
          "answered / the bound; s: wall seconds")
    print(f"{'videos':>6s} {'clips':>6s} " + " ".join(
        f"{m + ' MB':>18s} {m + ' alive':>15s} {m + ' s':>12s}" for m in modes)
        + (f" {'unbounded/bounded caption MB':>28s}" if len(modes) == 2 else ""))
    results: dict[str, dict[int, dict]] = {m: {} for m in modes}
    proc, url = start_server(args.caption_latency)
    try:
        for n in counts:
            folder = tmp / f"videos{n}"
            make_videos(folder, n, base)
            row = {}
            for m in modes:  # interleaved: each count runs both modes back to back
                row[m] = results[m][n] = run_child(m, folder, tmp / f"out_{m}_{n}", url, args.concurrency)
            cells = " ".join(f"{row[m]['peak_mb']:12.0f}/{row[m]['caption_peak_mb']:<5.0f} {row[m]['max_alive']:>9d}/"
                             f"{row[m]['bound'] if row[m]['bound'] < 10**6 else 'none':<5} "
                             f"{row[m]['wall_s']:12.1f}" for m in modes)
            ratio = (f" {row[modes[1]]['caption_peak_mb'] / row[modes[0]]['caption_peak_mb']:27.2f}x"
                     if len(modes) == 2 else "")
            print(f"{n:6d} {row[modes[0]]['clips']:6d} {cells}{ratio}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        proc.kill()
        proc.wait()
    failed = False
    for m in modes:
        first, last = results[m][counts[0]], results[m][counts[-1]]
        growth = last["caption_peak_mb"] / first["caption_peak_mb"]
        verdict = ""
        if m == "bounded" and args.max_growth:
            failed = growth > args.max_growth
            verdict = f" (limit {args.max_growth:.2f}x: {'FAIL' if failed else 'ok'})"
        print(f"{m}: {counts[-1]} videos / {counts[0]} videos: caption-phase peak {growth:.2f}x{verdict}, "
              f"whole build {last['peak_mb'] / first['peak_mb']:.2f}x")
    return failed


if __name__ == "__main__":
    main()
