"""Split records by video into sft / rl / eval and save them with `datasets`.

Videos (never questions) are assigned to splits: each video's place in a seeded order (sha256
of seed + video digest) decides its split, with split sizes from the shares by largest
remainder, and at least one video for every split with a positive share when there are enough
videos (a demo with 3 videos still gets an eval split). The same videos and seed always give the same assignment; it is saved in
splits.json next to the data. Each split is written as a `datasets` folder (save_to_disk) and a
parquet file with the explicit Features of data_gen.schema.features(); an empty split is still
written, with the same features.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from data_gen.schema import SPLITS, QARecord, features


def assign_videos(digests: dict[str, str], shares: dict[str, float], seed: int) -> dict[str, str]:
    """video_id -> split. `digests` maps video_id to the video's sha256."""
    order = sorted(digests, key=lambda v: hashlib.sha256(f"{seed}:{digests[v]}".encode()).hexdigest())
    total = sum(shares.values())
    n = len(order)
    exact = {s: round(n * shares[s] / total, 9) for s in SPLITS}  # ties break by split order
    sizes = {s: int(exact[s]) for s in SPLITS}
    for s in sorted(SPLITS, key=lambda s: (-(exact[s] - sizes[s]), SPLITS.index(s)))[: n - sum(sizes.values())]:
        sizes[s] += 1
    for s in SPLITS:  # a split with a share gets a video whenever there are enough of them
        if shares[s] > 0 and sizes[s] == 0:
            donor = max(SPLITS, key=lambda d: (sizes[d], -SPLITS.index(d)))
            if sizes[donor] > 1:
                sizes[donor] -= 1
                sizes[s] += 1
    out, i = {}, 0
    for s in SPLITS:
        for v in order[i:i + sizes[s]]:
            out[v] = s
        i += sizes[s]
    return out


def save_splits(records: list[QARecord], assignment: dict[str, str], out_dir: str | Path) -> dict[str, int]:
    """Write OUT/<split>/ (save_to_disk) and OUT/<split>.parquet; returns records per split."""
    import datasets
    from datasets import Dataset

    datasets.disable_progress_bars()  # the build shows its own progress
    out = Path(out_dir)
    feats = features()
    counts = {}
    for split in SPLITS:
        rows = [r.to_dict() for r in records if assignment[r.video_id] == split]
        ds = Dataset.from_list(rows, features=feats) if rows else Dataset.from_dict(
            {k: [] for k in feats}, features=feats)
        tmp = out / f".{split}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp), num_shards=1)  # an empty split with 0 shards cannot be loaded
        shutil.rmtree(out / split, ignore_errors=True)
        tmp.rename(out / split)
        ds.to_parquet(str(out / f".{split}.parquet.tmp"))
        (out / f".{split}.parquet.tmp").replace(out / f"{split}.parquet")
        counts[split] = len(rows)
    (out / "splits.json").write_text(json.dumps(
        {"videos": dict(sorted(assignment.items())), "records": counts}, indent=1))
    return counts
