"""The data steps' work (`longrl data build`): one whole build, one shard of it, or the merge of
the shards (issue 12, data generation at scale: a KFP ParallelFor of `--shard I/N` tasks, then
one `--merge-shards N` task; data_gen/shards.py says why the merged output equals one build).

Where each writes: the folder of a build is keyed by a hash of its inputs (never the run id, so
a cache hit points at files that exist). With `runs_root` on the shared volume every shard and
the merge use the same folder, so the shards share OUT/cache (a retried shard redoes only its
unfinished units) and each leaves OUT/shards/I-of-N.json where the merge reads it. With
`runs_root=""` (kfp.local) each task's folder is its own artifact; the merge copies the shard
files from the collected part artifacts into its own OUT/shards/ first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from components.launch import (
    StepError,
    longrl_argv,
    mlflow_env,
    output_dir,
    overrides_list,
    parent_run_id,
    resolve,
    run_step,
    tracking_uri,
)


def build_folder(artifact_path: str, src: Path, fingerprint: str, endpoints: dict[str, str], sets: list[str],
                 runs_root: str, shards: int) -> Path:  # fmt: skip
    """The build's output folder. The video folder's content (video_fingerprint) is part of the
    key: added videos get a new build. A sharded build gets its own key (a single build's key is
    the one it always had, so existing caches stay valid)."""
    fields: list[Any] = [str(src), fingerprint, endpoints["annotator"], endpoints["captioner_url"],
                         endpoints["captioner_model"], endpoints["reasoner_url"], endpoints["reasoner_model"], sets]  # fmt: skip
    if shards > 1:
        fields.append({"shards": shards})
    key = hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]
    return output_dir(artifact_path, runs_root, "cache", f"data-{key}")


def build_argv(src: Path, out: Path, endpoints: dict[str, str]) -> list[str]:
    annotator = endpoints["annotator"]
    argv = [
        "data",
        "build",
        "--videos",
        str(src),
        "--out",
        str(out),
        "--annotator",
        annotator,
        "--no-progress",
    ]
    for flag, key in (("--captioner-url", "captioner_url"), ("--captioner-model", "captioner_model"),
                      ("--reasoner-url", "reasoner_url"), ("--reasoner-model", "reasoner_model")):  # fmt: skip
        if endpoints[key] and annotator == "llm":
            argv += [flag, endpoints[key]]
    return argv


def part_file(folder: Path, shard: int, shards: int) -> Path:
    return folder / "shards" / f"{shard}-of-{shards}.json"  # data_gen.shards.part_path's layout


def gather_parts(parts: list[Path], out: Path, shards: int) -> None:
    """Put every shard's part file into OUT/shards/ (a no-op when the shards wrote there already:
    one folder on the shared volume). Two parts of the same shard, or a folder without one,
    is an error naming it."""
    seen: dict[int, Path] = {}
    for folder in parts:
        found = [i for i in range(shards) if part_file(folder, i, shards).is_file()]
        if len(found) != 1 and folder != out:
            raise StepError(
                f"shard artifact {folder} holds {len(found)} part files of {shards} shards; expected 1"
            )
        for i in found if folder != out else []:
            if i in seen:
                raise StepError(f"shard {i}/{shards} came twice: {seen[i]} and {folder}")
            seen[i] = folder
            dst = part_file(out, i, shards)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(part_file(folder, i, shards), dst)


def run_data_build(videos_path: str, fingerprint: str, endpoints: dict[str, str], overrides: Any, runs_root: str,
                   mlflow_tracking_uri: str, mlflow_experiment: str, artifact: Any, shard: int = -1,
                   shards: int = 1, parts: list[str] | None = None) -> Path:  # fmt: skip
    """`shards <= 1`: the whole build (the pipeline's single data step, as before sharding).
    `shard >= 0`: shard `shard` of `shards` into OUT/shards/. Else: merge the `shards` parts
    (the part artifacts' paths) into the splits. Returns the output folder."""
    if shards < 1:
        raise StepError(f"data_shards must be >= 1, got {shards}")
    src = resolve(videos_path)
    sets = overrides_list(overrides)
    out = build_folder(artifact.path, src, fingerprint, endpoints, sets, runs_root, shards)
    argv = build_argv(src, out, endpoints)
    if shards > 1 and shard >= 0:
        if not 0 <= shard < shards:
            raise StepError(f"shard index {shard} is not in 0..{shards - 1}")
        argv += ["--shard", f"{shard}/{shards}"]
    elif shards > 1:
        gather_parts([resolve(p) for p in parts or []], out, shards)
        argv += ["--merge-shards", str(shards)]
    uri = tracking_uri(mlflow_tracking_uri)
    parent = parent_run_id(uri, experiment=mlflow_experiment)
    run_step(longrl_argv(*argv, *sets), env=mlflow_env(uri, parent))
    summary = out / "summary.json"
    if shard >= 0:
        artifact.metadata.update({"shard": f"{shard}/{shards}"})
    elif summary.is_file():
        artifact.metadata.update({"summary": json.loads(summary.read_text())})
    return out
