"""MLflow plumbing behind common.tracking: datasets as `mlflow.data` objects (with
path-independent digests), a temporary fluent active run for APIs that only log to it
(`mlflow.transformers.log_model`), detection of KFP's MLflow integration, and the run-info file
through which a stage tells the pipeline step its run and checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_FINGERPRINT_BYTES = 1 << 20


def file_fingerprint(path: Path) -> str:
    """name, size and sha256 of the first and last MiB: what a record's video is, wherever it
    lives (hashing every byte of 18K long videos at each log would take hours)."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        if size > 2 * _FINGERPRINT_BYTES:
            f.seek(size - _FINGERPRINT_BYTES)
            h.update(f.read(_FINGERPRINT_BYTES))
    return f"{path.name}:{size}:{h.hexdigest()[:16]}"


def content_digest(ds: Any) -> str:
    """A digest of a HF Dataset's rows that does not depend on where files live: every string
    that is an absolute path is replaced by the file's fingerprint (or its name when it does not
    exist here). MLflow's own digest hashed the absolute video paths, so identical runs in two
    folders had different digests (issue 15.16)."""
    seen: dict[str, str] = {}

    def norm(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("/") and "\n" not in value and len(value) < 4096:
            if value not in seen:
                p = Path(value)
                seen[value] = file_fingerprint(p) if p.is_file() else p.name
            return seen[value]
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value

    h = hashlib.sha256()
    for row in ds:
        h.update(json.dumps(norm(row), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def to_mlflow_dataset(data: Any, name: str, source: str | None = None) -> Any:
    """An `mlflow.data` dataset from a HF Dataset, DataFrame or saved folder; HF datasets get
    the path-independent `content_digest`."""
    import mlflow.data

    if isinstance(data, str | Path):
        import datasets

        folder = Path(data)
        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            raise TypeError(f"{folder} holds a DatasetDict; log each split on its own")
        return mlflow.data.from_huggingface(loaded, name=name, source=source or str(folder.resolve()),
                                            digest=content_digest(loaded))  # fmt: skip
    try:
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            return mlflow.data.from_pandas(data, name=name, source=source)
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    import datasets

    if isinstance(data, datasets.Dataset):
        # In memory, without a hub path: the source records the producing code and the
        # dataset's fingerprint (MLflow only resolves sources it knows: paths, URLs, code).
        from mlflow.data.code_dataset_source import CodeDatasetSource

        src = source or CodeDatasetSource({"hf_fingerprint": data._fingerprint})
        return mlflow.data.from_huggingface(data, name=name, source=src, digest=content_digest(data))
    raise TypeError(f"cannot log {type(data).__name__} as a dataset (need Dataset, DataFrame or folder)")


@contextlib.contextmanager
def fluent_run(run_id: str) -> Iterator[None]:
    """Make `run_id` the fluent active run for APIs that only log to it (log_model), then
    detach without ending it."""
    import mlflow

    saved = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
        try:
            yield
        finally:
            # end_run would mark the run FINISHED; the owner of the run ends it.
            from mlflow.tracking import fluent

            fluent._active_run_stack.get().pop()
    finally:
        if saved is not None:
            os.environ["MLFLOW_RUN_ID"] = saved


PLUGIN_TASK_RUN_ENV = "LONGRL_KFP_TASK_RUN_ID"


def kfp_plugin_run() -> str | None:
    """The task's own nested run when KFP's MLflow integration (KFP 2.17, KEP-12862) is on, else
    None. The plugin gives every task a nested run under the pipeline's parent run and sets
    `MLFLOW_RUN_ID` to it (with `MLFLOW_TRACKING_URI`, `MLFLOW_EXPERIMENT_ID` and, on the
    launcher, `KFP_MLFLOW_CONFIG`); it ends both runs itself. Without it `MLFLOW_RUN_ID` (if any)
    is the pipeline's parent run (`longrl pipeline run-local`). The id is remembered in
    LONGRL_KFP_TASK_RUN_ID so that code which later points MLFLOW_RUN_ID elsewhere, and the
    stage subprocesses, still know it."""
    if os.environ.get(PLUGIN_TASK_RUN_ENV):
        return os.environ[PLUGIN_TASK_RUN_ENV]
    run_id = os.environ.get("MLFLOW_RUN_ID")
    on = bool(os.environ.get("KFP_MLFLOW_CONFIG")) or bool(
        os.environ.get("MLFLOW_EXPERIMENT_ID") and os.environ.get("KFP_POD_NAME"))
    if run_id and on:
        os.environ[PLUGIN_TASK_RUN_ENV] = run_id
        return run_id
    return None


def parent_of(run_id: str) -> str | None:
    """The `mlflow.parentRunId` of a run (the pipeline run of a plugin task run)."""
    from mlflow import MlflowClient

    return MlflowClient().get_run(run_id).data.tags.get("mlflow.parentRunId")


RUN_INFO_ENV = "LONGRL_RUN_INFO_FILE"


def record_run_info(**info: Any) -> None:
    """With LONGRL_RUN_INFO_FILE set (the pipeline's training step sets it), merge `info` (the
    stage's run id, the source URI of its logged checkpoint) into that JSON file, so the register
    step can register the training run's own model instead of logging the weights again."""
    path = os.environ.get(RUN_INFO_ENV)
    if not path:
        return
    p = Path(path)
    data = json.loads(p.read_text()) if p.is_file() else {}
    for key, value in info.items():  # the stage's own (first) run keeps its id; checkpoints: last
        if key in ("stage", "run_id"):
            data.setdefault(key, value)
        else:
            data[key] = value
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=1))
