"""MLflow plumbing behind common.tracking: datasets as `mlflow.data` objects (with digests) and
a temporary fluent active run for APIs that only log to it (`mlflow.transformers.log_model`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def to_mlflow_dataset(data: Any, name: str, source: str | None = None) -> Any:
    """An `mlflow.data` dataset (with digest) from a HF Dataset, DataFrame or saved folder."""
    import mlflow.data

    if isinstance(data, str | Path):
        import datasets

        folder = Path(data)
        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            raise TypeError(f"{folder} holds a DatasetDict; log each split on its own")
        return mlflow.data.from_huggingface(loaded, name=name, source=source or str(folder.resolve()))
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
        return mlflow.data.from_huggingface(data, name=name, source=src)
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
