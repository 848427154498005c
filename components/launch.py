"""What every component body does, in one place: MLflow environment, where heavy outputs go,
artifact references, and running a stage's `longrl` command (in the pod or as a RayJob).

Components call the stages through their public command line (`longrl train sft ...`), so the
step runs exactly what a user runs by hand, in a fresh process (memory returned at exit), and
the same argv becomes the RayJob entrypoint for multi-node training.

Artifacts: a step writes its output folder into the KFP artifact (`artifact.path`), unless
`runs_root` is set (on a cluster: a folder on the shared PVC). Then the folder goes to
`<runs_root>/<kfp run id>/<step>/` and the artifact holds only `longrl_ref.json` pointing at it,
so a 16 GB checkpoint is not copied to the object store and Ray pods see the same path.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

REF_FILE = "longrl_ref.json"


class StepError(RuntimeError):
    pass


def tracking_uri(param: str) -> str:
    """The MLflow server a step uses: with KFP's MLflow integration on, the plugin's (its task
    runs live there; the parameter, if it names another server, is ignored with a note - mixing
    them crashed start-tracking), else the pipeline parameter ("" = MLflow off)."""
    from common import tracking

    if tracking.kfp_plugin_run():
        plugin = os.environ.get("MLFLOW_TRACKING_URI", "")
        if param and param.rstrip("/") != plugin.rstrip("/"):
            print(f"KFP's MLflow integration is on: using its server {plugin}, not mlflow_tracking_uri={param}")
        return plugin
    return param


def parent_run_id(tracking_uri: str, explicit: str = "", experiment: str = "longrl") -> str:
    """The pipeline's MLflow parent run: the id handed to the step, else `MLFLOW_RUN_ID` from
    the environment (Kubeflow's MLflow integration, or `longrl pipeline run-local`), else the run
    tagged with this pod's KFP run id (`KFP_RUN_ID`, from the pod label through the downward API).
    Cached steps use the environment, because a per-run parameter would defeat KFP's cache."""
    if not tracking_uri:
        return ""
    from common import tracking

    if tracking.kfp_plugin_run():  # this task's nested run: stage runs nest under it
        return tracking.kfp_plugin_run() or ""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_RUN_ID"):
        return os.environ["MLFLOW_RUN_ID"]
    kfp_run = os.environ.get("KFP_RUN_ID", "")
    if kfp_run:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        from common import tracking

        return tracking.find_pipeline_run(kfp_run, experiment) or ""
    return ""


def mlflow_env(tracking_uri: str, parent_run_id: str) -> dict[str, str]:
    """Environment for a stage: the tracking URI and the pipeline's parent run (Kubeflow's
    MLflow convention). Empty values leave MLflow off. Credentials come from the pod's
    environment (Kubernetes secrets), never from parameters."""
    from common import tracking

    env = {}
    task_run = tracking.kfp_plugin_run()
    if task_run:  # KFP's MLflow integration: its server, and this task's run as the parent
        return {"MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", ""), "MLFLOW_RUN_ID": task_run}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
        if parent_run_id:
            env["MLFLOW_RUN_ID"] = parent_run_id
    return env


def write_ref(artifact_path: str, target: str | Path, **info: Any) -> None:
    """Make the artifact at `artifact_path` a reference to the folder `target`."""
    out = Path(artifact_path)
    out.mkdir(parents=True, exist_ok=True)
    (out / REF_FILE).write_text(json.dumps({"path": str(Path(target).resolve()), **info}, indent=1))


def resolve(artifact_path: str) -> Path:
    """The folder an input artifact stands for: its own path, or the folder its reference names."""
    p = Path(artifact_path)
    ref = p / REF_FILE
    if ref.is_file():
        target = Path(json.loads(ref.read_text())["path"])
        if not target.exists():
            raise StepError(f"artifact {artifact_path} refers to {target}, which does not exist "
                            "(is the shared volume mounted at the same path?)")  # fmt: skip
        return target
    if not p.exists():
        raise StepError(f"input artifact {artifact_path} does not exist")
    return p


