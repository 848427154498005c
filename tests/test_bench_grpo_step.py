"""The GRPO step bench's harness: modes interleaved in rotated rounds after one warm-up each,
every block followed by its mode's clean-up, min/median per mode."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "bench_grpo_step.py"
    spec = importlib.util.spec_from_file_location("bench_grpo_step", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_interleave_rotates_rounds_and_cleans_up_after_each_block():
    bench = _bench()
    log: list[str] = []

    def mode(name, secs):
        it = iter(secs)
        return lambda: (log.append(name), {"s": next(it), "cpu": 1.0, "encode": 0.0, "rollout": 0.0,
                                             "logprob": 0.0, "update": 0.0})[1]

    modes = {"a": mode("a", [9, 1, 2, 3, 4]), "b": mode("b", [9, 5, 6, 7, 8])}
    runs = bench.interleave(modes, repeats=2, block=2, after_block={"a": lambda: log.append("a-done")})
    assert log == ["a", "a-done", "b",  # warm-ups
                   "a", "a", "a-done", "b", "b",  # round 1
                   "b", "b", "a", "a", "a-done"]  # round 2: order rotated
    assert [x["s"] for x in runs["a"]] == [1, 2, 3, 4]  # warm-up not timed
    s = bench.summary(runs["b"])
    assert (s["min"], s["median"], s["cpu_median"]) == (5, 6.5, 1.0)
