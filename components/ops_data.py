"""Inputs of the pipeline: videos (synthetic or a folder), the base model, the QA dataset.

Deterministic steps (cached by KFP): the same parameters give the same outputs, so a re-run of
the pipeline skips them. Their folders on the shared volume are keyed by a hash of their inputs,
never by the run id, so a cache hit still points at files that exist.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import CPU


@dsl.component(**CPU)
def video_fingerprint(source: str) -> str:
    """What a folder of videos holds (names, sizes, modification times), as a digest: the input
    that makes prepare_videos' and build_data's cache keys change when videos are added, removed
    or replaced (cached by the path alone, a grown folder silently reused the old dataset). Not
    cached; reads only directory entries. "synth": its parameters already say everything."""
    import hashlib
    from pathlib import Path

    if source == "synth":
        return "synth"
    folder = Path(source)
    if not folder.is_dir():
        return "missing"  # prepare_videos names the error
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    digest = f"{len(files)}-{h.hexdigest()[:16]}"
    print(f"{source}: {len(files)} files, fingerprint {digest}")
    return digest


@dsl.component(**CPU)
def prepare_videos(source: str, synth_videos: int, synth_minutes: float, synth_fps: float, synth_seed: int,
                   runs_root: str, videos: Output[Dataset], fingerprint: str = "",
                   synth_overrides: list = []):  # noqa: B006 - KFP parameter default
    """`source="synth"`: render procedural videos with `longrl synth` (`synth_overrides`: its
    config keys, e.g. a rung of the task ladder); otherwise `source` is a folder of videos (on the
    shared volume), recorded by reference (never copied). `fingerprint` (video_fingerprint) is
    part of the cache key and recorded in the artifact's metadata."""
    import hashlib
    from pathlib import Path

    from components.benchmark_launch import synth_argv
    from components.launch import (
        StepError,
        longrl_argv,
        output_dir,
        overrides_list,
        run_step,
        write_ref,
    )

    if source == "synth":
        sets = overrides_list(synth_overrides)
        fields = f"{synth_videos}|{synth_minutes}|{synth_fps}|{synth_seed}" + (f"|{sets}" if sets else "")
        key = hashlib.sha256(fields.encode()).hexdigest()[:16]  # without overrides: the key it always had
        out = output_dir(videos.path, runs_root, "cache", f"synth-{key}")
        run_step(longrl_argv(*synth_argv(out, synth_videos, synth_minutes, synth_fps, synth_seed, sets)))
        videos.metadata.update({"source": "synth", "videos": synth_videos, "minutes": synth_minutes,
                                "seed": synth_seed, "overrides": sets})  # fmt: skip
        return
    folder = Path(source)
    if not folder.is_dir():
        raise StepError(f"video source {source!r} is neither 'synth' nor an existing folder")
    write_ref(videos.path, folder)
    videos.metadata.update({"source": str(folder), "fingerprint": fingerprint})


@dsl.component(**CPU)
def prepare_benchmark(source: str, videos: Input[Dataset], dataset: Input[Dataset], eval_synth_videos: int,
                      eval_synth_seed: int, synth_minutes: float, synth_fps: float, synth_seed: int,
                      synth_overrides: list, runs_root: str, benchmark: Output[Dataset]):  # fmt: skip
    """What the evaluation reads (--data). `eval_synth_videos` = 0: the dataset (its eval split).
    Otherwise a held-out `longrl synth` benchmark (the `synth` eval task): that many videos
    rendered with the training videos' settings and `synth_overrides` but seed `eval_synth_seed`
    (refused when it equals `synth_seed`), less any video whose bytes equal a training video's."""
    import hashlib

    from components.benchmark_launch import (
        benchmark_summary,
        check_held_out,
        drop_seen_videos,
        synth_argv,
        synth_digests,
    )
    from components.launch import (
        longrl_argv,
        output_dir,
        overrides_list,
        resolve,
        run_step,
        write_ref,
    )

    if eval_synth_videos <= 0:
        write_ref(benchmark.path, resolve(dataset.path))
        benchmark.metadata.update({"benchmark": "dataset"})
        return
    check_held_out(source, synth_seed, eval_synth_seed)
    sets = overrides_list(synth_overrides)
    training = resolve(videos.path)
    fields = f"bench|{eval_synth_videos}|{synth_minutes}|{synth_fps}|{eval_synth_seed}|{sets}|{training}"
    out = output_dir(benchmark.path, runs_root, "cache", "bench-" + hashlib.sha256(fields.encode()).hexdigest()[:16])
    run_step(longrl_argv(*synth_argv(out, eval_synth_videos, synth_minutes, synth_fps, eval_synth_seed, sets)))
    gone = drop_seen_videos(out, synth_digests(training))
    held = benchmark_summary(out)
    print(f"held-out benchmark: seed {eval_synth_seed} (training videos: seed {synth_seed}), {held['videos']} videos, "
          f"{held['questions']} questions; {len(gone)} video(s) equal to a training video left out {gone or ''}")
    benchmark.metadata.update({"benchmark": "synth", "seed": eval_synth_seed, "training_seed": synth_seed,
                               "dropped_videos": gone, **held})  # fmt: skip


