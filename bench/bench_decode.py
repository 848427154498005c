"""Frame sampling speed: PyAV keyframe-aware seeking (the default) vs PyAV sequential decoding vs
opencv seeking vs opencv sequential grab (and decord, a peer library, when it is importable), on
mp4v and H.264 files, uniform 16 and 64 frames; then the caption phase's access pattern (10 s
clips x 8 frames over a whole video): one decoder pass per video (data_gen.clip_reader) vs one
read_frames call per clip (the path it replaces); and `probe_video` per file (first call in a
fresh process, which demuxes the packet index, and with the index cached).

Every backend's frames are checked against sequential decoding and the frame number drawn into
each frame (a barcode) before it is timed; a peer that returns other frames is reported as
inexact and timed anyway, never counted as a win. Timings are interleaved (each repeat runs
every backend once, in a rotating order) on a fixed set of CPUs, and reported as min and median.

    .venv/bin/python bench/bench_decode.py [--seconds 60] [--size 640x360] [--fps 30] [--repeat 5]
        [--cpus 1] [--backends pyav,pyav-seq,opencv-seq,decord] [--clips-only] [--probe-only]
        [--max-default-ratio 1.25] [--min-clip-speedup 1.1]

--max-default-ratio R: exit 1 when, on any row, the default backend's median is more than R x
the fastest exact backend's median. --min-clip-speedup S: exit 1 when one pass is not at least
S x faster (median) than per-clip reads on the GOP-250 file. decord: `pip install decord` (a
wheel from 2021; PYTHONPATH may point at a --target folder holding it).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_gen.clip_reader import ReaderStats, iter_clips  # noqa: E402
from data_gen.sources import clip_spans  # noqa: E402
from data_gen.video_io import BACKENDS, DEFAULT_BACKEND, probe_video, read_frames, sample_indices  # noqa: E402
from tests.fixtures.barcode import read_barcode, write_barcode_video  # noqa: E402

BITS = 16  # frame numbers up to 65535: a minute at 30 fps needs 11


def write(path: Path, codec: str, n: int, w: int, h: int, fps: int, gop: int = 0) -> Path:
    """A barcode video; x264 at crf 23 (its default quality), mp4v through opencv."""
    return write_barcode_video(path, n, codec=codec, fps=fps, gop=gop, size=(w, h), bits=BITS, crf=23)


def decord_reader() -> Callable | None:
    try:
        import decord
    except ImportError:
        return None
    decord.bridge.set_bridge("native")

    def read(path: Path, idx: np.ndarray) -> np.ndarray:
        vr = decord.VideoReader(str(path), num_threads=0)
        return vr.get_batch(idx.tolist()).asnumpy()

    return read


def timed(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """ms per call of each fn, interleaved: repeat r runs every fn once, order rotated by r."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeat):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append((time.perf_counter() - t0) * 1000)
    return times


# a fresh process times one probe_video call (import time excluded)
PROBE_CHILD = ("import sys, time; sys.path.insert(0, sys.argv[1]); from data_gen.video_io import probe_video; "
               "t = time.perf_counter(); probe_video(sys.argv[2]); print((time.perf_counter() - t) * 1000)")


def probe_section(files: dict[str, Path], repeat: int) -> None:
    print("\nprobe_video, ms per file: min, median; first call in a fresh process (demuxes the packet index, "
          "3 processes), then with the index cached")
    root = str(Path(__file__).resolve().parent.parent)
    for name, path in files.items():
        first = [float(subprocess.run([sys.executable, "-c", PROBE_CHILD, root, str(path)], capture_output=True,
                                      text=True, check=True).stdout) for _ in range(3)]
        later = timed({"probe": lambda p=path: probe_video(p)}, repeat)["probe"]
        print(f"{name:32s} first call {min(first):7.1f} {statistics.median(first):7.1f}   "
              f"index cached {min(later):7.1f} {statistics.median(later):7.1f}")


