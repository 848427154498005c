"""MLflow model registry: versions with lineage tags, `challenger`/`champion` aliases, and the
promotion gate. Aliases only - the deprecated registry stages are never used.

- `register_version(name, source, run_id, tags)` registers a checkpoint logged with
  `StageRun.log_checkpoint` (transformers flavour `models:/m-...` or a reference folder).
- Tags on a version: `data.digest`, `pipeline.kfp_run_id`, `pipeline.mlflow_run_id`,
  `base_model`, `eval.status` (succeeded/failed) and `eval.<metric>` for every eval metric.
- `decide(...)` is the gate as a pure function; `gate_and_promote(...)` applies it and records the
  decision (promoted or not, and why) as tags on the candidate version and as a history entry on
  the registered model (`decision.v<version>.<utc time>`), so every decision can be audited.
- `promote(...)` moves an alias by hand (the CLI), recorded the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
EVAL_STATUS_TAG = "eval.status"
EVAL_METRIC_PREFIX = "eval."
_FLOAT_SLACK = 1e-9


class RegistryError(RuntimeError):
    pass


@dataclass
class GateConfig:
    """When a candidate replaces the champion automatically."""

    metric: str = "accuracy"  # eval metric compared (as logged, e.g. "accuracy" or "temporal.accuracy")
    min_margin: float = 0.0  # candidate must beat the champion by more than this (absolute)
    higher_is_better: bool = True  # False for error-like metrics
    require_eval_success: bool = True  # a failed/partial evaluation never promotes


@dataclass
class GateDecision:
    promote: bool
    reason: str
    metric: str
    candidate_value: float | None
    champion_value: float | None
    champion_version: str | None
    min_margin: float


def decide(
    gate: GateConfig,
    candidate_value: float | None,
    eval_succeeded: bool,
    champion_value: float | None = None,
    champion_version: str | None = None,
) -> GateDecision:
    """The promotion gate as a pure function of the numbers it compares."""

    def out(promote: bool, reason: str) -> GateDecision:
        return GateDecision(promote, reason, gate.metric, candidate_value, champion_value,
                            champion_version, gate.min_margin)  # fmt: skip

    if gate.require_eval_success and not eval_succeeded:
        return out(False, "evaluation did not succeed")
    if candidate_value is None or not math.isfinite(candidate_value):
        return out(False, f"candidate has no finite value for metric {gate.metric!r}")
    if champion_version is None:
        return out(True, "no champion yet")
    if champion_value is None or not math.isfinite(champion_value):
        # Never compare against a number we do not have: a human decides (recorded as rejected).
        return out(False, f"champion v{champion_version} has no value for metric {gate.metric!r}")
    gain = candidate_value - champion_value if gate.higher_is_better else champion_value - candidate_value
    # Metrics are rounded decimals (0.52 - 0.50 = 0.020000000000000018): a gain equal to the
    # margin up to float noise is not "more than" it.
    if gain - gate.min_margin > _FLOAT_SLACK:
        return out(True, f"beats champion v{champion_version} by {gain:.4g} > margin {gate.min_margin:g}")
    return out(False, f"gain {gain:.4g} over champion v{champion_version} is not above margin {gate.min_margin:g}")


def _client():  # noqa: ANN202 - mlflow imported lazily
    from mlflow import MlflowClient

    return MlflowClient()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def register_version(
    name: str,
    source: str,
    run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    description: str | None = None,
    alias: str | None = None,
) -> Any:
    """Register `source` as a new version of `name` (created if missing); returns ModelVersion.

    `source` is what `StageRun.log_checkpoint` returned: a `models:/` or `runs:/` URI goes through
    `mlflow.register_model`; an artifact-store or remote URI (reference) becomes the version source.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client()
    str_tags = {k: str(v) for k, v in (tags or {}).items()}
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    if source.startswith(("models:/", "runs:/")):
        mv = mlflow.register_model(source, name, tags=str_tags)
    else:
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=str_tags)
    if description:
        client.update_model_version(name, mv.version, description=description)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return client.get_model_version(name, mv.version)


