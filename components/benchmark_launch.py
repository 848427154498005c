"""The held-out benchmark's work (prepare_benchmark): procedural videos rendered with the
training videos' settings but a seed no training data uses, so the pipeline never grades a model
on the videos it was trained on (issue 11.4). A benchmark video whose bytes equal a training
video's is taken out with its questions: a small rung of the synthetic ladder (one object, no
colour change) has few distinct scripts, so another seed can still draw a training video again -
held out means held out by content, not only by seed."""

from __future__ import annotations

import json
from pathlib import Path

from components.launch import StepError

MANIFEST, QUESTIONS = "manifest.json", "questions.jsonl"


def synth_argv(
    out: Path, videos: int, minutes: float, fps: float, seed: int, overrides: list[str]
) -> list[str]:
    """`longrl synth` arguments (without the `longrl` prefix): the pipeline's synth_* knobs and
    its synth_overrides (SynthConfig keys such as the ladder's task_types, object_scale)."""
    return ["synth", "--out", str(out), "--videos", str(videos), "--minutes", str(minutes), "--fps", str(fps),
            "--seed", str(seed), *overrides]  # fmt: skip


def check_held_out(source: str, synth_seed: int, eval_synth_seed: int) -> None:
    """A benchmark drawn with the training videos' own seed would be the training videos."""
    if source == "synth" and eval_synth_seed == synth_seed:
        raise StepError(f"eval_synth_seed {eval_synth_seed} equals synth_seed: the benchmark would be the "
                        "training videos; give the benchmark a seed of its own")  # fmt: skip


def synth_digests(folder: Path) -> set[str]:
    """The sha256 of every video a `longrl synth` folder holds (its manifest's digests); empty
    for a folder of other videos, which no synthetic benchmark video can equal."""
    path = folder / MANIFEST
    if not path.is_file():
        return set()
    try:
        return {v["digest"] for v in json.loads(path.read_text()).get("videos", [])}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise StepError(f"{path}: cannot read the video digests ({exc})") from exc


def drop_seen_videos(bench: Path, seen: set[str]) -> list[str]:
    """Rewrite the benchmark folder without the videos whose digest is in `seen` (and their
    questions); returns the ids taken out. The video files stay (nothing refers to them)."""
    man = json.loads((bench / MANIFEST).read_text())
    gone = sorted(v["video_id"] for v in man["videos"] if v["digest"] in seen)
    if not gone:
        return []
    man["videos"] = [v for v in man["videos"] if v["video_id"] not in gone]
    (bench / MANIFEST).write_text(json.dumps(man, indent=1))
    kept = [line for line in (bench / QUESTIONS).read_text().splitlines()
            if line.strip() and json.loads(line).get("video_id") not in gone]  # fmt: skip
    (bench / QUESTIONS).write_text("".join(line + "\n" for line in kept))
    return gone


def benchmark_summary(bench: Path) -> dict[str, int]:
    """Videos and questions the benchmark holds."""
    man = json.loads((bench / MANIFEST).read_text())
    rows = [x for x in (bench / QUESTIONS).read_text().splitlines() if x.strip()]
    return {"videos": len(man["videos"]), "questions": len(rows)}