def cell(ts: list[float], base: float, note: str = "") -> str:
    med = statistics.median(ts)
    return f"{min(ts):7.1f} {med:7.1f} ({med / base:4.2f}x){note:2s}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cpus", type=int, default=1, help="CPUs the process may use (fixed: decoders' threads)")
    ap.add_argument("--backends", default=",".join(BACKENDS) + ",decord", help="which to time (pyav always)")
    ap.add_argument("--clips-only", action="store_true", help="only the caption access pattern section")
    ap.add_argument("--probe-only", action="store_true", help="only the probe_video section")
    ap.add_argument("--max-default-ratio", type=float, default=0.0)
    ap.add_argument("--min-clip-speedup", type=float, default=0.0)
    args = ap.parse_args()
    import cv2

    cpus = sorted(os.sched_getaffinity(0))[: max(1, args.cpus)]
    os.sched_setaffinity(0, cpus)
    cv2.setNumThreads(len(cpus))
    w, h = (int(v) for v in args.size.split("x"))
    n = int(args.seconds * args.fps)
    tmp = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    atexit.register(shutil.rmtree, tmp, True)  # the three videos (~22 MB) go with the process
    files = {
        "mp4v (opencv, GOP 12)": write(tmp / "a.mp4", "mp4v", n, w, h, args.fps),
        "H.264 (x264 default GOP 250)": write(tmp / "b.mp4", "h264", n, w, h, args.fps),
        f"H.264 (GOP {args.fps}, 1 s)": write(tmp / "c.mp4", "h264", n, w, h, args.fps, gop=args.fps),
    }
    peer = decord_reader()
    wanted = set(args.backends.split(",")) | {DEFAULT_BACKEND}
    readers: dict[str, Callable] = {b: (lambda p, i, b=b: read_frames(p, i, backend=b)) for b in BACKENDS
                                    if b in wanted}
    if peer and "decord" in wanted:
        readers["decord"] = peer
    failed, inexact = [], False
    if args.probe_only:
        probe_section(files, args.repeat)
        sys.exit(0)
    if args.clips_only:
        failed += clips_section(files, args)
        print("regression check: " + ("FAILED\n  " + "\n  ".join(failed) if failed else "ok"))
        sys.exit(1 if failed else 0)
    print(f"{args.seconds:.0f} s, {w}x{h}, {args.fps} fps ({n} frames); {args.repeat} interleaved repeats on "
          f"{len(cpus)} CPU(s); ms per call: min, median (median / {DEFAULT_BACKEND} median)"
          + ("" if peer else "; decord not importable (pip install decord), not compared"))
    print(f"{'file':32s} {'frames':>6s} " + " ".join(f"{b:>25s}" for b in readers))
    for name, path in files.items():
        info = probe_video(path)
        for count in (16, 64):
            idx = sample_indices(info, num_frames=count)
            ref = read_frames(path, idx, backend="pyav-seq")
            assert [read_barcode(f, BITS) for f in ref] == idx.tolist(), f"{name}: barcodes do not match"
            exact = {}
            for b, read in readers.items():
                got = read(path, idx)
                exact[b] = got.shape == ref.shape and np.array_equal(got, ref)
                if not exact[b] and b in BACKENDS:
                    raise AssertionError(f"{name} {b}: frames differ from sequential decoding")
            times = timed({b: (lambda r=read, p=path, i=idx: r(p, i)) for b, read in readers.items()}, args.repeat)
            base = statistics.median(times[DEFAULT_BACKEND])
            notes = {b: "" if exact[b] else " !" for b in readers}
            inexact = inexact or not all(exact.values())
            print(f"{name:32s} {count:6d} " + " ".join(cell(times[b], base, notes[b]) for b in readers))
            best = min(statistics.median(times[b]) for b in readers if exact[b])
            if args.max_default_ratio and base > args.max_default_ratio * best:
                failed.append(f"{name} {count}: {DEFAULT_BACKEND} {base:.0f} ms > {args.max_default_ratio} x {best:.0f}")
    if inexact:
        print("(! = decord returned other frames than the frame numbers asked for: not a valid result)")
    probe_section(files, args.repeat)
    failed += clips_section(files, args)
    print("regression check: " + ("FAILED\n  " + "\n  ".join(failed) if failed else "ok"))
    sys.exit(1 if failed else 0)


def clips_section(files: dict[str, Path], args: argparse.Namespace) -> list[str]:
    print(f"\ncaption access pattern: 10 s clips x 8 frames over the whole {args.seconds:.0f} s video; ms per video: "
          "min, median; frames decoded")
    print(f"{'file':32s} {'per-clip read_frames':>22s} {'one pass (clip_reader)':>24s} {'speed-up':>9s} "
          f"{'decoded':>8s}")
    failed = []
    for name, path in files.items():
        info = probe_video(path)
        clips = [sample_indices(info, num_frames=8, start_s=a, end_s=b)
                 for a, b in clip_spans(info.duration_s, 10.0, 2.0)]
        stats = ReaderStats()
        one = dict(iter_clips(path, clips, stats))
        for j, idx in enumerate(clips):
            assert np.array_equal(one[j], read_frames(path, idx)), f"{name} clip {j}: one pass differs"
        times = timed({"per-clip": lambda p=path, cs=clips: [read_frames(p, i) for i in cs],
                       "one-pass": lambda p=path, cs=clips: list(iter_clips(p, cs))}, args.repeat)
        per, one_ms = statistics.median(times["per-clip"]), statistics.median(times["one-pass"])
        print(f"{name:32s} {min(times['per-clip']):10.1f} {per:10.1f} {min(times['one-pass']):11.1f} "
              f"{one_ms:11.1f} {per / one_ms:8.2f}x {stats.decoded:8d}")
        if args.min_clip_speedup and "GOP 250" in name and per / one_ms < args.min_clip_speedup:
            failed.append(f"{name}: one pass only {per / one_ms:.2f}x faster than per-clip (< {args.min_clip_speedup})")
    return failed


if __name__ == "__main__":
    main()
