"""MLflow plumbing behind common.tracking: datasets as `mlflow.data` objects (with digests) and
a temporary fluent active run for APIs that only log to it (`mlflow.transformers.log_model`)."""

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