@dsl.component(**CPU)
def prepare_model(model: str, base_model: Output[Model]):
    """The base model: a Hugging Face folder (on the shared volume; referenced, not copied) or
    `tiny`, `tiny:SEED`, `tiny:SEED:ARCH`: a random tiny model written by `longrl model tiny
    --seed SEED --arch ARCH` (demo, tests; ARCH a video family such as qwen2_5_vl, the
    default, qwen2_vl or qwen3_vl); `tiny-learn:SEED[:ARCH]`: the same with `--preset learn`
    (the demo's model, sized to learn the synthetic ladder)."""
    import json
    from pathlib import Path

    from components.launch import (
        StepError,
        longrl_argv,
        run_step,
        tiny_model_preset,
        tiny_model_spec,
        write_ref,
    )

    tiny = tiny_model_spec(model)
    if tiny is not None:
        seed, arch = tiny
        preset = tiny_model_preset(model)
        run_step(longrl_argv("model", "tiny", "--out", base_model.path, "--seed", str(seed), "--arch", arch,
                             *(["--preset", preset] if preset else [])))  # fmt: skip
        config = json.loads((Path(base_model.path) / "config.json").read_text())
        base_model.metadata.update({"model": model, "model_type": config.get("model_type", "")})
        return
    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise StepError(f"base model {model!r} is not a Hugging Face model folder (no config.json)")
    write_ref(base_model.path, folder)
    config = json.loads((folder / "config.json").read_text())
    base_model.metadata.update({"model": model, "model_type": config.get("model_type", "")})


@dsl.component(**CPU)
def data_shard_indices(shards: int) -> list:
    """The ParallelFor's items: 0 .. shards-1. A single build (shards=1) still gets one item,
    whose shard task does nothing: kfp.local fails on an empty ParallelFor whose outputs are
    collected (a ValueError from its orchestrator), so the loop is never empty."""
    from components.launch import StepError

    if shards < 1:
        raise StepError(f"data_shards must be >= 1, got {shards}")
    return list(range(shards))


@dsl.component(**CPU)
def build_data_shard(videos: Input[Dataset], annotator: str, captioner_url: str, captioner_model: str,
                     reasoner_url: str, reasoner_model: str, overrides: list, runs_root: str,
                     mlflow_tracking_uri: str, mlflow_experiment: str, shard: int, shards: int,
                     part: Output[Dataset]):  # fmt: skip
    """Shard `shard` of `shards` of the build (`longrl data build --shard I/N`): the per-video
    phases for videos I, I+N, ... into OUT/shards/I-of-N.json. With shards=1 it does nothing
    (build_data builds everything)."""
    from pathlib import Path

    from components.data_launch import run_data_build

    if shards <= 1:
        Path(part.path).mkdir(parents=True, exist_ok=True)
        print("data_shards=1: build-data builds the whole dataset; nothing to do here")
        return
    endpoints = {"annotator": annotator, "captioner_url": captioner_url, "captioner_model": captioner_model,
                 "reasoner_url": reasoner_url, "reasoner_model": reasoner_model}  # fmt: skip
    run_data_build(videos.path, videos.metadata.get("fingerprint", ""), endpoints, overrides, runs_root,
                   mlflow_tracking_uri, mlflow_experiment, part, shard=shard, shards=shards)  # fmt: skip


@dsl.component(**CPU)
def build_data(videos: Input[Dataset], annotator: str, captioner_url: str, captioner_model: str,
               reasoner_url: str, reasoner_model: str, overrides: list, runs_root: str,
               mlflow_tracking_uri: str, mlflow_experiment: str, dataset: Output[Dataset],
               shards: int = 1, parts: Input[list[Dataset]] = None):  # fmt: skip
    """LongVideo-Reason generation (`longrl data build`): clips -> captions -> reasoning QA ->
    difficulty filter -> sft/rl/eval splits. API keys come from the pod's environment. With
    `shards` > 1 it merges the shard tasks' `parts` (`--merge-shards N`) instead: the same
    output as one build (data_gen/shards.py)."""
    from components.data_launch import run_data_build

    endpoints = {"annotator": annotator, "captioner_url": captioner_url, "captioner_model": captioner_model,
                 "reasoner_url": reasoner_url, "reasoner_model": reasoner_model}  # fmt: skip
    run_data_build(videos.path, videos.metadata.get("fingerprint", ""), endpoints, overrides, runs_root,
                   mlflow_tracking_uri, mlflow_experiment, dataset, shards=shards,
                   parts=[p.path for p in parts or []])  # fmt: skip
