"""MLflow tracking for every stage: a no-op without MLflow, nested runs under the pipeline's run.

Usage in a stage (library code, CLI or KFP component alike)::

    from common import tracking

    with tracking.stage_run("sft", config=cfg) as run:
        run.log_dataset(train_ds, name="longvideo-reason-sft", context="training")
        for step, loss in ...:
            run.log_metrics({"loss": loss}, step=step)
        run.log_figure(fig, "plots/reward_curve.png")
        run.log_checkpoint(out_dir / "model")

Conventions (the ones Kubeflow's MLflow integration uses):
- `MLFLOW_TRACKING_URI` unset -> every method returns at once and nothing is sent anywhere; a
  stage runs the same with or without MLflow.
- `MLFLOW_RUN_ID` set -> it is the pipeline's parent run; each stage opens a *new* run nested
  under it (tag `mlflow.parentRunId`) in the parent's experiment. We create the child through
  `MlflowClient` because `mlflow.start_run()` without a run id would resume (and end) the parent
  and delete `MLFLOW_RUN_ID` from the environment.
- No parent -> a top-level run in `MLFLOW_EXPERIMENT_NAME` (default "longrl").
- `pipeline_run(...)` creates the parent run itself (tagged with the KFP run id); the pipeline's
  first step uses it and hands the run id to the other steps.

A failing stage ends its run with status FAILED and an `error` tag, and the exception propagates.
Parameter values pass through `common.secrets.redact` so a key that slipped into a config never
reaches the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from common.mlflow_io import (  # noqa: F401 - re-exported: tracking.kfp_plugin_run, ...
    PLUGIN_TASK_RUN_ENV,
    RUN_INFO_ENV,
    kfp_plugin_run,
    parent_of,
    record_run_info,
)
from common.secrets import redact

DEFAULT_EXPERIMENT = "longrl"
PARENT_TAG = "mlflow.parentRunId"
KFP_RUN_TAG = "kfp.run_id"
STAGE_TAG = "longrl.stage"
# A checkpoint folder larger than this is logged as a reference to where it lives (a PVC or
# object-store path) instead of being copied into the artifact store: 7B weights are ~16 GB.
DEFAULT_INLINE_MODEL_MAX_BYTES = 2 * 1024**3
# pip requirements of a logged transformers model: given explicitly because MLflow's inference
# adds torchvision (no CPU build exists; see STACK-NOTES).
MODEL_PIP_REQUIREMENTS = ["torch==2.13.0", "transformers>=5.16.1,<5.20", "safetensors", "longrl"]
MODEL_TASK = "image-text-to-text"  # the transformers pipeline task of Qwen2.5-VL
_MAX_PARAM_CHARS = 6000  # MLflow's limit on one parameter value


def enabled() -> bool:
    """True when a tracking server is configured (`MLFLOW_TRACKING_URI`)."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values (rendered as JSON when logged)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if is_dataclass(config) and not isinstance(config, type):
        from common.config import to_dict

        return to_dict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config must be a dataclass instance or a mapping, got {type(config).__name__}")


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return redact(text)[:_MAX_PARAM_CHARS]


def dir_size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


