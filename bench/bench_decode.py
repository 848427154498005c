"""Frame sampling speed: PyAV keyframe-aware seeking (the default) vs PyAV sequential decoding vs
opencv seeking vs opencv sequential grab, on mp4v and H.264 files, uniform 16 and 64 frames.

Every backend's frames are checked to be identical to sequential decoding (and to carry the
right frame number, written into each frame as a barcode) before it is timed.

    .venv/bin/python bench/bench_decode.py [--seconds 60] [--size 640x360] [--fps 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_gen.video_io import (  # noqa: E402
    BACKENDS,
    DEFAULT_BACKEND,
    _index,
    probe_video,
    read_frames,
    sample_indices,
)
from tests.fixtures.barcode import read_barcode, write_barcode_video  # noqa: E402


def write(path: Path, codec: str, n: int, w: int, h: int, fps: int, gop: int = 0) -> Path:
    """A barcode video; x264 at crf 23 (its default quality), mp4v through opencv."""
    return write_barcode_video(path, n, codec=codec, fps=fps, gop=gop, size=(w, h), bits=BITS, crf=23)

BITS = 16  # frame numbers up to 65535: a minute at 30 fps needs 11


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    n = int(args.seconds * args.fps)
    tmp = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    files = {
        "mp4v (opencv, GOP 12)": write(tmp / "a.mp4", "mp4v", n, w, h, args.fps),
        "H.264 (x264 default GOP 250)": write(tmp / "b.mp4", "h264", n, w, h, args.fps),
        f"H.264 (GOP {args.fps}, 1 s)": write(tmp / "c.mp4", "h264", n, w, h, args.fps, gop=args.fps),
    }
    print(f"{args.seconds:.0f} s, {w}x{h}, {args.fps} fps ({n} frames); best of {args.repeat}; "
          f"ms per call (ratio = backend time / {DEFAULT_BACKEND} time)")
    header = f"{'file':32s} {'frames':>6s} " + " ".join(f"{b:>18s}" for b in BACKENDS)
    print(header)
    for name, path in files.items():
        info = probe_video(path)
        _index(path)  # the packet index is built once per file (cached), as in real use
        for count in (16, 64):
            idx = sample_indices(info, num_frames=count)
            ref = read_frames(path, idx, backend="pyav-seq")
            assert [read_barcode(f, BITS) for f in ref] == idx.tolist(), f"{name}: barcodes do not match"
            times = {}
            for b in BACKENDS:
                got = read_frames(path, idx, backend=b)
                assert np.array_equal(got, ref), f"{name} {b}: frames differ from sequential decoding"
                best = float("inf")
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    read_frames(path, idx, backend=b)
                    best = min(best, time.perf_counter() - t0)
                times[b] = best * 1000
            base = times[DEFAULT_BACKEND]
            cells = " ".join(f"{times[b]:8.1f} ({times[b] / base:4.2f}x)" for b in BACKENDS)
            print(f"{name:32s} {count:6d} {cells}")
    t0 = time.perf_counter()
    for path in files.values():
        probe_video(path)
    print(f"probe_video (cached index, first+last frame decoded): "
          f"{(time.perf_counter() - t0) / len(files) * 1000:.1f} ms per file")


if __name__ == "__main__":
    main()