def version_by_alias(name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "INVALID_PARAMETER_VALUE" in str(exc.error_code):
            return None
        raise


def eval_metrics(mv: Any) -> dict[str, float]:
    """`eval.<metric>` tags of a version as numbers (status tag excluded)."""
    out = {}
    for key, value in mv.tags.items():
        if key.startswith(EVAL_METRIC_PREFIX) and key != EVAL_STATUS_TAG:
            try:
                out[key[len(EVAL_METRIC_PREFIX):]] = float(value)
            except ValueError:
                continue
    return out


def record_eval(name: str, version: str, metrics: dict[str, float], succeeded: bool) -> None:
    """Store an evaluation's outcome on a version (`eval.status`, `eval.<metric>`)."""
    client = _client()
    client.set_model_version_tag(name, version, EVAL_STATUS_TAG, "succeeded" if succeeded else "failed")
    for key, value in metrics.items():
        client.set_model_version_tag(name, version, f"{EVAL_METRIC_PREFIX}{key}", repr(float(value)))


def record_decision(name: str, version: str, entry: dict[str, Any]) -> None:
    """Record a promotion decision: the latest one as `promotion.*` tags on the version, and every
    one, never overwritten, as `decision.v<version>.<utc time>` (JSON) on the registered model."""
    client = _client()
    entry = {"time": _now(), **entry}
    for key in ("decision", "reason", "alias", "actor", "time"):
        if key in entry:
            client.set_model_version_tag(name, version, f"promotion.{key}", str(entry[key]))
    for key in ("metric", "candidate_value", "champion_value", "champion_version", "min_margin"):
        if entry.get(key) is not None:
            client.set_model_version_tag(name, version, f"promotion.{key}", str(entry[key]))
    client.set_registered_model_tag(name, f"decision.v{version}.{entry['time']}", json.dumps(entry, default=str))


def gate_and_promote(
    name: str,
    version: str,
    gate: GateConfig,
    eval_succeeded: bool | None = None,
    candidate_metrics: dict[str, float] | None = None,
    champion_metrics: dict[str, float] | None = None,
    actor: str = "pipeline",
) -> GateDecision:
    """Apply the gate to `version` and move `champion` to it when it passes.

    Metrics default to the versions' `eval.*` tags; the pipeline passes the numbers of the eval
    that scored candidate and champion side by side on the same benchmark run (fairer than
    comparing with a number measured months ago). The decision is recorded either way.
    """
    client = _client()
    candidate = client.get_model_version(name, version)
    if eval_succeeded is None:
        eval_succeeded = candidate.tags.get(EVAL_STATUS_TAG) == "succeeded"
    cand = candidate_metrics if candidate_metrics is not None else eval_metrics(candidate)
    champion = version_by_alias(name, CHAMPION)
    champ_version = champ_value = None
    if champion is not None and champion.version != candidate.version:
        champ_version = champion.version
        champ = champion_metrics if champion_metrics is not None else eval_metrics(champion)
        champ_value = champ.get(gate.metric)
    decision = decide(gate, cand.get(gate.metric), eval_succeeded, champ_value, champ_version)
    if champion is not None and champion.version == candidate.version:
        decision = GateDecision(False, "already champion", gate.metric, cand.get(gate.metric),
                                None, champion.version, gate.min_margin)  # fmt: skip
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
        if champ_version is not None:
            client.set_model_version_tag(name, champ_version, "promotion.replaced_by", candidate.version)
    entry = asdict(decision)
    entry.pop("promote")
    record_decision(name, candidate.version, {"decision": "promoted" if decision.promote else "rejected",
                                      "alias": CHAMPION, "actor": actor, **entry})  # fmt: skip
    return decision


def promote(name: str, version: str, alias: str = CHAMPION, actor: str = "cli", force: bool = False,
            reason: str = "manual") -> Any:  # fmt: skip
    """Point `alias` at `version` by hand. A version whose evaluation failed is refused unless
    `force`; the move is recorded like the gate's decisions."""
    client = _client()
    mv = client.get_model_version(name, version)
    if mv.tags.get(EVAL_STATUS_TAG) == "failed" and not force:
        raise RegistryError(f"{name} v{version}: its evaluation failed; pass --force to promote anyway")
    previous = version_by_alias(name, alias)
    client.set_registered_model_alias(name, alias, mv.version)
    if previous is not None and previous.version != mv.version:
        client.set_model_version_tag(name, previous.version, f"{alias}.replaced_by", mv.version)
    record_decision(name, mv.version, {"decision": "promoted", "alias": alias, "actor": actor,
                               "reason": reason + (" (forced)" if force else ""),
                               "champion_version": previous.version if previous else None})  # fmt: skip
    return client.get_model_version(name, mv.version)


def location_uri(path: str | Path, shared_volume: str = "") -> str:
    """`pvc://<claim>/<sub>` for a path on the shared volume (`shared_volume` = "claim:/mount"),
    else the absolute path: what a checkpoint reference records."""
    p = Path(path).resolve()
    claim, _, mount = shared_volume.partition(":")
    if claim and mount and p.is_relative_to(mount):
        return f"pvc://{claim}/{p.relative_to(mount)}"
    return str(p)


def materialize(model_uri: str, dst: str | Path, shared_volume: str = "") -> Path:
    """A local Hugging Face folder for a registered model (`models:/name/3`, `models:/name@champion`).

    A transformers-flavour version is downloaded into `dst`; a reference version
    (checkpoint_ref.json) resolves to its location: `pvc://claim/sub` -> the shared volume's
    mount, or a path. Anything else (an s3:// reference) is an error, never a guess.
    """
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst)))
    ref = next(iter(sorted(local.rglob("checkpoint_ref.json"))), None)
    if ref is not None:
        loc = json.loads(ref.read_text())["location_uri"]
        claim, _, mount = shared_volume.partition(":")
        if loc.startswith("pvc://"):
            ref_claim, _, sub = loc[len("pvc://"):].partition("/")
            if ref_claim != claim or not mount:
                raise RegistryError(f"{model_uri} lives on volume {ref_claim!r}, which is not mounted here")
            folder = Path(mount) / sub
        elif "://" in loc:
            raise RegistryError(f"{model_uri} refers to {loc}; copy it to a mounted volume first")
        else:
            folder = Path(loc)
        if not (folder / "config.json").is_file():
            raise RegistryError(f"{model_uri} refers to {folder}, which holds no model (no config.json)")
        return folder
    for cfg in sorted(local.rglob("config.json")):
        if any(cfg.parent.glob("*.safetensors")):
            return cfg.parent
    raise RegistryError(f"{model_uri}: downloaded to {local} but found no model folder in it")


def describe(name: str | None = None) -> list[dict[str, Any]]:
    """Rows for `longrl registry show`: every version of `name` (or of every model)."""
    client = _client()
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model_name in names:
        model = client.get_registered_model(model_name)
        aliases: dict[str, list[str]] = {}
        for alias, v in (model.aliases or {}).items():
            aliases.setdefault(str(v), []).append(alias)
        for mv in client.search_model_versions(f"name = '{model_name}'"):
            rows.append({
                "name": model_name,
                "version": mv.version,
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "eval_status": mv.tags.get(EVAL_STATUS_TAG, ""),
                "metrics": eval_metrics(mv),
                "decision": mv.tags.get("promotion.decision", ""),
                "reason": mv.tags.get("promotion.reason", ""),
                "base_model": mv.tags.get("base_model", ""),
                "data_digest": mv.tags.get("data.digest", ""),
                "kfp_run_id": mv.tags.get("pipeline.kfp_run_id", ""),
                "source": mv.source,
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
            })  # fmt: skip
    rows.sort(key=lambda r: (r["name"], int(r["version"])))
    return rows