class StageRun:
    """Handle on one stage's MLflow run. With `run_id=None` (MLflow off) every method is a no-op."""

    def __init__(self, run_id: str | None = None, stage: str = "") -> None:
        self.run_id = run_id
        self.stage = stage

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _client(self):  # noqa: ANN202 - mlflow imported lazily
        from mlflow import MlflowClient

        return MlflowClient()

    # -- parameters, tags, metrics ------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active or not params:
            return
        from mlflow.entities import Param

        items = [Param(k, _param_text(v)) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # the REST API takes at most 100 params per batch
            self._client().log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, _param_text(v)) for k, v in tags.items()]
        self._client().log_batch(self.run_id, tags=items)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics (nested dicts become dotted names); non-finite values are kept
        (MLflow stores NaN) so a diverging run shows as such."""
        if not self.active or not metrics:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in flatten(metrics).items()]
        for i in range(0, len(items), 1000):
            self._client().log_batch(self.run_id, metrics=items[i : i + 1000])

    # -- files ----------------------------------------------------------------------------------
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._client().log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._client().log_artifacts(self.run_id, str(directory), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Write `data` as JSON (or YAML for .yaml/.yml names) to `artifact_file` in the run."""
        if self.active:
            self._client().log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self._client().log_text(self.run_id, redact(text), artifact_file)

    def log_config(self, config: Any, artifact_file: str = "config/config.yaml") -> None:
        """A config dataclass (or mapping): flattened as params and saved whole as YAML."""
        data = _config_dict(config)
        if not self.active or not data:
            return
        self.log_params(data)
        import yaml

        self.log_text(yaml.safe_dump(data, sort_keys=False), artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure saved as PNG (the caller also keeps its own copy on disk)."""
        if self.active:
            self._client().log_figure(self.run_id, figure, artifact_file)

    # -- datasets and models --------------------------------------------------------------------
    def log_dataset(
        self,
        data: Any,
        name: str,
        context: str = "training",
        source: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str | None:
        """Log a `datasets.Dataset`, `pandas.DataFrame` or saved-dataset folder as a run input.

        Returns the MLflow digest (a content hash), or None when MLflow is off. A folder is read
        with `datasets.load_from_disk` and its path recorded as the source.
        """
        if not self.active:
            return None
        from common.mlflow_io import to_mlflow_dataset

        dataset = to_mlflow_dataset(data, name=name, source=source)
        from mlflow.entities import DatasetInput, InputTag

        ctx_tags = [InputTag("mlflow.data.context", context)] + [
            InputTag(k, str(v)) for k, v in (tags or {}).items()
        ]
        self._client().log_inputs(
            self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=ctx_tags)]
        )
        self.set_tags({f"dataset.{context}.{name}.digest": dataset.digest})
        return dataset.digest

    log_dataset_input = log_dataset  # the name mlflow.log_input suggests

    def log_checkpoint(
        self,
        model_dir: str | Path,
        name: str = "model",
        location_uri: str | None = None,
        inline_max_bytes: int = DEFAULT_INLINE_MODEL_MAX_BYTES,
    ) -> str | None:
        """Log a Hugging Face model folder; returns the source URI to register (see
        `common.registry.register_version`), or None when MLflow is off.

        Small folders are logged with the transformers flavour from the folder path (MLflow
        copies the files without loading the model; loadable by `mlflow.transformers.load_model`
        or `from_pretrained` on the downloaded folder) -> `models:/m-...`. Larger ones are logged
        as a reference: `<name>/checkpoint_ref.json` with `location_uri` (where the folder lives,
        e.g. `pvc://longrl-data/runs/x/model` or `s3://...`; defaults to the local path), size
        and file list, plus the small config files -> the artifact URI of that folder, which the
        registry accepts as a version source (it rejects plain local paths).
        """
        if not self.active:
            return None
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
        size = dir_size(model_dir)
        if size <= inline_max_bytes:
            uri = self._log_transformers_model(model_dir, name)
            record_run_info(checkpoint_source=uri, checkpoint_dir=str(model_dir.resolve()))
            return uri
        ref = {
            "location_uri": location_uri or str(model_dir.resolve()),
            "size_bytes": size,
            "files": sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file()),
        }
        with tempfile.TemporaryDirectory() as tmp:
            ref_dir = Path(tmp) / name
            ref_dir.mkdir()
            (ref_dir / "checkpoint_ref.json").write_text(json.dumps(ref, indent=1))
            # The model's own config files are small and let a reader see what it is.
            for small in ("config.json", "generation_config.json"):
                if (model_dir / small).is_file():
                    (ref_dir / small).write_bytes((model_dir / small).read_bytes())
            self.log_artifacts(ref_dir, name)
        self.set_tags({"checkpoint.location_uri": ref["location_uri"], "checkpoint.logged_as": "reference"})
        uri = f"{self._client().get_run(self.run_id).info.artifact_uri}/{name}"
        record_run_info(checkpoint_source=uri, checkpoint_dir=str(model_dir.resolve()))
        return uri

    def _log_transformers_model(self, model_dir: Path, name: str) -> str:
        import mlflow

        from common.mlflow_io import fluent_run

        with fluent_run(self.run_id):
            info = mlflow.transformers.log_model(
                transformers_model=str(model_dir),
                name=name,
                task=MODEL_TASK,
                pip_requirements=MODEL_PIP_REQUIREMENTS,
            )
        self.set_tags({"checkpoint.logged_as": "transformers", "checkpoint.model_uri": info.model_uri})
        return info.model_uri


def _experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created concurrently by another step
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def stage_run(
    stage: str,
    config: Any = None,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> Iterator[StageRun]:
    """Open this stage's run (nested under `MLFLOW_RUN_ID` when set) and end it on exit.

    `config` (dataclass or mapping) is logged as params and `config/config.yaml`. Yields a
    `StageRun`; without `MLFLOW_TRACKING_URI` it is inactive and all its methods are no-ops.
    """
    if not enabled():
        yield StageRun(None, stage)
        return
    from mlflow import MlflowClient

    client = MlflowClient()
    parent_id = os.environ.get("MLFLOW_RUN_ID") or None
    # A launcher that runs one stage several times (the pipeline's eval: candidate, base,
    # champion) names each run through the environment: LONGRL_RUN_NAME, LONGRL_RUN_TAGS (JSON).
    run_name = run_name or os.environ.get("LONGRL_RUN_NAME") or None
    tags = {**json.loads(os.environ.get("LONGRL_RUN_TAGS") or "{}"), **(tags or {})}
    run_tags = {STAGE_TAG: stage, "mlflow.runName": run_name or stage}
    if parent_id:
        parent = client.get_run(parent_id)
        experiment_id = parent.info.experiment_id
        run_tags[PARENT_TAG] = parent_id
        kfp_run = parent.data.tags.get(KFP_RUN_TAG)
        if kfp_run:
            run_tags[KFP_RUN_TAG] = kfp_run
    else:
        experiment_id = _experiment_id(client, os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    run_tags.update({k: _param_text(v) for k, v in (tags or {}).items()})
    created = client.create_run(experiment_id, tags=run_tags, run_name=run_name or stage)
    run = StageRun(created.info.run_id, stage)
    record_run_info(stage=stage, run_id=run.run_id)
    try:
        if config is not None:
            run.log_config(config)
        yield run
    except BaseException as exc:
        client.set_tag(run.run_id, "error", redact(f"{type(exc).__name__}: {exc}")[:5000])
        client.set_terminated(run.run_id, status="FAILED")
        raise
    client.set_terminated(run.run_id, status="FINISHED")


def find_pipeline_run(kfp_run_id: str, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """The parent run of a KFP run (by its `kfp.run_id` tag), or None."""
    if not enabled():
        return None
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}' and tags.`{STAGE_TAG}` = 'pipeline'",
    )
    return found[0].info.run_id if found else None


def pipeline_run(
    kfp_run_id: str,
    experiment: str = DEFAULT_EXPERIMENT,
    params: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str | None:
    """Create (or find, when this KFP run id was seen before: retries must not duplicate it) the
    parent run of one pipeline run, tagged `kfp.run_id`; returns its id or None (MLflow off).

    The run stays RUNNING; the pipeline's exit handler closes it with `end_pipeline_run`.
    """
    if not enabled():
        return None
    from mlflow import MlflowClient

    client = MlflowClient()
    existing = find_pipeline_run(kfp_run_id, experiment)
    if existing:
        return existing
    experiment_id = _experiment_id(client, experiment)
    all_tags = {KFP_RUN_TAG: kfp_run_id, STAGE_TAG: "pipeline"}
    all_tags.update({k: _param_text(v) for k, v in (tags or {}).items()})
    run = client.create_run(experiment_id, tags=all_tags, run_name=run_name or f"pipeline-{kfp_run_id}")
    StageRun(run.info.run_id, "pipeline").log_params(params or {})
    return run.info.run_id


def end_pipeline_run(run_id: str | None, status: str = "FINISHED", tags: Mapping[str, Any] | None = None) -> None:
    if run_id and enabled():
        from mlflow import MlflowClient

        StageRun(run_id, "pipeline").set_tags(tags or {})
        MlflowClient().set_terminated(run_id, status=status)