def output_dir(artifact_path: str, runs_root: str, *parts: str) -> Path:
    """Where a step writes its output folder: the artifact itself, or with `runs_root` the folder
    `<runs_root>/<parts...>` (`<kfp run id>/<step>` for training, `cache/<input hash>` for
    cached steps) with the artifact a reference to it."""
    if not runs_root:
        out = Path(artifact_path)
    else:
        out = Path(runs_root).joinpath(*(p or "none" for p in parts))
        write_ref(artifact_path, out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def model_folder(out: Path) -> Path:
    """The Hugging Face folder a training stage left in `out` (OUT/model, or OUT itself)."""
    for cand in (out / "model", out):
        if (cand / "config.json").is_file():
            return cand
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    raise StepError(f"no model folder (config.json) in {out} or {out / 'model'}; it holds {names}")


def longrl_argv(*args: str) -> list[str]:
    """`longrl ...` run with this interpreter (the venv's), whatever PATH holds."""
    return [sys.executable, "-m", "pipelines.cli", *args]


def run_step(argv: list[str], env: dict[str, str] | None = None, tail_lines: int = 40) -> None:
    """Run a stage's command, streaming its output to the step's log; on failure raise with the
    command and the last lines of output (secrets were redacted by the stage itself)."""
    from common.secrets import redact

    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    print("+ " + " ".join(argv[2:] if argv[1:3] == ["-m", "pipelines.cli"] else argv), flush=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    with subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line.rstrip("\n"))
        code = proc.wait()
    if code != 0:
        words = argv[3:] if argv[1:3] == ["-m", "pipelines.cli"] else argv
        command = " ".join(["longrl", *itertools.takewhile(lambda w: not w.startswith("-"), words[:2])])
        raise StepError(f"{command} failed with exit code {code}; last lines:\n"
                        + redact("\n".join(tail)))  # fmt: skip


def overrides_list(overrides: list | str | None) -> list[str]:
    """Pipeline parameter of `key=value` overrides (a list, or a JSON/whitespace string)."""
    if not overrides:
        return []
    if isinstance(overrides, str):
        text = overrides.strip()
        items = json.loads(text) if text.startswith("[") else text.split()
    else:
        items = list(overrides)
    bad = [o for o in items if "=" not in str(o)]
    if bad:
        raise StepError(f"overrides must be key=value, got {bad}")
    return [str(o) for o in items]


def read_jsonl_last(path: Path) -> dict[str, Any]:
    """Last JSON object of a metrics.jsonl (the final step's metrics), {} if none."""
    if not path.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                continue
    return last


def numeric_items(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten a dict to its finite numbers (for a KFP Metrics artifact)."""
    import math

    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numeric_items(value, name + "."))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


TINY_DEFAULT_ARCH = "qwen2_5_vl"


def tiny_model_preset(model: str) -> str:
    """The size preset of a tiny base_model (`longrl model tiny --preset`): "learn" for
    `tiny-learn[:SEED[:ARCH]]`, "" for plain `tiny...` (the test sizes) or a model folder."""
    head = model.split(":", 1)[0]
    return head.removeprefix("tiny-") if head.startswith("tiny-") and "/" not in head else ""  # a path is a folder


def tiny_model_spec(model: str) -> tuple[int, str] | None:
    """The pipeline's `base_model` as a tiny random model: `tiny`, `tiny:SEED` or
    `tiny:SEED:ARCH` (ARCH a vision family of `longrl model tiny --arch`; default qwen2_5_vl),
    or the same with a size preset, `tiny-learn:SEED` (tiny_model_preset) -> (seed, arch); None
    for anything else (a model folder). A bad seed, arch or preset is one line naming it and
    what is accepted."""
    preset = tiny_model_preset(model)
    if preset:
        from training.tiny_model import TINY_PRESETS

        if preset not in TINY_PRESETS:
            raise StepError(f"base model {model!r}: unknown tiny preset {preset!r}; known: "
                            f"{', '.join('tiny-' + p for p in TINY_PRESETS)}")  # fmt: skip
    plain = "tiny" + model[len("tiny-" + preset) :] if preset else model  # the preset is not part of the parse
    if plain != "tiny" and not plain.startswith("tiny:"):
        return None
    parts = plain.split(":")
    if len(parts) > 3:
        raise StepError(f"base model {model!r}: give tiny, tiny:SEED or tiny:SEED:ARCH")
    seed_text = (parts[1] if len(parts) > 1 else "") or "0"
    try:
        seed = int(seed_text)
    except ValueError:
        raise StepError(f"base model {model!r}: seed {seed_text!r} is not an integer "
                        "(tiny:SEED or tiny:SEED:ARCH)") from None  # fmt: skip
    arch = (parts[2] if len(parts) > 2 else "") or TINY_DEFAULT_ARCH
    from training.models import FAMILIES  # torch + transformers: only for a tiny model

    families = {f.name: f for f in FAMILIES.values()}
    video = ", ".join(n for n, f in families.items() if f.has_vision)
    if arch not in families:
        raise StepError(f"base model {model!r}: unknown arch {arch!r}; the video model families are {video}")
    if not families[arch].has_vision:
        raise StepError(f"base model {model!r}: {arch} is a text-only family and the pipeline trains on "
                        f"videos; use one of {video}")  # fmt: skip
    return seed, arch
