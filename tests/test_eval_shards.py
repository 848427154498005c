"""Data-parallel sharding (`--shard i/n`): shards answer disjoint whole units, the last to finish
merges and scores exactly as one unsharded run (tiny Qwen2.5-VL, hf engine), a plain run merges
what shards have and answers the rest without re-asking, two shard processes at once over the
openai engine merge once, and bad specs are one clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from eval.task import get_task
from pipelines.cli import app

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--frames", "2", "--set", "min_pixels=784", "--set", "max_pixels=3136",
        "--set", "max_new_tokens=6", "--set", "bootstrap=50", "--limit", "6"]  # fmt: skip
SAME = ("qid", "raw_output", "extracted", "status", "correct", "prompt", "num_frames")


def _eval(model, data, out, *extra):
    args = ["eval", "--model", str(model), "--benchmark", "synth", "--data", str(data),
            "--out", str(out), *FAST, *extra]  # fmt: skip
    return CliRunner().invoke(app, args, catch_exceptions=False)


def _preds(path: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == len({r["qid"] for r in rows})  # never twice
    return {r["qid"]: {k: r.get(k) for k in SAME} for r in rows}


def _scores(m: dict) -> tuple:
    return m["score"], m["score_ci95"], m["overall"], m["breakdown"]


def test_shards_merge_into_what_one_run_gives(tiny_model_dir, synth_bench, tmp_path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "sharded"
    assert _eval(tiny_model_dir, synth_bench, ref).exit_code == 0
    r = _eval(tiny_model_dir, synth_bench, out, "--shard", "0/2", "--batch-size", "1")
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())  # rich wraps long lines
    assert "shard 0/2 answered 3" in said and "other shards still to answer" in said
    bench = out / "synth"
    assert not (bench / "metrics.json").exists() and not (out / "summary.json").exists()
    assert len(_preds(bench / "shards" / "predictions-0-of-2.jsonl")) == 3
    r = _eval(tiny_model_dir, synth_bench, out, "--shard", "1/2", "--batch-size", "2")
    assert r.exit_code == 0, r.output
    merged = json.loads((bench / "metrics.json").read_text())
    expect = json.loads((ref / "synth" / "metrics.json").read_text())
    assert _scores(merged) == _scores(expect)
    assert merged["merged_by_shard"]["shard"] == "1/2"
    assert _preds(bench / "predictions.jsonl") == _preds(ref / "synth" / "predictions.jsonl")
    assert json.loads((out / "summary.json").read_text())["benchmarks"]["synth"]["score"] == (
        expect["score"])
    assert not (bench / "shards" / "merge.lock").exists()
    # shards are disjoint and cover the benchmark
    a = _preds(bench / "shards" / "predictions-0-of-2.jsonl")
    b = _preds(bench / "shards" / "predictions-1-of-2.jsonl")
    assert not set(a) & set(b) and len(a) + len(b) == 6
    # a shard run again asks nothing and merges again to the same numbers
    r = _eval(tiny_model_dir, synth_bench, out, "--shard", "0/2")
    assert r.exit_code == 0 and _scores(json.loads((bench / "metrics.json").read_text())) == (
        _scores(expect))
    assert json.loads((bench / "metrics.json").read_text())["merged_by_shard"]["generated"] == 0


def test_a_plain_run_merges_and_answers_the_rest(tiny_model_dir, synth_bench, tmp_path) -> None:
    out = tmp_path / "o"
    assert _eval(tiny_model_dir, synth_bench, out, "--shard", "2/3").exit_code == 0
    shard = _preds(out / "synth" / "shards" / "predictions-2-of-3.jsonl")
    assert len(shard) == 2
    r = _eval(tiny_model_dir, synth_bench, out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "synth" / "metrics.json").read_text())
    assert m["absorbed_from_shards"] == 2 and m["generated"] == 4 and m["resumed"] == 2
    merged = _preds(out / "synth" / "predictions.jsonl")
    assert len(merged) == 6 and all(merged[q] == rec for q, rec in shard.items())
    # changed settings are refused while shard files exist, as for predictions.jsonl
    r = _eval(tiny_model_dir, synth_bench, tmp_path / "p", "--shard", "0/2")
    r = _eval(tiny_model_dir, synth_bench, tmp_path / "p", "--shard", "1/2", "--frames", "4")
    assert r.exit_code == 2 and "other settings" in " ".join(r.output.split())


def test_groups_stay_whole_and_shards_partition(make_benchmark) -> None:
    from eval.shards import shard_items

    task = get_task("vnbench")
    items = task.load(make_benchmark("vnbench"))
    parts = [shard_items(task, items, i, 2) for i in range(2)]
    assert sorted(it.qid for p in parts for it in p) == sorted(it.qid for it in items)
    for p in parts:  # one needle question (4 tries) per shard
        assert len(p) == 4 and len({it.group for it in p}) == 1


def test_bad_shard_options(tiny_model_dir, synth_bench, tmp_path) -> None:
    for spec in ("2/2", "a/b", "1/0", "-1/2"):
        r = _eval(tiny_model_dir, synth_bench, tmp_path, "--shard", spec)
        assert r.exit_code == 2 and "0 <= i < n" in " ".join(r.output.split()), (spec, r.output)
    r = _eval(tiny_model_dir, synth_bench, tmp_path, "--shard", "0/2", "--overwrite")
    assert r.exit_code == 2 and "other shards" in " ".join(r.output.split())


def test_two_shards_at_once_merge_once(openai_server, synth_bench, tmp_path) -> None:
    """Two shards running at the same time (threads here: subprocesses cost ~40 s of imports
    each on 2 cores; the merge lock is a file, the same across threads and processes)."""
    import threading

    from eval.engines.openai_engine import EndpointConfig
    from eval.runner import EvalConfig, evaluate

    openai_server.latency_s = 0.05
    openai_server.responder = lambda req, i: "A"
    out = tmp_path / "out"
    results: dict[int, object] = {}

    def shard(i: int) -> None:
        cfg = EvalConfig(model="scripted", engine="openai", benchmarks=["synth"],
                         data=str(synth_bench), out=str(out), frames=2, batch_size=2,
                         bootstrap=50, shard=f"{i}/2",
                         endpoint=EndpointConfig(base_url=openai_server.url))  # fmt: skip
        try:
            results[i] = evaluate(cfg)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, dict) for r in results.values()), results
    assert openai_server.max_in_flight >= 2  # the two shards really ran at the same time
    assert len(openai_server.requests()) == 12  # every question asked once, by one shard
    merged = [r for r in results.values() if r["benchmarks"]]
    assert len(merged) == 1 and merged[0]["benchmarks"]["synth"]["overall"]["n"] == 12
    m = json.loads((out / "synth" / "metrics.json").read_text())
    assert m["overall"]["n"] == 12 and m["merged_by_shard"]["shard"] in ("0/2", "1/2")
    assert len(_preds(out / "synth" / "predictions.jsonl")) == 12
    assert not (out / "synth" / "shards" / "merge.lock").exists()


def test_reading_another_shard_never_cuts_its_last_line(tmp_path) -> None:
    from eval.shards import shard_path, shard_records

    path = shard_path(tmp_path, 1, 2)
    path.parent.mkdir(parents=True)
    whole = json.dumps({"qid": "a", "status": "answered", "correct": True}) + "\n"
    path.write_text(whole + '{"qid": "b", "sta')  # its writer is mid-append
    assert list(shard_records(tmp_path)) == ["a"]
    assert path.read_text().endswith('{"qid": "b", "sta')  # left for the writer to finish


def test_a_lock_left_by_a_killed_merger_is_taken_over(tmp_path) -> None:
    import socket
    import subprocess
    import sys

    from eval.shards import MergeLock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    lock = tmp_path / "shards" / "merge.lock"
    lock.parent.mkdir()
    lock.write_text(f"{socket.gethostname()}:{dead}")  # its process has exited
    with MergeLock(tmp_path) as held:
        assert held.held and lock.read_text().endswith(f":{os.getpid()}")
        with MergeLock(tmp_path) as second:  # a live holder (this process) is respected
            assert not second.held
    assert not lock.exists()
    lock.write_text("another-host:1")  # another machine's holder: left alone
    with MergeLock(tmp_path) as other:
        assert not other.held
