"""Request throughput of data_gen.llm_client.ChatEndpoint against an OpenAI-compatible server with
a fixed latency, next to the bound concurrency / latency (target: >= 90 % of it).

The server (tests/fixtures/openai_server.py) runs in its own process so it does not share the
client's interpreter; it answers every request after exactly `latency` seconds.

    .venv/bin/python bench/bench_requests.py [--seconds 3] [--configs 8x0.1,32x0.1,64x0.2]
        [--repeat 3] [--min-ratio 0.9]

Each configuration is measured --repeat times, interleaved (every repeat runs every
configuration once, against its own server); min and median rate are reported. --min-ratio R:
exit 1 when a target configuration's median rate is below R x its bound (the regression check).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_gen.llm_client import ChatEndpoint, ClientSettings  # noqa: E402


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures.openai_server", "--latency", str(latency)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"server did not start: {url!r}")
    return proc, url


async def measure(url: str, concurrency: int, n: int) -> tuple[float, int]:
    ep = ChatEndpoint(url, "bench", settings=ClientSettings(concurrency=concurrency, timeout_s=30))
    msgs = [[{"role": "user", "content": f"q{i}"}] for i in range(n)]
    await asyncio.gather(*[ep.chat(m) for m in msgs[:concurrency]])  # warm the connection pool
    t0 = time.perf_counter()
    await asyncio.gather(*[ep.chat(m) for m in msgs])
    elapsed = time.perf_counter() - t0
    await ep.aclose()
    return elapsed, ep.stats.retries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=16.0, help="target length of each measurement")
    # Real caption requests take seconds and reasoning-model QA requests tens of seconds: the
    # target configurations. Each request costs the client ~3 ms of CPU (openai + httpx), so a
    # burst of C requests takes C x 3 ms or more (when the cores are shared) to issue; the stress
    # configuration (short latency, high concurrency) shows where that stops being small.
    ap.add_argument("--configs", default="8x1,32x4,64x8", help="target CONCURRENCYxLATENCY,...")
    ap.add_argument("--stress", default="128x4", help="stress configurations (reported, not targets)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--min-ratio", type=float, default=0.0, help="fail below this median/bound ratio")
    args = ap.parse_args()
    proc, url = start_server(0.0)
    try:
        elapsed, _ = asyncio.run(measure(url, 32, 400))
    finally:
        proc.kill()
        proc.wait()
    print(f"CPU ceiling of client + server on this machine (latency 0, concurrency 32): "
          f"{400 / elapsed:.0f} req/s")
    print(f"{'':6s} {'concurrency':>11s} {'latency s':>9s} {'requests':>8s} {'bound req/s':>11s} "
          f"{'min req/s':>10s} {'median req/s':>12s} {'ratio':>6s} {'retries':>7s}   ({args.repeat} interleaved repeats)")
    runs = [("target", c) for c in args.configs.split(",") if c] + [("stress", c) for c in args.stress.split(",") if c]
    rates: dict[str, list[float]] = {spec: [] for _, spec in runs}
    retries: dict[str, int] = dict.fromkeys(rates, 0)
    sizes: dict[str, int] = {}
    for _ in range(args.repeat):
        for _kind, spec in runs:
            c_text, l_text = spec.split("x")
            concurrency, latency = int(c_text), float(l_text)
            bound = concurrency / latency
            n = sizes.setdefault(spec, max(concurrency, int(bound * args.seconds) // concurrency * concurrency))
            proc, url = start_server(latency)
            try:
                elapsed, r = asyncio.run(measure(url, concurrency, n))
            finally:
                proc.kill()
                proc.wait()
            rates[spec].append(n / elapsed)
            retries[spec] += r
    worst = 1.0
    for kind, spec in runs:
        c_text, l_text = spec.split("x")
        bound = int(c_text) / float(l_text)
        med = statistics.median(rates[spec])
        if kind == "target":
            worst = min(worst, med / bound)
        print(f"{kind:6s} {int(c_text):11d} {float(l_text):9.3f} {sizes[spec]:8d} {bound:11.1f} "
              f"{min(rates[spec]):10.1f} {med:12.1f} {med / bound:6.1%} {retries[spec]:7d}")
    print(f"worst target ratio (median) {worst:.1%} (target >= 90 %)")
    if args.min_ratio and worst < args.min_ratio:
        print(f"regression check: FAILED (below {args.min_ratio:.0%})")
        sys.exit(1)


if __name__ == "__main__":
    main()
